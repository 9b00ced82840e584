//! `granda-bench`: Granda against the raw Docker engine, in one run, on this machine.
//!
//! Starts an in-process Granda (ingress + worker) against the running RabbitMQ, Postgres and
//! Docker, then measures sync invoke latency over HTTP and async burst throughput, and the same
//! container run straight through the Docker API. Prints a table with ratios.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        granda::telemetry::init();
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
    settings.max_concurrency = Some(args.concurrency);

    let pool = granda::db::connect_and_migrate(&settings.database_url).await?;
    let worker = Worker::build(&settings, pool.clone()).await?;
    let app = Application::build_with_pool(settings.clone(), pool.clone()).await?;
    let base_url = format!("http://{}", app.local_addr());
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let topology = Topology::new(&settings.amqp_prefix);
    let served = tokio::spawn(app.run(signal(stopped.clone())));
    let worked = tokio::spawn(worker.run(topology.clone(), signal(stopped.clone())));

    let client = reqwest::Client::new();
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
    let granda_burst = granda_burst(&client, &base_url, &pool, args.burst).await?;
    eprintln!(
        "burst: {} direct runs at concurrency {}…",
        args.burst, args.concurrency
    );
    let direct_burst = direct_burst(Arc::new(direct), args.burst, args.concurrency).await?;

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
    println!(
        "| burst of {} wall time (s) | {:.2} | {:.2} | | |",
        args.burst,
        granda_burst.as_secs_f64(),
        direct_burst.as_secs_f64()
    );

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), worked).await;
    pool.close().await;
    if let Ok(connection) = granda::broker::connect(&settings.amqp_url, "bench-cleanup").await {
        let _ = granda::broker::delete_topology(&connection, &topology, &["default"]).await;
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
    let slots = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let runs = (0..n).map(|_| {
        let direct = direct.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await?;
            direct.run().await
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
        let config = self
            .runner
            .config(Uuid::now_v7(), &self.function, b"ping")?;
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
        let mut input = attach.input;
        input.write_all(b"ping").await?;
        input.shutdown().await?;
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
        if out != b"ping" {
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
