//! The fairness scenario (issue 27): how long one call of a function B takes while a burst of 40
//! slow sync calls of another function A holds the worker, with default settings, against B's
//! own run time on an idle installation. Both functions are cold (`granda-test/echo` for B,
//! `granda-test/sleep` of 1 s for A). `GRANDA_FAIR_SHARE=false` gives the first-come,
//! first-served numbers to compare with.

use super::*;
use std::time::{Duration, Instant};

/// B's sync calls measured alone, and rounds (one B call during each burst of A).
const B_CALLS: usize = 5;
/// A's burst.
const A_BURST: usize = 40;

async fn call(
    client: &reqwest::Client,
    base_url: &str,
    name: &str,
) -> anyhow::Result<(Duration, u16)> {
    let t = Instant::now();
    let r = client
        .post(format!("{base_url}/v1/functions/{name}/invoke"))
        .body("x")
        .send()
        .await?;
    let status = r.status().as_u16();
    let _ = r.bytes().await?;
    Ok((t.elapsed(), status))
}

pub(crate) async fn fairness_scenario(
    client: &reqwest::Client,
    base_url: &str,
    docker: &bollard::Docker,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    granda::docker::ensure_image(docker, "granda-test/sleep").await?;
    register(
        client,
        base_url,
        json!({"name": "slow-a", "image": "granda-test/sleep", "memory_mb": 64,
               "env": {"SLEEP_SECONDS": "1"}}),
    )
    .await?;
    // B is `echo` (registered by main).
    eprintln!("B alone: {B_CALLS} sync calls…");
    let mut alone = Vec::new();
    for _ in 0..B_CALLS {
        alone.push(call(client, base_url, "echo").await?.0);
    }
    eprintln!(
        "{B_CALLS} rounds: A, a burst of {A_BURST} sync calls of a 1 s sleep; B, one sync call during it…"
    );
    let mut during = Vec::new();
    let mut a_took = Vec::new();
    let mut accepted_late = 0;
    for _ in 0..B_CALLS {
        let burst: Vec<_> = (0..A_BURST)
            .map(|_| {
                let (client, base_url) = (client.clone(), base_url.to_string());
                tokio::spawn(async move { call(&client, &base_url, "slow-a").await })
            })
            .collect();
        // A's calls reach the queue first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = chrono::Utc::now();
        let (took, status) = call(client, base_url, "echo").await?;
        let got = chrono::Utc::now();
        let (queued, finished): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as(
                "SELECT queued_at, finished_at FROM invocations WHERE function = 'echo'
                 ORDER BY id DESC LIMIT 1",
            )
            .fetch_one(pool)
            .await?;
        eprintln!(
            "B: sent→queued {} ms, queued→finished {} ms, finished→answered {} ms",
            (queued - sent).num_milliseconds(),
            (finished - queued).num_milliseconds(),
            (got - finished).num_milliseconds()
        );
        if status == 202 {
            accepted_late += 1;
        }
        during.push(took);
        for handle in burst {
            a_took.push(handle.await??.0);
        }
    }
    let (p50_alone, p50_during) = (percentile(&alone, 50), percentile(&during, 50));
    // Where B's time went: waiting for a worker (queue_ms) or running (duration_ms, with the
    // container's start), its calls during the bursts (the last ones).
    let split: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT queue_ms, duration_ms FROM invocations WHERE function = 'echo'
         ORDER BY id DESC LIMIT $1",
    )
    .bind(B_CALLS as i64)
    .fetch_all(pool)
    .await?;
    eprintln!("B during the bursts, (queue_ms, duration_ms): {split:?}");
    let mut waits: Vec<Duration> = split
        .iter()
        .map(|(q, _)| Duration::from_millis(q.unwrap_or_default().max(0) as u64))
        .collect();
    waits.sort();
    println!();
    println!("| measure | ms |");
    println!("|---|---:|");
    println!("| B alone, p50 | {:.0} |", ms(p50_alone));
    println!(
        "| B during A's burst of {A_BURST}, p50 | {:.0} |",
        ms(p50_during)
    );
    println!(
        "| B during A's burst, max | {:.0} |",
        ms(*during.iter().max().unwrap())
    );
    println!(
        "| B's wait for a worker (queue_ms) during A's burst, p50 / max | {:.0} / {:.0} |",
        ms(percentile(&waits, 50)),
        ms(*waits.last().unwrap())
    );
    println!("| B answered 202 (past the sync wait) | {accepted_late} of {B_CALLS} |");
    println!("| A's burst, p50 | {:.0} |", ms(percentile(&a_took, 50)));
    println!(
        "| ratio B during / B alone (p50) | {:.2} |",
        p50_during.as_secs_f64() / p50_alone.as_secs_f64()
    );
    Ok(())
}
