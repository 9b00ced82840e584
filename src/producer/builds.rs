//! A function's builds from source: `GET /v1/functions/{name}/builds/{version}` reads one with its
//! stored log (what `docker build` printed, colour codes dropped), so a failed or past build can
//! be read back; `POST /v1/functions/{name}/rollback` `{"version": N}` switches the function back
//! (or forward) to the image of an earlier successful build. Builds of an earlier function of the
//! same name (deleted, then registered again) are not shown, as in the function's `versions`.

use super::extract::Path;
use crate::error::{Denied, ErrorBody};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Acting;
use super::extract::JsonBody;
use super::function_view::{FunctionView, view_with_versions};
use super::functions::{load, save};
use crate::build::{BuildRecord, store};
use crate::error::ApiError;
use crate::function::Function;
use axum::Extension;

/// `GET /v1/functions/{name}/builds/{version}`: the build and its `log`.
#[utoipa::path(get, path = "/v1/functions/{name}/builds/{version}", operation_id = "get_build",
    summary = "Read one build and its log",
    description = "A build of a function from source: its status, image, times and the stored build log; `current` when the function runs its image.",
    tag = "functions",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("version" = i32, Path, minimum = 1)),
    responses((status = 200, body = super::answers::BuildView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let name = acting.function(&name);
    let version: i32 = version
        .strip_prefix('v')
        .unwrap_or(&version)
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{version:?} is not a version (1, 2, …)")))?;
    let function = load(&app, &name).await?;
    let build = find(&app, &function, version).await?;
    let mut view = serde_json::to_value(&build).expect("a build serializes");
    view["log"] = json!(build.log);
    view["current"] = json!(build.image == function.run.image);
    Ok(Json(view))
}

/// Build `version` of `function`, or 404.
pub(crate) async fn find(
    app: &AppState,
    function: &Function,
    version: i32,
) -> Result<BuildRecord, ApiError> {
    store::version(&app.pool, &function.name, version, function.created_at)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{:?} has no build {version}", function.name)))
}

/// The body of `POST /v1/functions/{name}/rollback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rollback {
    /// The version to run from now on: a successful build of this function.
    #[schema(minimum = 1)]
    pub(crate) version: i32,
}

/// `POST /v1/functions/{name}/rollback` `{"version": N}`: the function runs the image of its
/// build `N` from now on (checked like any new image), with that version and runtime; its other
/// fields stay. 404 for no such build, 409 for a build that did not succeed.
#[utoipa::path(post, path = "/v1/functions/{name}/rollback", operation_id = "rollback",
    summary = "Roll back to an earlier version",
    description = "The function runs the image of its successful build `version` from now on (checked like any new image), with that version and runtime; its other fields stay. 404 when the function has no such build; 409 when that build failed or is still building.",
    tag = "functions",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")), request_body = Rollback,
    responses((status = 200, body = FunctionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn rollback(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Rollback>,
) -> Result<Json<FunctionView>, ApiError> {
    let name = acting.function(&name);
    let f = roll_back(&app, &name, body.version).await?;
    Ok(Json(view_with_versions(&app, &f).await?))
}

/// Switches function `name` to its build `version` (the API's rollback and the dashboard's).
pub(crate) async fn roll_back(
    app: &AppState,
    name: &str,
    version: i32,
) -> Result<Function, ApiError> {
    let current = load(app, name).await?;
    let build = find(app, &current, version).await?;
    if build.status != crate::build::BuildStatus::Succeeded {
        return Err(ApiError::Conflict(format!(
            "build {version} of {name:?} is {}; only a successful build can be run",
            build.status
        )));
    }
    let old_image = current.run.image.clone();
    let mut f = current;
    f.run.image = build.image;
    f.version = Some(build.version);
    f.runtime = Some(build.runtime);
    save(app, &f, &old_image).await?;
    tracing::info!(function = %name, version, "function rolled back");
    Ok(f)
}
