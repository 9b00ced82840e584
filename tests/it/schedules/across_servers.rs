//! Each tick fires exactly once whatever the number of servers: two `granda server` processes on
//! one database share a 1 s schedule (both fire some ticks, their counts add up to the ledger,
//! none fires while paused), and the claim row itself refuses a second fire of a tick.

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use granda::producer::cron::store::claim;
use serde_json::{Value, json};
use uuid::Uuid;

use super::servers::{Server, Servers};
use super::{create, delete_queue, ticks};
use crate::support::spawn_app;

async fn put(servers: &Servers, server: &Server, path: &str, body: &Value) -> Value {
    let r = servers
        .client
        .put(format!("{}{path}", server.base))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The ticks `server` says it fired.
async fn fired(servers: &Servers, server: &Server) -> f64 {
    servers
        .metric(server, "granda_schedule_fired_total")
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_fires_once_across_two_server_processes_and_never_while_paused() {
    let servers = Servers::new().await;
    let a = servers.start(&[]).await;
    let b = servers.start(&[]).await;
    // Parked: no worker consumes this queue, so the test measures firing, not running.
    servers.register_parked(&a, &["tick"], "parked-ticks").await;
    let (status, s) = servers
        .post(
            &a,
            "/v1/schedules",
            &json!({"function": "tick", "cron": "* * * * * *", "payload": "tock"}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["next_runs"].as_array().unwrap().len(), 5, "{s}");

    // Ten seconds of ticks or more, until each server has fired some.
    let start = Instant::now();
    loop {
        let seen = ticks(&servers.pool, "tick").await;
        let (fa, fb) = (fired(&servers, &a).await, fired(&servers, &b).await);
        if seen.len() >= 10 && fa > 0.0 && fb > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} ticks in 60 s; fired by a: {fa}, by b: {fb}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Pause through the other server; nothing may fire after the answer.
    let paused = put(
        &servers,
        &b,
        &format!("/v1/schedules/{id}"),
        &json!({"enabled": false}),
    )
    .await;
    assert_eq!(paused["enabled"], false);
    assert_eq!(paused["next_runs"], json!([]));
    let paused_at = Utc::now();
    let fired_by_then = ticks(&servers.pool, "tick").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = ticks(&servers.pool, "tick").await;
    assert_eq!(
        seen, fired_by_then,
        "a tick fired while the schedule was paused"
    );
    assert!(seen.keys().all(|t| *t <= paused_at));

    // Every tick once; consecutive seconds, no gap.
    for (at, n) in &seen {
        assert_eq!(*n, 1, "tick {at} fired {n} times: {seen:?}");
    }
    let times: Vec<DateTime<Utc>> = seen.keys().copied().collect();
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "a gap between ticks: {times:?}"
        );
    }
    // Both servers fired, and what each says it fired adds up to the ticks recorded.
    let (fa, fb) = (fired(&servers, &a).await, fired(&servers, &b).await);
    eprintln!(
        "{} ticks: {fa} fired by one server, {fb} by the other",
        seen.len()
    );
    assert!(fa > 0.0 && fb > 0.0, "a: {fa}, b: {fb}");
    assert_eq!(fa + fb, seen.len() as f64);
    let (claims, unpublished, other): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM schedule_fires),
                (SELECT count(*) FROM invocations WHERE published_at IS NULL),
                (SELECT count(*) FROM invocations
                  WHERE trigger <> 'schedule' OR convert_from(input, 'UTF8') <> 'tock')",
    )
    .fetch_one(&servers.pool)
    .await
    .unwrap();
    assert_eq!((claims, unpublished, other), (seen.len() as i64, 0, 0));
    // From each tick to its record: late ticks still fire, so this is bounded by the 30 s grace.
    let (avg_ms, max_ms): (f64, f64) = sqlx::query_as(
        "SELECT avg(ms)::float8, max(ms)::float8 FROM (
             SELECT EXTRACT(EPOCH FROM queued_at - (extra_env->>'GRANDA_SCHEDULED_AT')::timestamptz) * 1000 AS ms
             FROM invocations WHERE function = 'tick') t",
    )
    .fetch_one(&servers.pool)
    .await
    .unwrap();
    eprintln!("schedule lag across two servers: avg {avg_ms:.0} ms, max {max_ms:.0} ms");
    assert!(max_ms < 30_000.0 && avg_ms >= 0.0);
    assert!(
        servers
            .metric(&a, "granda_schedule_lag_seconds_count")
            .await
            .is_some_and(|n| n > 0.0)
    );

    // Resumed: ticks fire again, from now (the paused seconds are not caught up).
    put(
        &servers,
        &a,
        &format!("/v1/schedules/{id}"),
        &json!({"enabled": true}),
    )
    .await;
    let resumed_at = Utc::now();
    let start = Instant::now();
    loop {
        let now = ticks(&servers.pool, "tick").await;
        if now.len() > seen.len() {
            let new: Vec<_> = now.keys().filter(|t| !seen.contains_key(t)).collect();
            assert!(
                new.iter()
                    .all(|t| **t >= resumed_at - chrono::Duration::seconds(1)),
                "{new:?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for server in [&a, &b] {
        server.process.sigterm();
        let _ = server.process.wait_exit(Duration::from_secs(10)).await;
    }
    servers.cleanup(&["parked-ticks"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_row_lets_a_tick_fire_once() {
    let app = spawn_app().await;
    app.register(
        "claimed",
        "granda-test/echo",
        json!({"queue": "parked-claims"}),
    )
    .await;
    // Paused: the ticker leaves it alone; the claims below are the test's own.
    let s = create(
        &app,
        json!({"function": "claimed", "cron": "* * * * * *", "enabled": false}),
    )
    .await;
    let id: Uuid = s["id"].as_str().unwrap().parse().unwrap();
    let at = Utc::now()
        .duration_trunc(chrono::Duration::seconds(1))
        .unwrap();

    // A second claim of (schedule, fire time) waits for the first transaction, then loses.
    let mut first = app.pool.begin().await.unwrap();
    assert!(claim(&mut first, id, at, Uuid::now_v7()).await.unwrap());
    let pool = app.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let won = claim(&mut tx, id, at, Uuid::now_v7()).await.unwrap();
        tx.commit().await.unwrap();
        won
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second claim did not wait for the first"
    );
    first.commit().await.unwrap();
    assert!(!second.await.unwrap(), "a tick was claimed twice");
    let mut later = app.pool.begin().await.unwrap();
    assert!(!claim(&mut later, id, at, Uuid::now_v7()).await.unwrap());
    // Another fire time of the same schedule is its own claim.
    let next = at + chrono::Duration::seconds(1);
    assert!(claim(&mut later, id, next, Uuid::now_v7()).await.unwrap());
    later.commit().await.unwrap();
    // A claim rolled back (the ingress died before its commit) leaves the tick to be fired.
    let after = at + chrono::Duration::seconds(2);
    let mut lost = app.pool.begin().await.unwrap();
    assert!(claim(&mut lost, id, after, Uuid::now_v7()).await.unwrap());
    lost.rollback().await.unwrap();
    let mut again = app.pool.begin().await.unwrap();
    assert!(claim(&mut again, id, after, Uuid::now_v7()).await.unwrap());
    again.commit().await.unwrap();
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM schedule_fires WHERE schedule_id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows, 3);
    delete_queue(&app, "parked-claims").await;
    app.shutdown().await;
}
