//! The `granda` command: the processes (`up`, `server`, `worker`, `migrate`), which alone take
//! the server settings, and the client commands (`fn`, `invoke`, `inv`, `hooks`, `events`,
//! `schedules`, `keys`, `completions`), which talk to a server's API and live in `crate::client`.

use clap::{Parser, Subcommand};

use crate::client::events::EventsCommand;
use crate::client::functions::FnCommand;
use crate::client::hooks::HooksCommand;
use crate::client::invocations::InvCommand;
use crate::client::invoke::InvokeArgs;
use crate::client::keys::KeysCommand;
use crate::client::{CliError, Client, ClientArgs};
use crate::config::Settings;
use crate::producer::Application;
use crate::worker::Worker;

#[derive(Parser, Debug)]
#[command(
    name = "granda",
    version,
    about = "Self-hosted serverless functions on Docker, RabbitMQ and Postgres",
    after_help = "Server settings (GRANDA_* env vars or flags) belong to the process commands: \
                  see `granda up --help`. Client commands talk to GRANDA_URL with GRANDA_KEY."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: TopCommand,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Every command of the `granda` binary.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum TopCommand {
    #[command(flatten)]
    Process(Command),
    /// Manage functions: init, deploy (from source or an image), ls, get, update, rm, builds.
    #[command(subcommand, name = "fn")]
    Fn(Box<FnCommand>),
    /// Deploy every function of a manifest (granda.yaml; `granda fn init` writes one).
    Deploy(crate::client::manifest::DeployFileArgs),
    /// Run a function and print its output (stdout only, so it pipes).
    Invoke(InvokeArgs),
    /// Read invocations: ls, get, logs, retry, cancel.
    #[command(subcommand)]
    Inv(InvCommand),
    /// Print a function's finished invocations with their output and logs; `--follow` for new ones.
    Logs(crate::client::logs::LogsArgs),
    /// Manage webhooks: create, ls, rm, rotate.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Events: publish, get, subscribe, unsubscribe, ls (subscriptions).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Manage API keys over the API: create, ls, revoke (an admin key is needed).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage cron schedules: create, ls, get, rm, pause, resume.
    #[command(subcommand)]
    Schedules(crate::client::schedules::SchedulesCommand),
    /// What each namespace and function used: invocations, duration, GB-seconds, cold starts.
    Usage(crate::client::usage::UsageArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// The processes. Only these take the server settings (`granda up --help` lists them).
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum Command {
    /// Ingress, worker and scheduler in one process: the single-machine default.
    Up(Box<Settings>),
    /// The HTTP ingress only.
    Server(Box<Settings>),
    /// The consumer pool only.
    Worker(Box<Settings>),
    /// Create the database if missing, apply migrations, seal stored secrets under the current
    /// key (`GRANDA_SECRETS_KEY`), and exit.
    Migrate(Box<Settings>),
}

impl Command {
    /// The settings this process runs with.
    pub(crate) fn settings(&self) -> &Settings {
        match self {
            Command::Up(s) | Command::Server(s) | Command::Worker(s) | Command::Migrate(s) => s,
        }
    }
}

/// Parses the command line and runs it: a process until SIGINT or SIGTERM, a client command until
/// done. A client command's error is one line on stderr and its exit code (see `CliError`).
pub async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(help) = process_help(&args) {
        print!("{help}");
        return Ok(());
    }
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
    let is_client = !matches!(cli.command, TopCommand::Process(_));
    let has_scheme = ["http://", "https://"]
        .iter()
        .any(|s| cli.client.url.starts_with(s));
    if is_client && !has_scheme {
        let e = CliError::Usage(format!(
            "--url {:?} needs a scheme, e.g. http://{}",
            cli.client.url, cli.client.url
        ));
        report(&e);
        std::process::exit(e.exit_code());
    }
    let client = Client::new(&cli.client);
    let outcome = match cli.command {
        TopCommand::Process(command) => {
            let settings = command.settings().clone();
            crate::telemetry::init_with(settings.log_format);
            let ran = run(command, settings, shutdown_signal()).await;
            // The spans still buffered go out before the process ends.
            tokio::task::spawn_blocking(crate::telemetry::shutdown)
                .await
                .ok();
            return ran;
        }
        TopCommand::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "granda", &mut std::io::stdout());
            Ok(())
        }
        TopCommand::Fn(command) => crate::client::functions::run(&client, *command).await,
        TopCommand::Deploy(args) => crate::client::manifest::deploy(&client, args).await,
        TopCommand::Invoke(args) => crate::client::invoke::run(&client, args).await,
        TopCommand::Inv(command) => crate::client::invocations::run(&client, command).await,
        TopCommand::Logs(args) => crate::client::logs::run(&client, args).await,
        TopCommand::Hooks(command) => crate::client::hooks::run(&client, command).await,
        TopCommand::Events(command) => crate::client::events::run(&client, command).await,
        TopCommand::Keys(command) => crate::client::keys::run(&client, command).await,
        TopCommand::Schedules(command) => crate::client::schedules::run(&client, command).await,
        TopCommand::Usage(args) => crate::client::usage::run(&client, args).await,
    };
    if let Err(e) = outcome {
        report(&e);
        std::process::exit(e.exit_code());
    }
    Ok(())
}

/// `granda PROCESS --help`: the process's own flags (the server settings) only, without the
/// client flags that every client command takes (`--url`, `--key`, `--json`, global on [`Cli`]).
/// `None` for any other command line.
pub(crate) fn process_help(args: &[String]) -> Option<String> {
    use clap::CommandFactory;
    let process = args.get(1)?;
    if !["up", "server", "worker", "migrate"].contains(&process.as_str())
        || !args.iter().any(|a| a == "--help" || a == "-h")
    {
        return None;
    }
    // Unbuilt, a subcommand has its own arguments only: the parent's globals are added when the
    // whole command is built.
    let mut sub = Cli::command()
        .find_subcommand(process)?
        .clone()
        .bin_name(format!("granda {process}"));
    Some(sub.render_long_help().to_string())
}

/// Prints a client error: one line, then a failed build's log tail.
fn report(e: &CliError) {
    let line = e.to_string().replace('\n', " ");
    eprintln!("granda: error: {}", line.trim());
    match e {
        CliError::BuildFailed { log, .. } if !log.is_empty() => {
            eprintln!("--- build log (last lines) ---\n{}", log.trim_end());
        }
        CliError::RunFailed { logs, .. } if !logs.is_empty() => {
            eprintln!("--- stderr (last lines) ---\n{}", logs.trim_end());
        }
        _ => {}
    }
}

/// Runs `command` until `shutdown` completes.
pub(crate) async fn run(
    command: Command,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match command {
        Command::Migrate(_) => {
            let pool = crate::db::connect_and_migrate_with_ca(
                &settings.database_url,
                settings.ca_file.as_deref(),
            )
            .await?;
            // Makes the installation's keys, and seals stored secrets under the current one.
            let keys = crate::seal::Keys::load(&pool, &settings).await?;
            crate::seal::reseal_stored(&pool, &keys).await?;
            tracing::info!("database is migrated");
            Ok(())
        }
        Command::Server(_) => Application::build(settings).await?.run(shutdown).await,
        Command::Worker(_) => {
            let mut settings = settings;
            settings
                .worker_listen
                .get_or_insert_with(|| crate::worker::endpoints::AUTO.to_string());
            let pool = crate::db::connect_and_migrate_with_ca(
                &settings.database_url,
                settings.ca_file.as_deref(),
            )
            .await?;
            Worker::build(&settings, pool).await?.run(shutdown).await
        }
        Command::Up(_) => {
            let pool = crate::db::connect_and_migrate_with_ca(
                &settings.database_url,
                settings.ca_file.as_deref(),
            )
            .await?;
            crate::up::Up::build(&settings, pool)
                .await?
                .run(shutdown)
                .await
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process's help lists the server settings only, and never a value that may be a secret.
    #[test]
    fn process_help_lists_its_own_flags_without_secret_values() {
        // SAFETY: only this test sets these; no other test of the crate reads them.
        unsafe {
            std::env::set_var("GRANDA_AMQP_URL", "amqp://user:s3cr3t-amqp@rabbit:5672/%2f");
            std::env::set_var("GRANDA_DATABASE_URL", "postgres://u:s3cr3t-pg@db/granda");
        }
        let args = |line: &str| line.split(' ').map(String::from).collect::<Vec<_>>();
        let worker = process_help(&args("granda worker --help")).expect("a process's help");
        assert!(
            worker.contains("--amqp-url") && worker.contains("GRANDA_AMQP_URL"),
            "{worker}"
        );
        for hidden in ["--url", "--key", "--json", "s3cr3t", "guest:guest"] {
            assert!(!worker.contains(hidden), "{hidden} in:\n{worker}");
        }
        assert!(process_help(&args("granda fn ls --help")).is_none());
        assert!(process_help(&args("granda worker")).is_none());
        // SAFETY: as above.
        unsafe {
            std::env::remove_var("GRANDA_AMQP_URL");
            std::env::remove_var("GRANDA_DATABASE_URL");
        }
    }
}
