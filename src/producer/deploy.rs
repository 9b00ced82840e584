//! Deploying from source: `POST /v1/functions` or `PUT /v1/functions/{name}` with `runtime` and
//! `source` build an image `granda-fn/<installation>/<name>:v<N>` through the engine, then register it.
//!
//! Plain requests get the usual answer when the build is done: 201/200 with the function, or 422
//! `build_failed` with the log's tail. A request with `Accept: application/x-ndjson` gets, once the
//! build starts, 200 and one JSON object per line: `{"log": "<text>"}` as the engine writes it, then
//! a last line `{"status": 201, "function": {...}}` or `{"status": 422, "error": {...}}`.
//!
//! The build runs where [`crate::engines`] says: `granda up` on its own worker's engine; a
//! standalone `granda server` has no engine, so a worker of the function's queue builds
//! ([`crate::worker::builds`]), and the server answers 503 when none
//! serves the queue or the builder goes silent. With `GRANDA_REGISTRY` (the server's, else the
//! builder's) the image is `<registry>/<prefix>-fn/<installation>/<name>:v<N>`, pushed there so
//! that every host pulls it; without one it stays on the builder's engine, which only the workers sharing that
//! engine can run.
//!
//! The old version's image stays on the engine: queued invocations carry its tag, and the function
//! switches to the new tag in one update, so it is never without an image.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::AppState;
use crate::build::{self, BuildFailed, Runtime, Source};
use crate::engines::{BuildFailure, BuildRequest, Job, Refusal};
use crate::error::{ApiError, ErrorBody};
use crate::function::{Function, store};

use crate::build::NDJSON;

/// What to do with a built image.
pub(crate) enum Target {
    /// Register a new function.
    Create(Function),
    /// Switch an existing function (with its other changes applied) to the new version.
    Update(Function),
}

/// A checked deploy, ready to build.
pub(crate) struct Deploy {
    pub(crate) runtime: Runtime,
    /// The runtime's base image (the Dockerfile's `FROM`).
    pub(crate) base_image: String,
    pub(crate) context: Vec<u8>,
    /// [`build::digest`] of the runtime and context.
    pub(crate) digest: String,
    pub(crate) target: Target,
}

/// Checks the runtime and source and renders the build context.
pub(crate) fn prepare(
    app: &AppState,
    runtime: &str,
    source: &Source,
    target: Target,
) -> Result<Deploy, ApiError> {
    let runtime = Runtime::named(runtime).ok_or_else(|| {
        let names: Vec<&str> = build::RUNTIMES.iter().map(|r| r.name).collect();
        ApiError::Unprocessable(format!("runtime: one of {}", names.join(", ")))
    })?;
    let base_image = runtime.base_image(&app.settings);
    let context = build::context(runtime, &base_image, source)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(Deploy {
        runtime,
        base_image,
        digest: build::digest(runtime, &context),
        context,
        target,
    })
}

/// Whether `current` already runs what `deploy` would build: the build of its version succeeded
/// from the same runtime, base image and source, and its image is still that build's. Then a
/// redeploy builds nothing (its other settings are applied as by an update).
pub(crate) async fn already_built(
    app: &AppState,
    current: &Function,
    deploy: &Deploy,
) -> Result<bool, ApiError> {
    let Some(version) = current.version else {
        return Ok(false);
    };
    let Some(build) =
        build::store::succeeded(&app.pool, &current.name, version, current.created_at).await?
    else {
        return Ok(false);
    };
    Ok(
        build.source_digest.as_deref() == Some(deploy.digest.as_str())
            && build.runtime == deploy.runtime.name
            && build.image == current.run.image,
    )
}

/// Answers a deploy from source that built nothing, as the request asked: the function as JSON,
/// or (NDJSON) `note` as a log line, then the verdict line.
pub(crate) fn respond_unbuilt(headers: &HeaderMap, view: Value, note: String) -> Response {
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    if !streamed {
        return (StatusCode::OK, Json(view)).into_response();
    }
    let body = line(&json!({"log": note})) + &line(&json!({"status": 200, "function": view}));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, NDJSON)
        .body(Body::from(body))
        .expect("a valid response")
}

/// A deploy that did not register anything.
enum Failure {
    Build {
        build_id: uuid::Uuid,
        version: i32,
        failed: BuildFailed,
    },
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Api(e.into())
    }
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Build { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Failure::Api(e) => e.status(),
        }
    }

    fn body(&self) -> ErrorBody {
        match self {
            Failure::Build {
                build_id,
                version,
                failed,
            } => {
                let mut body = ErrorBody::new(
                    "build_failed",
                    format!("the build of version {version} failed: {}", failed.message),
                );
                body.error.log = Some(build::tail(&failed.log));
                body.error.build_id = Some(*build_id);
                body
            }
            Failure::Api(e) => {
                if e.status().is_server_error() {
                    tracing::error!(error = ?e, "deploy failed");
                }
                ErrorBody::new(e.code(), e.to_string())
            }
        }
    }
}

/// Runs the deploy, answering as the request asked (plain or streamed).
pub(crate) async fn respond(app: AppState, headers: &HeaderMap, deploy: Deploy) -> Response {
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    if !streamed {
        return match run(app, deploy, None).await {
            Ok((status, view)) => (status, Json(view)).into_response(),
            Err(f) => (f.status(), Json(f.body())).into_response(),
        };
    }
    let (lines, mut rx) = mpsc::unbounded_channel::<String>();
    let (out, body) = mpsc::channel::<Result<String, std::convert::Infallible>>(64);
    // The build goes on if the client goes away, so that what it registers stays consistent.
    let build = tokio::spawn(async move { run(app, deploy, Some(lines)).await });
    tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if out.send(Ok(line(&json!({"log": text})))).await.is_err() {
                break;
            }
        }
        let last = match build.await {
            Ok(Ok((status, view))) => json!({"status": status.as_u16(), "function": view}),
            Ok(Err(f)) => with_status(f.status(), &f.body()),
            Err(e) => with_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                &ErrorBody::new("internal", e.to_string()),
            ),
        };
        let _ = out.send(Ok(line(&last))).await;
    });
    let stream = tokio_stream_from(body);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, NDJSON)
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

/// The last line of a streamed deploy that failed: the error body with the status it would
/// have had as a plain answer.
fn with_status(status: StatusCode, body: &ErrorBody) -> Value {
    let mut v = serde_json::to_value(body).unwrap_or_default();
    v["status"] = status.as_u16().into();
    v
}

fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<String, std::convert::Infallible>>,
) -> impl futures_util::Stream<Item = Result<String, std::convert::Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Builds the next version and registers it. Returns the status and the function's view.
#[tracing::instrument(skip_all, fields(runtime = deploy.runtime.name))]
async fn run(
    app: AppState,
    deploy: Deploy,
    lines: Option<mpsc::UnboundedSender<String>>,
) -> Result<(StatusCode, Value), Failure> {
    let name = match &deploy.target {
        Target::Create(f) | Target::Update(f) => f.name.clone(),
    };
    let record = build::store::start(
        &app.pool,
        &app.settings.amqp_prefix,
        &name,
        deploy.runtime.name,
        &deploy.digest,
    )
    .await?
    .ok_or_else(|| {
        ApiError::Conflict(format!(
            "another build of {name:?} started at the same time"
        ))
    })?;
    if let Some(lines) = &lines {
        let _ = lines.send(format!(
            "Building {name} version {} ({} runtime) as {}\n",
            record.version, deploy.runtime.name, record.image
        ));
    }
    let queue = match &deploy.target {
        Target::Create(f) | Target::Update(f) => f.queue.clone(),
    };
    let started = std::time::Instant::now();
    // `granda up`: its own worker's engine; `granda server`: a worker of the function's queue.
    let job = Job {
        tag: record.image.clone(),
        base_image: deploy.base_image,
        registry: app.settings.registry.clone(),
    };
    let request = BuildRequest {
        queue: &queue,
        job,
        context: deploy.context,
        lines: lines.as_ref(),
    };
    let built = app.engines.build(request).await;
    if let Ok(b) = &built
        && !b.pushed
    {
        tracing::warn!(
            image = b.image,
            worker = b.worker,
            "built without a registry: only workers on the builder's engine can run it"
        );
    }
    app.metrics.build_finished(
        deploy.runtime.name,
        built.is_ok(),
        started.elapsed().as_secs_f64(),
    );
    let (image, log) = match built {
        Ok(built) => (built.image, built.log),
        Err(BuildFailure {
            refusal: Refusal::Unprocessable(message),
            log,
        }) => {
            build::store::finish(&app.pool, record.id, false, &log).await?;
            return Err(Failure::Build {
                build_id: record.id,
                version: record.version,
                failed: BuildFailed { message, log },
            });
        }
        Err(BuildFailure {
            refusal: Refusal::Unavailable(message),
            mut log,
        }) => {
            log.push_str(&message);
            build::store::finish(&app.pool, record.id, false, &log).await?;
            return Err(ApiError::Unavailable(message).into());
        }
    };
    if image != record.image {
        build::store::set_image(&app.pool, record.id, &image).await?;
    }
    let record = build::BuildRecord { image, ..record };
    build::store::finish(&app.pool, record.id, true, &log).await?;
    let (status, f) = match deploy.target {
        Target::Create(mut f) => {
            f.run.image = record.image.clone();
            f.runtime = Some(deploy.runtime.name.to_string());
            f.version = Some(record.version);
            if !store::insert(&app.pool, app.publisher.keys(), &f).await? {
                return Err(super::function_view::conflict(&f.name).into());
            }
            (StatusCode::CREATED, f)
        }
        Target::Update(mut f) => {
            f.run.image = record.image.clone();
            f.runtime = Some(deploy.runtime.name.to_string());
            f.version = Some(record.version);
            if !store::update(&app.pool, app.publisher.keys(), &f).await? {
                return Err(ApiError::NotFound(format!("no function named {name:?}")).into());
            }
            (StatusCode::OK, f)
        }
    };
    app.recent.forget_all();
    tracing::info!(version = record.version, image = %record.image, "deployed from source");
    Ok((
        status,
        serde_json::to_value(super::function_view::view_with_versions(&app, &f).await?)
            .expect("a function serializes"),
    ))
}
