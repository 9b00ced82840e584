//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// The process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// RabbitMQ, Postgres and (for `granda up`, which has one) the Docker engine all answer; 503
/// with the failing ones otherwise. A standalone ingress has no engine to check.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let engine = async {
        match &app.docker {
            Some(docker) => Some(docker.ping().await.is_ok()),
            None => None,
        }
    };
    let (db, broker, docker) = tokio::join!(
        sqlx::query("SELECT 1").execute(&app.pool),
        app.publisher.ready(),
        engine,
    );
    let mut checks = json!({
        "postgres": if db.is_ok() { "ok" } else { "unavailable" },
        "rabbitmq": if broker { "ok" } else { "unavailable" },
    });
    if let Some(docker) = docker {
        checks["docker"] = if docker { "ok" } else { "unavailable" }.into();
    }
    let ready = db.is_ok() && broker && docker.unwrap_or(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
