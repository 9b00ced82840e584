//! `/openapi.json`: the OpenAPI document of the whole API. Request and response schemas are
//! derived (utoipa) from the types the handlers read and write; the operations are declared
//! here, next to the router, and tests/it/openapi.rs checks that every one is routed.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use super::functions::{FunctionList, FunctionView};
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
    pub cpu_ms: Option<i64>,
    pub max_memory_bytes: Option<i64>,
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

#[derive(OpenApi)]
#[openapi(
    info(title = "Granda", description = "Self-hosted serverless functions on Docker, RabbitMQ and Postgres."),
    paths(
        create_function, list_functions, get_function, update_function, delete_function,
        invoke_sync, invoke_url, invoke_async, list_invocations, get_invocation,
        create_key, list_keys, revoke_key, healthz, readyz, metrics, openapi_json,
        dead_letters, retry_invocation, publish_event, get_event, create_webhook, list_webhooks,
        get_webhook, delete_webhook, rotate_webhook, subscribe, list_subscriptions, unsubscribe,
        get_callback_key, rotate_callback_key,
        create_schedule, list_schedules, get_schedule, update_schedule, delete_schedule,
        list_all_invocations, get_build
    ),
    components(schemas(
        Function, FunctionView, FunctionList, NewFunction, FunctionUpdate, SecretsUpdate,
        InputMode, Network, ErrorBody, ErrorDetail, Accepted, InvocationRecord, InvocationList,
        NewKey, ApiKey, KeyCreated, KeyList, Scope, Health, Readiness, NewSchedule, ScheduleUpdate,
        ScheduleView, ScheduleList, CatchUp
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

// The operations. These functions are never called: they carry the documentation.

#[utoipa::path(post, path = "/v1/functions", request_body = NewFunction, responses(
    (status = 201, body = FunctionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn create_function() {}

#[utoipa::path(get, path = "/v1/functions", responses(
    (status = 200, body = FunctionList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_functions() {}

#[utoipa::path(get, path = "/v1/functions/{name}", params(("name" = String, Path)), responses(
    (status = 200, body = FunctionView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_function() {}

#[utoipa::path(put, path = "/v1/functions/{name}", params(("name" = String, Path)), request_body = FunctionUpdate, responses(
    (status = 200, body = FunctionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn update_function() {}

#[utoipa::path(delete, path = "/v1/functions/{name}", params(("name" = String, Path)), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete_function() {}

#[utoipa::path(post, path = "/v1/functions/{name}/invoke", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
    (status = 200, description = "the function's stdout", content_type = "application/octet-stream", body = Vec<u8>),
    (status = 202, body = Accepted, description = "still running after the sync wait"),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 413, body = ErrorBody), (status = 502, body = ErrorBody, description = "the function failed"),
    (status = 504, body = ErrorBody, description = "the function timed out")))]
#[allow(dead_code)]
fn invoke_sync() {}

#[utoipa::path(post, path = "/fn/{name}", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
    (status = 200, description = "the function's stdout", content_type = "application/octet-stream", body = Vec<u8>),
    (status = 202, body = Accepted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 502, body = ErrorBody),
    (status = 504, body = ErrorBody)),
    security((), ("bearer" = [])))]
#[allow(dead_code)]
fn invoke_url() {}

#[utoipa::path(post, path = "/v1/functions/{name}/invocations",
    params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[allow(dead_code)]
fn invoke_async() {}

#[utoipa::path(get, path = "/v1/functions/{name}/invocations",
    params(("name" = String, Path), ("status" = Option<String>, Query), ("limit" = Option<i64>, Query),
           ("before" = Option<Uuid>, Query)),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn list_invocations() {}

#[utoipa::path(get, path = "/v1/invocations/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = InvocationRecord), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_invocation() {}

#[utoipa::path(post, path = "/v1/keys", request_body = NewKey, responses(
    (status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn create_key() {}

#[utoipa::path(get, path = "/v1/keys", responses(
    (status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_keys() {}

#[utoipa::path(delete, path = "/v1/keys/{id}", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn revoke_key() {}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)), security(()))]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Readiness), (status = 503, body = Readiness)), security(()))]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "this document")), security(()))]
#[allow(dead_code)]
fn openapi_json() {}

#[utoipa::path(get, path = "/v1/dead-letters",
    params(("limit" = Option<i64>, Query), ("before" = Option<Uuid>, Query)),
    responses((status = 200, body = serde_json::Value), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn dead_letters() {}

#[utoipa::path(post, path = "/v1/invocations/{id}/retry", params(("id" = String, Path)), responses(
    (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[allow(dead_code)]
fn retry_invocation() {}

#[utoipa::path(post, path = "/v1/events/{topic}", params(("topic" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = serde_json::Value), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[allow(dead_code)]
fn publish_event() {}

#[utoipa::path(get, path = "/v1/events/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_event() {}

#[utoipa::path(post, path = "/v1/webhooks", request_body = serde_json::Value, responses(
    (status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn create_webhook() {}

#[utoipa::path(get, path = "/v1/webhooks", params(("function" = Option<String>, Query)), responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_webhooks() {}

#[utoipa::path(get, path = "/v1/webhooks/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_webhook() {}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", params(("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete_webhook() {}

#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", params(("id" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn rotate_webhook() {}

#[utoipa::path(post, path = "/v1/functions/{name}/subscriptions", params(("name" = String, Path)),
    request_body = serde_json::Value, responses(
    (status = 201, body = serde_json::Value), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn subscribe() {}

#[utoipa::path(get, path = "/v1/functions/{name}/subscriptions", params(("name" = String, Path)), responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn list_subscriptions() {}

#[utoipa::path(delete, path = "/v1/functions/{name}/subscriptions/{id}",
    params(("name" = String, Path), ("id" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn unsubscribe() {}

#[utoipa::path(get, path = "/v1/functions/{name}/callback-key", params(("name" = String, Path)),
    description = "The key the function's result callbacks are signed with (Standard Webhooks, `whsec_...`). Admin keys only.",
    responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_callback_key() {}

#[utoipa::path(post, path = "/v1/functions/{name}/callback-key", params(("name" = String, Path)),
    description = "Replaces the function's callback key and returns the new one; callbacks sent after this are signed with it.",
    responses(
    (status = 200, body = serde_json::Value), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn rotate_callback_key() {}
#[utoipa::path(post, path = "/v1/schedules", request_body = NewSchedule, responses(
    (status = 201, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody, description = "a bad cron pattern or time zone, or no such function")))]
#[allow(dead_code)]
fn create_schedule() {}

#[utoipa::path(get, path = "/v1/schedules", params(("function" = Option<String>, Query)), responses(
    (status = 200, body = ScheduleList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[allow(dead_code)]
fn list_schedules() {}

#[utoipa::path(get, path = "/v1/schedules/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = ScheduleView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn get_schedule() {}

#[utoipa::path(put, path = "/v1/schedules/{id}", params(("id" = String, Path)), request_body = ScheduleUpdate,
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody),
    (status = 422, body = ErrorBody)))]
#[allow(dead_code)]
fn update_schedule() {}

#[utoipa::path(delete, path = "/v1/schedules/{id}", params(("id" = String, Path)), responses(
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
