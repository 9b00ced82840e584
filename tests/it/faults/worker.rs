//! Faults of the worker process itself: `kill -9` mid-run, and SIGTERM.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::infra::GrandaProcess;
use super::ledger::{Ledger, assert_no_containers};
use crate::support::{TestApp, postgres_base, spawn_app_with};

/// An ingress whose in-process worker serves another queue, so the child worker alone runs
/// `default`; with `nap`, a function that sleeps 2 s.
async fn ingress_only() -> TestApp {
    let app = spawn_app_with(|s| s.queues = vec!["not-this-one".into()]).await;
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "2"}}),
    )
    .await;
    app
}

/// `n` async calls of `nap`, booked in `ledger`.
async fn naps(app: &TestApp, ledger: &mut Ledger, n: usize) {
    for i in 0..n {
        ledger
            .accepted
            .push(app.invoke_async("nap", format!("{i}")).await);
    }
}

fn worker_env(
    app: &TestApp,
    worker_id: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let db = app
        .settings
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let mut env = vec![
        ("GRANDA_DATABASE_URL", format!("{}/{db}", postgres_base())),
        ("GRANDA_AMQP_URL", app.settings.amqp_url.clone()),
        ("GRANDA_AMQP_PREFIX", app.settings.amqp_prefix.clone()),
        ("GRANDA_WORKER_ID", worker_id.to_string()),
        ("GRANDA_SCHEDULER_INTERVAL_MS", "100".to_string()),
        // Its endpoints on a free port: workers of tests running at once must not share one.
        ("GRANDA_WORKER_LISTEN", "127.0.0.1:0".to_string()),
    ];
    env.extend(extra.iter().cloned());
    env
}

async fn running_count(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM invocations WHERE status = 'running'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    n
}

async fn wait_running(app: &TestApp, at_least: i64, within: Duration) {
    let start = Instant::now();
    while running_count(app).await < at_least {
        assert!(
            start.elapsed() < within,
            "fewer than {at_least} running after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_and_its_successor_cleans_up() {
    let app = ingress_only().await;
    let worker_id = format!("crashy-{}", Uuid::new_v4().simple());
    let env = worker_env(
        &app,
        &worker_id,
        &[
            ("GRANDA_MIN_CONCURRENCY", "20".into()),
            ("GRANDA_MAX_CONCURRENCY", "20".into()),
        ],
    );
    let first = GrandaProcess::spawn(&["worker"], &env);

    let mut ledger = Ledger::default();
    naps(&app, &mut ledger, 20).await;
    wait_running(&app, 10, Duration::from_secs(60)).await;
    first.kill9();
    assert!(first.wait_exit(Duration::from_secs(10)).await.is_some());

    // A new worker under the same name: it removes what its dead self left, and runs it all.
    let second = GrandaProcess::spawn(&["worker"], &env);
    let rows = ledger.settle(&app.pool, Duration::from_secs(120)).await;
    assert!(
        rows.iter().all(|(_, status, _)| status == "succeeded"),
        "{rows:?}\n{}",
        second.log()
    );
    assert!(
        rows.iter().any(|(_, _, attempt)| *attempt >= 2),
        "some runs were cut and run again: {rows:?}"
    );
    // Each cut run is an attempt of its own, `lost` with its worker.
    for (id, _, attempt) in rows.iter().filter(|r| r.2 >= 2) {
        let lost: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, worker FROM invocation_attempts WHERE invocation_id = $1 AND attempt = $2",
        )
        .bind(id)
        .bind(attempt - 1)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            lost,
            Some(("lost".to_string(), Some(worker_id.clone()))),
            "{id}"
        );
    }
    assert_no_containers(&app.docker, &worker_id, Duration::from_secs(30)).await;
    second.sigterm();
    assert!(
        second
            .wait_exit(Duration::from_secs(30))
            .await
            .unwrap()
            .success()
    );
    eprintln!(
        "kill -9: 20 accepted, {} final, lost 0, duplicated 0",
        rows.len()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_runs_finish_within_the_grace_period_and_gives_back_the_rest() {
    let app = ingress_only().await;
    app.register(
        "long-nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "30"}, "timeout_ms": 60000}),
    )
    .await;
    let worker_id = format!("polite-{}", Uuid::new_v4().simple());
    let concurrency = [
        ("GRANDA_MIN_CONCURRENCY", "4".to_string()),
        ("GRANDA_MAX_CONCURRENCY", "4".to_string()),
    ];

    // Runs that fit in the grace period finish, and the worker exits 0.
    let mut env = worker_env(&app, &worker_id, &concurrency);
    env.push(("GRANDA_SHUTDOWN_GRACE_MS", "20000".into()));
    // One function on every slot (fair sharing would keep one for others).
    env.push(("GRANDA_FAIR_SHARE", "false".into()));
    let worker = GrandaProcess::spawn(&["worker"], &env);
    let mut ledger = Ledger::default();
    naps(&app, &mut ledger, 4).await;
    wait_running(&app, 4, Duration::from_secs(60)).await;
    worker.sigterm();
    let status = worker
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits within the grace");
    assert!(status.success(), "exit 0: {status:?}\n{}", worker.log());
    let rows = ledger.settle(&app.pool, Duration::from_secs(5)).await;
    assert!(
        rows.iter().all(|(_, s, a)| s == "succeeded" && *a == 1),
        "{rows:?}"
    );

    // Runs that don't fit go back to the queue; the next worker runs them.
    let mut env = worker_env(&app, &worker_id, &concurrency);
    env.push(("GRANDA_SHUTDOWN_GRACE_MS", "500".into()));
    let worker = GrandaProcess::spawn(&["worker"], &env);
    let cut = app.invoke_async("long-nap", "").await;
    ledger.accepted.push(cut);
    wait_running(&app, 1, Duration::from_secs(60)).await;
    let stopping = Instant::now();
    worker.sigterm();
    let status = worker
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits after the grace");
    assert!(status.success());
    assert!(stopping.elapsed() < Duration::from_secs(10));
    app.put_json(
        "/v1/functions/long-nap",
        &json!({"env": {"SLEEP_SECONDS": "1"}}),
    )
    .await;
    let next = GrandaProcess::spawn(&["worker"], &worker_env(&app, &worker_id, &concurrency));
    let rows = ledger.settle(&app.pool, Duration::from_secs(60)).await;
    let (_, status, attempt) = rows.iter().find(|r| r.0 == cut).unwrap();
    assert_eq!((status.as_str(), *attempt), ("succeeded", 2), "{rows:?}");
    assert_no_containers(&app.docker, &worker_id, Duration::from_secs(30)).await;
    next.sigterm();
    next.wait_exit(Duration::from_secs(30)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_granda_up_answers_the_requests_in_flight_then_exits() {
    let app = ingress_only().await;
    let port = super::infra::free_port();
    let worker_id = format!("up-{}", Uuid::new_v4().simple());
    let mut env = worker_env(&app, &worker_id, &[]);
    env.push(("GRANDA_LISTEN", format!("127.0.0.1:{port}")));
    let up = GrandaProcess::spawn(&["up"], &env);
    let base = format!("http://127.0.0.1:{port}");
    up.wait_healthy(&base, Duration::from_secs(30)).await;

    let call = tokio::spawn({
        let client = app.client.clone();
        let url = format!("{base}/fn/nap");
        async move { client.post(url).body("").send().await }
    });
    wait_running(&app, 1, Duration::from_secs(30)).await;
    up.sigterm();
    let response = call.await.unwrap().expect("the call in flight is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slept\n");
    let status = up.wait_exit(Duration::from_secs(30)).await.expect("exits");
    assert!(status.success(), "{status:?}\n{}", up.log());
    app.shutdown().await;
}
