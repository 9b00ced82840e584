//! What a console path names, loaded before its handler runs: [`FunctionAt`] for
//! `/ui/functions/{name}/...`, [`WebhookAt`] for `/ui/webhooks/{id}/...`. A path that names
//! nothing is answered with the console's error page, as a handler's own `load` would be.
//!
//! Both resolve in the session's namespace: another namespace's function or webhook is missing.
//!
//! Put them after [`super::session::Admin`] in a handler's arguments: extractors run in order,
//! so nothing is read from Postgres for a caller who may not manage.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::UiError;
use crate::function::Function;
use crate::producer::AppState;
use crate::webhook::store::Webhook;

/// The function the path's `{name}` names.
pub(crate) struct FunctionAt(pub(crate) Function);

/// The webhook the path's `{id}` names.
pub(crate) struct WebhookAt(pub(crate) Webhook);

impl FromRequestParts<AppState> for FunctionAt {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let session = super::session::Session::from_request_parts(parts, app).await?;
        let name = segment(parts, app).await?;
        let function = crate::producer::functions::load(app, &session.function(&name)).await;
        function.map(FunctionAt).map_err(refused)
    }
}

impl FromRequestParts<AppState> for WebhookAt {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let session = super::session::Session::from_request_parts(parts, app).await?;
        let id = segment(parts, app).await?;
        let hook = crate::producer::webhooks::load_hook_in(app, &session.acting, &id).await;
        hook.map(WebhookAt).map_err(refused)
    }
}

/// The path's one parameter.
async fn segment(parts: &mut Parts, app: &AppState) -> Result<String, Response> {
    let Path(segment) = Path::<String>::from_request_parts(parts, app)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(segment)
}

fn refused(e: crate::error::ApiError) -> Response {
    UiError::from(e).into_response()
}
