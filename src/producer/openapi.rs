//! `/openapi.json`: the OpenAPI document of the whole API. Request and response schemas are
//! derived (utoipa) from the types the handlers read and write; each operation is declared on
//! its handler (`#[utoipa::path]`) and listed here. The function URL is one handler for every
//! method on two paths: its one declaration is copied to the others here ([`FunctionUrl`]).
//! tests/it/openapi.rs checks that every operation is routed.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
use crate::function::{Function, FunctionUpdate, InputMode, Network, NewFunction, SecretsUpdate};
use crate::invocation::{InvocationList, InvocationView, Record as InvocationRecord};
use crate::keys::{ApiKey, Scope};
use crate::schedule::{CatchUp, ScheduleView};
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
        invocations::dead_letters, invocations::retry,
        keys::create, keys::list, keys::revoke, health::healthz, health::readyz, health::metrics, serve,
        events::publish, events::get, events::subscribe, events::subscriptions, events::unsubscribe,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::rotate,
        webhooks::rejections, webhooks::receive,
        callback_keys::get, callback_keys::rotate, super::callback_key,
        schedules::create, schedules::list, schedules::get, schedules::update, schedules::delete,
        builds::get, builds::rollback,
        namespaces::create, namespaces::list, namespaces::get, namespaces::update, namespaces::delete,
        super::usage::get
    ),
    components(schemas(
        Function, FunctionView, FunctionList, NewFunction, FunctionUpdate, SecretsUpdate,
        InputMode, Network, ErrorBody, ErrorDetail, Accepted, InvocationRecord, InvocationView, InvocationList, DeadLetterList,
        NewKey, ApiKey, KeyCreated, KeyList, Scope, Health, Readiness, NewSchedule, ScheduleUpdate,
        ScheduleView, ScheduleList, CatchUp, Rollback, WebhookView, WebhookList,
        crate::namespace::Stored, crate::namespace::Quotas, namespaces::NewNamespace, namespaces::NamespaceList,
        super::usage::Usage, super::usage::FunctionUsage
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
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi_json", tag = "system", summary = "This document",
    description = "The OpenAPI document of this API. Needs no key.", responses((status = 200, description = "this document")), security(()))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
