//! Faults of the services Granda stands on: RabbitMQ restarted, Postgres stopped, the Docker
//! engine restarted. Each against a private copy, so other tests don't notice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::infra::{TestDocker, TestPostgres, TestRabbit};
use super::ledger::{Ledger, assert_no_containers};
use crate::support::spawn_app_with;

/// Sends an async invoke and books the answer.
async fn submit(app: &crate::support::TestApp, function: &str, ledger: &mut Ledger) -> u16 {
    let response = app
        .client
        .post(app.url(&format!("/v1/functions/{function}/invocations")))
        .body("x")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer, never a hang");
    let status = response.status().as_u16();
    if status == 202 {
        let body: serde_json::Value = response.json().await.unwrap();
        ledger
            .accepted
            .push(body["id"].as_str().unwrap().parse().unwrap());
    } else {
        assert_eq!(status, 503, "refused as unavailable, not failed");
        ledger.refused += 1;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_loses_nothing_and_no_caller_hangs() {
    let rabbit = Arc::new(TestRabbit::start().await);
    let app = spawn_app_with(|s| {
        s.amqp_url = rabbit.url();
        s.sync_wait_ms = 20_000;
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let mut ledger = Ledger::default();
    for _ in 0..10 {
        submit(&app, "echo", &mut ledger).await;
    }

    // Keep publishing and calling while the broker goes away and comes back.
    let restarting = tokio::spawn({
        let rabbit = rabbit.clone();
        async move { rabbit.restart().await }
    });
    let mut sync_answers = Vec::new();
    while !restarting.is_finished() {
        submit(&app, "echo", &mut ledger).await;
        let sync = app
            .client
            .post(app.url("/fn/echo"))
            .body("s")
            .timeout(Duration::from_secs(40))
            .send()
            .await
            .expect("a sync caller gets an answer, never a hang");
        let status = sync.status().as_u16();
        assert!(matches!(status, 200 | 202 | 503), "sync answered {status}");
        if let Some(id) = sync.headers().get("x-granda-invocation-id") {
            ledger.accepted.push(id.to_str().unwrap().parse().unwrap());
        } else {
            ledger.refused += 1;
        }
        sync_answers.push(status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restarting.await.unwrap();
    // And after: both sides reconnected by themselves.
    for _ in 0..10 {
        assert_eq!(submit(&app, "echo", &mut ledger).await, 202);
    }
    let response = app.invoke("echo", "after").await;
    assert_eq!(response.status(), 200);
    ledger.accepted.push(
        response.headers()["x-granda-invocation-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap(),
    );

    let rows = ledger.settle(&app.pool, Duration::from_secs(120)).await;
    assert!(rows.iter().all(|(_, s, _)| s == "succeeded"), "{rows:?}");
    eprintln!(
        "rabbitmq restart: {} accepted, {} refused (503), sync answers {sync_answers:?}, lost 0, duplicated 0",
        ledger.accepted.len(),
        ledger.refused
    );
    app.assert_no_containers_left(Duration::from_secs(20)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_means_503s_and_nothing_accepted_is_lost() {
    let pg = TestPostgres::start().await;
    let db = format!("granda_fault_{}", Uuid::new_v4().simple());
    let app = spawn_app_with(|s| s.database_url = pg.url(&db)).await;
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "1"}}),
    )
    .await;
    let mut ledger = Ledger::default();
    for _ in 0..10 {
        assert_eq!(submit(&app, "nap", &mut ledger).await, 202);
    }
    pg.stop().await;
    for _ in 0..3 {
        assert_eq!(
            submit(&app, "nap", &mut ledger).await,
            503,
            "no 2xx while nothing can be recorded"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start_again().await;
    for _ in 0..5 {
        assert_eq!(submit(&app, "nap", &mut ledger).await, 202);
    }
    let rows = ledger.settle(&app.pool, Duration::from_secs(120)).await;
    assert!(rows.iter().all(|(_, s, _)| s == "succeeded"), "{rows:?}");
    eprintln!(
        "postgres stop: {} accepted, {} refused (503), lost 0, duplicated 0",
        ledger.accepted.len(),
        ledger.refused
    );
    app.assert_no_containers_left(Duration::from_secs(20)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_engine_restart_mid_run_is_retried_as_a_platform_failure() {
    let docker = TestDocker::start().await;
    let app = spawn_app_with(|s| {
        s.docker_host = Some(docker.host());
        s.retry_base_ms = 1_000;
        s.retry_max_ms = 4_000;
    })
    .await;
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "3"}, "max_attempts": 6}),
    )
    .await;
    let mut ledger = Ledger::default();
    for _ in 0..3 {
        assert_eq!(submit(&app, "nap", &mut ledger).await, 202);
    }
    // Wait until they run, then pull the engine from under them.
    let start = std::time::Instant::now();
    loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM invocations WHERE status = 'running'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if n >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    docker.restart().await;
    let rows = ledger.settle(&app.pool, Duration::from_secs(180)).await;
    assert!(rows.iter().all(|(_, s, _)| s == "succeeded"), "{rows:?}");
    assert!(
        rows.iter().any(|(_, _, a)| *a >= 2),
        "the cut runs were retried: {rows:?}"
    );
    assert_no_containers(&docker.client(), &app.worker_id(), Duration::from_secs(30)).await;
    eprintln!(
        "docker restart: {} accepted, lost 0, duplicated 0; attempts {:?}",
        rows.len(),
        rows.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    app.shutdown().await;
}
