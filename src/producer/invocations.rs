//! Reading invocation records: one by id, a function's, or all of them with filters
//! (`GET /v1/invocations`), newest first, paged by id (ids are UUIDv7, so id order is queue order).

use super::invoke::Accepted;
use crate::error::{Denied, ErrorBody};
use crate::invocation::{InvocationList, InvocationView};
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;

use super::extract::{Path, Query};
use axum::extract::State;
use axum::response::Response;
use axum::{Extension, Json};
use uuid::Uuid;

use super::AppState;
use super::auth::{Acting, Action, Caller, permits};
use crate::error::ApiError;
use crate::invocation::search::{self, Filters};
use crate::invocation::{Status, Trigger, store};
use crate::message::Work;

/// Invocations whose retries are spent, and the depth of the broker's dead-letter queue (null
/// when the broker can't be asked).
#[derive(Serialize, ToSchema)]
pub(crate) struct DeadLetterList {
    pub(crate) dead_letters: Vec<InvocationView>,
    /// The `before` of the next page; null on the last.
    pub(crate) next: Option<Uuid>,
    pub(crate) queue_depth: Option<u32>,
}

pub(crate) const DEFAULT_PAGE: i64 = 50;
pub(crate) const MAX_PAGE: i64 = 500;

/// `GET /v1/invocations/{id}`. The callback's state is shown to every caller, its URL only to
/// keys that may read functions (a function's default callback URL is part of its definition,
/// which an `invoke` key does not see).
#[utoipa::path(get, path = "/v1/invocations/{id}", operation_id = "get_invocation", tag = "invocations", summary = "Read an invocation",
    description = "The invocation record: status, trigger, attempt, input, output, logs, exit code, timings and the worker that ran it; `attempts`, each attempt's worker, times, status and error.", params(("id" = Uuid, Path)), responses((status = 200, body = InvocationView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
    Extension(acting): Extension<Acting>,
) -> Result<Json<InvocationView>, ApiError> {
    let id = parse_id(&id)?;
    // The callback's part first: a callback ends only once the record is final, so the record
    // read after it is never behind it (no view of a callback done for a run still going).
    let callback = crate::callback::state(&app.pool, id).await?;
    let record = load_in(&app, &acting, id).await?;
    let attempts = crate::invocation::attempts::load(&app.pool, &record).await?;
    let mut view = InvocationView::from(record);
    view.attempts = Some(attempts);
    if let Some(mut callback) = callback {
        // Without the auth middleware's word, the least: no URL.
        let sees_url = caller.is_some_and(
            |Extension(c)| matches!(c, Caller::Key(scope) if permits(scope, Action::ReadFunctions)),
        );
        if !sees_url && let Some(fields) = callback.as_object_mut() {
            fields.remove("url");
        }
        view.callback = Some(callback);
    }
    view.kept_until =
        crate::retention::kept_until(&app.pool, crate::retention::Policy::of(&app.settings), id)
            .await?;
    Ok(Json(view))
}

/// `GET /v1/functions/{name}/invocations?status=&limit=&before=`; `next` is the `before` of the next page.
#[utoipa::path(get, path = "/v1/functions/{name}/invocations", operation_id = "list_invocations", tag = "invocations", summary = "List a function's invocations",
    description = "Newest first. `status` filters; `limit` sizes the page; `before` is the `next` of the previous page.",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("status" = Option<Status>, Query), ("limit" = Option<i64>, Query, minimum = 1, maximum = 500),
           ("before" = Option<Uuid>, Query)),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<InvocationList>, ApiError> {
    let stored = acting.function(&name);
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be one of queued, running, succeeded, failed, timed_out, dead, cancelled; not {s:?}"
            ))
        })?),
    };
    let limit = page_limit(&query)?;
    let before = match query.get("before").map(String::as_str) {
        None | Some("") => None,
        Some(b) => Some(parse_id(b)?),
    };
    let records = store::list(&app.pool, &stored, status, before, limit).await?;
    if records.is_empty()
        && crate::function::store::get(&app.pool, &stored)
            .await?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("no function named {name:?}")));
    }
    Ok(Json(InvocationList::page(records, limit)))
}

/// `GET /v1/invocations?function=&status=&trigger=&since=&before=&after=&key_id=&limit=`:
/// invocations of every function, newest first; `key_id` keeps those one API key made. `since` (RFC 3339) keeps those queued at or after it; `before`
/// and `after` (invocation ids) keep those older or newer than one; `next` is the `before` of the
/// next page. An unknown function is an empty list, not a 404 (it may have been deleted).
#[utoipa::path(get, path = "/v1/invocations", operation_id = "list_all_invocations",
    summary = "List invocations across functions",
    description = "Newest first. `since` (RFC 3339) keeps those queued at or after it; `before` and `after` (invocation ids) page older or newer; `key_id` keeps those one API key made; `next` is the `before` of the next page.",
    tag = "invocations",
    params(("function" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("status" = Option<Status>, Query),
           ("trigger" = Option<Trigger>, Query), ("since" = Option<chrono::DateTime<chrono::Utc>>, Query),
           ("before" = Option<Uuid>, Query), ("after" = Option<Uuid>, Query), ("key_id" = Option<Uuid>, Query), ("limit" = Option<i64>, Query, minimum = 1, maximum = 500)),
    responses((status = 200, body = InvocationList), (status = 400, body = ErrorBody), Denied))]
pub(crate) async fn list_all(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<InvocationList>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| {
        ![
            "function", "status", "trigger", "since", "before", "after", "limit", "key_id",
        ]
        .contains(&k.as_str())
    }) {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {unknown:?}; the filters are function, status, trigger, since, before, after, key_id, limit"
        )));
    }
    let mut filters = filters(&query)?;
    filters.function = filters.function.map(|f| acting.function(&f));
    filters.namespace = Some(acting.namespace.to_string());
    let limit = page_limit(&query)?;
    let records = search::list(&app.pool, &filters, limit).await?;
    Ok(Json(InvocationList::page(records, limit)))
}

/// The filters of `GET /v1/invocations` (and of the dashboard's list), checked; an empty value is
/// no filter.
pub(crate) fn filters(query: &HashMap<String, String>) -> Result<Filters, ApiError> {
    let given = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    Ok(Filters {
        namespace: None,
        function: given("function").map(str::to_string),
        status: given("status").map(parse_status).transpose()?,
        trigger: given("trigger")
            .map(|t| {
                Trigger::parse(t).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "trigger must be one of sync, async, webhook, event, schedule; not {t:?}"
                    ))
                })
            })
            .transpose()?,
        since: given("since")
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "since must be an RFC 3339 time such as 2026-01-31T12:00:00Z; not {t:?}"
                        ))
                    })
            })
            .transpose()?,
        before: given("before").map(parse_id).transpose()?,
        after: given("after").map(parse_id).transpose()?,
        key_id: given("key_id")
            .map(|k| {
                Uuid::parse_str(k)
                    .map_err(|_| ApiError::BadRequest(format!("key_id: {k:?} is not a key id")))
            })
            .transpose()?,
    })
}

fn parse_status(s: &str) -> Result<Status, ApiError> {
    Status::parse(s).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "status must be one of queued, running, succeeded, failed, timed_out, dead, cancelled; not {s:?}"
        ))
    })
}

pub(crate) fn parse_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::BadRequest(format!("{s:?} is not an invocation id")))
}

/// `GET /v1/dead-letters?limit=&before=`: invocations whose retries are spent, newest first,
/// with the depth of the broker's dead-letter queue.
#[utoipa::path(get, path = "/v1/dead-letters", operation_id = "dead_letters", tag = "invocations", summary = "List dead invocations",
    description = "Invocations whose retries are spent (status `dead`), newest first and paged like a function's invocations, with the depth of the broker's dead-letter queue.",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 500), ("before" = Option<Uuid>, Query)),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody), Denied))]
pub(crate) async fn dead_letters(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = page_limit(&query)?;
    let before = match query.get("before").map(String::as_str) {
        None | Some("") => None,
        Some(b) => Some(parse_id(b)?),
    };
    let records =
        store::list_dead(&app.pool, Some(acting.namespace.as_str()), before, limit).await?;
    let page = InvocationList::page(records, limit);
    // The broker's queue is the installation's: only global keys see its depth.
    let queue_depth = if acting.bound {
        None
    } else {
        app.publisher.dead_letter_depth().await.ok()
    };
    Ok(Json(DeadLetterList {
        dead_letters: page.invocations,
        next: page.next,
        queue_depth,
    }))
}

/// `POST /v1/invocations/{id}/retry`: runs a failed, timed out or dead invocation again as a new
/// attempt, with the function's current definition. 202 like an async invoke.
#[tracing::instrument(skip_all, fields(%id))]
#[utoipa::path(post, path = "/v1/invocations/{id}/retry", operation_id = "retry_invocation", tag = "invocations", summary = "Run an invocation again",
    description = "Runs a failed, timed-out or dead invocation again as a new attempt with the function's current definition. 202 like an async invoke; 409 unless it is failed, timed out or dead with its whole input kept.", params(("id" = Uuid, Path)), responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), Denied))]
pub(crate) async fn retry(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    load_in(&app, &acting, id).await?;
    retry_one(&app, id).await?;
    Ok(super::invoke::accepted(&app, id, Status::Queued))
}

/// `DELETE /v1/dead-letters/{id}`: discards a dead invocation for good. It leaves the dead
/// letters and can no longer be retried; its record stays, with `discarded_at`.
#[tracing::instrument(skip_all, fields(%id))]
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", operation_id = "discard_dead_letter", tag = "invocations", summary = "Discard a dead invocation",
    description = "Settles a dead invocation for good: it leaves the dead letters (`GET /v1/dead-letters`) and can't be retried; its record stays, with `discarded_at`. 204; 404 when there is no such invocation; 409 unless it is dead and not discarded yet.", params(("id" = Uuid, Path)), responses((status = 204, description = "Discarded"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), Denied))]
pub(crate) async fn discard(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let id = parse_id(&id)?;
    load_in(&app, &acting, id).await?;
    discard_one(&app, id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Discards dead invocation `id` (the API's discard and the dashboard's): 404 when there is no
/// such invocation, 409 when it is not dead or was discarded already.
pub(crate) async fn discard_one(app: &AppState, id: Uuid) -> Result<(), ApiError> {
    if store::discard_dead(&app.pool, id).await? {
        return Ok(());
    }
    let current = store::get(&app.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no invocation {id}")))?;
    Err(ApiError::Conflict(match current.discarded_at {
        Some(at) => format!("invocation {id} was discarded already, at {at}"),
        None => format!(
            "invocation {id} is {}; only a dead invocation can be discarded",
            current.status
        ),
    }))
}

/// Queues invocation `id` again as a new attempt (the API's retry and the dashboard's): 404 when
/// there is no such invocation, 409 when it is not failed, timed out or dead with its whole input.
pub(crate) async fn retry_one(app: &AppState, id: Uuid) -> Result<(), ApiError> {
    let current = store::get(&app.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no invocation {id}")))?;
    if let Some(at) = current.discarded_at {
        return Err(ApiError::Conflict(format!(
            "invocation {id} was discarded at {at}; a discarded invocation can't be retried"
        )));
    }
    let function = super::functions::load(app, &current.function).await?;
    let record = store::reset_for_retry(&app.pool, id).await?.ok_or_else(|| {
        ApiError::Conflict(format!(
            "invocation {id} is {}; only failed, timed_out or dead invocations whose whole input was kept can be retried",
            current.status
        ))
    })?;
    // The invocation's own env (a webhook's, an event's) goes with the retry too.
    let env = store::extra_env(&app.pool, id).await?;
    let trigger = record.trigger;
    let work = Work::queued(id, trigger, &function, &env);
    let input = record.input.clone().unwrap_or_default();
    if let Err(e) = app.publisher.publish(&function.queue, &work, &input).await {
        // Not confirmed: put the record back as it was, so the retry can be asked again.
        sqlx::query("UPDATE invocations SET status = $2, published_at = now() WHERE id = $1 AND status = 'queued'")
            .bind(id)
            .bind(current.status)
            .execute(&app.pool)
            .await?;
        return Err(e.into());
    }
    store::mark_published(&app.pool, id).await?;
    Ok(())
}

/// Invocation `id` if it is in the caller's namespace; 404 alike for a missing one and another
/// namespace's.
pub(crate) async fn load_in(
    app: &AppState,
    acting: &Acting,
    id: Uuid,
) -> Result<crate::invocation::Record, ApiError> {
    store::get(&app.pool, id)
        .await?
        .filter(|r| acting.holds(&r.function))
        .ok_or_else(|| ApiError::NotFound(format!("no invocation {id}")))
}

pub(crate) fn page_limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}
