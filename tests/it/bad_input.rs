//! Bad input gets a clear JSON error and changes nothing: nothing stored, nothing queued.

use std::time::Duration;

use serde_json::json;

use crate::support::{error_code, spawn_app, spawn_app_with};

async fn count(app: &crate::support::TestApp, table: &str) -> i64 {
    let sql = match table {
        "functions" => "SELECT count(*) FROM functions",
        _ => "SELECT count(*) FROM invocations",
    };
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&app.pool).await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_function_definitions_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let post = |body: &'static str| {
        app.client
            .post(app.url("/v1/functions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        error_code(post("{not json").await.unwrap(), 400).await,
        "bad_request"
    );
    assert_eq!(
        error_code(post(r#"{"name": "x"}"#).await.unwrap(), 422).await,
        "invalid"
    );
    assert_eq!(
        error_code(post(r#"{"image": "granda-test/echo"}"#).await.unwrap(), 422).await,
        "invalid"
    );
    for name in ["Echo", "1echo", "ec_ho", "", &"a".repeat(64)] {
        let r = app
            .post_json(
                "/v1/functions",
                &json!({"name": name, "image": "granda-test/echo"}),
            )
            .await;
        assert_eq!(error_code(r, 422).await, "invalid", "name {name:?}");
    }
    for bad in [
        json!({"timeout_ms": 0}),
        json!({"timeout_ms": 10_000_000_000i64}),
        json!({"memory_mb": 1}),
        json!({"cpus": -1}),
        json!({"input": "carrier-pigeon"}),
        json!({"env": {"GRANDA_FUNCTION": "x"}}),
        json!({"env": {"1BAD": "x"}}),
        json!({"queue": "Bad Queue"}),
        json!({"max_attempts": 0}),
        json!({"unknown_field": true}),
        json!({"image": "has space"}),
        // Found by the fuzzer: the engine refuses such a reference, which was answered 503.
        json!({"image": "\u{fa}\u{df}\u{17}\u{e3}"}),
        json!({"image": "UPPER/Case:Tag"}),
    ] {
        let mut body = json!({"name": "echo", "image": "granda-test/echo"});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let r = app.post_json("/v1/functions", &body).await;
        assert_eq!(error_code(r, 422).await, "invalid", "{bad}");
    }
    let no_type = app
        .client
        .post(app.url("/v1/functions"))
        .body(r#"{"name": "echo", "image": "granda-test/echo"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(no_type, 415).await, "unsupported_media_type");
    assert_eq!(count(&app, "functions").await, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_routes_and_ids_are_clear_errors() {
    let app = spawn_app().await;
    assert_eq!(
        error_code(app.invoke("nobody", "x").await, 404).await,
        "not_found"
    );
    let r = app
        .client
        .post(app.url("/fn/nobody"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 404).await, "not_found");
    let r = app
        .client
        .post(app.url("/v1/functions/nobody/invocations"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 404).await, "not_found");
    assert_eq!(
        error_code(app.get("/v1/invocations/not-a-uuid").await, 400).await,
        "bad_request"
    );
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        error_code(app.get(&format!("/v1/invocations/{unknown}")).await, 404).await,
        "not_found"
    );
    assert_eq!(
        error_code(app.get("/no/such/route").await, 404).await,
        "not_found"
    );
    let r = app.delete("/v1/functions").await;
    assert_eq!(error_code(r, 405).await, "method_not_allowed");
    assert_eq!(count(&app, "invocations").await, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_and_nothing_is_queued() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let big = vec![b'x'; 4096];
    assert_eq!(
        error_code(app.invoke("echo", big.clone()).await, 413).await,
        "payload_too_large"
    );
    let r = app
        .client
        .post(app.url("/v1/functions/echo/invocations"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 413).await, "payload_too_large");
    assert_eq!(count(&app, "invocations").await, 0);
    // Just under the cap is fine.
    let r = app.invoke("echo", vec![b'y'; 1000]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_idempotency_key_is_refused() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let r = app
        .client
        .post(app.url("/v1/functions/echo/invocations"))
        .header("Idempotency-Key", "k".repeat(300))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, 400).await, "bad_request");
    assert_eq!(count(&app, "invocations").await, 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_postgres_cant_hold_is_a_client_error_not_a_500() {
    let app = spawn_app().await;
    let r = app.get("/v1/webhooks?function=a%00b").await;
    assert_eq!(
        r.status(),
        200,
        "no function has such a name: an empty list"
    );
    for path in [
        "/v1/functions/a%00b",
        "/v1/functions/a%00b/invocations",
        "/v1/functions/a%00b/subscriptions",
    ] {
        let r = app.get(path).await;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    app.shutdown().await;
}

/// Issue 14, item 7: env is counted as it travels, JSON-escaped. Values of `"` and `\` double
/// when escaped: under the raw cap, over the broker's frame once serialized: 422 at registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_that_only_overflows_the_frame_once_escaped_is_refused() {
    let app = spawn_app().await;
    let env = json!({
        "QUOTES": "\"".repeat(30_000),
        "SLASHES": "\\".repeat(30_000),
    });
    let response = app
        .post_json(
            "/v1/functions",
            &json!({"name": "escaped", "image": "granda-test/echo", "env": env}),
        )
        .await;
    assert_eq!(error_code(response, 422).await, "invalid");
    assert_eq!(count(&app, "functions").await, 0);
    // The same bytes unescaped fit.
    app.register(
        "plain",
        "granda-test/echo",
        json!({"env": {"A": "a".repeat(30_000), "B": "b".repeat(30_000)}}),
    )
    .await;
    let response = app
        .client
        .put(app.url("/v1/functions/plain"))
        .json(&json!({"env": {"A": "\"".repeat(30_000), "B": "\\".repeat(30_000)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 422).await, "invalid");
    app.shutdown().await;
}

/// Issue 14, item 7: a message whose headers can't fit the broker's frame (here a function made
/// too large behind the API's back) is refused with 413 before it is sent, and the shared
/// connection stays up: a sync call of another function in flight meanwhile gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_without_losing_other_callers_replies() {
    let app = spawn_app().await;
    app.register(
        "slow",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "3"}}),
    )
    .await;
    app.register("big", "granda-test/echo", json!({})).await;
    let huge = json!({"A": "\"".repeat(100_000)});
    sqlx::query("UPDATE functions SET env = $1 WHERE name = 'big'")
        .bind(huge)
        .execute(&app.pool)
        .await
        .unwrap();

    let slow = {
        let client = app.client.clone();
        let url = app.url("/v1/functions/slow/invoke");
        tokio::spawn(async move { client.post(url).body("").send().await.unwrap() })
    };
    // The slow call is running (its container started) before the oversized ones are tried.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !app
        .invocations_of("slow")
        .await
        .iter()
        .any(|r| r["status"] == "running")
    {
        assert!(std::time::Instant::now() < deadline, "slow never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sync = app.invoke("big", "x").await;
    assert_eq!(error_code(sync, 413).await, "payload_too_large");
    let r#async = app
        .post_with("/v1/functions/big/invocations", &[], "x")
        .await;
    assert_eq!(error_code(r#async, 413).await, "payload_too_large");

    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200, "the other caller's reply was lost");
    assert_eq!(slow.text().await.unwrap().trim(), "slept");
    // Nothing of the refused calls waits to run.
    let big = app.invocations_of("big").await;
    assert!(big.iter().all(|r| r["status"] != "queued"), "{big:?}");
    app.shutdown().await;
}

/// Issue 26: a path parameter that isn't UTF-8 once percent-decoded (or not a number where one
/// is expected), and a query string that doesn't fit, got axum's plain-text 400. Every route
/// with a path parameter answers the API's JSON error body now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_path_parameters_and_queries_get_the_json_error_body() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let requests = [
        ("GET", "/v1/invocations/%ff%fe"),
        ("POST", "/v1/invocations/%ff/retry"),
        ("GET", "/v1/functions/%ff"),
        ("PUT", "/v1/functions/%ff"),
        ("DELETE", "/v1/functions/%ff"),
        ("POST", "/v1/functions/%ff/invoke"),
        ("POST", "/v1/functions/%ff/invocations"),
        ("GET", "/v1/functions/%ff/invocations"),
        ("GET", "/v1/functions/echo/builds/one"),
        ("GET", "/v1/functions/%ff/builds/1"),
        ("POST", "/v1/functions/%ff/rollback"),
        ("GET", "/v1/functions/%ff/subscriptions"),
        ("DELETE", "/v1/functions/echo/subscriptions/%ff"),
        ("GET", "/v1/functions/%ff/callback-key"),
        ("POST", "/v1/events/%ff"),
        ("GET", "/v1/events/%ff"),
        ("GET", "/v1/schedules/%ff"),
        ("GET", "/v1/schedules?function=a&function=b"),
        ("GET", "/v1/webhooks/%ff"),
        ("POST", "/v1/webhooks/%ff/rotate"),
        ("GET", "/v1/webhooks/%ff/rejections"),
        ("POST", "/hooks/%ff"),
        ("DELETE", "/v1/keys/%ff"),
        ("POST", "/fn/%ff"),
    ];
    for (method, path) in requests {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        assert!(status.is_client_error(), "{method} {path}: {status} {text}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{method} {path}: {status} {text}"
        );
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{method} {path}: {body}"
        );
    }
    app.shutdown().await;
}
