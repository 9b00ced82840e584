//! The index (`/`), liveness, readiness and metrics.

use crate::error::Denied;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    pub(crate) status: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    pub(crate) checks: std::collections::BTreeMap<String, String>,
}

/// `GET /`: a browser (an `Accept` that names `text/html`) is sent to the dashboard (303 to
/// `/ui`); any other client gets a small JSON index: name, version and where the API's
/// documents are. Needs no key.
pub(crate) async fn index(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let mut response = if wants_html(&headers) {
        Redirect::to(super::ui::BASE).into_response()
    } else {
        let base = app.settings.public_url();
        Json(json!({
            "name": "granda",
            "version": env!("CARGO_PKG_VERSION"),
            "links": {
                "openapi": format!("{base}/openapi.json"),
                "ui": format!("{base}{}", super::ui::BASE),
                "healthz": format!("{base}/healthz"),
            },
        }))
        .into_response()
    };
    // The answer depends on `Accept`: caches must keep the two apart.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// Whether `Accept` asks for HTML: a `text/html` (or `application/xhtml+xml`) range whose `q`
/// is not 0. `*/*` alone is not a browser.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (media == "text/html" || media == "application/xhtml+xml") && !refused
        })
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "system", summary = "Liveness",
    description = "200 while the process is up. Needs no key.", responses((status = 200, body = Health)), security(()))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// RabbitMQ, Postgres and (for `granda up`, which has one) the Docker engine all answer, and
/// RabbitMQ confirms a write to a quorum queue (`quorum`: without it no invoke can be accepted,
/// whatever node the ingress reaches, so an orchestrator should route callers elsewhere); 503
/// with the failing ones otherwise. A standalone ingress has no engine to check. Open circuit
/// breakers are the workers' matter (their own `/readyz`): the ingress still accepts the work.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "system", summary = "Readiness",
    description = "200 when Postgres, RabbitMQ and (for `granda up`) the Docker engine answer and RabbitMQ confirms a write to a quorum queue within `GRANDA_PUBLISH_TIMEOUT_MS`; 503 naming the ones that don't (`quorum: unavailable` while a majority of the broker's nodes is down: invokes would be refused). Needs no key.", responses((status = 200, body = Readiness), (status = 503, body = Readiness)), security(()))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    let (db, broker, docker) = tokio::join!(
        sqlx::query("SELECT 1").execute(&app.pool),
        app.publisher.ready(),
        app.engines.ready(),
    );
    let quorum = broker && app.publisher.quorum().await;
    let mut checks = json!({
        "postgres": if db.is_ok() { "ok" } else { "unavailable" },
        "rabbitmq": if broker { "ok" } else { "unavailable" },
        "quorum": if quorum { "ok" } else { "unavailable" },
    });
    if let Some(docker) = docker {
        checks["docker"] = if docker { "ok" } else { "unavailable" }.into();
    }
    let ready = db.is_ok() && broker && quorum && docker.unwrap_or(true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "system", summary = "Prometheus metrics",
    description = "This process's counters, gauges and histograms in the Prometheus text format (0.0.4). Needs an admin key.", responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String), Denied))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Response {
    // Deleted through another ingress, or run here by a worker after the delete: dropped first.
    if let Err(e) = app.metrics.forget_deleted(&app.pool).await {
        tracing::warn!(error = %e, "could not drop the series of deleted functions");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn browsers_want_html_and_api_clients_do_not() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(&accept(firefox)));
        assert!(wants_html(&accept("TEXT/HTML")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("text/html;q=0, application/json")));
        assert!(!wants_html(&HeaderMap::new()));
    }
}
