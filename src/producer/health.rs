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

/// RabbitMQ, Postgres and Docker all answer; 503 with the failing ones otherwise.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let (db, broker, docker) = tokio::join!(
        sqlx::query("SELECT 1").execute(&app.pool),
        app.publisher.ready(),
        app.docker.ping(),
    );
    let checks = json!({
        "postgres": if db.is_ok() { "ok" } else { "unavailable" },
        "rabbitmq": if broker { "ok" } else { "unavailable" },
        "docker": if docker.is_ok() { "ok" } else { "unavailable" },
    });
    let ready = db.is_ok() && broker && docker.is_ok();
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
