//! The ingress: the axum HTTP API. It stores each event as a `queued` invocation, publishes it to
//! RabbitMQ, and for sync calls waits for the reply.

mod answers;
mod auth;
mod budget;
mod builds;
mod callback_keys;
mod cancel;
mod cors;
pub mod cron;
mod deploy;
mod enqueue;
mod events;
mod extract;
mod function_view;
mod functions;
mod health;
pub mod inbound;
mod ingress;
mod invocations;
pub(crate) mod invoke;
mod keys;
mod namespaces;
mod openapi;
mod origin;
mod outbox;
mod pruner;
mod quota;
mod recent;
mod records_size;
mod schedules;
pub mod serve;
mod ui;
mod usage;
mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, on, post};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::broker::{Publisher, Topology};
use crate::config::{AuthMode, Settings};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What every request handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) pool: PgPool,
    pub(crate) publisher: Arc<Publisher>,
    /// Where registration checks and builds go: the workers of a queue, over RabbitMQ, or
    /// `granda up`'s own worker. The ingress itself talks to no Docker engine.
    pub(crate) engines: Arc<dyn crate::engines::Engines>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) metrics: Arc<Metrics>,
    /// API keys and functions read in the last second.
    pub(crate) recent: Arc<recent::Recent>,
    /// The bytes unauthenticated request bodies may hold at once.
    pub(crate) body_budget: Arc<budget::BodyBudget>,
    /// Subscriptions, indexed by pattern, as of their last change.
    pub(crate) subscriptions: Arc<crate::event::Cache>,
    /// Which refused webhook deliveries are written down.
    pub(crate) rejections: Arc<crate::webhook::rejections::Recorder>,
}

/// A bound, connected ingress, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl AppState {
    /// What the loops beside the API (outbox, schedules, AMQP router) share with it.
    pub(crate) fn ingress(&self) -> crate::producer::ingress::Ingress {
        crate::producer::ingress::Ingress {
            pool: self.pool.clone(),
            publisher: self.publisher.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl Application {
    /// Connects to Postgres (creating and migrating the database) and RabbitMQ, and binds
    /// `settings.listen` (port 0 picks a free port). It talks to no Docker engine unless given
    /// one ([`Application::with_engine`], as `granda up` does).
    pub(crate) async fn build(settings: Settings) -> anyhow::Result<Application> {
        let pool = crate::db::connect_and_migrate_with_ca(
            &settings.database_url,
            settings.ca_file.as_deref(),
        )
        .await?;
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
        let nodes = crate::broker::Nodes::from_settings(&settings)?;
        let keys = Arc::new(crate::seal::Keys::load(&pool, &settings).await?);
        crate::seal::reseal_stored(&pool, &keys)
            .await
            .context("re-sealing stored secrets under the current key")?;
        let publisher = Publisher::start(nodes.clone(), Topology::new(&settings.amqp_prefix), keys)
            .await
            .context("connecting to RabbitMQ")?;
        declare_inbound(&nodes, publisher.topology())
            .await
            .context("declaring the inbound exchange and queues")?;
        let metrics: Arc<Metrics> = Arc::default();
        let body_budget = Arc::new(budget::BodyBudget::new(
            settings.unauthenticated_body_budget_bytes,
            std::time::Duration::from_millis(settings.body_read_timeout_ms),
            metrics.clone(),
        ));
        let engines = Arc::new(
            crate::engines::Remote::new(
                nodes.clone(),
                &settings.amqp_prefix,
                std::time::Duration::from_millis(settings.image_pull_timeout_ms),
            )
            .with_pool(pool.clone()),
        );
        Ok(Application {
            listener,
            state: AppState {
                pool,
                publisher,
                engines,
                settings: Arc::new(settings),
                metrics,
                recent: Arc::default(),
                body_budget,
                rejections: Arc::default(),
                subscriptions: Arc::default(),
            },
        })
    }

    /// Sends registration checks and builds to `engines`, which also answer in `/readyz`: for
    /// `granda up`, whose own worker's engine is given ([`crate::worker::Worker::engines`]).
    pub(crate) fn with_engines(mut self, engines: Arc<dyn crate::engines::Engines>) -> Application {
        self.state.engines = engines;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    /// The metrics this ingress serves; give them to an in-process worker to serve its too.
    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests, waits for its loops
    /// to stop (at most [`crate::shutdown::BOUND`]) and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        crate::shutdown::run_until(shutdown, "ingress", |handle| self.serve(handle)).await
    }

    /// Serves until `shutdown` says stop, then finishes in-flight requests and returns. Its loops
    /// (outbox, cron ticker, pruner, records' size, inbound router) each hold a handle of
    /// `shutdown`'s signal, and stop with it: the one in a step finishes it first.
    pub async fn serve(self, shutdown: crate::shutdown::Shutdown) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "ingress listening");
        let ingress = self.state.ingress();
        tokio::spawn(crate::producer::outbox::run(
            ingress.clone(),
            shutdown.handle("outbox"),
        ));
        tokio::spawn(crate::producer::cron::ticker::run(
            ingress.clone(),
            shutdown.handle("cron ticker"),
        ));
        tokio::spawn(pruner::run(ingress.clone(), shutdown.handle("pruner")));
        tokio::spawn(records_size::run(
            ingress.clone(),
            std::time::Duration::from_millis(self.state.settings.size_sample_ms),
            shutdown.handle("records size"),
        ));
        tokio::spawn(crate::producer::inbound::run(
            ingress,
            shutdown.handle("inbound router"),
        ));
        let limits = serve::Limits::from_settings(&self.state.settings);
        let metrics = self.state.metrics.clone();
        // Each request carries its caller's address (a function's `REMOTE_ADDR`).
        serve::serve(self.listener, router(self.state), limits, metrics, shutdown).await;
        Ok(())
    }
}

/// Declares the inbound exchange and queues, so publishers can publish before a router runs.
async fn declare_inbound(nodes: &crate::broker::Nodes, topology: &Topology) -> anyhow::Result<()> {
    let (connection, _) = nodes.connect("ingress-setup").await?;
    let channel = connection.create_channel().await?;
    let declared = topology.declare_inbound(&channel).await;
    let _ = connection.close(200, "OK".into()).await;
    Ok(declared?)
}

/// Every route of the API.
pub(crate) fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let origins = origin::Origins::of(&state.settings);
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
        .route("/v1/functions/{name}/builds/{version}", get(builds::get))
        .route("/v1/functions/{name}/rollback", post(builds::rollback))
        .route(
            "/v1/functions/{name}/invocations",
            post(invoke::no_wait).get(invocations::list),
        )
        .route(
            "/fn/{name}",
            on(invoke::web_methods(), invoke::web).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                budget::unauthenticated,
            )),
        )
        .route(
            "/fn/{name}/{*path}",
            on(invoke::web_methods(), invoke::web).layer(axum::middleware::from_fn_with_state(
                state.clone(),
                budget::unauthenticated,
            )),
        )
        .route("/v1/invocations", get(invocations::list_all))
        .route("/v1/invocations/{id}", get(invocations::get))
        .route("/v1/invocations/{id}/retry", post(invocations::retry))
        .route("/v1/invocations/{id}/cancel", post(cancel::cancel))
        .route("/v1/dead-letters", get(invocations::dead_letters))
        .route(
            "/v1/dead-letters/{id}",
            axum::routing::delete(invocations::discard),
        )
        .route(
            "/v1/functions/{name}/subscriptions",
            post(events::subscribe).get(events::subscriptions),
        )
        .route(
            "/v1/functions/{name}/subscriptions/{id}",
            axum::routing::delete(events::unsubscribe),
        )
        .route("/v1/events/{topic}", post(events::publish).get(events::get))
        .route(
            "/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/schedules/{id}",
            get(schedules::get)
                .put(schedules::update)
                .delete(schedules::delete),
        )
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/v1/webhooks/{id}/rejections", get(webhooks::rejections))
        .route("/hooks/{id}", post(webhooks::receive))
        .route(
            "/v1/functions/{name}/callback-key",
            get(callback_keys::get).post(callback_keys::rotate),
        )
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/usage", get(usage::get))
        .route(
            "/v1/namespaces",
            post(namespaces::create).get(namespaces::list),
        )
        .route(
            "/v1/namespaces/{name}",
            get(namespaces::get)
                .put(namespaces::update)
                .delete(namespaces::delete),
        )
        .route("/", get(health::index))
        .route("/openapi.json", get(openapi::serve))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .nest(
            "/ui",
            ui::routes(state.clone()).layer(axum::middleware::from_fn(crate::metrics::note_route)),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        // Before auth: a path asked of the other origin is refused whoever asks.
        .layer(axum::middleware::from_fn_with_state(
            origins,
            origin::separate,
        ))
        // Requests refused by auth or the body limit are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track_http,
        ))
        // Outermost: every request is a span, continuing the caller's trace (`crate::telemetry`).
        .layer(axum::middleware::from_fn(crate::telemetry::trace_http))
        .with_state(state)
}
