//! The fairness scenario (issue 27): how long one call of a function B takes while a burst of 40
//! slow sync calls of another function A holds the worker, with default settings, against B's
//! own run time on an idle installation. Both functions are cold (`granda-test/echo` for B,
//! `granda-test/sleep` of 1 s for A).

use super::*;
use std::time::{Duration, Instant};

/// B's sync calls measured in each phase.
const B_CALLS: usize = 5;
/// A's burst.
const A_BURST: usize = 40;

async fn call(client: &reqwest::Client, base_url: &str, name: &str) -> anyhow::Result<(Duration, u16)> {
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
    eprintln!("A: a burst of {A_BURST} sync calls of a 1 s sleep; B: {B_CALLS} sync calls during it…");
    let burst: Vec<_> = (0..A_BURST)
        .map(|_| {
            let (client, base_url) = (client.clone(), base_url.to_string());
            tokio::spawn(async move { call(&client, &base_url, "slow-a").await })
        })
        .collect();
    // Let A's calls reach the queue first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut during = Vec::new();
    let mut accepted_late = 0;
    for _ in 0..B_CALLS {
        let (took, status) = call(client, base_url, "echo").await?;
        if status == 202 {
            accepted_late += 1;
        }
        during.push(took);
    }
    let mut a_took = Vec::new();
    for handle in burst {
        a_took.push(handle.await??.0);
    }
    let (p50_alone, p50_during) = (percentile(&alone, 50), percentile(&during, 50));
    println!();
    println!("| measure | ms |");
    println!("|---|---:|");
    println!("| B alone, p50 | {:.0} |", ms(p50_alone));
    println!("| B during A's burst of {A_BURST}, p50 | {:.0} |", ms(p50_during));
    println!("| B during A's burst, max | {:.0} |", ms(*during.iter().max().unwrap()));
    println!("| B answered 202 (past the sync wait) | {accepted_late} of {B_CALLS} |");
    println!("| A's burst, p50 | {:.0} |", ms(percentile(&a_took, 50)));
    println!(
        "| ratio B during / B alone (p50) | {:.2} |",
        p50_during.as_secs_f64() / p50_alone.as_secs_f64()
    );
    Ok(())
}
