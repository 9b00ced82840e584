//! Invoking functions sync and async, and what each outcome looks like over HTTP and in the record.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{env_of_a_run, id_of, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_invoke_returns_stdout_with_headers_and_records_the_run() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;

    let response = app.invoke("echo", "hello granda").await;
    assert_eq!(response.status(), 200);
    let id = id_of(&response);
    assert_eq!(response.headers()["x-granda-status"], "succeeded");
    let duration: i64 = response.headers()["x-granda-duration-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(duration > 0);
    assert_eq!(response.text().await.unwrap(), "hello granda");

    let record = app.invocation(id).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["trigger"], "sync");
    assert_eq!(record["output"], "hello granda");
    assert_eq!(record["input"], "hello granda");
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["attempt"], 1);
    assert_eq!(record["cold"], true);
    assert_eq!(record["worker"], app.worker_id());
    assert_eq!(record["duration_ms"], duration);
    assert!(record["queue_ms"].as_i64().unwrap() >= 0);
    for field in ["queued_at", "started_at", "finished_at"] {
        assert!(record[field].is_string(), "{field} is set");
    }
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_own_url_invokes_it() {
    let app = spawn_app().await;
    let f = app.register("echo", "granda-test/echo", json!({})).await;
    let response = app
        .client
        .post(f["invoke_url"].as_str().unwrap())
        .body("via /fn")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-granda-invocation-id"));
    assert_eq!(response.text().await.unwrap(), "via /fn");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_is_a_502_with_the_exit_code_and_stderr() {
    let app = spawn_app().await;
    app.register("fail", "granda-test/fail", json!({})).await;
    let response = app.invoke("fail", "x").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-granda-status"], "failed");
    assert_eq!(response.headers()["x-granda-exit-code"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "function_failed");
    assert_eq!(body["error"]["exit_code"], 3);
    assert!(
        body["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("something broke")
    );
    let id = body["error"]["invocation_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let record = app.invocation(id).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["exit_code"], 3);
    assert_eq!(record["logs"], "something broke\n");
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_killed_and_answered_504() {
    let app = spawn_app().await;
    app.register(
        "sleepy",
        "granda-test/sleep",
        json!({"timeout_ms": 1000, "env": {"SLEEP_SECONDS": "30"}}),
    )
    .await;
    let start = Instant::now();
    let response = app.invoke("sleepy", "").await;
    assert_eq!(response.status(), 504);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "killed at the timeout, not after the sleep"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "function_timed_out");
    let record = app
        .invocation(
            body["error"]["invocation_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        )
        .await;
    assert_eq!(record["status"], "timed_out");
    assert!(record["error"].as_str().unwrap().contains("timed out"));
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_invoke_answers_202_at_once_and_the_record_goes_queued_running_succeeded() {
    let app = spawn_app().await;
    app.register(
        "sleepy",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "2"}}),
    )
    .await;
    let start = Instant::now();
    let response = app
        .client
        .post(app.url("/v1/functions/sleepy/invocations"))
        .body("in")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "202 does not wait for the run"
    );
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        body["status_url"],
        app.url(&format!("/v1/invocations/{id}"))
    );

    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = app.invocation(id).await;
        let status = record["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "succeeded" {
            assert_eq!(record["output"], "slept\n");
            assert_eq!(record["trigger"], "async");
            assert!(record["duration_ms"].as_i64().unwrap() >= 2000, "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains(&"running".to_string()), "seen {seen:?}");
    assert_ne!(
        seen[0], "succeeded",
        "the record exists before the run ends"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_call_past_the_wait_cap_gets_202_and_the_run_goes_on() {
    let app = spawn_app_with(|s| s.sync_wait_ms = 500).await;
    app.register(
        "sleepy",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "2"}}),
    )
    .await;
    let response = app.invoke("sleepy", "").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().parse().unwrap();
    // The record is there as soon as the 202 is: its status URL works at once.
    let now = app.invocation(id).await;
    assert!(
        matches!(now["status"].as_str(), Some("queued" | "running")),
        "{now}"
    );
    let record = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["output"], "slept\n");
    assert_eq!(record["trigger"], "sync");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_mode_makes_the_body_the_command_and_env_reaches_the_container() {
    let app = spawn_app().await;
    app.register("args", "granda-test/args", json!({"input": "args"}))
        .await;
    let response = app.invoke("args", r#"["hello", "big world"]"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello big world\n");
    let response = app.invoke("args", "one string").await;
    assert_eq!(response.text().await.unwrap(), "one string\n");

    app.register(
        "env",
        "granda-test/env",
        json!({"env": {"GREETING": "hej"}}),
    )
    .await;
    let env = env_of_a_run(&app, "env").await;
    assert!(env.contains("GRANDA_DEADLINE_MS="), "{env}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_truncated_and_marked() {
    let app = spawn_app_with(|s| s.max_output_bytes = 1000).await;
    app.register(
        "big",
        "granda-test/big",
        json!({"env": {"BYTES": "200000"}}),
    )
    .await;
    let id = app.invoke_async("big", "").await;
    let record = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["output"].as_str().unwrap().len(), 1000);
    assert_eq!(record["output_truncated"], true);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_returns_the_first_invocation() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let send = |body: &'static str| {
        app.client
            .post(app.url("/v1/functions/echo/invocations"))
            .header("Idempotency-Key", "order-42")
            .body(body)
            .send()
    };
    let first: Value = send("first").await.unwrap().json().await.unwrap();
    let second = send("second").await.unwrap();
    assert_eq!(second.status(), 202);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let record = app
        .wait_final(
            first["id"].as_str().unwrap().parse().unwrap(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(record["output"], "first");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM invocations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "one record for one key");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sync_call_is_never_recorded_or_run_even_if_its_message_arrives() {
    use granda::invocation::{Claim, NewInvocation, Trigger, store};
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7();
    let new = NewInvocation {
        id,
        function: "echo",
        trigger: Trigger::Sync,
        input: b"x",
        stored_input_cap: 1024,
        idempotency_key: None,
        key_id: None,
    };
    store::refuse(&app.pool, id).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let claim = store::claim_or_create(&app.pool, &new, now, "w1")
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Missing), "{claim:?}");
    assert!(store::get(&app.pool, id).await.unwrap().is_none());

    // Not refused: the claim writes the record, `running`, attempt 1.
    let id = uuid::Uuid::now_v7();
    let new = NewInvocation { id, ..new };
    let claim = store::claim_or_create(&app.pool, &new, now, "w1")
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::Claimed { attempt: 1, .. }),
        "{claim:?}"
    );
    let record = store::get(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(record.status().as_str(), "running");
    app.shutdown().await;
}
