//! `/v1/functions`: register, list, read, update and delete functions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::JsonBody;
use crate::config::ImagePull;
use crate::docker::{ImageError, ensure_image};
use crate::error::ApiError;
use crate::function::{Function, FunctionUpdate, NewFunction, store};

/// A function as the API shows it: its fields, its own URL, and the names of its secrets.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FunctionView {
    #[serde(flatten)]
    pub function: Function,
    pub invoke_url: String,
    /// Names only: secrets are write-only.
    pub secrets: Vec<String>,
}

/// `GET /v1/functions`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

fn view(app: &AppState, f: &Function) -> FunctionView {
    FunctionView {
        function: f.clone(),
        invoke_url: format!("{}/fn/{}", app.settings.public_url(), f.name),
        secrets: f.secrets.names(),
    }
}

/// Loads a function or answers 404.
pub async fn load(app: &AppState, name: &str) -> Result<Function, ApiError> {
    store::get(&app.pool, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no function named {name:?}")))
}

/// Makes sure the engine has `image`, pulling it if needed (unless `GRANDA_IMAGE_PULL=never`):
/// 422 if it can't be had.
pub(crate) async fn check_image(app: &AppState, image: &str) -> Result<(), ApiError> {
    if app.settings.image_pull == ImagePull::Never {
        return match app.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 400..=499,
                message,
            }) => Err(ApiError::Unprocessable(format!(
                "image {image:?} is not on the engine and GRANDA_IMAGE_PULL=never: {message}"
            ))),
            Err(e) => Err(ApiError::Unavailable(format!(
                "docker engine unavailable: {e}"
            ))),
        };
    }
    ensure_image(&app.docker, image).await.map_err(|e| match e {
        ImageError::Unavailable { .. } => ApiError::Unprocessable(e.to_string()),
        ImageError::Engine(_) => ApiError::Unavailable(e.to_string()),
    })
}

/// A `container_runtime` must be one the engine has (`docker info`), or no container could start.
async fn check_runtime(app: &AppState, runtime: Option<&str>) -> Result<(), ApiError> {
    let Some(runtime) = runtime else {
        return Ok(());
    };
    let info = app
        .docker
        .info()
        .await
        .map_err(|e| ApiError::Unavailable(format!("docker engine unavailable: {e}")))?;
    let known = info.runtimes.unwrap_or_default();
    if known.contains_key(runtime) {
        return Ok(());
    }
    let mut names: Vec<&String> = known.keys().collect();
    names.sort();
    Err(ApiError::Unprocessable(format!(
        "container_runtime: the engine has no runtime {runtime:?} (it has {names:?})"
    )))
}

#[tracing::instrument(skip_all, fields(name = %body.name))]
pub async fn create(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<NewFunction>,
) -> Result<Response, ApiError> {
    let f = body
        .validate(&app.settings)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    register(&app, &f).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/v1/functions/{}", f.name).parse() {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view(&app, &f))).into_response())
}

/// Stores a validated new function (API and dashboard): 409 if the name is taken, 422 if its
/// image can't be had.
pub async fn register(app: &AppState, f: &Function) -> Result<(), ApiError> {
    if store::get(&app.pool, &f.name).await?.is_some() {
        return Err(conflict(&f.name));
    }
    check_runtime(app, f.container_runtime.as_deref()).await?;
    check_image(app, &f.image).await?;
    if !store::insert(&app.pool, f).await? {
        return Err(conflict(&f.name));
    }
    Ok(())
}

/// Stores a validated change to a function (API and dashboard), checking a new image first.
pub async fn save(app: &AppState, f: &Function, old_image: &str) -> Result<(), ApiError> {
    check_runtime(app, f.container_runtime.as_deref()).await?;
    if f.image != old_image {
        check_image(app, &f.image).await?;
    }
    if !store::update(&app.pool, f).await? {
        return Err(ApiError::NotFound(format!(
            "no function named {:?}",
            f.name
        )));
    }
    Ok(())
}

fn conflict(name: &str) -> ApiError {
    ApiError::Conflict(format!("a function named {name:?} exists"))
}

pub async fn list(State(app): State<AppState>) -> Result<Json<FunctionList>, ApiError> {
    let functions = store::list(&app.pool)
        .await?
        .iter()
        .map(|f| view(&app, f))
        .collect();
    Ok(Json(FunctionList { functions }))
}

pub async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    let f = load(&app, &name).await?;
    Ok(Json(view(&app, &f)))
}

#[tracing::instrument(skip_all, fields(%name))]
pub async fn update(
    State(app): State<AppState>,
    Path(name): Path<String>,
    JsonBody(changes): JsonBody<FunctionUpdate>,
) -> Result<Json<FunctionView>, ApiError> {
    let current = load(&app, &name).await?;
    let old_image = current.image.clone();
    let f = changes
        .apply(current, &app.settings)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    save(&app, &f, &old_image).await?;
    Ok(Json(view(&app, &f)))
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
