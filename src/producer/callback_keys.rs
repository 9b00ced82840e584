//! `/v1/functions/{name}/callback-key`: the key a function's result callbacks are signed with
//! (Standard Webhooks, see [`crate::callback`]). `GET` shows it, `POST` rotates it and shows the
//! new one; both need an admin key (the route is not in the invoke list of [`super::auth`]).

use super::extract::Path;
use crate::error::{Denied, ErrorBody};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Acting;
use crate::error::ApiError;
use axum::Extension;

fn view(name: &str, key: String) -> Json<Value> {
    Json(json!({
        "function": name,
        "key": key,
        "scheme": "standard-webhooks",
        "signed": "{webhook-id}.{webhook-timestamp}.{body}",
    }))
}

fn missing(name: &str) -> ApiError {
    ApiError::NotFound(format!("no function named {name:?}"))
}

/// `GET /v1/functions/{name}/callback-key`.
#[utoipa::path(get, path = "/v1/functions/{name}/callback-key", operation_id = "get_callback_key", tag = "callbacks", summary = "Read a function's callback key", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    description = "The key the function's result callbacks are signed with (Standard Webhooks, `whsec_...`). Admin keys only.",
    responses((status = 200, body = super::answers::CallbackKey), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = acting.function(&name);
    let key = crate::callback::function_key(&app.pool, &name)
        .await?
        .ok_or_else(|| missing(&name))?;
    Ok(view(&name, key))
}

/// `POST /v1/functions/{name}/callback-key`: a fresh key; callbacks that start after this are
/// signed with it (there is no grace period for the old one).
#[tracing::instrument(skip_all, fields(%name))]
#[utoipa::path(post, path = "/v1/functions/{name}/callback-key", operation_id = "rotate_callback_key", tag = "callbacks", summary = "Rotate a function's callback key", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    description = "Replaces the function's callback key and returns the new one; callbacks sent after this are signed with it.",
    responses((status = 200, body = super::answers::CallbackKey), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn rotate(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = acting.function(&name);
    let key = crate::callback::rotate_key(&app.pool, &name)
        .await?
        .ok_or_else(|| missing(&name))?;
    tracing::info!("callback key rotated");
    Ok(view(&name, key))
}
