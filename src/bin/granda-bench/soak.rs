//! The soak (issue 28): the installation with default settings under a constant load for
//! `--minutes`, at half of its measured capacity for the same mix of hot calls, cold calls and
//! 64 KiB bodies,
//! with a short retention. Every minute it prints the database's size, the invocations table's
//! size and dead tuples, this process's RSS (the ingress and the worker), p50/p99 latency and the
//! calls made and recorded; at the end it checks that every call was recorded exactly once,
//! unless the pruner had removed it.
//!
//! The retention settings (`GRANDA_RETENTION_S`, `GRANDA_PRUNE_INTERVAL_MS`) are set in the
//! environment before the settings are read: an installation that has no pruner ignores them
//! (then nothing is pruned, and every call must still be there at the end).

use super::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

/// One call the soak made and got an answer to: when, how long the answer took, what it was.
#[derive(Clone, Copy)]
struct Made {
    id: Uuid,
    /// Seconds after the load started.
    at: f64,
    latency: Duration,
    /// A call of the cold function.
    cold: bool,
    /// Answered 200 (else another status, with the invocation's id).
    ok: bool,
}

/// The calls answered so far; those not made (the in-flight bound was reached); those that got
/// no answer with an id (a transport error, or a refusal before a record).
#[derive(Default)]
struct Calls {
    made: Vec<Made>,
    skipped: u64,
    unanswered: u64,
}

/// Sets the retention settings in the environment, unless they are set already; before any
/// thread reads the environment (the settings are read after this).
pub(crate) fn set_retention(args: &Args) {
    for (name, value) in [
        ("GRANDA_RETENTION_S", args.retention_s.to_string()),
        (
            "GRANDA_PRUNE_INTERVAL_MS",
            args.prune_interval_ms.to_string(),
        ),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: called first thing in main, before the settings are read and before any
            // task of the runtime touches the environment.
            unsafe { std::env::set_var(name, value) };
        }
    }
}

/// Calls per second the installation answers with 8 closed-loop clients, over `seconds`, of
/// the soak's own mix ([`call_of`]): its capacity for the load it then gets half of. (Pure hot
/// calls measure several times more than the mix sustains: every 50th call starts a container.)
async fn mix_capacity(
    client: &reqwest::Client,
    base_url: &str,
    cold_every: u64,
    seconds: f64,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let running: Vec<_> = (0..8)
        .map(|_| {
            let (client, base_url, next) = (client.clone(), base_url.to_string(), next.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (function, body) = call_of(i, cold_every);
                    let status = client
                        .post(format!("{base_url}/fn/{function}"))
                        .body(body)
                        .send()
                        .await?
                        .status();
                    if status != 200 {
                        bail!("{function} answered {status}");
                    }
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for r in running {
        total += r.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Call number `n` of the mix: the function (every `cold_every`th the cold `echo`, else the hot
/// `echo-hot`) and its body ([`body_of`]).
fn call_of(n: u64, cold_every: u64) -> (&'static str, Vec<u8>) {
    let cold = n.is_multiple_of(cold_every.max(1));
    (if cold { "echo" } else { "echo-hot" }, body_of(n))
}

/// The body of call number `n`: every 10th is 64 KiB of base64-like text, the rest a few bytes.
fn body_of(n: u64) -> Vec<u8> {
    if n.is_multiple_of(10) {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut state = n.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        (0..64 * 1024)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ALPHABET[(state >> 58) as usize]
            })
            .collect()
    } else {
        format!("call {n}").into_bytes()
    }
}

/// This process's resident memory, in bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

#[derive(sqlx::FromRow)]
struct Table {
    database: i64,
    table: i64,
    live: i64,
    dead: i64,
    rows: i64,
}

/// The database's size and the invocations table's (with its partitions, if it has any).
async fn table(pool: &sqlx::PgPool) -> anyhow::Result<Table> {
    Ok(sqlx::query_as::<_, Table>(
        "WITH tree AS (SELECT 'invocations'::regclass AS relid
                      UNION SELECT relid FROM pg_partition_tree('invocations'))
         SELECT pg_database_size(current_database()) AS database,
                (SELECT COALESCE(sum(pg_total_relation_size(t.relid)), 0)::bigint
                   FROM tree t) AS table,
                COALESCE(sum(s.n_live_tup), 0)::bigint AS live,
                COALESCE(sum(s.n_dead_tup), 0)::bigint AS dead,
                (SELECT count(*) FROM invocations)::bigint AS rows
         FROM pg_stat_user_tables s
         WHERE s.relid IN (SELECT relid FROM tree)",
    )
    .fetch_one(pool)
    .await?)
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the soak; prints its table and the final check.
pub(crate) async fn soak_scenario(
    args: &Args,
    client: &reqwest::Client,
    base_url: &str,
    address: std::net::SocketAddr,
    pool: &sqlx::PgPool,
    settings: &Settings,
) -> anyhow::Result<()> {
    granda::docker::ensure_image(
        &granda::docker::connect(settings.docker_host.as_deref(), 120)?,
        &args.hot_image,
    )
    .await?;
    register(
        client,
        base_url,
        json!({"name": "echo-hot", "image": args.hot_image, "memory_mb": 64, "mode": "hot"}),
    )
    .await?;
    // The cold calls go to `echo` (registered by main: a fresh container per call).
    for _ in 0..20 {
        Lean::connect(address, "/fn/echo-hot", b"ping")
            .await?
            .call()
            .await?;
    }
    let capacity = mix_capacity(client, base_url, args.cold_every, args.seconds as f64).await?;
    let rate = (capacity / 2.0).max(1.0);
    let retention = std::env::var("GRANDA_RETENTION_S").ok();
    println!(
        "soak: capacity {capacity:.0} calls/s of the mix (8 clients, {} s); load {rate:.0} calls/s for {} min \
         (1 in 10 with a 64 KiB body, 1 in {} cold); GRANDA_RETENTION_S={} GRANDA_PRUNE_INTERVAL_MS={}",
        args.seconds,
        args.minutes,
        args.cold_every,
        retention.as_deref().unwrap_or("-"),
        std::env::var("GRANDA_PRUNE_INTERVAL_MS")
            .as_deref()
            .unwrap_or("-"),
    );
    // The calls measured so far: none of the capacity run's count.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations")
        .fetch_one(pool)
        .await?;
    println!(
        "\n| minute | database MiB | invocations MiB | live rows | dead tuples | rows | RSS MiB | hot p50 / p99 ms | cold p50 / p99 ms | calls answered | not 200 | not made / no answer | recorded |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let calls: Arc<Mutex<Calls>> = Arc::default();
    // Calls in flight at most: past it a tick makes no call (counted as not made).
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    let start = Instant::now();
    let total = Duration::from_secs(args.minutes * 60);
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n: u64 = 0;
    let mut minute = 1;
    let mut reported = 0;
    while start.elapsed() < total {
        ticks.tick().await;
        n += 1;
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            calls.lock().expect("lock").skipped += 1;
            continue;
        };
        let (function, body) = call_of(n, args.cold_every);
        let cold = function == "echo";
        let request = client.post(format!("{base_url}/fn/{function}")).body(body);
        let made = calls.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let answered = request.send().await;
            let latency = t.elapsed();
            let at = (t - start).as_secs_f64();
            let answer = answered.ok().and_then(|r| {
                let id = r
                    .headers()
                    .get("x-granda-invocation-id")?
                    .to_str()
                    .ok()?
                    .parse::<Uuid>()
                    .ok()?;
                Some((id, r.status() == 200))
            });
            let mut made = made.lock().expect("lock");
            match answer {
                Some((id, ok)) => made.made.push(Made {
                    id,
                    at,
                    latency,
                    cold,
                    ok,
                }),
                None => made.unanswered += 1,
            }
            drop(permit);
        });
        if start.elapsed() >= Duration::from_secs(60 * minute) {
            reported = report(pool, &calls, minute, reported, start).await?;
            minute += 1;
        }
    }
    // The last calls answered, then the last row and the check.
    let _ = tokio::time::timeout(Duration::from_secs(60), inflight.acquire_many(256)).await;
    report(pool, &calls, minute, reported, start).await?;
    let calls = std::mem::take(&mut *calls.lock().expect("lock"));
    check(pool, &calls, before, start).await
}

/// Prints the row of `minute`: the calls answered since `from` (an index into the calls), and
/// the sizes now. Returns how many calls are reported so far.
async fn report(
    pool: &sqlx::PgPool,
    calls: &Mutex<Calls>,
    minute: u64,
    from: usize,
    start: Instant,
) -> anyhow::Result<usize> {
    let (now, made, skipped, unanswered): (Vec<Made>, usize, u64, u64) = {
        let calls = calls.lock().expect("lock");
        (
            calls.made[from.min(calls.made.len())..].to_vec(),
            calls.made.len(),
            calls.skipped,
            calls.unanswered,
        )
    };
    let ids: Vec<Uuid> = now.iter().map(|m| m.id).collect();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_one(pool)
        .await?;
    let t = table(pool).await?;
    let quantiles = |cold: bool| {
        let lat: Vec<Duration> = now
            .iter()
            .filter(|m| m.cold == cold)
            .map(|m| m.latency)
            .collect();
        if lat.is_empty() {
            "— / —".to_string()
        } else {
            format!(
                "{:.1} / {:.1}",
                ms(percentile(&lat, 50)),
                ms(percentile(&lat, 99))
            )
        }
    };
    let not_ok = now.iter().filter(|m| !m.ok).count();
    println!(
        "| {minute} ({:.0} s) | {:.1} | {:.1} | {} | {} | {} | {:.0} | {} | {} | {made} (+{}) | {not_ok} | {skipped} / {unanswered} | {recorded} of {} |",
        start.elapsed().as_secs_f64(),
        mib(t.database),
        mib(t.table),
        t.live,
        t.dead,
        t.rows,
        rss_bytes() as f64 / (1024.0 * 1024.0),
        quantiles(false),
        quantiles(true),
        ids.len(),
        ids.len(),
    );
    Ok(made)
}

/// Every call made is recorded once, succeeded on its first attempt, unless it is older than
/// the retention (it may be pruned then); and no other record exists.
async fn check(
    pool: &sqlx::PgPool,
    calls: &Calls,
    before: i64,
    start: Instant,
) -> anyhow::Result<()> {
    let retention = std::env::var("GRANDA_RETENTION_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok());
    let now = start.elapsed().as_secs_f64();
    let mut found: HashMap<Uuid, (String, i32)> = HashMap::new();
    let ids: Vec<Uuid> = calls.made.iter().map(|m| m.id).collect();
    for chunk in ids.chunks(10_000) {
        let rows: Vec<(Uuid, String, i32)> =
            sqlx::query_as("SELECT id, status, attempt FROM invocations WHERE id = ANY($1)")
                .bind(chunk)
                .fetch_all(pool)
                .await?;
        for (id, status, attempt) in rows {
            found.insert(id, (status, attempt));
        }
    }
    let (mut kept, mut pruned, mut lost, mut not_once) = (0u64, 0u64, 0u64, 0u64);
    for m in &calls.made {
        match found.get(&m.id) {
            Some((status, attempt)) => {
                kept += 1;
                // A call answered 200 succeeded, and ran once.
                if m.ok && (status != "succeeded" || *attempt != 1) {
                    not_once += 1;
                }
            }
            // Past its retention: the pruner may have removed it.
            None if retention.is_some_and(|r| now - m.at > r) => pruned += 1,
            None => lost += 1,
        }
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations")
        .fetch_one(pool)
        .await?;
    // Records of calls that got no answer with an id may exist (a caller that gave up).
    let unknown = total - before - kept as i64;
    println!(
        "\ncheck: {} calls answered ({} of them 200), {} not made (in-flight bound), {} without an \
         answer; {kept} recorded, {pruned} pruned (older than the retention), {lost} missing, \
         {not_once} answered 200 but not recorded succeeded on one attempt; {unknown} other records \
         (at most the {} without an answer)",
        calls.made.len(),
        calls.made.iter().filter(|m| m.ok).count(),
        calls.skipped,
        calls.unanswered,
        calls.unanswered,
    );
    if lost > 0 || not_once > 0 || unknown > calls.unanswered as i64 {
        bail!("the soak's check failed");
    }
    println!("check: every call recorded exactly once (until pruned)");
    Ok(())
}
