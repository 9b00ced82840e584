//! The `granda` command: `up`, `server`, `worker`, `migrate`, `keys`.

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

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Ingress, worker and scheduler in one process: the single-machine default.
    Up,
    /// The HTTP ingress only.
    Server,
    /// The consumer pool only.
    Worker,
    /// Create the database if missing, apply migrations, and exit.
    Migrate,
    /// Manage API keys (straight in the database; no server needed).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum KeysCommand {
    /// Make a key and print it once (only its hash is stored).
    Create {
        /// What the key is for, e.g. `ci`.
        #[arg(long)]
        name: String,
        /// `admin` (everything) or `invoke` (call functions, read invocations).
        #[arg(long, value_enum, default_value = "invoke")]
        scope: crate::keys::Scope,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its id.
    Revoke { id: uuid::Uuid },
}

/// Runs a `granda keys` command against the database.
async fn keys_command(command: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    let pool = crate::db::connect_and_migrate(&settings.database_url).await?;
    match command {
        KeysCommand::Create { name, scope } => {
            let (stored, secret) = crate::keys::create(&pool, &name, scope).await?;
            eprintln!(
                "made {} key {:?} (id {}); it is shown only now:",
                scope.as_str(),
                stored.name,
                stored.id
            );
            println!("{}", secret.0);
        }
        KeysCommand::List => {
            for k in crate::keys::list(&pool).await? {
                let state = match k.revoked_at {
                    Some(at) => format!("revoked {at}"),
                    None => "live".to_string(),
                };
                println!(
                    "{}\t{}\t{}\t{}…\t{}",
                    k.id, k.scope, k.name, k.prefix, state
                );
            }
        }
        KeysCommand::Revoke { id } => {
            anyhow::ensure!(
                crate::keys::revoke(&pool, id).await?,
                "no live key with id {id}"
            );
            eprintln!("revoked {id}");
        }
    }
    Ok(())
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
        Command::Keys(keys) => keys_command(keys, &settings).await,
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
