//! The scheduler rows (issue 16): each workload with default settings and pinned at each value
//! of `--sweep`, one table of ratios against the best fixed setting.

use super::*;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use granda::config::Settings;
use serde_json::json;
use tokio::sync::watch;

/// One workload of issue 16.
pub(crate) struct Workload {
    name: String,
    function: &'static str,
    /// Closed-loop sync clients (0: an async burst).
    clients: usize,
    /// Async invocations submitted at once.
    burst: usize,
}

/// What one setting gave on one workload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Measured {
    /// Calls (or burst runs) per second.
    rate: f64,
    /// Median latency: of a sync call, or of a burst run (submit to final).
    p50: Duration,
}

/// The workloads of issue 16, each with default settings and with the concurrency pinned at
/// each value of `--sweep`, a worker started for each; prints one table of ratios against the
/// best fixed setting (by throughput).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn scheduler_scenario(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    address: std::net::SocketAddr,
    pool: &sqlx::PgPool,
    docker: &Docker,
    settings: &Settings,
    registered: watch::Sender<bool>,
) -> anyhow::Result<()> {
    let register = |body: serde_json::Value| super::register(client, base_url, body);
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
    // The registration worker goes: each measurement starts its own.
    let _ = registered.send(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
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

/// `workload.clients` closed-loop clients calling the function's URL for `seconds`; the first
/// fifth is a warm-up, not counted.
pub(crate) async fn closed_loop(
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
pub(crate) async fn burst_of(
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
