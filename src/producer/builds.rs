//! `GET /v1/functions/{name}/builds/{version}`: one build of a function from source, with its
//! stored log (what `docker build` printed, colour codes dropped), so a failed or past build can
//! be read back. Builds of an earlier function of the same name (deleted, then registered again)
//! are not shown, as in the function's `versions`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use super::functions::load;
use crate::build::BuildRecord;
use crate::error::ApiError;

/// `GET /v1/functions/{name}/builds/{version}`: the build and its `log`.
pub async fn get(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version: i32 = version
        .strip_prefix('v')
        .unwrap_or(&version)
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{version:?} is not a version (1, 2, …)")))?;
    let function = load(&app, &name).await?;
    let build = sqlx::query_as::<_, BuildRecord>(
        "SELECT id, function, version, runtime, image, status, log, source_digest, created_at, finished_at
         FROM builds WHERE function = $1 AND version = $2 AND created_at >= $3",
    )
    .bind(&name)
    .bind(version)
    .bind(function.created_at)
    .fetch_optional(&app.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("{name:?} has no build {version}")))?;
    let mut view = serde_json::to_value(&build).expect("a build serializes");
    view["log"] = json!(build.log);
    view["current"] = json!(build.image == function.image);
    Ok(Json(view))
}
