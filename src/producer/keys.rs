//! `/v1/keys`: make, list and revoke API keys (admin only). A key is shown once, when made.
//! A global admin key may bind a new key to any namespace (or none); an admin key bound to a
//! namespace makes, lists and revokes only keys bound to it ([`crate::namespace`]).

use super::extract::Path;
use crate::error::{Denied, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::Acting;
use super::extract::JsonBody;
use crate::error::ApiError;
use crate::keys::{self, ApiKey, KeyError, Scope, Secret};
use axum::Extension;

/// A key as made: the only time `key` is shown.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyCreated {
    #[serde(flatten)]
    pub(crate) stored: ApiKey,
    pub(crate) key: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    pub(crate) keys: Vec<ApiKey>,
}

/// The body of `POST /v1/keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub(crate) name: String,
    pub(crate) scope: Scope,
    /// The namespace the key acts in (it sees nothing else); none: a global key. A key bound to
    /// a namespace may only name its own.
    #[serde(default)]
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    pub(crate) namespace: Option<String>,
    /// An `invoke` key bound to these functions (short names, in the key's namespace) invokes
    /// them only: every other function, record and route is 404 to it (a webhook sender's key).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 100)]
    pub(crate) functions: Option<Vec<String>>,
}

#[tracing::instrument(skip_all, fields(name = %body.name, scope = body.scope.as_str()))]
#[utoipa::path(post, path = "/v1/keys", operation_id = "create_key", tag = "keys", summary = "Make an API key",
    description = "Makes a key with a scope (`admin`, `invoke` or `read`), bound to `namespace` if given (it then acts only there), and for an `invoke` key to `functions` if given (it then invokes only those; everything else is 404). The key is shown only in this answer; Granda keeps only its hash.", request_body = NewKey, responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<Response, ApiError> {
    let namespace = match (body.namespace, acting.bound) {
        (None, false) => None,
        // A namespaced admin makes keys of its namespace only.
        (None, true) => Some(acting.namespace.to_string()),
        (Some(ns), bound) => {
            let missing = || ApiError::Unprocessable(format!("namespace: no namespace {ns:?}"));
            if crate::namespace::Namespace::parse(&ns).is_none()
                || (bound && ns != acting.namespace.as_str())
                || !crate::namespace::exists(&app.pool, &ns).await?
            {
                return Err(missing());
            }
            Some(ns)
        }
    };
    let (stored, secret) = make(
        &app,
        &body.name,
        body.scope,
        namespace.as_deref(),
        body.functions.as_deref(),
    )
    .await?;
    let mut view = serde_json::to_value(&stored).expect("a key serializes");
    view["key"] = secret.0.into();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/v1/keys", operation_id = "list_keys", tag = "keys", summary = "List API keys",
    description = "Every key's id, name, scope and dates; never the key itself.", responses((status = 200, body = KeyList), Denied))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let namespace = acting.bound.then(|| acting.namespace.as_str());
    Ok(Json(
        json!({ "keys": keys::list(&app.pool, namespace).await? }),
    ))
}

#[tracing::instrument(skip_all, fields(%id))]
#[utoipa::path(delete, path = "/v1/keys/{id}", operation_id = "revoke_key", tag = "keys", summary = "Revoke an API key",
    description = "The key stops working (within a second on every server).", params(("id" = Uuid, Path)), responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn revoke(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not a key id")))?;
    // A namespaced admin revokes its namespace's keys only; another's is missing.
    if acting.bound {
        let owner = keys::name_of(&app.pool, id).await?.and_then(|(_, ns)| ns);
        if owner.as_deref() != Some(acting.namespace.as_str()) {
            return Err(ApiError::NotFound("no live key with this id".into()));
        }
    }
    end(&app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a key (the API's and the dashboard's): 422 for a bad name.
pub(crate) async fn make(
    app: &AppState,
    name: &str,
    scope: Scope,
    namespace: Option<&str>,
    functions: Option<&[String]>,
) -> Result<(ApiKey, Secret), ApiError> {
    keys::create(&app.pool, name, scope, namespace, functions)
        .await
        .map_err(|e| match e {
            KeyError::BadName | KeyError::FunctionsNeedInvoke | KeyError::BadFunctions => {
                ApiError::Unprocessable(e.to_string())
            }
            KeyError::Db(e) => e.into(),
        })
}

/// Revokes key `id` (the API's and the dashboard's), ending its sessions and forgetting the
/// keys recently seen as valid: 404 when there is no live key with this id.
pub(crate) async fn end(app: &AppState, id: Uuid) -> Result<(), ApiError> {
    let revoked = keys::revoke(&app.pool, id).await?;
    app.recent.forget_all();
    if revoked {
        Ok(())
    } else {
        Err(ApiError::NotFound("no live key with this id".into()))
    }
}
