//! A standalone worker's own HTTP endpoints on `GRANDA_WORKER_LISTEN`: `/healthz` (the process
//! is up: a failing dependency never fails it, as a restart cures none), `/readyz` (whether it
//! takes work, [`super::readiness`]; 503 naming what keeps it from it) and `/metrics` (the
//! worker's own series, Prometheus text). `granda up` serves
//! none of these here: its ingress serves the same metrics and readiness.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::Shared;

/// `GRANDA_WORKER_LISTEN`'s default for `granda worker`: the first free port of [`AUTO_PORTS`] on
/// 127.0.0.1, so that several workers on one host all start.
pub(crate) const AUTO: &str = "auto";

/// The ports `auto` tries, in order.
pub(crate) const AUTO_PORTS: std::ops::RangeInclusive<u16> = 9090..=9109;

/// Binds `GRANDA_WORKER_LISTEN` (`auto` or an address); the error names the setting, and says
/// what to do when the address is taken.
pub(crate) async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    use std::io::ErrorKind;
    if addr == AUTO {
        for port in AUTO_PORTS {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => return Ok(listener),
                Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("binding GRANDA_WORKER_LISTEN auto (127.0.0.1:{port})")
                    });
                }
            }
        }
        anyhow::bail!(
            "GRANDA_WORKER_LISTEN auto: ports {}-{} on 127.0.0.1 are all taken; set GRANDA_WORKER_LISTEN to a free address, or off",
            AUTO_PORTS.start(),
            AUTO_PORTS.end()
        );
    }
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Err(e).with_context(|| {
            format!(
                "binding GRANDA_WORKER_LISTEN {addr}: the address is in use (another worker on this host?); give each worker its own GRANDA_WORKER_LISTEN, or auto (the first free port of 127.0.0.1:{}-{}), or off",
                AUTO_PORTS.start(),
                AUTO_PORTS.end()
            )
        }),
        Err(e) => Err(e).with_context(|| format!("binding GRANDA_WORKER_LISTEN {addr}")),
    }
}

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
    let readiness = shared.readiness(
        &shared.served,
        matches!(db, Ok(Ok(_))),
        matches!(engine, Ok(Ok(_))),
    );
    shared.export_readiness(&shared.served, &readiness);
    let ready = readiness.ready();
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
            "degraded": readiness.degraded(),
            "worker": shared.worker_id,
            "checks": {
                "postgres": ok(readiness.postgres),
                "rabbitmq": ok(readiness.rabbitmq),
                "docker": ok(readiness.docker),
                "quorum": match readiness.quorum {
                    Some(true) => "ok",
                    Some(false) => "unavailable",
                    None => "unknown",
                },
            },
            "breakers_open": readiness.breakers_open,
            "reasons": readiness.reasons(),
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
    // A function deleted through an ingress has its series here too: dropped first.
    if let Err(e) = shared.metrics.forget_deleted(&shared.pool).await {
        tracing::warn!(error = %e, "could not drop the series of deleted functions");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}
