//! Delivery guarantees without faults: retries, dead letters, the outbox and duplicates.

use std::time::Duration;

use granda::Work;
use granda::broker::Topology;
use granda::function::store as functions;
use granda::invocation::Trigger;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{error_code, spawn_app_with};

fn fast_retries(s: &mut granda::config::Settings) {
    s.retry_base_ms = 100;
    s.retry_max_ms = 400;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_function_asks_to_retry_is_retried_then_dead_lettered_and_can_be_retried_by_hand()
 {
    let app = spawn_app_with(fast_retries).await;
    app.register(
        "flaky",
        "granda-test/fail",
        json!({"max_attempts": 3, "retry_on": ["error"]}),
    )
    .await;
    let id = app.invoke_async("flaky", "x").await;
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "dead");
    assert_eq!(record["attempt"], 3, "{record}");
    assert_eq!(record["exit_code"], 3);
    assert_eq!(record["logs"], "something broke\n");

    let dead: Value = app.get("/v1/dead-letters").await.json().await.unwrap();
    assert_eq!(dead["dead_letters"][0]["id"], id.to_string());
    // The message itself went to the dead-letter queue.
    let mut depth = 0;
    for _ in 0..50 {
        depth = dead_queue_depth(&app).await;
        if depth == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, 1);

    // Fix the function, then retry the dead invocation by hand: a new attempt, with the fix.
    let fixed = app
        .client
        .put(app.url("/v1/functions/flaky"))
        .json(&json!({"image": "granda-test/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fixed.status(), 200);
    let retried = app
        .client
        .post(app.url(&format!("/v1/invocations/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 202);
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["attempt"], 4);
    assert_eq!(record["output"], "x");
    // Every attempt is kept: two retried, the dead one before the retry by hand, the last.
    let attempts: Vec<(i64, &str)> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, "retried"),
            (2, "retried"),
            (3, "dead"),
            (4, "succeeded")
        ],
        "{record}"
    );
    assert_eq!(record["attempts"][2]["exit_code"], 3, "{record}");
    assert!(record["attempts"][0]["worker"].is_string(), "{record}");

    // A succeeded invocation is not retried.
    let again = app
        .client
        .post(app.url(&format!("/v1/invocations/{id}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(again, 409).await, "conflict");
    app.shutdown().await;
}

async fn dead_queue_depth(app: &crate::support::TestApp) -> u32 {
    let connection = granda::broker::connect(&app.settings.amqp_url, "test")
        .await
        .unwrap();
    let topology = Topology::new(&app.settings.amqp_prefix);
    let depth = granda::broker::queue_depth(&connection, &topology.dead_letter_queue())
        .await
        .unwrap();
    let _ = connection.close(200, "".into()).await;
    depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_failures_are_not_retried_unless_asked_and_sync_calls_never_are() {
    let app = spawn_app_with(fast_retries).await;
    app.register("fail", "granda-test/fail", json!({"max_attempts": 3}))
        .await;
    let id = app.invoke_async("fail", "").await;
    let record = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["attempt"], 1);

    app.register(
        "fail-retry",
        "granda-test/fail",
        json!({"max_attempts": 3, "retry_on": ["error"]}),
    )
    .await;
    let response = app.invoke("fail-retry", "").await;
    assert_eq!(response.status(), 502);
    let id: Uuid = response.headers()["x-granda-invocation-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let record = app.invocation(id).await;
    assert_eq!(
        record["status"], "failed",
        "a sync call gets the first verdict"
    );
    assert_eq!(record["attempt"], 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried_when_asked() {
    let app = spawn_app_with(fast_retries).await;
    app.register(
        "slow",
        "granda-test/sleep",
        json!({"timeout_ms": 300, "max_attempts": 2, "retry_on": ["timeout"], "env": {"SLEEP_SECONDS": "10"}}),
    )
    .await;
    let id = app.invoke_async("slow", "").await;
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "dead");
    assert_eq!(record["attempt"], 2);
    assert!(record["error"].as_str().unwrap().contains("timed out"));
    app.assert_no_containers_left(Duration::from_secs(10)).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_failure_is_always_retried() {
    let app = spawn_app_with(fast_retries).await;
    // An image that exists at registration and is gone when the worker runs it.
    let tag = format!("granda-test/vanishing:{}", Uuid::new_v4().simple());
    let status = std::process::Command::new("docker")
        .args(["tag", "granda-test/echo", &tag])
        .status()
        .unwrap();
    assert!(status.success());
    app.register("vanishing", &tag, json!({"max_attempts": 3}))
        .await;
    let status = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .status()
        .unwrap();
    assert!(status.success());

    let id = app.invoke_async("vanishing", "").await;
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "dead", "{record}");
    assert_eq!(record["attempt"], 3);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("could not be created"),
        "{record}"
    );
    assert!(record["exit_code"].is_null());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_publishes_what_an_ingress_recorded_but_never_got_confirmed() {
    let app = spawn_app_with(|s| s.outbox_grace_ms = 500).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    // What an ingress that crashed between the insert and the confirm leaves behind.
    let lost_async = Uuid::now_v7();
    let lost_sync = Uuid::now_v7();
    for (id, trigger) in [(lost_async, "async"), (lost_sync, "sync")] {
        sqlx::query(
            "INSERT INTO invocations (id, function, status, trigger, input, input_size, queued_at)
             VALUES ($1, 'echo', 'queued', $2, 'recovered', 9, now() - interval '1 minute')",
        )
        .bind(id)
        .bind(trigger)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let record = app.wait_final(lost_async, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["output"], "recovered");
    assert_eq!(record["attempt"], 1);
    let record = app.wait_final(lost_sync, Duration::from_secs(30)).await;
    assert_eq!(
        record["status"], "failed",
        "no caller waits for a lost sync call: {record}"
    );
    assert!(record["attempt"] == 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_message_of_a_final_invocation_is_acked_without_a_run() {
    let app = spawn_app_with(|_| {}).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let response = app.invoke("echo", "once").await;
    assert_eq!(response.status(), 200);
    let id: Uuid = response.headers()["x-granda-invocation-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    // Publish the same invocation again, as a redelivery or a second publish would.
    let function = functions::get(&app.pool, "echo").await.unwrap().unwrap();
    let publisher = app.publisher().await;
    let work = Work {
        id,
        trigger: Trigger::Sync,
        function: function.snapshot(),
        queued_at_ms: 0,
        reply_to: None,
        correlation_id: None,
        request: None,
        key_id: None,
    };
    // As a sync call, the duplicate gets the first run's reply again.
    let reply = publisher
        .call("default", work, b"twice", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the reply is sent again");
    assert_eq!(reply.output, b"once");

    let record = app.invocation(id).await;
    assert_eq!(record["attempt"], 1, "no second run");
    assert_eq!(record["output"], "once");
    let connection = granda::broker::connect(&app.settings.amqp_url, "test")
        .await
        .unwrap();
    let depth = granda::broker::queue_depth(
        &connection,
        &Topology::new(&app.settings.amqp_prefix).work_queue("default"),
    )
    .await
    .unwrap();
    assert_eq!(depth, 0, "the duplicate was acked");
    app.shutdown().await;
}

/// Two copies of one message that reach a worker together (a publish repeated after a lost
/// confirm, a redelivery racing its first delivery) make one run: the second waits for the first,
/// then finds it final. A claim accepts a run on its own worker, so without the hold taken before
/// the claim both copies claimed and ran (attempt 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_a_message_arriving_together_run_once() {
    let app = spawn_app_with(|s| s.fair_share = false).await;
    app.register(
        "sleepy",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "1"}}),
    )
    .await;
    let function = functions::get(&app.pool, "sleepy").await.unwrap().unwrap();
    let publisher = app.publisher().await;
    for round in 0..3 {
        let id = Uuid::now_v7();
        let work = Work {
            id,
            trigger: Trigger::Sync,
            function: function.snapshot(),
            queued_at_ms: chrono::Utc::now().timestamp_millis(),
            reply_to: None,
            correlation_id: None,
            request: None,
            key_id: None,
        };
        let (first, second) = tokio::join!(
            publisher.publish("default", &work, b"copy"),
            publisher.publish("default", &work, b"copy"),
        );
        first.unwrap();
        second.unwrap();
        // A sync call's record is written by its claim.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while sqlx::query("SELECT 1 FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
            .is_none()
        {
            assert!(std::time::Instant::now() < deadline, "never claimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let record = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(record["status"], "succeeded", "round {round}: {record}");
        assert_eq!(record["output"], "slept\n");
        assert_eq!(record["attempt"], 1, "round {round}: one run: {record}");
    }
    app.shutdown().await;
}

/// A sync call's claim is an asynchronous commit: a Postgres crash during the run may lose it.
/// The final write then writes the record whole (here the record is deleted mid-run instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_call_whose_claimed_record_is_lost_mid_run_is_recorded_whole_at_the_end() {
    let app = spawn_app_with(|_| {}).await;
    app.register(
        "sleepy",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "2"}}),
    )
    .await;
    let call = {
        let client = app.client.clone();
        let url = app.url("/v1/functions/sleepy/invoke");
        tokio::spawn(async move { client.post(url).body("in").send().await.unwrap() })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let id: Uuid = loop {
        let running: Option<(Uuid,)> = sqlx::query_as(
            "DELETE FROM invocations WHERE function = 'sleepy' AND status = 'running' RETURNING id",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        if let Some((id,)) = running {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "the call never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let response = call.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-granda-invocation-id"]
            .to_str()
            .unwrap(),
        id.to_string()
    );
    assert_eq!(response.text().await.unwrap(), "slept\n");

    let record = app.invocation(id).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["output"], "slept\n");
    assert_eq!(record["input"], "in");
    assert_eq!(record["trigger"], "sync");
    assert_eq!(record["attempt"], 1);
    assert_eq!(record["worker"], app.worker_id());
    assert_eq!(record["exit_code"], 0);
    for field in ["queued_at", "started_at", "finished_at"] {
        assert!(record[field].is_string(), "{field} is set: {record}");
    }
    app.shutdown().await;
}
