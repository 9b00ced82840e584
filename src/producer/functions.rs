//! `/v1/functions`: register, list, read, update and delete functions. Image and runtime checks
//! go to the engines of the function's queue ([`crate::engines`]): `granda up`'s own worker, or
//! a worker asked over RabbitMQ (`granda server`).

use super::extract::Path;
use crate::error::{Denied, ErrorBody};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::auth::Acting;
use super::extract::JsonBody;
use super::function_view::{FunctionList, FunctionView, conflict, view, view_with_versions};
use super::{AppState, deploy};
use crate::engines::{Check, Refusal};
use crate::error::ApiError;
use crate::function::{Function, FunctionUpdate, NewFunction, store};
use axum::Extension;

/// Loads a function by its stored (namespace-qualified) name, or answers 404.
pub(crate) async fn load(app: &AppState, name: &str) -> Result<Function, ApiError> {
    store::get(&app.pool, name).await?.ok_or_else(|| {
        let name = crate::namespace::short(name);
        ApiError::NotFound(format!("no function named {name:?}"))
    })
}

/// [`load`] for invoking: what this process read in the last second will do
/// ([`super::recent`]). Never for changing a function.
pub(crate) async fn load_for_call(app: &AppState, name: &str) -> Result<Function, ApiError> {
    if let Some(f) = app.recent.function(name) {
        return Ok(f);
    }
    let f = load(app, name).await?;
    app.recent.remember_function(&f);
    Ok(f)
}

/// Makes sure an engine of `queue` can have `image` (present, or pulled unless
/// `GRANDA_IMAGE_PULL=never`) with no `VOLUME` that can't be a capped tmpfs: 422 with the
/// engine's reason if not, 503 when no engine answers ([`crate::engines`]).
pub(crate) async fn check_image(app: &AppState, queue: &str, image: &str) -> Result<(), ApiError> {
    ask(app, queue, Some(image), None).await
}

/// A `container_runtime` must be one the engine has (`docker info`), or no container could start.
async fn check_runtime(app: &AppState, queue: &str, runtime: Option<&str>) -> Result<(), ApiError> {
    match runtime {
        Some(runtime) => ask(app, queue, None, Some(runtime)).await,
        None => Ok(()),
    }
}

async fn ask(
    app: &AppState,
    queue: &str,
    image: Option<&str>,
    runtime: Option<&str>,
) -> Result<(), ApiError> {
    let check = Check {
        image: image.map(str::to_string),
        container_runtime: runtime.map(str::to_string),
    };
    match app.engines.check(queue, check).await {
        Ok(()) => Ok(()),
        Err(Refusal::Unprocessable(reason)) => Err(ApiError::Unprocessable(reason)),
        // No worker of the queue answered (one restarting, a fresh stack): with `?defer_check=true`
        // the function is stored unchecked, and its first run on a worker pulls the image (per
        // `GRANDA_IMAGE_PULL`) or fails with the engine's reason.
        Err(Refusal::Unavailable(reason)) if DEFER_CHECK.try_with(|d| *d).unwrap_or(false) => {
            tracing::warn!(queue, %reason, "no worker checked the function; stored unchecked (defer_check)");
            // Stored `pending` (see `note_check`).
            let _ = DEFERRED.try_with(|d| d.set(true));
            Ok(())
        }
        Err(Refusal::Unavailable(reason)) => Err(ApiError::Unavailable(format!(
            "{reason}; to register anyway and have the image checked when a worker runs it, add ?defer_check=true"
        ))),
    }
}

tokio::task_local! {
    /// `?defer_check=true` on `POST`/`PUT /v1/functions`: see [`ask`].
    static DEFER_CHECK: bool;
    /// Set when this request's check was deferred: the function is stored `pending`.
    static DEFERRED: std::cell::Cell<bool>;
}

/// After storing function `name`: `pending` when its check was deferred, no longer pending when
/// `checked` (its image was checked now) ([`crate::function::pending`]).
async fn note_check(app: &AppState, name: &str, checked: bool) -> Result<(), ApiError> {
    if DEFERRED.try_with(|d| d.get()).unwrap_or(false) {
        crate::function::pending::mark(&app.pool, name).await?;
    } else if checked {
        crate::function::pending::clear(&app.pool, name).await?;
    }
    Ok(())
}

/// The query of `POST /v1/functions` and `PUT /v1/functions/{name}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RegisterQuery {
    /// When no worker of the function's queue answers (one restarting, a fresh stack): register
    /// anyway instead of answering 503; the image is checked when a worker first runs it.
    pub(crate) defer_check: Option<bool>,
}

#[tracing::instrument(skip_all, fields(name = %body.name))]
#[utoipa::path(post, path = "/v1/functions", operation_id = "create_function", tag = "functions", summary = "Register a function",
    description = "Registers a function from an image (pulled when the engine lacks it), or builds its image from source when the body has `runtime` and `source` (with `Accept: application/x-ndjson` the build log streams, one JSON object per line). 201 with the function and its invoke URL; 409 if the name is taken; 422 for a bad field, an image that can't be had, or a failed build.", params(RegisterQuery), request_body = NewFunction, responses((status = 201, body = FunctionView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Query(query): Query<RegisterQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewFunction>,
) -> Result<Response, ApiError> {
    let defer = query.defer_check.unwrap_or(false);
    let deferred = std::cell::Cell::new(false);
    DEFER_CHECK
        .scope(
            defer,
            DEFERRED.scope(deferred, create_from(app, &acting, &headers, body)),
        )
        .await
}

/// Registers `body`, or builds it from source first (the API's create, and the dashboard's
/// build-from-source form, which asks for the streamed answer).
pub(crate) async fn create_from(
    app: AppState,
    acting: &Acting,
    headers: &HeaderMap,
    mut body: NewFunction,
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
        body.image = Some(crate::build::tag(
            &app.settings.amqp_prefix,
            "installation",
            "function",
            0,
        ));
    }
    let mut f = body
        .validate(&app.settings)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    // Stored under its namespace-qualified name (`echo.team-b`), its URL's name.
    f.name = acting.function(&f.name);
    if let Some((runtime, source)) = from_source {
        if store::get(&app.pool, &f.name).await?.is_some() {
            return Err(conflict(&f.name));
        }
        check_runtime(&app, &f.queue, f.run.container_runtime.as_deref()).await?;
        let deploy = deploy::prepare(&app, &runtime, &source, deploy::Target::Create(f))?;
        return Ok(deploy::respond(app, headers, deploy).await);
    }
    register(&app, &f).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = format!("/v1/functions/{}", crate::namespace::short(&f.name)).parse() {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view(&app, &f))).into_response())
}

/// Stores a validated new function (API and dashboard): 409 if the name is taken, 422 if its
/// image can't be had.
pub(crate) async fn register(app: &AppState, f: &Function) -> Result<(), ApiError> {
    if store::get(&app.pool, &f.name).await?.is_some() {
        return Err(conflict(&f.name));
    }
    check_callback(app, f).await?;
    check_runtime(app, &f.queue, f.run.container_runtime.as_deref()).await?;
    check_image(app, &f.queue, &f.run.image).await?;
    let inserted = store::insert(&app.pool, app.publisher.keys(), f).await?;
    app.recent.forget_all();
    if !inserted {
        return Err(conflict(&f.name));
    }
    note_check(app, &f.name, true).await
}

/// Stores a validated change to a function (API and dashboard), checking a new image first.
pub(crate) async fn save(app: &AppState, f: &Function, old_image: &str) -> Result<(), ApiError> {
    check_callback(app, f).await?;
    check_runtime(app, &f.queue, f.run.container_runtime.as_deref()).await?;
    if f.run.image != old_image {
        check_image(app, &f.queue, &f.run.image).await?;
    }
    let updated = store::update(&app.pool, app.publisher.keys(), f).await?;
    app.recent.forget_all();
    if !updated {
        return Err(ApiError::NotFound(format!(
            "no function named {:?}",
            crate::namespace::short(&f.name)
        )));
    }
    note_check(app, &f.name, f.run.image != old_image).await
}

/// 422 unless the function's default callback URL resolves to addresses callbacks may reach.
async fn check_callback(app: &AppState, f: &Function) -> Result<(), ApiError> {
    if let Some(url) = &f.callback_url {
        crate::callback::check_target(url, &app.settings.callback_allow_nets)
            .await
            .map_err(|e| ApiError::Unprocessable(format!("callback_url: {e}")))?;
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/functions", operation_id = "list_functions", tag = "functions", summary = "List functions",
    description = "Every function with its settings. Secret values are never shown, only their names.", responses((status = 200, body = FunctionList), Denied))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
) -> Result<Json<FunctionList>, ApiError> {
    let functions = store::list(&app.pool, Some(acting.namespace.as_str()))
        .await?
        .iter()
        .map(|f| view(&app, f))
        .collect();
    Ok(Json(FunctionList { functions }))
}

#[utoipa::path(get, path = "/v1/functions/{name}", operation_id = "get_function", tag = "functions", summary = "Read a function",
    description = "The function's settings, its invoke URL and its built versions (newest first).", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, body = FunctionView), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    let f = load(&app, &acting.function(&name)).await?;
    Ok(Json(view_with_versions(&app, &f).await?))
}

#[tracing::instrument(skip_all, fields(%name))]
#[utoipa::path(put, path = "/v1/functions/{name}", operation_id = "update_function", tag = "functions", summary = "Update a function",
    description = "Changes the fields the body names; the others keep their values. With `runtime` and `source`, builds a new version first and switches to it when the build succeeds.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$"), RegisterQuery), request_body = FunctionUpdate, responses((status = 200, body = FunctionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn update(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    Query(query): Query<RegisterQuery>,
    headers: HeaderMap,
    JsonBody(changes): JsonBody<FunctionUpdate>,
) -> Result<Response, ApiError> {
    let defer = query.defer_check.unwrap_or(false);
    let deferred = std::cell::Cell::new(false);
    DEFER_CHECK
        .scope(
            defer,
            DEFERRED.scope(deferred, update_from(app, acting, name, headers, changes)),
        )
        .await
}

async fn update_from(
    app: AppState,
    acting: Acting,
    name: String,
    headers: HeaderMap,
    mut changes: FunctionUpdate,
) -> Result<Response, ApiError> {
    let current = load(&app, &acting.function(&name)).await?;
    let old_image = current.run.image.clone();
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
    let mut f = changes
        .apply(current.clone(), &app.settings)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    if let Some(source) = source {
        let runtime = runtime.ok_or_else(|| {
            ApiError::Unprocessable("runtime: this function has none; name one".into())
        })?;
        check_runtime(&app, &f.queue, f.run.container_runtime.as_deref()).await?;
        let deploy = deploy::prepare(&app, &runtime, &source, deploy::Target::Update(f))?;
        if deploy::already_built(&app, &current, &deploy).await? {
            let deploy::Target::Update(f) = deploy.target else {
                unreachable!("an update's deploy targets an update")
            };
            let f = save_changed(&app, f, &current).await?;
            let note = format!(
                "The source and base image are those of version {}: nothing to build\n",
                f.version.unwrap_or_default()
            );
            let view = serde_json::to_value(view_with_versions(&app, &f).await?)
                .expect("a function serializes");
            return Ok(deploy::respond_unbuilt(&headers, view, note));
        }
        return Ok(deploy::respond(app, &headers, deploy).await);
    }
    if f.run.image != old_image {
        // A function given an image is no longer one built from source.
        f.runtime = None;
        f.version = None;
    }
    let f = save_changed(&app, f, &current).await?;
    Ok(Json(view_with_versions(&app, &f).await?).into_response())
}

/// Saves `f` unless it is `current` as it was: then nothing is written and its `updated_at`
/// stays, so a repeated `PUT` (a redeploy of the same settings) changes nothing.
async fn save_changed(
    app: &AppState,
    f: Function,
    current: &Function,
) -> Result<Function, ApiError> {
    let mut same = f.clone();
    same.updated_at = current.updated_at;
    // Secrets compare by their values: stored ones are sealed, each time with a fresh nonce.
    let keys = app.publisher.keys();
    let mut was = current.clone();
    let opened =
        keys.open_all(&mut same.secrets).is_ok() && keys.open_all(&mut was.secrets).is_ok();
    if opened && same == was {
        return Ok(current.clone());
    }
    save(app, &f, &current.run.image).await?;
    Ok(f)
}

#[utoipa::path(delete, path = "/v1/functions/{name}", operation_id = "delete_function", tag = "functions", summary = "Delete a function",
    description = "Removes the function. Later calls to it get 404.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 204), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let qualified = acting.function(&name);
    let deleted = store::delete(&app.pool, &qualified).await?;
    app.recent.forget_all();
    if deleted {
        // Its series are labelled with its stored (namespace-qualified) name.
        app.metrics.forget_function(&qualified);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no function named {name:?}")))
    }
}
