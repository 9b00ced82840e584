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
pub(crate) struct EventPublished {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    /// One per subscribed function.
    pub(crate) invocations: Vec<FannedOut>,
    /// Where to read the event (`GET /v1/events/{id}`).
    pub(crate) status_url: String,
}

/// `GET /v1/events/{id}`: an event as stored.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct EventView {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    /// The payload's size in bytes.
    pub(crate) size: i64,
    pub(crate) content_type: Option<String>,
    pub(crate) invocations: Vec<FannedOut>,
    pub(crate) published_at: DateTime<Utc>,
    /// The payload kept (up to the cap), when it is UTF-8; else `null`.
    pub(crate) payload: Option<String>,
    /// The payload, when it is not UTF-8.
    pub(crate) payload_base64: Option<String>,
}

/// Where a build is.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum BuildStatus {
    Building,
    Succeeded,
    Failed,
}

/// `GET /v1/functions/{name}/builds/{version}`: one build and its log.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BuildView {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) version: i32,
    pub(crate) runtime: String,
    pub(crate) image: String,
    pub(crate) status: BuildStatus,
    /// A digest of the source it was built from (none for old builds).
    pub(crate) source_digest: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    /// The build log as stored.
    pub(crate) log: String,
    /// The function runs this build's image.
    pub(crate) current: bool,
}

/// A function's callback key (`GET`/`POST /v1/functions/{name}/callback-key`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct CallbackKey {
    pub(crate) function: String,
    /// `whsec_...`.
    pub(crate) key: String,
    /// Always `standard-webhooks`.
    pub(crate) scheme: String,
    /// What the signature covers: `{webhook-id}.{webhook-timestamp}.{body}`.
    pub(crate) signed: String,
}

/// `GET /v1/functions/{name}/subscriptions`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SubscriptionList {
    pub(crate) subscriptions: Vec<Subscription>,
}

/// `GET /v1/webhooks/{id}/rejections`, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct RejectionList {
    pub(crate) rejections: Vec<Rejection>,
}

/// One line of a build streamed as NDJSON (`Accept: application/x-ndjson` on
/// `POST /v1/functions` or `PUT /v1/functions/{name}` with `runtime` and `source`): `{log}` lines
/// as the engine writes them, then one last line with `status` and either `function` or `error`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BuildStreamLine {
    /// Some build output.
    pub(crate) log: Option<String>,
    /// The last line: the status the plain request would have answered (201, 200 or an error's).
    pub(crate) status: Option<u16>,
    /// The last line, on success.
    pub(crate) function: Option<super::function_view::FunctionView>,
    /// The last line, on failure.
    pub(crate) error: Option<crate::error::ErrorDetail>,
}
