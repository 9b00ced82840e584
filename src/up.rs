//! `granda up`'s composition: one ingress and one worker in one process. The one place this
//! wiring is written: `granda up`, the integration tests and the benchmark all build it here.
//!
//! The worker shares the ingress's metrics (the ingress serves them at `/metrics`), and the
//! ingress asks this worker's engine, in-process, for its registration checks and builds (as
//! `granda server` asks the workers of a queue over RabbitMQ). The order matters (the worker
//! takes the metrics before it hands out its engine) and is kept here.

use std::future::Future;

use anyhow::Context;
use sqlx::PgPool;

use crate::config::Settings;
use crate::producer::Application;
use crate::worker::Worker;

/// An ingress and a worker, wired together, not yet running.
pub struct Up {
    pub app: Application,
    pub worker: Worker,
}

impl Up {
    /// Builds both on `pool` (migrated): the ingress binds its port and reaches RabbitMQ, the
    /// worker reaches the Docker engine.
    pub async fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Up> {
        let app = Application::build_with_pool(settings.clone(), pool.clone())
            .await
            .context("starting the ingress (RabbitMQ must answer)")?;
        let worker = Worker::build(settings, pool)
            .await
            .context("starting the worker (the Docker engine must answer)")?
            .with_metrics(app.metrics());
        let app = app.with_engines(worker.engines());
        Ok(Up { app, worker })
    }

    /// Runs both until a future of `shutdown` completes (each gets its own, from the one stop
    /// signal), then waits for both to finish their work.
    pub(crate) async fn run<F>(self, shutdown: impl Fn() -> F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (served, worked) = tokio::join!(self.app.run(shutdown()), self.worker.run(shutdown()));
        served.and(worked)
    }
}
