//! `/v1/functions`: register, list, read, update and delete functions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::extract::JsonBody;
use super::{AppState, deploy};
use crate::docker::{ImageError, ensure_image};
use crate::error::ApiError;
use crate::function::{Function, FunctionUpdate, NewFunction, store};

/// A function as the API shows it, with its own URL.
fn view(app: &AppState, f: &Function) -> Value {
    let mut v = serde_json::to_value(f).expect("a function serializes");
    v["invoke_url"] = format!("{}/fn/{}", app.settings.public_url(), f.name).into();
    v
}

/// A function as the API shows it, with its builds (`versions`, newest first; empty for a function
/// registered with an image).
pub async fn view_with_versions(app: &AppState, f: &Function) -> Result<Value, ApiError> {
    let mut v = view(app, f);
    let builds = crate::build::store::list(&app.pool, &f.name, f.created_at).await?;
    v["versions"] = serde_json::to_value(builds).expect("builds serialize");
    Ok(v)
}

/// Loads a function or answers 404.
pub async fn load(app: &AppState, name: &str) -> Result<Function, ApiError> {
    store::get(&app.pool, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no function named {name:?}")))
}

async fn check_image(app: &AppState, image: &str) -> Result<(), ApiError> {
    ensure_image(&app.docker, image).await.map_err(|e| match e {
        ImageError::Unavailable { .. } => ApiError::Unprocessable(e.to_string()),
        ImageError::Engine(_) => ApiError::Unavailable(e.to_string()),
    })
}

#[tracing::instrument(skip_all, fields(name = %body.name))]
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<NewFunction>,
) -> Result<Response, ApiError> {
    let from_source = match (body.runtime.take(), body.source.take()) {
        (None, None) => None,
        (Some(runtime), Some(source)) if body.image.is_none() => Some((runtime, source)),
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "image: give an image, or a runtime and a source, not both".into(),
            ));
        }
        _ => {
            return Err(ApiError::Unprocessable(
                "runtime and source: a build from source needs both".into(),
            ));
        }
    };
    if from_source.is_some() {
        // A placeholder that passes the checks; the build sets the real tag.
        body.image = Some(crate::build::tag(&app.settings.amqp_prefix, "function", 0));
    }
    let f = body
        .validate(&app.settings)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if store::get(&app.pool, &f.name).await?.is_some() {
        return Err(conflict(&f.name));
    }
    if let Some((runtime, source)) = from_source {
        let deploy = deploy::prepare(&app, &runtime, &source, deploy::Target::Create(f))?;
        return Ok(deploy::respond(app, &headers, deploy).await);
    }
    check_image(&app, &f.image).await?;
    if !store::insert(&app.pool, &f).await? {
        return Err(conflict(&f.name));
    }
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/v1/functions/{}", f.name).parse() {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view(&app, &f))).into_response())
}

pub(super) fn conflict(name: &str) -> ApiError {
    ApiError::Conflict(format!("a function named {name:?} exists"))
}

pub async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let functions: Vec<Value> = store::list(&app.pool)
        .await?
        .iter()
        .map(|f| view(&app, f))
        .collect();
    Ok(Json(json!({ "functions": functions })))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let f = load(&app, &name).await?;
    Ok(Json(view_with_versions(&app, &f).await?))
}

#[tracing::instrument(skip_all, fields(%name))]
pub async fn update(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody(mut changes): JsonBody<FunctionUpdate>,
) -> Result<Response, ApiError> {
    let current = load(&app, &name).await?;
    let old_image = current.image.clone();
    let runtime = changes.runtime.take();
    let source = changes.source.take();
    if source.is_some() && changes.image.is_some() {
        return Err(ApiError::Unprocessable(
            "image: give an image, or a source, not both".into(),
        ));
    }
    if source.is_none() && runtime.is_some() {
        return Err(ApiError::Unprocessable(
            "runtime: changing the runtime needs a source".into(),
        ));
    }
    let runtime = runtime.or_else(|| current.runtime.clone());
    let f = changes
        .apply(current, &app.settings)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if let Some(source) = source {
        let runtime = runtime.ok_or_else(|| {
            ApiError::Unprocessable("runtime: this function has none; name one".into())
        })?;
        let deploy = deploy::prepare(&app, &runtime, &source, deploy::Target::Update(f))?;
        return Ok(deploy::respond(app, &headers, deploy).await);
    }
    let mut f = f;
    if f.image != old_image {
        check_image(&app, &f.image).await?;
        // A function given an image is no longer one built from source.
        f.runtime = None;
        f.version = None;
    }
    if !store::update(&app.pool, &f).await? {
        return Err(ApiError::NotFound(format!("no function named {name:?}")));
    }
    Ok(Json(view_with_versions(&app, &f).await?).into_response())
}

pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if store::delete(&app.pool, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no function named {name:?}")))
    }
}
