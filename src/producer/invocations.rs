//! Reading invocation records: one by id, or a function's, newest first, paged.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use crate::error::ApiError;
use crate::invocation::{Status, store};

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 500;

pub async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let record = store::get(&app.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no invocation {id}")))?;
    let mut view = record.to_json();
    if let Some(callback) = crate::callback::state(&app.pool, id).await? {
        view["callback"] = callback;
    }
    Ok(Json(view))
}

/// `GET /v1/functions/{name}/invocations?status=&limit=&before=`; `next` is the `before` of the next page.
pub async fn list(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status must be one of queued, running, succeeded, failed, timed_out, dead; not {s:?}"
            ))
        })?),
    };
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")))?,
    };
    let before = match query.get("before").map(String::as_str) {
        None | Some("") => None,
        Some(b) => Some(parse_id(b)?),
    };
    let records = store::list(&app.pool, &name, status, before, limit).await?;
    if records.is_empty()
        && crate::function::store::get(&app.pool, &name)
            .await?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("no function named {name:?}")));
    }
    let next = (records.len() as i64 == limit)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    let invocations: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
    Ok(Json(json!({"invocations": invocations, "next": next})))
}

fn parse_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::BadRequest(format!("{s:?} is not an invocation id")))
}
