//! The `granda` command: `up`, `server`, `worker`, `migrate`.

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::config::Settings;
use crate::producer::Application;
use crate::worker::Worker;

#[derive(Parser, Debug)]
#[command(
    name = "granda",
    version,
    about = "Self-hosted serverless functions on Docker, RabbitMQ and Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug, Clone, Copy)]
pub enum Command {
    /// Ingress, worker and scheduler in one process: the single-machine default.
    Up,
    /// The HTTP ingress only.
    Server,
    /// The consumer pool only.
    Worker,
    /// Create the database if missing, apply migrations, and exit.
    Migrate,
}

/// Parses the command line and runs it until SIGINT or SIGTERM.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    crate::telemetry::init();
    run(cli.command, cli.settings, shutdown_signal()).await
}

/// Runs `command` until `shutdown` completes.
pub async fn run(
    command: Command,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let signal = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    match command {
        Command::Migrate => {
            crate::db::connect_and_migrate(&settings.database_url).await?;
            tracing::info!("database is migrated");
            Ok(())
        }
        Command::Server => Application::build(settings).await?.run(signal()).await,
        Command::Worker => {
            let pool = crate::db::connect_and_migrate(&settings.database_url).await?;
            Worker::build(&settings, pool).await?.run(signal()).await
        }
        Command::Up => {
            let pool = crate::db::connect_and_migrate(&settings.database_url).await?;
            let app = Application::build_with_pool(settings.clone(), pool.clone()).await?;
            let worker = Worker::build(&settings, pool)
                .await?
                .with_metrics(app.metrics());
            let (served, worked) = tokio::join!(app.run(signal()), worker.run(signal()));
            served.and(worked)
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
