//! The pipeline rows: sync latency over HTTP and async burst throughput, against the same
//! container run straight through the Docker API.

use super::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::query_parameters::{AttachContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::StreamExt;
use granda::function::Snapshot;
use granda::worker::container::Runner;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use uuid::Uuid;

pub(crate) async fn pipeline_scenario(
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
    let p50 = format!("sync p50 latency, {} sequential calls (ms)", args.runs);
    println!("{}", latency_row(&p50, (g50, d50), 1, "≤ 1.10"));
    println!(
        "{}",
        latency_row("sync p95 latency (ms)", (g95, d95), 1, "")
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

pub(crate) async fn sync_call(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
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
pub(crate) async fn granda_burst(
    client: &reqwest::Client,
    base: &str,
    pool: &sqlx::PgPool,
    n: usize,
) -> anyhow::Result<Duration> {
    Ok(granda_burst_of(client, base, pool, "echo", n).await?.0)
}

/// Submits `n` async invocations of `function` at once and waits until all are final in
/// Postgres; returns the drain time and the ids.
pub(crate) async fn granda_burst_of(
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

pub(crate) async fn direct_burst(
    direct: Arc<Direct>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let function = direct.function.clone();
    direct_burst_of(direct, &function, n, concurrency).await
}

/// `n` direct runs of `function` at `concurrency`; returns the wall time.
pub(crate) async fn direct_burst_of(
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
pub(crate) struct Direct {
    pub(crate) docker: Docker,
    pub(crate) runner: Runner,
    pub(crate) function: Snapshot,
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
        if function.run.image == self.function.run.image && out != input {
            bail!("direct run returned {out:?}");
        }
        Ok(())
    }
}
