//! The `granda` command: the processes (`up`, `server`, `worker`, `migrate`), key management
//! straight in the database (`keys`), and the client commands (`fn`, `invoke`, `inv`, `hooks`,
//! `events`, `schedules`, `completions`), which live in `crate::client`.

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::client::events::EventsCommand;
use crate::client::functions::FnCommand;
use crate::client::hooks::HooksCommand;
use crate::client::invocations::InvCommand;
use crate::client::invoke::InvokeArgs;
use crate::client::{CliError, Client, ClientArgs};
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
    pub command: TopCommand,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Every command of the `granda` binary.
#[derive(Subcommand, Debug, Clone)]
pub enum TopCommand {
    #[command(flatten)]
    Process(Command),
    /// Manage functions: deploy (from source or an image), ls, get, update, rm.
    #[command(subcommand, name = "fn")]
    Fn(Box<FnCommand>),
    /// Run a function and print its output (stdout only, so it pipes).
    Invoke(InvokeArgs),
    /// Read invocations: ls, get, logs, retry.
    #[command(subcommand)]
    Inv(InvCommand),
    /// Manage webhooks: create, ls, rm, rotate.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Publish events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Manage cron schedules: create, ls, get, rm, pause, resume.
    #[command(subcommand)]
    Schedules(crate::client::schedules::SchedulesCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
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

/// Parses the command line and runs it: a process until SIGINT or SIGTERM, a client command until
/// done. A client command's error is one line on stderr and its exit code (see `CliError`).
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, TopCommand::Process(_)) {
        // A client command piped into `head` ends quietly when the pipe closes, as Unix tools do,
        // instead of panicking on a failed write.
        // SAFETY: setting a signal's disposition to its default, before any thread is spawned
        // by this code; no handler function is installed.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let client = Client::new(&cli.client);
    let outcome = match cli.command {
        TopCommand::Process(command) => {
            crate::telemetry::init();
            return run(command, cli.settings, shutdown_signal()).await;
        }
        TopCommand::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "granda", &mut std::io::stdout());
            Ok(())
        }
        TopCommand::Fn(command) => crate::client::functions::run(&client, *command).await,
        TopCommand::Invoke(args) => crate::client::invoke::run(&client, args).await,
        TopCommand::Inv(command) => crate::client::invocations::run(&client, command).await,
        TopCommand::Hooks(command) => crate::client::hooks::run(&client, command).await,
        TopCommand::Events(command) => crate::client::events::run(&client, command).await,
        TopCommand::Schedules(command) => crate::client::schedules::run(&client, command).await,
    };
    if let Err(e) = outcome {
        report(&e);
        std::process::exit(e.exit_code());
    }
    Ok(())
}

/// Prints a client error: one line, then a failed build's log tail.
fn report(e: &CliError) {
    let line = e.to_string().replace('\n', " ");
    eprintln!("granda: error: {}", line.trim());
    if let CliError::BuildFailed { log, .. } = e
        && !log.is_empty()
    {
        eprintln!("--- build log (last lines) ---\n{}", log.trim_end());
    }
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
