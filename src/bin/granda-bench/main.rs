//! `granda-bench`: Granda against the raw Docker engine, in one run, on this machine.
//!
//! Starts an in-process Granda (ingress + worker) against the running RabbitMQ, Postgres and
//! Docker, then measures sync invoke latency over HTTP and async burst throughput, and the same
//! container run straight through the Docker API; `--scenario hot` measures hot functions against
//! requests straight to the same kind of process; `--scenario soak` holds a constant load for
//! minutes and prints sizes, RSS and latency each minute. Prints a table with ratios.
//!
//! Layout: `pipeline` (sync latency and bursts against direct engine runs), `scheduler` (the
//! adaptive concurrency against a sweep of fixed settings), `hot` (warm and hot modes against
//! direct requests), `fairness`, `soak` (issue 28's long run); this file parses the arguments and sets up the throwaway installation.

mod cpu;
mod fairness;
mod hot;
mod pipeline;
mod scheduler;
mod soak;

use hot::{Lean, body_rows, hot_rows, warm_rows};
use pipeline::{Direct, granda_burst_of, pipeline_scenario};
use scheduler::scheduler_scenario;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use granda::broker::Topology;
use granda::config::Settings;
use granda::function::{InputMode, RunSpec, Snapshot};
use granda::worker::Worker;
use granda::worker::container::{Caps, Runner};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

/// The admin key of the benchmark's own throwaway installation.
const BENCH_KEY: &str = "gk_bench-admin-key-0123456789abcdef";

#[derive(Parser, Debug)]
#[command(about = "Benchmark Granda against direct Docker engine runs")]
pub(crate) struct Args {
    /// Sequential sync calls (and direct runs) for the latency rows.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Invocations in the async burst (and direct runs in the direct burst).
    #[arg(long, default_value_t = 50)]
    burst: usize,
    /// Concurrency of the worker, and of the direct burst.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Image of the function (stdin to stdout).
    #[arg(long, default_value = "granda-test/echo")]
    image: String,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::Pipeline)]
    scenario: Scenario,
    /// Image of the hot function (`granda-test/hot` is `hot/examples/echo.rs`).
    #[arg(long, default_value = "granda-test/hot")]
    hot_image: String,
    /// Hot rows: sequential sync calls for the latency row, and calls per client for the
    /// throughput row.
    #[arg(long, default_value_t = 500)]
    hot_calls: usize,
    /// Scheduler scenario: how long each closed-loop measurement lasts, in seconds (the first
    /// fifth is a warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Scheduler scenario: the fixed concurrencies to compare the defaults with.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    sweep: Vec<usize>,
    /// Scheduler scenario: only the workloads whose name contains this (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Scheduler scenario: a hot function that sleeps `NAP_MS` per call (I/O-bound rows are
    /// skipped when the engine lacks it).
    #[arg(long, default_value = "granda-test/hot-nap")]
    nap_image: String,
    /// Soak scenario: how long the load lasts, in minutes.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Soak scenario: one call in this many goes to a cold function.
    #[arg(long, default_value_t = 50)]
    cold_every: u64,
    /// Soak scenario: `GRANDA_RETENTION_S` for the installation (unless set in the environment).
    #[arg(long, default_value_t = 120)]
    retention_s: u64,
    /// Soak scenario: `GRANDA_PRUNE_INTERVAL_MS` (unless set in the environment).
    #[arg(long, default_value_t = 10_000)]
    prune_interval_ms: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Sync latency and async burst throughput against direct engine runs (fixed concurrency).
    Pipeline,
    /// The workloads of issue 16 with default settings against a sweep of fixed concurrencies:
    /// throughput and p50 ratios against the best fixed setting for each.
    Scheduler,
    /// Only the hot rows: sync latency and throughput of `mode: hot` against direct requests to
    /// the same kind of process over its socket.
    Hot,
    /// Fair sharing (issue 27): one function's sync calls during a burst of 40 slow calls of
    /// another, against the same calls on an idle installation (default settings).
    Fairness,
    /// Issue 28's soak: default settings under a constant load (half the measured hot capacity,
    /// with cold calls and 64 KiB bodies) for `--minutes`, with a short retention; a row a minute
    /// (database and table size, dead tuples, RSS, p50/p99), then a check that every call was
    /// recorded exactly once until pruned.
    Soak,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The same logging as `granda up` (its spans cost something per call), to stderr.
    granda::telemetry::init();
    if args.scenario == Scenario::Soak {
        soak::set_retention(&args);
    }
    let tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut settings = Settings::from_env();
    let db_name = format!("granda_bench_{tag}");
    let base = granda::db::with_default_user(&settings.database_url);
    let server = base
        .rsplit_once('/')
        .map(|(s, _)| s.to_string())
        .context("database URL")?;
    settings.database_url = format!("{server}/{db_name}");
    settings.listen = "127.0.0.1:0".parse()?;
    settings.amqp_prefix = format!("granda-bench-{tag}");
    settings.worker_id = Some(format!("bench-{tag}"));
    settings.admin_key = Some(granda::keys::Secret(BENCH_KEY.to_string()));
    // The pipeline pins the concurrency; the hot rows and the scheduler's default runs use the
    // defaults (the scheduler scenario starts a worker per setting).
    if args.scenario == Scenario::Pipeline {
        settings.max_concurrency = Some(args.concurrency);
        settings.min_concurrency = args.concurrency;
    }

    let pool = granda::db::connect_and_migrate(&settings.database_url).await?;
    // As `granda up`: the ingress checks images and builds on this worker's engine.
    let granda::Up { app, worker } = granda::Up::build(&settings, pool.clone()).await?;
    let address = app.local_addr();
    let base_url = format!("http://{address}");
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let topology = Topology::new(&settings.amqp_prefix);
    let served = tokio::spawn(app.run(signal(stopped.clone())));
    // Registration checks the image on a worker of the queue, so one runs from the start; the
    // scheduler scenario stops it once its functions are registered and starts its own.
    let (registered, registering) = watch::channel(false);
    let worked = match args.scenario {
        Scenario::Scheduler => tokio::spawn(worker.run(signal(registering))),
        _ => tokio::spawn(worker.run(signal(stopped.clone()))),
    };

    // Calls carry an admin key, as real clients do: the key check is part of what is measured.
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {BENCH_KEY}").parse()?,
    );
    granda::tls::install_provider();
    let client = reqwest::Client::builder().default_headers(auth).build()?;
    let docker = granda::docker::connect(settings.docker_host.as_deref(), 120)?;
    granda::docker::ensure_image(&docker, &args.image).await?;
    register(
        &client,
        &base_url,
        json!({"name": "echo", "image": args.image, "memory_mb": 64}),
    )
    .await?;
    let function = Snapshot {
        name: "echo".into(),
        run: RunSpec {
            image: args.image.clone(),
            timeout_ms: 30_000,
            memory_mb: 64,
            cpus: 1.0,
            env: Default::default(),
            input: InputMode::Stdin,
            ..RunSpec::default()
        },
        ..Snapshot::default()
    };
    let direct = Direct {
        docker: docker.clone(),
        runner: Runner::new(
            docker.clone(),
            format!("bench-direct-{tag}"),
            Caps {
                stdout: 1 << 20,
                stderr: 1 << 20,
            },
        ),
        function,
    };

    let mut checked = Ok(());
    match args.scenario {
        Scenario::Scheduler => {
            scheduler_scenario(
                &args, &client, &base_url, address, &pool, &docker, &settings, registered,
            )
            .await?;
        }
        Scenario::Pipeline => {
            pipeline_scenario(&args, &client, &base_url, &pool, direct).await?;
        }
        Scenario::Fairness => {
            fairness::fairness_scenario(&client, &base_url, &docker, &pool).await?;
        }
        Scenario::Soak => {
            // A failed check still cleans up below.
            checked =
                soak::soak_scenario(&args, &client, &base_url, address, &pool, &settings).await;
        }
        Scenario::Hot => {
            let mut rows = hot_rows(&args, &client, &base_url, address, &pool, &direct).await?;
            rows.extend(body_rows(&args, address, &pool).await?);
            println!();
            println!("| measure | Granda | direct | ratio (Granda / direct) | target |");
            println!("|---|---:|---:|---:|---|");
            for row in rows {
                println!("{row}");
            }
        }
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), worked).await;
    pool.close().await;
    if let Ok(connection) = granda::broker::connect(&settings.amqp_url, "bench-cleanup").await {
        let _ = granda::broker::delete_topology(&connection, &topology, &["default"], &[]).await;
    }
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
    }
    checked
}

pub(crate) fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) * p) / 100]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A table row comparing a latency through Granda with the direct one: both in ms (with
/// `decimals` digits after the point), their ratio and the target.
pub(crate) fn latency_row(
    measure: &str,
    (granda, direct): (Duration, Duration),
    decimals: usize,
    target: &str,
) -> String {
    let (g, d) = (ms(granda), ms(direct));
    format!(
        "| {measure} | {g:.decimals$} | {d:.decimals$} | {:.2} | {target} |",
        g / d
    )
}

/// Runs a worker with `settings` while `work` runs, then stops it (its kept containers go).
pub(crate) async fn with_worker<T>(
    settings: &Settings,
    pool: &sqlx::PgPool,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let worker = Worker::build(settings, pool.clone()).await?;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let result = work.await;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
    result
}

/// Registers a function (its image checked on this process's worker's engine).
pub(crate) async fn register(
    client: &reqwest::Client,
    base_url: &str,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let r = client
        .post(format!("{base_url}/v1/functions"))
        .json(&body)
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        bail!("registering {}: {}", body["name"], r.text().await?);
    }
    Ok(())
}
