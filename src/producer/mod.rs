//! The ingress: the axum HTTP API. It stores each event as a `queued` invocation, publishes it to
//! RabbitMQ, and for sync calls waits for the reply.

pub mod auth;
pub mod extract;
pub mod functions;
pub mod health;
pub mod invocations;
pub mod invoke;
pub mod keys;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use bollard::Docker;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::broker::{Publisher, Topology};
use crate::config::{AuthMode, Settings};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub docker: Docker,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
}

/// A bound, connected ingress, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database), RabbitMQ and Docker, and binds
    /// `settings.listen` (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let pool = crate::db::connect_and_migrate(&settings.database_url).await?;
        Application::build_with_pool(settings, pool).await
    }

    pub async fn build_with_pool(
        mut settings: Settings,
        pool: PgPool,
    ) -> anyhow::Result<Application> {
        settings.check()?;
        match settings.auth {
            AuthMode::Off => tracing::warn!(
                "GRANDA_AUTH=off: the API asks for no key; anyone who reaches it can do anything"
            ),
            AuthMode::On => {
                if let Some(key) = crate::keys::bootstrap(&pool, settings.admin_key.as_ref())
                    .await
                    .context("making sure an admin API key exists")?
                {
                    // Printed once, on the terminal rather than in the logs; only its hash is kept.
                    eprintln!(
                        "\nGranda made the first admin API key. It is shown only now; keep it:\n\n    {}\n",
                        key.0
                    );
                }
            }
        }
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        if settings.public_url.is_none() {
            settings.public_url = Some(format!("http://{addr}"));
        }
        let publisher =
            Publisher::connect(&settings.amqp_url, Topology::new(&settings.amqp_prefix))
                .await
                .context("connecting to RabbitMQ")?;
        let docker = crate::docker::connect(settings.docker_host.as_deref(), 600)
            .context("connecting to the Docker engine")?;
        Ok(Application {
            listener,
            state: AppState {
                pool,
                publisher,
                docker,
                settings: Arc::new(settings),
                metrics: Arc::default(),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "ingress listening");
        let app = router(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")
    }
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route(
            "/v1/functions",
            post(functions::create).get(functions::list),
        )
        .route(
            "/v1/functions/{name}",
            get(functions::get)
                .put(functions::update)
                .delete(functions::delete),
        )
        .route("/v1/functions/{name}/invoke", post(invoke::sync))
        .route(
            "/v1/functions/{name}/invocations",
            post(invoke::r#async).get(invocations::list),
        )
        .route("/fn/{name}", post(invoke::sync))
        .route("/v1/invocations/{id}", get(invocations::get))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/openapi.json", get(openapi::serve))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state)
}
