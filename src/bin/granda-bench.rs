//! `granda-bench`: Granda against the raw Docker engine, in one run, on this machine.
//!
//! Starts an in-process Granda (ingress + worker) against the running RabbitMQ, Postgres and
//! Docker, then measures sync invoke latency over HTTP and async burst throughput, and the same
//! container run straight through the Docker API; `--scenario hot` measures hot functions against
//! requests straight to the same kind of process. Prints a table with ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::{AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use clap::Parser;
use futures_util::StreamExt;
use granda::broker::Topology;
use granda::config::Settings;
use granda::function::{InputMode, Snapshot};
use granda::producer::Application;
use granda::worker::Worker;
use granda::worker::container::{Caps, Runner};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

/// The admin key of the benchmark's own throwaway installation.
const BENCH_KEY: &str = "gk_bench-admin-key-0123456789abcdef";

#[derive(Parser, Debug)]
#[command(about = "Benchmark Granda against direct Docker engine runs")]
struct Args {
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
    /// Scheduler scenario: how long each function run sleeps, in seconds.
    #[arg(long, default_value_t = 1)]
    run_seconds: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Sync latency and async burst throughput against direct engine runs (fixed concurrency).
    Pipeline,
    /// A burst into an idle worker: how the scheduler's concurrency follows the backlog, and the
    /// drain time against the ideal.
    Scheduler,
    /// Only the hot rows: sync latency and throughput of `mode: hot` against direct requests to
    /// the same kind of process over its socket.
    Hot,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The same logging as `granda up` (its spans cost something per call), to stderr.
    granda::telemetry::init();
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
    settings.max_concurrency = Some(args.concurrency);
    settings.admin_key = Some(granda::keys::Secret(BENCH_KEY.to_string()));
    settings.min_concurrency = match args.scenario {
        Scenario::Pipeline | Scenario::Hot => args.concurrency,
        Scenario::Scheduler => 1,
    };

    let pool = granda::db::connect_and_migrate(&settings.database_url).await?;
    let app = Application::build_with_pool(settings.clone(), pool.clone()).await?;
    let worker = Worker::build(&settings, pool.clone())
        .await?
        .with_metrics(app.metrics());
    let worker_metrics = app.metrics();
    let address = app.local_addr();
    let base_url = format!("http://{address}");
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let topology = Topology::new(&settings.amqp_prefix);
    let served = tokio::spawn(app.run(signal(stopped.clone())));
    let worked = tokio::spawn(worker.run(signal(stopped.clone())));

    // Calls carry an admin key, as real clients do: the key check is part of what is measured.
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {BENCH_KEY}").parse()?,
    );
    let client = reqwest::Client::builder().default_headers(auth).build()?;
    let docker = granda::docker::connect(settings.docker_host.as_deref(), 120)?;
    granda::docker::ensure_image(&docker, &args.image).await?;
    let created = client
        .post(format!("{base_url}/v1/functions"))
        .json(&json!({"name": "echo", "image": args.image, "memory_mb": 64}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("registering the function: {}", created.text().await?);
    }
    let function = Snapshot {
        name: "echo".into(),
        image: args.image.clone(),
        timeout_ms: 30_000,
        memory_mb: 64,
        cpus: 1.0,
        env: Default::default(),
        input: InputMode::Stdin,
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

    match args.scenario {
        Scenario::Scheduler => {
            let metrics = worker_metrics.clone();
            scheduler_scenario(
                &args, &client, &base_url, &pool, direct, &metrics, &settings,
            )
            .await?;
        }
        Scenario::Pipeline => {
            pipeline_scenario(&args, &client, &base_url, &pool, direct).await?;
        }
        Scenario::Hot => {
            let rows = hot_rows(&args, &client, &base_url, address, &pool, &direct).await?;
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
    Ok(())
}

async fn pipeline_scenario(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    pool: &sqlx::PgPool,
    direct: Direct,
) -> anyhow::Result<()> {
    let (client, base_url) = (client.clone(), base_url.to_string());
    eprintln!("warming up…");
    for _ in 0..3 {
        sync_call(&client, &base_url).await?;
        direct.run().await?;
    }

    eprintln!(
        "sequential: {} sync calls through Granda, {} direct runs…",
        args.runs, args.runs
    );
    let mut granda_lat = Vec::new();
    let mut direct_lat = Vec::new();
    for _ in 0..args.runs {
        // Interleaved, so both see the same noise.
        let t = Instant::now();
        sync_call(&client, &base_url).await?;
        granda_lat.push(t.elapsed());
        let t = Instant::now();
        direct.run().await?;
        direct_lat.push(t.elapsed());
    }

    eprintln!(
        "burst: {} async invocations through Granda at concurrency {}…",
        args.burst, args.concurrency
    );
    let granda_burst = granda_burst(&client, &base_url, pool, args.burst).await?;
    eprintln!(
        "burst: {} direct runs at concurrency {}…",
        args.burst, args.concurrency
    );
    let direct = Arc::new(direct);
    let direct_burst = direct_burst(direct.clone(), args.burst, args.concurrency).await?;

    eprintln!("warm: sync calls through Granda and direct execs…");
    let warm = warm_rows(args, &client, &base_url, &direct).await?;

    let (g50, g95) = (percentile(&granda_lat, 50), percentile(&granda_lat, 95));
    let (d50, d95) = (percentile(&direct_lat, 50), percentile(&direct_lat, 95));
    let g_rate = args.burst as f64 / granda_burst.as_secs_f64();
    let d_rate = args.burst as f64 / direct_burst.as_secs_f64();
    println!();
    println!("| measure | Granda | direct Docker | ratio (Granda / direct) | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| sync p50 latency, {} sequential calls (ms) | {:.1} | {:.1} | {:.2} | ≤ 1.10 |",
        args.runs,
        ms(g50),
        ms(d50),
        ms(g50) / ms(d50)
    );
    println!(
        "| sync p95 latency (ms) | {:.1} | {:.1} | {:.2} | |",
        ms(g95),
        ms(d95),
        ms(g95) / ms(d95)
    );
    println!(
        "| burst of {} at concurrency {} (runs/s) | {:.2} | {:.2} | {:.2} | ≥ 0.90 |",
        args.burst,
        args.concurrency,
        g_rate,
        d_rate,
        g_rate / d_rate
    );
    for row in &warm {
        println!("{row}");
    }
    println!(
        "| burst of {} wall time (s) | {:.2} | {:.2} | | |",
        args.burst,
        granda_burst.as_secs_f64(),
        direct_burst.as_secs_f64()
    );

    Ok(())
}

async fn sync_call(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let r = client
        .post(format!("{base}/fn/echo"))
        .body("ping")
        .send()
        .await?;
    if r.status() != 200 {
        bail!("sync invoke answered {}", r.status());
    }
    let body = r.bytes().await?;
    if &body[..] != b"ping" {
        bail!("sync invoke returned {body:?}");
    }
    Ok(())
}

/// Submits `n` async invocations at once and waits until all are final in Postgres.
async fn granda_burst(
    client: &reqwest::Client,
    base: &str,
    pool: &sqlx::PgPool,
    n: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let submits = (0..n).map(|_| {
        let client = client.clone();
        let url = format!("{base}/v1/functions/echo/invocations");
        async move { client.post(url).body("ping").send().await }
    });
    let mut ids = Vec::new();
    for r in futures_util::future::join_all(submits).await {
        let r = r?;
        if r.status() != 202 {
            bail!("async invoke answered {}", r.status());
        }
        let body: serde_json::Value = r.json().await?;
        ids.push(Uuid::parse_str(body["id"].as_str().context("id")?)?);
    }
    loop {
        let (done,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM invocations WHERE id = ANY($1) AND status NOT IN ('queued', 'running')",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if done as usize == n {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("burst did not finish");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let (ok,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM invocations WHERE id = ANY($1) AND status = 'succeeded'",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    if ok as usize != n {
        bail!("only {ok} of {n} burst invocations succeeded");
    }
    Ok(elapsed)
}

async fn direct_burst(
    direct: Arc<Direct>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let function = direct.function.clone();
    direct_burst_of(direct, &function, n, concurrency).await
}

/// `n` direct runs of `function` at `concurrency`; returns the wall time.
async fn direct_burst_of(
    direct: Arc<Direct>,
    function: &Snapshot,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let runs = (0..n).map(|_| {
        let direct = direct.clone();
        let slots = slots.clone();
        let function = function.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await?;
            direct.run_function(&function, b"ping").await
        })
    });
    for r in futures_util::future::join_all(runs).await {
        r??;
    }
    Ok(start.elapsed())
}

/// One container run straight through the Docker API: create, attach, start, feed stdin,
/// wait, read stdout, remove. The same container config Granda uses.
struct Direct {
    docker: Docker,
    runner: Runner,
    function: Snapshot,
}

impl Direct {
    async fn run(&self) -> anyhow::Result<()> {
        self.run_function(&self.function, b"ping").await
    }

    /// One direct run of `function` on `input`; an echo must give the input back.
    async fn run_function(&self, function: &Snapshot, input: &[u8]) -> anyhow::Result<()> {
        let config = self.runner.config(Uuid::now_v7(), function, input)?;
        let id = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                config,
            )
            .await?
            .id;
        let attach = self
            .docker
            .attach_container(
                &id,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stream(true)
                        .stdin(true)
                        .stdout(true)
                        .stderr(true)
                        .build(),
                ),
            )
            .await?;
        self.docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        let mut stdin = attach.input;
        stdin.write_all(input).await?;
        stdin.shutdown().await?;
        let mut wait = self
            .docker
            .wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
        let _ = wait.next().await;
        let mut out = Vec::new();
        let mut output = attach.output;
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(2), output.next()).await
        {
            out.extend_from_slice(&chunk.into_bytes());
        }
        self.docker
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await?;
        if function.image == self.function.image && out != input {
            bail!("direct run returned {out:?}");
        }
        Ok(())
    }
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) * p) / 100]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A burst of `--burst` invocations of a function that sleeps `--run-seconds` into an idle worker
/// (min concurrency 1, max `--concurrency`): prints depth, target and in-flight over time, then
/// the drain time against the ideal, the larger of N × mean run / max and N / the engine's own
/// container rate at that concurrency (both measured directly in this run).
async fn scheduler_scenario(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    pool: &sqlx::PgPool,
    direct: Direct,
    metrics: &granda::metrics::Metrics,
    settings: &Settings,
) -> anyhow::Result<()> {
    let nap = Snapshot {
        name: "nap".into(),
        image: "granda-test/sleep".into(),
        env: [("SLEEP_SECONDS".to_string(), args.run_seconds.to_string())].into(),
        ..direct.function.clone()
    };
    granda::docker::ensure_image(&direct.docker, &nap.image).await?;
    let created = client
        .post(format!("{base_url}/v1/functions"))
        .json(&json!({"name": "nap", "image": nap.image, "memory_mb": 64, "env": nap.env}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("registering the function: {}", created.text().await?);
    }
    eprintln!("measuring the engine directly…");
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        direct.run_function(&nap, b"").await?;
        runs.push(t.elapsed());
    }
    let mean_run = runs.iter().sum::<Duration>() / runs.len() as u32;
    let probe = (args.concurrency * 3).max(12);
    let direct = Arc::new(direct);
    let engine_time = direct_burst(direct.clone(), probe, args.concurrency).await?;
    let engine_rate = probe as f64 / engine_time.as_secs_f64();
    eprintln!(
        "the same burst straight through the engine at concurrency {}…",
        args.concurrency
    );
    let direct_drain = direct_burst_of(direct.clone(), &nap, args.burst, args.concurrency).await?;

    let worker = format!(
        "worker=\"{}\"",
        settings.worker_id.clone().unwrap_or_default()
    );
    let gauge = |name: &'static str, labels: &str| metrics.gauge(name, labels).unwrap_or(0.0);
    eprintln!(
        "burst: {} invocations of a {} s function into an idle worker…",
        args.burst, args.run_seconds
    );
    let start = Instant::now();
    let submits = (0..args.burst).map(|i| {
        let client = client.clone();
        let url = format!("{base_url}/v1/functions/nap/invocations");
        async move { client.post(url).body(i.to_string()).send().await }
    });
    let mut ids = Vec::new();
    for r in futures_util::future::join_all(submits).await {
        let body: serde_json::Value = r?.json().await?;
        ids.push(Uuid::parse_str(body["id"].as_str().context("id")?)?);
    }
    println!();
    println!("| t (s) | queue depth | concurrency target | in flight |");
    println!("|---:|---:|---:|---:|");
    let mut over_target: f64 = 0.0;
    let mut peak_target: f64 = 0.0;
    let drained = loop {
        let depth = gauge("granda_queue_depth", "queue=\"default\"");
        let target = gauge("granda_worker_concurrency_target", &worker);
        let in_flight = gauge("granda_worker_in_flight", &worker);
        over_target = over_target.max(in_flight - target);
        peak_target = peak_target.max(target);
        println!(
            "| {:.2} | {depth} | {target} | {in_flight} |",
            start.elapsed().as_secs_f64()
        );
        let (done,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM invocations WHERE id = ANY($1) AND status NOT IN ('queued', 'running')",
        )
        .bind(&ids)
        .fetch_one(pool)
        .await?;
        if done as usize == ids.len() {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("the burst did not drain");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let by_runs = mean_run.as_secs_f64() * args.burst as f64 / args.concurrency as f64;
    let by_engine = args.burst as f64 / engine_rate;
    let ideal = by_runs.max(by_engine);
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| burst | {} × {} s function, max concurrency {} |",
        args.burst, args.run_seconds, args.concurrency
    );
    println!(
        "| mean direct run of the function (s) | {:.2} |",
        mean_run.as_secs_f64()
    );
    println!(
        "| engine rate at concurrency {} (containers/s) | {:.2} |",
        args.concurrency, engine_rate
    );
    println!("| ideal drain = max(N × run / max, N / engine rate) (s) | {ideal:.2} |");
    println!("| Granda drain (s) | {:.2} |", drained.as_secs_f64());
    println!(
        "| ratio to the ideal (target ≤ 1.25) | {:.2} |",
        drained.as_secs_f64() / ideal
    );
    println!(
        "| the same burst straight through the engine at concurrency {} (s) | {:.2} |",
        args.concurrency,
        direct_drain.as_secs_f64()
    );
    println!(
        "| ratio to the direct burst | {:.2} |",
        drained.as_secs_f64() / direct_drain.as_secs_f64()
    );
    println!("| peak concurrency target | {peak_target} |");
    println!("| most messages held above the target | {over_target} |");
    Ok(())
}

/// Warm rows: sync latency with 1 client and throughput with 8, through Granda (`mode: warm`)
/// against a direct `exec` through the Docker API into one kept container.
async fn warm_rows(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    direct: &Direct,
) -> anyhow::Result<Vec<String>> {
    let created = client
        .post(format!("{base_url}/v1/functions"))
        .json(&json!({"name": "echo-warm", "image": args.image, "memory_mb": 64, "mode": "warm"}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("registering the warm function: {}", created.text().await?);
    }
    let call = |client: reqwest::Client| {
        let url = format!("{base_url}/fn/echo-warm");
        async move {
            let r = client.post(url).body("ping").send().await?;
            if r.status() != 200 || &r.bytes().await?[..] != b"ping" {
                bail!("warm call failed");
            }
            anyhow::Ok(())
        }
    };
    for _ in 0..3 {
        call(client.clone()).await?;
    }
    let state = std::env::temp_dir().join("granda-bench");
    let idle = granda::worker::pool::install_idle_binary(&state)?;
    let container = direct
        .runner
        .start_warm(&direct.function, &idle.to_string_lossy())
        .await?;
    let exec = || direct_exec(&direct.docker, &container);
    for _ in 0..3 {
        exec().await?;
    }
    let mut granda_lat = Vec::new();
    let mut direct_lat = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        call(client.clone()).await?;
        granda_lat.push(t.elapsed());
        let t = Instant::now();
        exec().await?;
        direct_lat.push(t.elapsed());
    }
    let per_client = 25;
    let t = Instant::now();
    futures_util::future::try_join_all((0..8).map(|_| {
        let client = client.clone();
        async move {
            for _ in 0..per_client {
                call(client.clone()).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let granda_rate = (8 * per_client) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    futures_util::future::try_join_all((0..8).map(|_| async {
        for _ in 0..per_client {
            exec().await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    let direct_rate = (8 * per_client) as f64 / t.elapsed().as_secs_f64();
    granda::worker::container::remove(&direct.docker, &container).await;
    let (g50, g95) = (percentile(&granda_lat, 50), percentile(&granda_lat, 95));
    let (d50, d95) = (percentile(&direct_lat, 50), percentile(&direct_lat, 95));
    Ok(vec![
        format!(
            "| warm sync p50, 1 client, vs direct exec (ms) | {:.1} | {:.1} | {:.2} | ≤ 1.20 |",
            ms(g50),
            ms(d50),
            ms(g50) / ms(d50)
        ),
        format!(
            "| warm sync p95, 1 client (ms) | {:.1} | {:.1} | {:.2} | |",
            ms(g95),
            ms(d95),
            ms(g95) / ms(d95)
        ),
        format!(
            "| warm throughput, 8 clients (calls/s) | {granda_rate:.1} | {direct_rate:.1} | {:.2} | |",
            granda_rate / direct_rate
        ),
    ])
}

/// One `cat` exec with stdin through the Docker API, its output read and its exit code checked.
async fn direct_exec(docker: &Docker, container: &str) -> anyhow::Result<()> {
    let exec = docker
        .create_exec(
            container,
            bollard::exec::CreateExecOptions::<String> {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec!["cat".into()]),
                ..Default::default()
            },
        )
        .await?;
    let bollard::exec::StartExecResults::Attached {
        mut output,
        mut input,
    } = docker.start_exec(&exec.id, None).await?
    else {
        bail!("exec detached");
    };
    input.write_all(b"ping").await?;
    input.shutdown().await?;
    let mut out = Vec::new();
    while let Some(chunk) = output.next().await {
        out.extend_from_slice(&chunk?.into_bytes());
    }
    let inspected = docker.inspect_exec(&exec.id).await?;
    if out != b"ping" || inspected.exit_code != Some(0) {
        bail!("direct exec returned {out:?}");
    }
    Ok(())
}

/// Hot rows: sync latency with 1 client and throughput with 8, through Granda (`mode: hot`)
/// against requests straight to a hot container of the same image over its socket, and a check
/// that every call through Granda was recorded in Postgres.
async fn hot_rows(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    address: std::net::SocketAddr,
    pool: &sqlx::PgPool,
    direct: &Direct,
) -> anyhow::Result<Vec<String>> {
    granda::docker::ensure_image(&direct.docker, &args.hot_image).await?;
    let created = client
        .post(format!("{base_url}/v1/functions"))
        .json(&json!({"name": "echo-hot", "image": args.hot_image, "memory_mb": 64, "mode": "hot"}))
        .send()
        .await?;
    if created.status() != 201 {
        bail!("registering the hot function: {}", created.text().await?);
    }
    let lean = || Lean::connect(address, "/fn/echo-hot", b"ping");
    let mut one = lean().await?;

    // The same process, asked directly: what the function itself costs.
    let function = Snapshot {
        name: "echo-hot".into(),
        image: args.hot_image.clone(),
        mode: granda::function::Mode::Hot,
        ..direct.function.clone()
    };
    let sockets = std::env::temp_dir().join("granda-bench-hot");
    std::fs::create_dir_all(&sockets)?;
    let owner = direct.runner.hot_owner(&function).await?;
    let dir = granda::worker::hot::socket_dir(&sockets, owner)?;
    let container = direct.runner.start_hot(&function, &dir).await?;
    let connect = || {
        granda::worker::hot::wait_ready(
            &direct.docker,
            &container,
            &dir,
            owner,
            Duration::from_secs(10),
        )
    };
    let mut connection = connect().await?;
    for _ in 0..20 {
        one.expect(b"ping").await?;
        ask(&mut connection, &function).await?;
    }

    let n = args.hot_calls;
    let mut granda_lat = Vec::with_capacity(n);
    let mut direct_lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one.expect(b"ping").await?;
        granda_lat.push(t.elapsed());
        let t = Instant::now();
        ask(&mut connection, &function).await?;
        direct_lat.push(t.elapsed());
    }

    let clients = 8;
    let mut leans = Vec::new();
    for _ in 0..clients {
        leans.push(lean().await?);
    }
    // Each client is a task on the runtime, as the ingress's connections are.
    let t = Instant::now();
    let running: Vec<_> = leans
        .into_iter()
        .map(|mut lean| {
            tokio::spawn(async move {
                for _ in 0..n {
                    lean.expect(b"ping").await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for client in running {
        client.await??;
    }
    let granda_rate = (clients * n) as f64 / t.elapsed().as_secs_f64();
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(connect().await?);
    }
    let t = Instant::now();
    futures_util::future::try_join_all(connections.iter_mut().map(|connection| async {
        for _ in 0..n {
            ask(connection, &function).await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    let direct_rate = (clients * n) as f64 / t.elapsed().as_secs_f64();
    drop(connections);
    drop(connection);
    granda::worker::container::remove(&direct.docker, &container).await;
    granda::worker::hot::remove_socket_dir(&dir);

    // Every call through Granda must be in Postgres, final.
    let made = (20 + n + clients * n) as i64;
    let (recorded,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM invocations WHERE function = 'echo-hot' AND status = 'succeeded'",
    )
    .fetch_one(pool)
    .await?;

    let (g50, g95) = (percentile(&granda_lat, 50), percentile(&granda_lat, 95));
    let (d50, d95) = (percentile(&direct_lat, 50), percentile(&direct_lat, 95));
    Ok(vec![
        format!(
            "| hot sync p50, 1 client, vs a direct socket request (ms) | {:.2} | {:.2} | {:.2} | Granda ≤ 3 ms |",
            ms(g50),
            ms(d50),
            ms(g50) / ms(d50)
        ),
        format!(
            "| hot sync p95, 1 client (ms) | {:.2} | {:.2} | {:.2} | |",
            ms(g95),
            ms(d95),
            ms(g95) / ms(d95)
        ),
        format!(
            "| hot throughput, {clients} clients (calls/s) | {granda_rate:.0} | {direct_rate:.0} | {:.2} | Granda ≥ 1000 |",
            granda_rate / direct_rate
        ),
        format!("| hot calls recorded succeeded in Postgres | {recorded} of {made} | | | all |"),
    ])
}

/// One request straight to a hot process over its socket; an echo must give the input back.
async fn ask(
    connection: &mut granda::worker::hot::Connection,
    function: &Snapshot,
) -> anyhow::Result<()> {
    let call = granda::worker::hot::Call {
        id: Uuid::now_v7(),
        function,
        trigger: granda::invocation::Trigger::Sync,
        attempt: 1,
        deadline_ms: chrono::Utc::now().timestamp_millis() + 30_000,
        input: b"ping",
    };
    let answer = connection.call(call, 1 << 20).await?;
    if answer.status != 200 || answer.body != b"ping" {
        bail!("direct hot call returned {answer:?}");
    }
    Ok(())
}

/// A minimal HTTP/1.1 client on one kept-alive connection, one request at a time (as wrk is):
/// the load generator's own cost is not Granda's, so it does no more than a request needs.
struct Lean {
    stream: tokio::net::TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Lean {
    /// A client that POSTs `body` to `path` with the bench's key, each time [`Lean::call`] runs.
    async fn connect(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<Lean> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: granda\r\nAuthorization: Bearer {BENCH_KEY}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Ok(Lean {
            stream,
            request,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends the request and reads the answer: its status and body (Content-Length framed).
    async fn call(&mut self) -> anyhow::Result<(u16, &[u8])> {
        use tokio::io::AsyncReadExt;
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        let (head_end, length) = loop {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?;
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .context("an answer without Content-Length")?;
                break (end + 4, length);
            }
        };
        while self.buf.len() < head_end + length {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection mid-answer");
            }
        }
        let status = std::str::from_utf8(&self.buf[..head_end])?
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("an answer without a status")?;
        Ok((status, &self.buf[head_end..head_end + length]))
    }

    /// [`Lean::call`], which must answer 200 with `expected`.
    async fn expect(&mut self, expected: &[u8]) -> anyhow::Result<()> {
        let (status, body) = self.call().await?;
        if status != 200 || body != expected {
            bail!(
                "hot call answered {status}: {}",
                String::from_utf8_lossy(body)
            );
        }
        Ok(())
    }
}
