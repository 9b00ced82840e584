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
    settings.admin_key = Some(granda::keys::Secret(BENCH_KEY.to_string()));
    // The pipeline pins the concurrency; the hot rows and the scheduler's default runs use the
    // defaults (the scheduler scenario starts a worker per setting).
    if args.scenario == Scenario::Pipeline {
        settings.max_concurrency = Some(args.concurrency);
        settings.min_concurrency = args.concurrency;
    }

    let pool = granda::db::connect_and_migrate(&settings.database_url).await?;
    let app = Application::build_with_pool(settings.clone(), pool.clone()).await?;
    let worker = Worker::build(&settings, pool.clone())
        .await?
        .with_metrics(app.metrics());
    let address = app.local_addr();
    let base_url = format!("http://{address}");
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let topology = Topology::new(&settings.amqp_prefix);
    let served = tokio::spawn(app.run(signal(stopped.clone())));
    let worked = match args.scenario {
        Scenario::Scheduler => None,
        _ => Some(tokio::spawn(worker.run(signal(stopped.clone())))),
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
            scheduler_scenario(
                &args, &client, &base_url, address, &pool, &docker, &settings,
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
    if let Some(worked) = worked {
        let _ = tokio::time::timeout(Duration::from_secs(10), worked).await;
    }
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

/// Submits `n` async invocations of echo at once and waits until all are final in Postgres.
async fn granda_burst(
    client: &reqwest::Client,
    base: &str,
    pool: &sqlx::PgPool,
    n: usize,
) -> anyhow::Result<Duration> {
    Ok(granda_burst_of(client, base, pool, "echo", n).await?.0)
}

/// Submits `n` async invocations of `function` at once and waits until all are final in
/// Postgres; returns the drain time and the ids.
async fn granda_burst_of(
    client: &reqwest::Client,
    base: &str,
    pool: &sqlx::PgPool,
    function: &str,
    n: usize,
) -> anyhow::Result<(Duration, Vec<Uuid>)> {
    let start = Instant::now();
    let submits = (0..n).map(|_| {
        let client = client.clone();
        let url = format!("{base}/v1/functions/{function}/invocations");
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
    Ok((elapsed, ids))
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

/// One workload of issue 16.
struct Workload {
    name: String,
    function: &'static str,
    /// Closed-loop sync clients (0: an async burst).
    clients: usize,
    /// Async invocations submitted at once.
    burst: usize,
}

/// What one setting gave on one workload.
#[derive(Clone, Copy, Debug)]
struct Measured {
    /// Calls (or burst runs) per second.
    rate: f64,
    /// Median latency: of a sync call, or of a burst run (submit to final).
    p50: Duration,
}

/// The workloads of issue 16, each with default settings and with the concurrency pinned at
/// each value of `--sweep`, a worker started for each; prints one table of ratios against the
/// best fixed setting (by throughput).
async fn scheduler_scenario(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    address: std::net::SocketAddr,
    pool: &sqlx::PgPool,
    docker: &Docker,
    settings: &Settings,
) -> anyhow::Result<()> {
    let register = |body: serde_json::Value| {
        let client = client.clone();
        let url = format!("{base_url}/v1/functions");
        async move {
            let r = client.post(url).json(&body).send().await?;
            if r.status() != 201 {
                bail!("registering a function: {}", r.text().await?);
            }
            anyhow::Ok(())
        }
    };
    granda::docker::ensure_image(docker, "granda-test/sleep").await?;
    granda::docker::ensure_image(docker, &args.hot_image).await?;
    register(
        json!({"name": "nap", "image": "granda-test/sleep", "memory_mb": 64,
        "env": {"SLEEP_SECONDS": "1"}}),
    )
    .await?;
    register(
        json!({"name": "warm-nap", "image": "granda-test/sleep", "memory_mb": 64,
        "mode": "warm", "env": {"SLEEP_SECONDS": "0.2"}}),
    )
    .await?;
    register(json!({"name": "hot-echo", "image": args.hot_image, "memory_mb": 64, "mode": "hot"}))
        .await?;
    let naps = granda::docker::ensure_image(docker, &args.nap_image)
        .await
        .is_ok();
    if naps {
        for ms in [100, 20] {
            register(
                json!({"name": format!("hot-nap-{ms}"), "image": args.nap_image,
                "memory_mb": 64, "mode": "hot", "env": {"NAP_MS": ms.to_string()}}),
            )
            .await?;
        }
    } else {
        eprintln!(
            "{} is missing: the I/O-bound hot rows are skipped",
            args.nap_image
        );
    }
    let closed = |name: String, function, clients| Workload {
        name,
        function,
        clients,
        burst: 0,
    };
    let mut workloads = Vec::new();
    if naps {
        for (function, ms) in [("hot-nap-100", 100), ("hot-nap-20", 20)] {
            for clients in [8, 32] {
                workloads.push(closed(
                    format!("hot, sleeps {ms} ms, {clients} sync clients"),
                    function,
                    clients,
                ));
            }
        }
    }
    workloads.push(closed(
        "hot echo (CPU-bound pipeline), 8 sync clients".into(),
        "hot-echo",
        8,
    ));
    workloads.push(closed(
        "warm, sleeps 200 ms, 8 sync clients".into(),
        "warm-nap",
        8,
    ));
    workloads.push(closed("cold echo, 8 sync clients".into(), "echo", 8));
    workloads.push(Workload {
        name: "async burst of 50 cold echo".into(),
        function: "echo",
        clients: 0,
        burst: 50,
    });
    workloads.push(Workload {
        name: "async burst of 40 × 1 s sleeps".into(),
        function: "nap",
        clients: 0,
        burst: 40,
    });
    workloads.retain(|w| args.only.is_empty() || args.only.iter().any(|o| w.name.contains(o)));

    let mut rows = Vec::new();
    for (n, workload) in workloads.iter().enumerate() {
        let mut results: Vec<(Option<usize>, Measured)> = Vec::new();
        // The defaults first, then the sweep, then the defaults again (noise shows as the gap
        // between the two default runs; the better of the two is not taken: their mean is).
        let mut order: Vec<Option<usize>> = vec![None];
        order.extend(args.sweep.iter().map(|&c| Some(c)));
        order.push(None);
        for (i, setting) in order.into_iter().enumerate() {
            let mut s = settings.clone();
            s.worker_id = Some(format!(
                "{}-w{n}-{i}",
                settings.worker_id.clone().unwrap_or_default()
            ));
            match setting {
                Some(c) => {
                    s.min_concurrency = c;
                    s.max_concurrency = Some(c);
                }
                None => {
                    s.min_concurrency = 1;
                    s.max_concurrency = None;
                }
            }
            eprintln!(
                "{}: {}…",
                workload.name,
                setting.map_or("defaults".to_string(), |c| format!("fixed {c}"))
            );
            let measured = with_worker(&s, pool, async {
                if workload.clients > 0 {
                    closed_loop(address, workload, args.seconds).await
                } else {
                    burst_of(client, base_url, pool, workload).await
                }
            })
            .await?;
            eprintln!("  {:.1}/s, p50 {:.0} ms", measured.rate, ms(measured.p50));
            results.push((setting, measured));
        }
        let defaults: Vec<Measured> = results
            .iter()
            .filter(|r| r.0.is_none())
            .map(|r| r.1)
            .collect();
        let mean = Measured {
            rate: defaults.iter().map(|m| m.rate).sum::<f64>() / defaults.len() as f64,
            p50: defaults.iter().map(|m| m.p50).sum::<Duration>() / defaults.len() as u32,
        };
        let (best_c, best) = results
            .iter()
            .filter_map(|r| r.0.map(|c| (c, r.1)))
            .max_by(|a, b| a.1.rate.total_cmp(&b.1.rate))
            .context("an empty sweep")?;
        let (tput, p50) = (mean.rate / best.rate, ms(mean.p50) / ms(best.p50));
        let ok = if tput >= 0.9 && p50 <= 1.25 {
            "yes"
        } else {
            "no"
        };
        rows.push(format!(
            "| {} | {:.1} / {:.1} | {:.0} | {best_c} | {:.1} | {:.0} | {tput:.2} | {p50:.2} | {ok} |",
            workload.name,
            defaults[0].rate,
            defaults[defaults.len() - 1].rate,
            ms(mean.p50),
            best.rate,
            ms(best.p50),
        ));
    }
    println!();
    println!(
        "| workload | defaults (runs/s, 1st / 2nd) | defaults p50 (ms) | best fixed | its runs/s | its p50 (ms) | throughput ratio (≥ 0.90) | p50 ratio (≤ 1.25) | met |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

/// Runs a worker with `settings` while `work` runs, then stops it (its kept containers go).
async fn with_worker<T>(
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

/// `workload.clients` closed-loop clients calling the function's URL for `seconds`; the first
/// fifth is a warm-up, not counted.
async fn closed_loop(
    address: std::net::SocketAddr,
    workload: &Workload,
    seconds: u64,
) -> anyhow::Result<Measured> {
    let total = Duration::from_secs(seconds);
    let warm_up = total / 5;
    let start = Instant::now();
    let path = format!("/fn/{}", workload.function);
    let mut clients = Vec::new();
    for _ in 0..workload.clients {
        let mut lean = Lean::connect(address, &path, b"ping").await?;
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while start.elapsed() < total {
                let t = Instant::now();
                let (status, _) = lean.call().await?;
                if status != 200 {
                    bail!("a call answered {status}");
                }
                if t.duration_since(start) >= warm_up {
                    latencies.push(t.elapsed());
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await??);
    }
    let window = start.elapsed().saturating_sub(warm_up);
    Ok(Measured {
        rate: latencies.len() as f64 / window.as_secs_f64(),
        p50: percentile(&latencies, 50),
    })
}

/// `workload.burst` async invocations at once; the rate is burst / drain time, the p50 that of
/// submit to final.
async fn burst_of(
    client: &reqwest::Client,
    base: &str,
    pool: &sqlx::PgPool,
    workload: &Workload,
) -> anyhow::Result<Measured> {
    let (drain, ids) =
        granda_burst_of(client, base, pool, workload.function, workload.burst).await?;
    let waits: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM finished_at - queued_at)::float8 FROM invocations WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let waits: Vec<Duration> = waits
        .into_iter()
        .map(|(s,)| Duration::from_secs_f64(s.max(0.0)))
        .collect();
    Ok(Measured {
        rate: workload.burst as f64 / drain.as_secs_f64(),
        p50: percentile(&waits, 50),
    })
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
        request: None,
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
