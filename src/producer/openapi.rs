//! `/openapi.json`: the OpenAPI document of the whole API. Request and response schemas are
//! derived (utoipa) from the types the handlers read and write; the operations are declared
//! here, next to the router, and tests/it/openapi.rs checks that every one is routed.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::builds::Rollback;
use super::function_view::{FunctionList, FunctionView};
use super::keys::NewKey;
use super::schedules::{NewSchedule, ScheduleUpdate};
use crate::function::{Function, FunctionUpdate, InputMode, Network, NewFunction, SecretsUpdate};
use crate::keys::{ApiKey, Scope};
use crate::schedule::{CatchUp, ScheduleView};

/// Every error: `{"error": {"code", "message", ...}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// Failed or timed-out sync calls: the invocation.
    pub invocation_id: Option<Uuid>,
    pub status: Option<String>,
    pub exit_code: Option<i32>,
    /// Failed sync calls: the platform error or the tail of stderr.
    pub detail: Option<String>,
}

/// 202: the invocation was accepted and runs later (or still runs).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    pub status: String,
    pub status_url: String,
}

/// An invocation record. Input and output are text when UTF-8, else `*_base64`.
#[derive(Serialize, ToSchema)]
pub struct InvocationRecord {
    pub id: Uuid,
    pub function: String,
    pub status: String,
    pub trigger: String,
    pub attempt: i32,
    pub input: Option<String>,
    pub input_base64: Option<String>,
    pub input_size: i64,
    pub input_truncated: bool,
    pub output: Option<String>,
    pub output_base64: Option<String>,
    pub output_truncated: bool,
    pub logs: Option<String>,
    pub logs_truncated: bool,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub queued_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub duration_ms: Option<i64>,
    pub queue_ms: Option<i64>,
    pub cold: Option<bool>,
    pub worker: Option<String>,
    /// Calls of the function's URL (`/fn/{name}`): the method.
    pub http_method: Option<String>,
    /// Calls of the function's URL: the path after `/fn/{name}`, without the query.
    pub http_path: Option<String>,
    /// Calls of the function's URL: the HTTP status the caller was answered.
    pub http_status: Option<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct InvocationList {
    pub invocations: Vec<InvocationRecord>,
    /// The `before` of the next page; null on the last.
    pub next: Option<Uuid>,
}

/// A key as made: the only time `key` is shown.
#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub stored: ApiKey,
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub checks: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

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

#[derive(OpenApi)]
#[openapi(
    info(title = "Granda", description = "Self-hosted serverless functions on Docker, RabbitMQ and Postgres."),
    paths(
        create_function, list_functions, get_function, update_function, delete_function,
        invoke_sync, invoke_url, invoke_url_get, invoke_url_head, invoke_url_put, invoke_url_patch,
        invoke_url_delete, invoke_url_options, invoke_url_path, invoke_url_path_get, invoke_url_path_head,
        invoke_url_path_put, invoke_url_path_patch, invoke_url_path_delete, invoke_url_path_options, invoke_async, list_invocations, get_invocation,
        create_key, list_keys, revoke_key, healthz, readyz, metrics, openapi_json,
        dead_letters, retry_invocation, publish_event, get_event, create_webhook, list_webhooks, webhook_rejections,
        get_webhook, delete_webhook, rotate_webhook, subscribe, list_subscriptions, unsubscribe,
        get_callback_key, rotate_callback_key, receive_hook, legacy_callback_key,
        create_schedule, list_schedules, get_schedule, update_schedule, delete_schedule,
        list_all_invocations, get_build, rollback
    ),
    components(schemas(
        Function, FunctionView, FunctionList, NewFunction, FunctionUpdate, SecretsUpdate,
        InputMode, Network, ErrorBody, ErrorDetail, Accepted, InvocationRecord, InvocationList,
        NewKey, ApiKey, KeyCreated, KeyList, Scope, Health, Readiness, NewSchedule, ScheduleUpdate,
        ScheduleView, ScheduleList, CatchUp, Rollback
    )),
    tags(
        (name = "functions", description = "Register, read, change and delete functions."),
        (name = "invocations", description = "Run functions and read what their runs did."),
        (name = "events", description = "Publish events on topics; subscribe functions to topic patterns."),
        (name = "webhooks", description = "Signed deliveries from external systems, each bound to a function."),
        (name = "schedules", description = "Run functions on cron patterns."),
        (name = "callbacks", description = "The keys that sign result callbacks."),
        (name = "keys", description = "API keys and their scopes."),
        (name = "system", description = "Health, readiness, metrics and this document."),
    ),
    modifiers(&BearerAuth, &ResponseDescriptions),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

// The operations. These functions are never called: they carry the documentation.

#[utoipa::path(post, path = "/v1/functions", tag = "functions", summary = "Register a function",
    description = "Registers a function from an image (pulled when the engine lacks it), or builds its image from source when the body has `runtime` and `source` (with `Accept: application/x-ndjson` the build log streams, one JSON object per line). 201 with the function and its invoke URL; 409 if the name is taken; 422 for a bad field, an image that can't be had, or a failed build.", request_body = NewFunction, responses(
    (status = 201, body = FunctionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn create_function() {}

#[utoipa::path(get, path = "/v1/functions", tag = "functions", summary = "List functions",
    description = "Every function with its settings. Secret values are never shown, only their names.", responses(
    (status = 200, body = FunctionList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_functions() {}

#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", summary = "Read a function",
    description = "The function's settings, its invoke URL and its built versions (newest first).", params(("name" = String, Path)), responses(
    (status = 200, body = FunctionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_function() {}

#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions", summary = "Update a function",
    description = "Changes the fields the body names; the others keep their values. With `runtime` and `source`, builds a new version first and switches to it when the build succeeds.", params(("name" = String, Path)), request_body = FunctionUpdate, responses(
    (status = 200, body = FunctionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn update_function() {}

#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", summary = "Delete a function",
    description = "Removes the function. Later calls to it get 404.", params(("name" = String, Path)), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete_function() {}

#[utoipa::path(post, path = "/v1/functions/{name}/invoke", tag = "invocations", summary = "Invoke and wait",
    description = "Runs the function with the request body as its input and waits for the result: 200 with its stdout on exit 0, 502 when it exits non-zero, 504 when it times out, each with the invocation id (headers `X-Granda-Invocation-Id`, `X-Granda-Status`, `X-Granda-Duration-Ms`). Past the sync wait cap the answer is 202 and the invocation goes on running.", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
    (status = 200, description = "the function's stdout", content_type = "application/octet-stream", body = Vec<u8>),
    (status = 202, body = Accepted, description = "still running after the sync wait"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 413, body = ErrorBody), (status = 502, body = ErrorBody, description = "the function failed"),
    (status = 504, body = ErrorBody, description = "the function timed out")))]
#[allow(dead_code)]
fn invoke_sync() {}

/// One operation of a function's URL: `/fn/{name}` and `/fn/{name}/{path}` take every method.
macro_rules! function_url {
    ($op:ident, $method:ident, $path:literal, $params:tt) => {
        #[utoipa::path($method, path = $path, tag = "invocations", summary = "Call a function at its own URL",
            description = "A sync call that carries the HTTP request to the function: its method, the path after `/fn/{name}`, the query and the headers (never the caller's Granda key or dashboard session cookie). Cold and warm runs get them as CGI/1.1 meta-variables (`REQUEST_METHOD`, `PATH_INFO`, `QUERY_STRING`, `HTTP_*`, ...), the body on stdin; hot functions get the request itself. A function with `response: \"cgi\"` answers with its own status and headers; otherwise its output is the body. A `public` function needs no key. With a `cors` field, Granda answers preflight `OPTIONS` itself. `HEAD` answers no body.",
            params $params,
            request_body(content = Vec<u8>, content_type = "application/octet-stream"),
            responses(
            (status = 200, description = "the function's output (with `response: \"cgi\"`: its own status, headers and body)", content_type = "application/octet-stream", body = Vec<u8>),
            (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
            (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 502, body = ErrorBody),
            (status = 504, body = ErrorBody)),
            security((), ("bearer" = [])))]
        #[allow(dead_code)]
        fn $op() {}
    };
}

function_url!(invoke_url, post, "/fn/{name}", (("name" = String, Path)));
function_url!(invoke_url_get, get, "/fn/{name}", (("name" = String, Path)));
function_url!(
    invoke_url_head,
    head,
    "/fn/{name}",
    (("name" = String, Path))
);
function_url!(invoke_url_put, put, "/fn/{name}", (("name" = String, Path)));
function_url!(
    invoke_url_patch,
    patch,
    "/fn/{name}",
    (("name" = String, Path))
);
function_url!(
    invoke_url_delete,
    delete,
    "/fn/{name}",
    (("name" = String, Path))
);
function_url!(
    invoke_url_options,
    options,
    "/fn/{name}",
    (("name" = String, Path))
);
function_url!(
    invoke_url_path,
    post,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);
function_url!(
    invoke_url_path_get,
    get,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);
function_url!(
    invoke_url_path_head,
    head,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);
function_url!(
    invoke_url_path_put,
    put,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);
function_url!(
    invoke_url_path_patch,
    patch,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);
function_url!(
    invoke_url_path_delete,
    delete,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);
function_url!(
    invoke_url_path_options,
    options,
    "/fn/{name}/{path}",
    (
        ("name" = String, Path),
        (
            "path" = String,
            Path,
            description = "the function's own path; may hold `/`"
        )
    )
);

#[utoipa::path(post, path = "/v1/functions/{name}/invocations", tag = "invocations", summary = "Invoke without waiting",
    description = "202 at once with the invocation id and its status URL. The same `Idempotency-Key` for the same function returns the first invocation, never a second run. With `X-Callback-Url`, the result is POSTed there when done.",
    params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[allow(dead_code)]
fn invoke_async() {}

#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "invocations", summary = "List a function's invocations",
    description = "Newest first. `status` filters; `limit` sizes the page; `before` is the `next` of the previous page.",
    params(("name" = String, Path), ("status" = Option<String>, Query), ("limit" = Option<i64>, Query),
           ("before" = Option<Uuid>, Query)),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn list_invocations() {}

#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations", summary = "Read an invocation",
    description = "The invocation record: status, trigger, attempt, input, output, logs, exit code, timings and the worker that ran it.", params(("id" = String, Path)), responses(
    (status = 200, body = InvocationRecord), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_invocation() {}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", summary = "Make an API key",
    description = "Makes a key with a scope (`admin` or `invoke`). The key is shown only in this answer; Granda keeps only its hash.", request_body = NewKey, responses(
    (status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn create_key() {}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", summary = "List API keys",
    description = "Every key's id, name, scope and dates; never the key itself.", responses(
    (status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_keys() {}

#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", summary = "Revoke an API key",
    description = "The key stops working (within a second on every server).", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn revoke_key() {}

#[utoipa::path(get, path = "/healthz", tag = "system", summary = "Liveness",
    description = "200 while the process is up. Needs no key.", responses((status = 200, body = Health)), security(()))]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "system", summary = "Readiness",
    description = "200 when Postgres, RabbitMQ and (for `granda up`) the Docker engine answer; 503 naming the ones that don't. Needs no key.", responses((status = 200, body = Readiness), (status = 503, body = Readiness)), security(()))]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", tag = "system", summary = "Prometheus metrics",
    description = "This process's counters, gauges and histograms in the Prometheus text format (0.0.4). Needs an admin key.", responses(
    (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", tag = "system", summary = "This document",
    description = "The OpenAPI document of this API. Needs no key.", responses((status = 200, description = "this document")), security(()))]
#[allow(dead_code)]
fn openapi_json() {}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "invocations", summary = "List dead invocations",
    description = "Invocations whose retries are spent (status `dead`), newest first and paged like a function's invocations, with the depth of the broker's dead-letter queue.",
    params(("limit" = Option<i64>, Query), ("before" = Option<Uuid>, Query)),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn dead_letters() {}

#[utoipa::path(post, path = "/v1/invocations/{id}/retry", tag = "invocations", summary = "Run an invocation again",
    description = "Runs a failed, timed-out or dead invocation again as a new attempt with the function's current definition. 202 like an async invoke; 409 unless it is failed, timed out or dead with its whole input kept.", params(("id" = String, Path)), responses(
    (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[allow(dead_code)]
fn retry_invocation() {}

#[utoipa::path(post, path = "/v1/events/{topic}", tag = "events", summary = "Publish an event",
    description = "Publishes the body on the topic named in the path (for example `orders.created`): every function subscribed with a matching pattern gets its own invocation. 202 with the event id, its invocations and a status URL. An `Idempotency-Key` seen before returns the same event and runs nothing twice.", params(("topic" = String, Path, description = "the topic, dot-separated words (`orders.created`)"),
           ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[allow(dead_code)]
fn publish_event() {}

#[utoipa::path(get, path = "/v1/events/{topic}", tag = "events", summary = "Read an event",
    description = "Here the path segment is the event's id, as publishing returned it (the path is shared with publishing, whose segment is a topic). The event: its topic, its payload (capped like inputs) and the invocations it fanned out to.", params(("topic" = String, Path, description = "the event's id (the `id` that publishing returned)")), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_event() {}

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", summary = "Bind a webhook to a function",
    description = "Binds an incoming webhook to a function with a verification scheme: `github`, `stripe`, `standard` (Standard Webhooks), `hmac-sha256` (a named header) or `none`. 201 with the webhook, the URL to give the sender (`/hooks/{id}`) and, when Granda made it, its secret.", request_body = serde_json::Value, responses(
    (status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn create_webhook() {}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", summary = "List webhooks",
    description = "Every webhook, or one function's with `function`.", params(("function" = Option<String>, Query)), responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_webhooks() {}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", summary = "Read a webhook",
    description = "The webhook's function, scheme and URL; never its secret.", params(("id" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_webhook() {}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", summary = "Delete a webhook",
    description = "Later deliveries to its URL get 404.", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete_webhook() {}

#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", tag = "webhooks", summary = "Rotate a webhook's secret",
    description = "Sets a new secret (given, or made by Granda and shown once); the old one keeps verifying for `grace_seconds`.", params(("id" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn rotate_webhook() {}

#[utoipa::path(get, path = "/v1/webhooks/{id}/rejections", tag = "webhooks", summary = "Deliveries a webhook refused",
    description = "The newest deliveries (up to 50) the webhook refused, newest first: when, a stable `reason` (`missing_signature`, `malformed_signature`, `bad_signature`, `stale_timestamp`, `malformed_delivery`) and what the sender was told. At most 10 are written per webhook per 10 s; `granda_webhook_rejections_total` counts them all.", params(("id" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn webhook_rejections() {}

#[utoipa::path(post, path = "/hooks/{id}", tag = "webhooks", summary = "Deliver a webhook",
    description = "Where an external system sends its deliveries; give it the `url` of the webhook. No API key: the body is checked against the webhook's scheme, and a bad signature or a stale timestamp gets 401 and runs nothing. 202 at once, with the invocation (the function runs async); a delivery id seen before gets its first invocation back (header `idempotent-replayed: true`), not a second run.",
    params(("id" = String, Path, description = "the webhook's id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody, description = "a bad signature or a stale timestamp"),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(()))]
#[allow(dead_code)]
fn receive_hook() {}

#[utoipa::path(post, path = "/v1/functions/{name}/subscriptions", tag = "events", summary = "Subscribe a function to a topic pattern",
    description = "Body `{pattern}`: `*` matches one word, `#` zero or more (`orders.*`). Events published on a matching topic each start an invocation of the function. 409 if the function has the pattern already.", params(("name" = String, Path)),
    request_body = serde_json::Value, responses(
    (status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn subscribe() {}

#[utoipa::path(get, path = "/v1/functions/{name}/subscriptions", tag = "events", summary = "List a function's subscriptions",
    description = "The patterns the function is subscribed to.", params(("name" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn list_subscriptions() {}

#[utoipa::path(delete, path = "/v1/functions/{name}/subscriptions/{id}", tag = "events", summary = "Remove a subscription",
    description = "Events published after this no longer start the function.",
    params(("name" = String, Path), ("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn unsubscribe() {}

#[utoipa::path(get, path = "/v1/functions/{name}/callback-key", tag = "callbacks", summary = "Read a function's callback key", params(("name" = String, Path)),
    description = "The key the function's result callbacks are signed with (Standard Webhooks, `whsec_...`). Admin keys only.",
    responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_callback_key() {}

#[utoipa::path(post, path = "/v1/functions/{name}/callback-key", tag = "callbacks", summary = "Rotate a function's callback key", params(("name" = String, Path)),
    description = "Replaces the function's callback key and returns the new one; callbacks sent after this are signed with it.",
    responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn rotate_callback_key() {}

#[utoipa::path(get, path = "/v1/callbacks/key", tag = "callbacks", summary = "Old: the one callback key",
    description = "From when one key signed every callback. Always 404 now: each function has its own key, at `GET /v1/functions/{name}/callback-key`.",
    responses((status = 404, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[deprecated]
#[allow(dead_code)]
fn legacy_callback_key() {}
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", summary = "Make a schedule",
    description = "Runs a function on a cron pattern (5 or 6 fields, or `@hourly` and the like) in a time zone. Each tick fires once across all servers; the invocation's trigger is `schedule`.", request_body = NewSchedule, responses(
    (status = 201, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody, description = "a bad cron pattern or time zone, or no such function")))]
#[allow(dead_code)]
fn create_schedule() {}

#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", summary = "List schedules",
    description = "Every schedule, or one function's with `function`.", params(("function" = Option<String>, Query)), responses(
    (status = 200, body = ScheduleList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_schedules() {}

#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", summary = "Read a schedule",
    description = "The schedule, with its next fire times.", params(("id" = String, Path)), responses(
    (status = 200, body = ScheduleView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_schedule() {}

#[utoipa::path(put, path = "/v1/schedules/{id}", tag = "schedules", summary = "Update a schedule",
    description = "Changes the fields the body names; the others keep their values.", params(("id" = String, Path)), request_body = ScheduleUpdate,
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn update_schedule() {}

#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", summary = "Delete a schedule",
    description = "No tick fires after this.", params(("id" = String, Path)), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete_schedule() {}

/// `GET /v1/invocations`: invocations of every function, newest first, with filters.
#[utoipa::path(get, path = "/v1/invocations",
    summary = "List invocations across functions",
    description = "Newest first. `since` (RFC 3339) keeps those queued at or after it; `before` and `after` (invocation ids) page older or newer; `next` is the `before` of the next page.",
    tag = "invocations",
    params(("function" = Option<String>, Query), ("status" = Option<String>, Query),
           ("trigger" = Option<String>, Query), ("since" = Option<String>, Query),
           ("before" = Option<Uuid>, Query), ("after" = Option<Uuid>, Query), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_all_invocations() {}

/// `GET /v1/functions/{name}/builds/{version}`: one build from source, with its log.
#[utoipa::path(get, path = "/v1/functions/{name}/builds/{version}",
    summary = "Read one build and its log",
    description = "A build of a function from source: its status, image, times and the stored build log; `current` when the function runs its image.",
    tag = "functions",
    params(("name" = String, Path), ("version" = i32, Path)),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_build() {}

/// `POST /v1/functions/{name}/rollback`: run an earlier build again.
#[utoipa::path(post, path = "/v1/functions/{name}/rollback",
    summary = "Roll back to an earlier version",
    description = "The function runs the image of its successful build `version` from now on (checked like any new image), with that version and runtime; its other fields stay. 404 when the function has no such build; 409 when that build failed or is still building.",
    tag = "functions",
    params(("name" = String, Path)), request_body = Rollback,
    responses((status = 200, body = FunctionView), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn rollback() {}
