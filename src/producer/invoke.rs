//! Invoking functions: sync (`/v1/functions/{name}/invoke`, `/fn/{name}`), which waits for the
//! result over a reply-to queue, and async (`/v1/functions/{name}/invocations`), which answers 202.
//!
//! Both write the `queued` record first, then publish with publisher confirms; neither answers
//! 2xx for an invocation the broker did not confirm.
//!
//! An anonymous caller (a public function's URL without a live key) of a run that did not
//! succeed gets its status, exit code and invocation id, never its stderr tail or the platform's
//! error text (`detail`); a caller with a key keeps them.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::enqueue::{Job, enqueue};
use super::extract::RawBody;
use super::functions::load_for_call;
use crate::error::ApiError;
use crate::invocation::{Status, Trigger};
use crate::message::Reply;

pub const HEADER_ID: &str = "x-granda-invocation-id";
pub const HEADER_STATUS: &str = "x-granda-status";
pub const HEADER_DURATION: &str = "x-granda-duration-ms";
pub const HEADER_EXIT_CODE: &str = "x-granda-exit-code";
const CALLBACK_URL: &str = "x-callback-url";

/// `POST /v1/functions/{name}/invoke` and `POST /fn/{name}`.
#[tracing::instrument(skip_all, fields(%name))]
pub async fn sync(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // Without the auth middleware's word, the least: anonymous.
    let detail = caller.is_some_and(|Extension(c)| c.is_authenticated());
    let function = load_for_call(&app, &name).await?;
    let wait = app.settings.sync_wait();
    let job = Job {
        reply: Some(wait),
        ..Job::new(Trigger::Sync, &body)
    };
    let queued = enqueue(&app, &function, job).await?;
    let id = queued.id;
    Ok(match queued.reply {
        Some(reply) => reply_response(id, reply, detail),
        None => accepted(&app, id, Status::Queued),
    })
}

/// `POST /v1/functions/{name}/invocations`.
#[tracing::instrument(skip_all, fields(%name))]
pub async fn r#async(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = super::extract::idempotency_key(&headers)?;
    let callback_url = match headers.get(CALLBACK_URL) {
        None => None,
        Some(v) => {
            let url = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("X-Callback-Url must be visible ASCII".into()))?;
            crate::callback::check_target(url, &app.settings.callback_allow_nets)
                .await
                .map_err(|e| ApiError::BadRequest(format!("X-Callback-Url: {e}")))?;
            Some(url)
        }
    };
    let function = load_for_call(&app, &name).await?;
    let job = Job {
        idempotency_key: key,
        callback_url,
        ..Job::new(Trigger::Async, &body)
    };
    let queued = enqueue(&app, &function, job).await?;
    let id = queued.id;
    let mut response = accepted(&app, id, Status::Queued);
    if !queued.new {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// 202 with where to find the invocation's record.
pub(crate) fn accepted(app: &AppState, id: Uuid, status: Status) -> Response {
    let status_url = format!("{}/v1/invocations/{id}", app.settings.public_url());
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": status.as_str(), "status_url": status_url})),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(HEADER_ID, header_value(&id.to_string()));
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// The HTTP answer for a finished run: stdout on success, a JSON error otherwise; the error's
/// `detail` (stderr tail or platform error) only when `detail` (the caller has a key).
fn reply_response(id: Uuid, reply: Reply, detail: bool) -> Response {
    let mut response = match reply.status {
        Status::Succeeded => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            reply.output,
        )
            .into_response(),
        status => {
            let (code, http, message) = match status {
                Status::TimedOut => (
                    "function_timed_out",
                    StatusCode::GATEWAY_TIMEOUT,
                    "the function timed out".to_string(),
                ),
                _ => match reply.exit_code {
                    Some(code) => (
                        "function_failed",
                        StatusCode::BAD_GATEWAY,
                        format!("the function exited with code {code}"),
                    ),
                    None => (
                        "platform_error",
                        StatusCode::BAD_GATEWAY,
                        "the function could not be run".to_string(),
                    ),
                },
            };
            let body = json!({"error": {
                "code": code,
                "message": message,
                "invocation_id": id,
                "status": status.as_str(),
                "exit_code": reply.exit_code,
                "detail": if detail { reply.error } else { None },
            }});
            (http, Json(body)).into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(HEADER_ID, header_value(&id.to_string()));
    headers.insert(HEADER_STATUS, header_value(reply.status.as_str()));
    if let Some(ms) = reply.duration_ms {
        headers.insert(HEADER_DURATION, header_value(&ms.to_string()));
    }
    if let Some(code) = reply.exit_code {
        headers.insert(HEADER_EXIT_CODE, header_value(&code.to_string()));
    }
    response
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
