//! Schemas of the answers that handlers write as JSON values (`json!`) rather than as a
//! serialized type: the OpenAPI document names these so that a generated client reads typed
//! fields. Each mirrors what its handler writes, field for field; tests/it/sdk.rs drives them
//! through a client generated from `/openapi.json`, which fails on a missing or mistyped field.

use chrono::{DateTime, Utc};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::event::{FannedOut, Subscription};
use crate::webhook::rejections::Rejection;

/// 202 to `POST /v1/events/{topic}`: the event and the invocations it started.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventPublished {
    pub id: Uuid,
    pub topic: String,
    /// One per subscribed function.
    pub invocations: Vec<FannedOut>,
    /// Where to read the event (`GET /v1/events/{id}`).
    pub status_url: String,
}

/// `GET /v1/events/{id}`: an event as stored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventView {
    pub id: Uuid,
    pub topic: String,
    /// The payload's size in bytes.
    pub size: i64,
    pub content_type: Option<String>,
    pub invocations: Vec<FannedOut>,
    pub published_at: DateTime<Utc>,
    /// The payload kept (up to the cap), when it is UTF-8; else `null`.
    pub payload: Option<String>,
    /// The payload, when it is not UTF-8.
    pub payload_base64: Option<String>,
}

/// Where a build is.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum BuildStatus {
    Building,
    Succeeded,
    Failed,
}

/// `GET /v1/functions/{name}/builds/{version}`: one build and its log.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BuildView {
    pub id: Uuid,
    pub function: String,
    pub version: i32,
    pub runtime: String,
    pub image: String,
    pub status: BuildStatus,
    /// A digest of the source it was built from (none for old builds).
    pub source_digest: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The build log as stored.
    pub log: String,
    /// The function runs this build's image.
    pub current: bool,
}

/// A function's callback key (`GET`/`POST /v1/functions/{name}/callback-key`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CallbackKey {
    pub function: String,
    /// `whsec_...`.
    pub key: String,
    /// Always `standard-webhooks`.
    pub scheme: String,
    /// What the signature covers: `{webhook-id}.{webhook-timestamp}.{body}`.
    pub signed: String,
}

/// `GET /v1/functions/{name}/subscriptions`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SubscriptionList {
    pub subscriptions: Vec<Subscription>,
}

/// `GET /v1/webhooks/{id}/rejections`, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RejectionList {
    pub rejections: Vec<Rejection>,
}

/// One line of a build streamed as NDJSON (`Accept: application/x-ndjson` on
/// `POST /v1/functions` or `PUT /v1/functions/{name}` with `runtime` and `source`): `{log}` lines
/// as the engine writes them, then one last line with `status` and either `function` or `error`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BuildStreamLine {
    /// Some build output.
    pub log: Option<String>,
    /// The last line: the status the plain request would have answered (201, 200 or an error's).
    pub status: Option<u16>,
    /// The last line, on success.
    pub function: Option<super::function_view::FunctionView>,
    /// The last line, on failure.
    pub error: Option<crate::error::ErrorDetail>,
}
