//! `/v1/namespaces`: make, list, read, change and delete namespaces and their quotas. Global
//! admin keys only: to a key bound to a namespace these routes do not exist (404).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::auth::Acting;
use super::extract::{JsonBody, Path, Query};
use crate::error::{ApiError, Denied, ErrorBody};
use crate::namespace::{self, DeleteError, Namespace, Quotas, Stored};

/// The body of `POST /v1/namespaces`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewNamespace {
    /// Like a function's name: a lowercase letter, then lowercase letters, digits and `-`.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    pub(crate) name: String,
    #[schema(minimum = 1)]
    pub(crate) max_concurrency: Option<i32>,
    #[schema(minimum = 1)]
    pub(crate) invocations_per_minute: Option<i32>,
    #[schema(minimum = 0)]
    pub(crate) max_stored_bytes: Option<i64>,
    /// How long ended invocations and events are kept, in seconds (null: the installation's).
    #[schema(minimum = 1)]
    pub(crate) retention_s: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceList {
    pub(crate) namespaces: Vec<Stored>,
}

fn missing(name: &str) -> ApiError {
    ApiError::NotFound(format!("no namespace named {name:?}"))
}

#[utoipa::path(post, path = "/v1/namespaces", operation_id = "create_namespace", tag = "namespaces", summary = "Make a namespace",
    description = "A namespace with its quotas (`max_concurrency`, `invocations_per_minute`, `max_stored_bytes`; null: no limit) and `retention_s` (null: the installation's). Global admin keys only. 409 if it exists.",
    request_body = NewNamespace, responses((status = 201, body = Stored), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    JsonBody(body): JsonBody<NewNamespace>,
) -> Result<Response, ApiError> {
    acting.global_only()?;
    let name = Namespace::parse(&body.name).ok_or_else(|| {
        ApiError::Unprocessable(
            "name: a lowercase letter, then lowercase letters, digits and '-' (at most 63)".into(),
        )
    })?;
    let quotas = Quotas {
        max_concurrency: body.max_concurrency,
        invocations_per_minute: body.invocations_per_minute,
        max_stored_bytes: body.max_stored_bytes,
        retention_s: body.retention_s,
    };
    quotas.check().map_err(ApiError::Unprocessable)?;
    let stored = namespace::create(&app.pool, &name, &quotas)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("a namespace named {:?} exists", body.name)))?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

#[utoipa::path(get, path = "/v1/namespaces", operation_id = "list_namespaces", tag = "namespaces", summary = "List namespaces",
    description = "Every namespace and its quotas. Global admin keys only.",
    responses((status = 200, body = NamespaceList), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
) -> Result<Json<NamespaceList>, ApiError> {
    acting.global_only()?;
    Ok(Json(NamespaceList {
        namespaces: namespace::list(&app.pool).await?,
    }))
}

#[utoipa::path(get, path = "/v1/namespaces/{name}", operation_id = "get_namespace", tag = "namespaces", summary = "Read a namespace",
    description = "The namespace and its quotas. Global admin keys only.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    responses((status = 200, body = Stored), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
) -> Result<Json<Stored>, ApiError> {
    acting.global_only()?;
    let found = match Namespace::parse(&name) {
        Some(ns) => namespace::get(&app.pool, ns.as_str()).await?,
        None => None,
    };
    found.map(Json).ok_or_else(|| missing(&name))
}

#[utoipa::path(put, path = "/v1/namespaces/{name}", operation_id = "update_namespace", tag = "namespaces", summary = "Set a namespace's quotas",
    description = "Sets the quotas the body names; a quota left out or null is no limit. Global admin keys only.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    request_body = Quotas, responses((status = 200, body = Stored), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn update(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    JsonBody(quotas): JsonBody<Quotas>,
) -> Result<Json<Stored>, ApiError> {
    acting.global_only()?;
    let Some(ns) = Namespace::parse(&name) else {
        return Err(missing(&name));
    };
    quotas.check().map_err(ApiError::Unprocessable)?;
    let stored = namespace::update(&app.pool, ns.as_str(), &quotas)
        .await?
        .ok_or_else(|| missing(&name))?;
    Ok(Json(stored))
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    pub(crate) cascade: bool,
}

#[utoipa::path(delete, path = "/v1/namespaces/{name}", operation_id = "delete_namespace", tag = "namespaces", summary = "Delete a namespace",
    description = "Deletes the namespace and its keys. 409 while it holds functions, unless `?cascade=true`: then its functions (with their webhooks, schedules and subscriptions), records and events go too. `default` can't be deleted (409). Global admin keys only.",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("cascade" = Option<bool>, Query)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), Denied))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    acting.global_only()?;
    if Namespace::parse(&name).is_none() {
        return Err(missing(&name));
    }
    let done = namespace::delete(&app.pool, &name, query.cascade).await;
    app.recent.forget_all();
    match done {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(DeleteError::Missing) => Err(missing(&name)),
        Err(e @ (DeleteError::Default | DeleteError::NotEmpty(_))) => {
            Err(ApiError::Conflict(e.to_string()))
        }
        Err(DeleteError::Db(e)) => Err(e.into()),
    }
}
