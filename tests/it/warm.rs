//! Warm functions: an exec in a kept container instead of a container per invocation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestApp, env_of_a_run, id_of, spawn_app};

/// The warm containers this app's worker keeps now.
async fn pool_containers(app: &TestApp) -> Vec<String> {
    app.containers_labelled(&["granda.pool=warm"]).await
}

async fn wait_pool_size(app: &TestApp, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let now = pool_containers(app).await.len();
        if now == n {
            return;
        }
        assert!(
            start.elapsed() < within,
            "pool has {now} containers, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn record_of(app: &TestApp, response: &reqwest::Response) -> Value {
    app.invocation(id_of(response)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_warm_runs_reuse_one_container_with_the_cold_contract() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({"mode": "warm"}))
        .await;
    let mut cold = Vec::new();
    for i in 0..3 {
        let response = app.invoke("echo", format!("hello {i}")).await;
        assert_eq!(response.status(), 200);
        let record = record_of(&app, &response).await;
        assert_eq!(response.text().await.unwrap(), format!("hello {i}"));
        cold.push(record["cold"].as_bool().unwrap());
    }
    assert_eq!(
        cold,
        [true, false, false],
        "the first run starts the container, the rest reuse it"
    );
    wait_pool_size(&app, 1, Duration::from_secs(5)).await;

    // The same input contract as a cold run: env, and args mode.
    app.register(
        "env",
        "granda-test/env",
        json!({"mode": "warm", "env": {"GREETING": "hej"}}),
    )
    .await;
    env_of_a_run(&app, "env").await;
    app.register(
        "args",
        "granda-test/args",
        json!({"mode": "warm", "input": "args"}),
    )
    .await;
    let response = app.invoke("args", r#"["warm", "args"]"#).await;
    assert_eq!(response.text().await.unwrap(), "warm args\n");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_timed_out_warm_run_discards_its_container() {
    let app = spawn_app().await;
    app.register("fail", "granda-test/fail", json!({"mode": "warm"}))
        .await;
    let response = app.invoke("fail", "x").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-granda-exit-code"], "3");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("something broke")
    );
    wait_pool_size(&app, 0, Duration::from_secs(10)).await;

    app.register(
        "stuck",
        "granda-test/sleep",
        json!({"mode": "warm", "timeout_ms": 500, "env": {"SLEEP_SECONDS": "30"}}),
    )
    .await;
    let start = Instant::now();
    let response = app.invoke("stuck", "").await;
    assert_eq!(response.status(), 504);
    assert!(start.elapsed() < Duration::from_secs(10));
    wait_pool_size(&app, 0, Duration::from_secs(10)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_warm_containers_expire_but_min_warm_stay() {
    let app = spawn_app().await;
    app.register(
        "brief",
        "granda-test/echo",
        json!({"mode": "warm", "idle_timeout_ms": 2500}),
    )
    .await;
    app.register(
        "kept",
        "granda-test/echo",
        json!({"mode": "warm", "idle_timeout_ms": 300, "min_warm": 1}),
    )
    .await;
    assert_eq!(app.invoke("brief", "a").await.status(), 200);
    assert_eq!(app.invoke("kept", "b").await.status(), 200);
    wait_pool_size(&app, 2, Duration::from_secs(5)).await;
    // `brief` goes after its idle timeout; `kept` stays at its minimum.
    wait_pool_size(&app, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool_containers(&app).await.len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_may_keep_state_between_warm_runs_and_the_root_stays_read_only() {
    let app = spawn_app().await;
    app.register(
        "counter",
        "granda-test/sh",
        json!({"mode": "warm", "input": "args"}),
    )
    .await;
    let script = r#"["echo x >> /tmp/count; wc -l < /tmp/count; touch /oops 2>/dev/null && echo writable; true"]"#;
    let first = app.invoke("counter", script).await.text().await.unwrap();
    let second = app.invoke("counter", script).await.text().await.unwrap();
    assert_eq!((first.trim(), second.trim()), ("1", "2"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_container_that_died_is_replaced_not_used() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({"mode": "warm"}))
        .await;
    assert_eq!(app.invoke("echo", "one").await.status(), 200);
    wait_pool_size(&app, 1, Duration::from_secs(5)).await;
    let kept = pool_containers(&app).await.remove(0);
    app.docker
        .kill_container(
            &kept,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let response = app.invoke("echo", "two").await;
    assert_eq!(response.status(), 200);
    let record = record_of(&app, &response).await;
    assert_eq!(response.text().await.unwrap(), "two");
    assert_eq!(record["cold"], true, "a new container served it");
    let now = pool_containers(&app).await;
    assert!(
        !now.contains(&kept) || now.len() == 2,
        "the dead one is discarded"
    );
    app.shutdown().await;
}
