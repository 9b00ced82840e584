//! Cancelling an invocation (`POST /v1/invocations/{id}/cancel`, and the dashboard's Cancel
//! button): a `queued` one is recorded `cancelled` at once and never runs (the worker that gets
//! its message finds it final and acks it); a `running` one is recorded `cancelled` and its worker,
//! told through Postgres (`LISTEN granda_cancel`, see `crate::worker`'s cancel listener), kills its
//! container (or its kept warm/hot container, replaced by the pool) and answers a sync caller.
//! An ended one is a 409 naming its status.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::AppState;
use super::auth::Acting;
use super::extract::Path;
use super::invocations::{load_in, parse_id};
use crate::error::{ApiError, Denied, ErrorBody};
use crate::invocation::{InvocationView, Status, store};
use crate::metrics::label;

/// Why an invocation was not cancelled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CancelError {
    #[error("no invocation {0}")]
    Unknown(Uuid),
    /// It ended before the cancel: its status.
    #[error(
        "invocation {id} is {status} already; only queued or running invocations can be cancelled"
    )]
    Ended { id: Uuid, status: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> ApiError {
        match e {
            CancelError::Unknown(_) => ApiError::NotFound(e.to_string()),
            CancelError::Ended { .. } => ApiError::Conflict(e.to_string()),
            CancelError::Db(e) => e.into(),
        }
    }
}

/// The answer to a cancel that found the invocation ended: 409 with its status in the body.
fn ended(id: Uuid, status: String) -> Response {
    let message = CancelError::Ended {
        id,
        status: status.clone(),
    }
    .to_string();
    let mut body = ErrorBody::new("conflict", message);
    body.error.invocation_id = Some(id);
    body.error.status = Some(status);
    (StatusCode::CONFLICT, axum::Json(body)).into_response()
}

/// Who asked, as the record keeps it: `key <name> (<id>)`, or `admin` with `GRANDA_AUTH=off`.
/// A dashboard session is `session of key …` (or `session` without auth).
pub(crate) async fn who(app: &AppState, key_id: Option<Uuid>, session: bool) -> String {
    let key = match key_id {
        Some(id) => {
            let name: Option<String> =
                sqlx::query_scalar("SELECT name FROM api_keys WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&app.pool)
                    .await
                    .ok()
                    .flatten();
            Some(match name {
                Some(name) => format!("key {name} ({id})"),
                None => format!("key {id}"),
            })
        }
        None => None,
    };
    match (session, key) {
        (false, Some(key)) => key,
        (false, None) => "admin".into(),
        (true, Some(key)) => format!("session of {key}"),
        (true, None) => "session".into(),
    }
}

/// Cancels invocation `id` for `by` (the API's and the dashboard's): the record as it is now.
#[tracing::instrument(skip(app))]
pub(crate) async fn cancel_one(
    app: &AppState,
    id: Uuid,
    by: &str,
) -> Result<crate::invocation::Record, CancelError> {
    match store::cancel(&app.pool, id, by).await? {
        Some((was, worker)) => {
            tracing::info!(
                was = was.as_str(),
                worker = worker.as_deref().unwrap_or(""),
                by,
                "cancelled"
            );
            let record = store::get(&app.pool, id)
                .await?
                .ok_or(CancelError::Unknown(id))?;
            app.metrics.inc(
                "granda_invocations_total",
                format!(
                    "function=\"{}\",status=\"{}\"",
                    label(&record.function),
                    Status::Cancelled.as_str()
                ),
            );
            Ok(record)
        }
        None => match store::get(&app.pool, id).await? {
            Some(record) => Err(CancelError::Ended {
                id,
                status: record.status.as_str().to_string(),
            }),
            None => Err(CancelError::Unknown(id)),
        },
    }
}

/// `POST /v1/invocations/{id}/cancel`.
#[utoipa::path(post, path = "/v1/invocations/{id}/cancel", operation_id = "cancel_invocation", tag = "invocations", summary = "Cancel an invocation",
    description = "A queued invocation (a retry waiting included) is recorded `cancelled` at once and never runs. A running one is recorded `cancelled` and its worker kills its container within a second or two (a warm or hot function's kept container is replaced); it is never retried. A sync caller waiting on it is answered 409 with `X-Granda-Status: cancelled`; its callback, if any, is sent with `status: \"cancelled\"`. The record notes who asked (`cancelled_by`) and when (`finished_at`). 409 with the current `status` in the error when it has ended already.",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = InvocationView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), Denied))]
pub(crate) async fn cancel(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    // Another namespace's invocation is no invocation.
    load_in(&app, &acting, id).await?;
    let by = who(&app, acting.key_id, false).await;
    match cancel_one(&app, id, &by).await {
        Ok(record) => Ok(axum::Json(InvocationView::from(record)).into_response()),
        Err(CancelError::Ended { id, status }) => Ok(ended(id, status)),
        Err(e) => Err(e.into()),
    }
}
