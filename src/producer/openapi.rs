//! `/openapi.json`: the OpenAPI document of the whole API. Request and response schemas are
//! derived (utoipa) from the types the handlers read and write; each operation is declared on
//! its handler (`#[utoipa::path]`) and listed here. The function URL is one handler for every
//! method on two paths: its one declaration is copied to the others here ([`FunctionUrl`]).
//! tests/it/openapi.rs checks that every operation is routed.

use axum::Json;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::answers::{
    BuildStatus, BuildStreamLine, BuildView, CallbackKey, EventPublished, EventView, RejectionList,
    SubscriptionList,
};
use super::builds::Rollback;
use super::function_view::{FunctionList, FunctionView};
use super::health::{Health, Readiness};
use super::invocations::DeadLetterList;
use super::invoke::Accepted;
use super::keys::{KeyCreated, KeyList, NewKey};
use super::namespaces;
use super::schedules::{NewSchedule, ScheduleList, ScheduleUpdate};
use super::{
    builds, callback_keys, events, functions, health, invocations, invoke, keys, schedules,
    webhooks,
};
use crate::error::{ErrorBody, ErrorDetail};
use crate::function::{
    Function, FunctionUpdate, InputMode, Network, NewFunction, SecretsUpdate, StoreOutput,
};
use crate::invocation::{InvocationList, InvocationView, Record as InvocationRecord};
use crate::keys::{ApiKey, Scope};
use crate::producer::cron::{CatchUp, ScheduleView};
use crate::webhook::{WebhookList, WebhookView};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// A response declared without words gets its status's reason phrase (`Not Found`): OpenAPI
/// requires a description on every response.
struct ResponseDescriptions;

impl Modify for ResponseDescriptions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("The answer.")
                            .to_string();
                    }
                }
            }
        }
    }
}

/// A function's URL takes every method, at `/fn/{name}` and at `/fn/{name}/{path}`, with one
/// handler (`invoke::web`). Its operation is declared once, as POST `/fn/{name}`; this copies
/// it to the other methods and to the path with a tail, each with its own operation id
/// (`invoke_url_get`, `invoke_url_path`, `invoke_url_path_get`, ...).
struct FunctionUrl;

impl Modify for FunctionUrl {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{Object, Required, Type};
        let Some(post) = openapi
            .paths
            .paths
            .get("/fn/{name}")
            .and_then(|item| item.post.clone())
        else {
            return;
        };
        let tail = ParameterBuilder::new()
            .name("path")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("the function's own path; may hold `/`"))
            .schema(Some(Object::with_type(Type::String)))
            .build();
        for (path, id) in [
            ("/fn/{name}", "invoke_url"),
            ("/fn/{name}/{path}", "invoke_url_path"),
        ] {
            let mut base = post.clone();
            if path.ends_with("{path}") {
                base.parameters
                    .get_or_insert_with(Vec::new)
                    .push(tail.clone().into());
            }
            let item = openapi.paths.paths.entry(path.to_string()).or_default();
            let operation = |suffix: &str| {
                let mut operation = base.clone();
                operation.operation_id = Some(format!("{id}{suffix}"));
                Some(operation)
            };
            item.post = operation("");
            item.get = operation("_get");
            item.head = operation("_head");
            item.put = operation("_put");
            item.patch = operation("_patch");
            item.delete = operation("_delete");
            item.options = operation("_options");
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Granda", description = "Self-hosted serverless functions on Docker, RabbitMQ and Postgres."),
    paths(
        functions::create, functions::list, functions::get, functions::update, functions::delete,
        invoke::sync, invoke::web, invoke::no_wait, invocations::list, invocations::get, invocations::list_all,
        invocations::dead_letters, invocations::discard, invocations::retry, super::cancel::cancel,
        keys::create, keys::list, keys::revoke, health::healthz, health::readyz, health::metrics, serve,
        events::publish, events::get, events::subscribe, events::subscriptions, events::unsubscribe,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::rotate,
        webhooks::rejections, webhooks::receive,
        callback_keys::get, callback_keys::rotate,
        schedules::create, schedules::list, schedules::get, schedules::update, schedules::delete,
        builds::get, builds::rollback,
        namespaces::create, namespaces::list, namespaces::get, namespaces::update, namespaces::delete,
        super::usage::get
    ),
    components(schemas(
        Function, FunctionView, FunctionList, NewFunction, FunctionUpdate, SecretsUpdate,
        InputMode, Network, StoreOutput, ErrorBody, ErrorDetail, Accepted, InvocationRecord, InvocationView, InvocationList, DeadLetterList,
        NewKey, ApiKey, KeyCreated, KeyList, Scope, Health, Readiness, NewSchedule, ScheduleUpdate,
        ScheduleView, ScheduleList, CatchUp, Rollback, WebhookView, WebhookList,
        crate::namespace::Stored, crate::namespace::Quotas, namespaces::NewNamespace, namespaces::NamespaceList,
        super::usage::Usage, super::usage::FunctionUsage, super::usage::NamespaceUsage,
        EventPublished, EventView, BuildStatus, BuildView, BuildStreamLine, CallbackKey, SubscriptionList, RejectionList
    )),
    tags(
        (name = "functions", description = "Register, read, change and delete functions."),
        (name = "invocations", description = "Run functions and read what their runs did."),
        (name = "events", description = "Publish events on topics; subscribe functions to topic patterns."),
        (name = "webhooks", description = "Signed deliveries from external systems, each bound to a function."),
        (name = "schedules", description = "Run functions on cron patterns."),
        (name = "callbacks", description = "The keys that sign result callbacks."),
        (name = "keys", description = "API keys and their scopes."),
        (name = "namespaces", description = "Namespaces, their quotas and usage (global admin keys)."),
        (name = "system", description = "Health, readiness, metrics and this document."),
    ),
    modifiers(&BearerAuth, &FunctionUrl, &ResponseDescriptions),
    security(("bearer" = []))
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi_json", tag = "system", summary = "This document",
    description = "The OpenAPI document of this API. Needs no key.", responses((status = 200, description = "this document")), security(()))]
pub(crate) async fn serve() -> Json<Value> {
    Json(document())
}

/// The document as served: what utoipa derives, then [`contract`].
pub(crate) fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    contract(&mut doc);
    doc
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// What utoipa's attributes can't say, said on the derived document:
/// - a binary body (`application/octet-stream`) is `type: string, format: binary`, not an array
///   of integers, so that generated clients send and read bytes;
/// - a function's URL takes a body only with the methods that carry one (`POST`, `PUT`,
///   `PATCH`), never requires it, and may answer any status (`default`: a `response: "cgi"` or
///   hot function gives its own);
/// - invocation answers carry the `X-Granda-*` headers;
/// - every operation that reads the database or the broker may answer 503 when they are down;
/// - a build from source streams as NDJSON when asked (`Accept: application/x-ndjson`).
pub(crate) fn contract(doc: &mut Value) {
    let binary = json!({"type": "string", "format": "binary"});
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let header =
        |description: &str, schema: Value| json!({"description": description, "schema": schema});
    let granda_headers = json!({
        "X-Granda-Invocation-Id": header("the invocation's id", json!({"type": "string", "format": "uuid"})),
        "X-Granda-Status": header("the invocation's status (`succeeded`, `failed`, `timed_out`, `cancelled`, `queued`, ...)", json!({"$ref": "#/components/schemas/InvocationStatus"})),
        "X-Granda-Duration-Ms": header("how long the run took", json!({"type": "integer", "format": "int64"})),
        "X-Granda-Exit-Code": header("the function's exit code, when it exited", json!({"type": "integer", "format": "int32"})),
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let function_url = path.starts_with("/fn/");
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            // Binary bodies, asked and answered.
            let asked = op.get_mut("requestBody").and_then(|b| b.get_mut("content"));
            for content in asked.into_iter() {
                if let Some(octets) = content.get_mut("application/octet-stream") {
                    octets["schema"] = binary.clone();
                }
            }
            let answered = op.get_mut("responses").and_then(Value::as_object_mut);
            let answered = answered.into_iter().flat_map(|r| r.values_mut());
            for content in answered.filter_map(|r| r.get_mut("content")) {
                if let Some(octets) = content.get_mut("application/octet-stream") {
                    octets["schema"] = binary.clone();
                }
            }
            if function_url {
                if matches!(method, "get" | "head" | "delete" | "options") {
                    op.remove("requestBody");
                } else if let Some(body) = op.get_mut("requestBody") {
                    body["required"] = json!(false);
                }
                let responses = op.entry("responses").or_insert_with(|| json!({}));
                responses["default"] = json!({
                    "description": "the function's own status, headers and body (`response: \"cgi\"` and hot functions)",
                    "content": {"application/octet-stream": {"schema": binary.clone()}},
                });
            }
            let invocation = function_url || matches!(id.as_str(), "invoke_sync" | "invoke_async");
            let responses = op.entry("responses").or_insert_with(|| json!({}));
            if let Some(responses) = responses.as_object_mut() {
                if invocation {
                    for (status, response) in responses.iter_mut() {
                        if matches!(status.as_str(), "200" | "202" | "502" | "504" | "default") {
                            response["headers"] = granda_headers.clone();
                        }
                    }
                }
                let infallible = matches!(id.as_str(), "healthz" | "openapi_json" | "metrics");
                if !infallible && !responses.contains_key("503") {
                    responses.insert(
                        "503".into(),
                        json!({
                            "description": "the database or the message broker is unavailable, or the server is too busy to read the body now (`Retry-After`)",
                            "content": error.clone(),
                        }),
                    );
                }
                if matches!(id.as_str(), "create_function" | "update_function") {
                    let stream =
                        json!({"schema": {"$ref": "#/components/schemas/BuildStreamLine"}});
                    let ok = responses.entry("200").or_insert_with(|| {
                        json!({"description": "with `Accept: application/x-ndjson` and a build: the build log, one JSON object per line", "content": {}})
                    });
                    ok["content"]["application/x-ndjson"] = stream;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary bodies are bytes, a function's URL takes a body only where the method carries
    /// one and may answer any status.
    #[test]
    fn binary_bodies_and_the_function_url() {
        let doc = document();
        let text = doc.to_string();
        assert!(!text.contains(r#""application/octet-stream":{"schema":{"items""#));
        for path in ["/fn/{name}", "/fn/{name}/{path}"] {
            for method in METHODS {
                let op = &doc["paths"][path][method];
                assert!(op["responses"]["default"].is_object(), "{method} {path}");
                let body = &op["requestBody"];
                match method {
                    "post" | "put" | "patch" => assert_eq!(body["required"], false),
                    _ => assert!(body.is_null(), "{method} {path} takes a body"),
                }
            }
        }
        let sync = &doc["paths"]["/v1/functions/{name}/invoke"]["post"];
        assert_eq!(
            sync["requestBody"]["content"]["application/octet-stream"]["schema"],
            json!({"type": "string", "format": "binary"})
        );
        assert!(sync["responses"]["200"]["headers"]["X-Granda-Status"].is_object());
    }
}
