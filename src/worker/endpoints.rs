//! A standalone worker's own HTTP endpoints on `GRANDA_WORKER_LISTEN`: `/healthz` (the process
//! is up), `/readyz` (RabbitMQ connected, Postgres and the Docker engine answer; 503 naming the
//! failing ones) and `/metrics` (the worker's own series, Prometheus text). `granda up` serves
//! none of these here: its ingress serves the same metrics and readiness.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::Shared;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let (db, engine) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&shared.pool)),
        tokio::time::timeout(CHECK_TIMEOUT, shared.runner.docker().ping()),
    );
    let db = matches!(db, Ok(Ok(_)));
    let engine = matches!(engine, Ok(Ok(_)));
    let broker = shared.connected.load(Ordering::Relaxed);
    let open = shared.breakers.open_queues(std::time::Instant::now());
    let ready = db && engine && broker;
    let ok = |b: bool| if b { "ok" } else { "unavailable" };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "ready": ready,
            "worker": shared.worker_id,
            "checks": {"postgres": ok(db), "rabbitmq": ok(broker), "docker": ok(engine)},
            "breakers_open": open,
        })),
    )
        .into_response()
}

/// The worker's series; with `GRANDA_METRICS_AUTH=key` (and `GRANDA_AUTH=on`) only for an
/// admin key, the same rule as the ingress's `/metrics`.
async fn metrics(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    if shared.metrics_need_key {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let scope = match token {
            Some(token) => crate::keys::verify(&shared.pool, token.trim()).await,
            None => Ok(None),
        };
        match scope {
            Ok(Some(crate::keys::Scope::Admin)) => {}
            Ok(Some(_)) => {
                return crate::error::ApiError::Forbidden(
                    "/metrics needs an admin key (GRANDA_METRICS_AUTH=key)".into(),
                )
                .into_response();
            }
            Ok(None) => {
                return crate::error::ApiError::Unauthorized(
                    "/metrics needs an admin key: Authorization: Bearer <key> \
                     (GRANDA_METRICS_AUTH=key)"
                        .into(),
                )
                .into_response();
            }
            Err(e) => return crate::error::ApiError::from(e).into_response(),
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}
