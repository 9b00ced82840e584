//! A function's `store_output`: `always` (the default) keeps every record's input, output and
//! logs; `on_failure` keeps a success's record (status, times, exit code, sizes) without them,
//! and a failure's whole.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestApp, error_code, spawn_app};

/// A script for `granda-test/sh` (`input: args`): writes to stdout and stderr, exits `code`.
fn script(code: i32) -> String {
    json!([format!("echo out-{code}; echo err-{code} >&2; exit {code}")]).to_string()
}

/// Bytes of input, output and logs the records of `function` hold (what `max_stored_bytes` counts).
async fn stored_bytes(app: &TestApp, function: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(COALESCE(octet_length(input), 0) + COALESCE(octet_length(output), 0)
                            + COALESCE(octet_length(logs), 0)), 0)::bigint
         FROM invocations WHERE function = $1",
    )
    .bind(function)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn run_async(app: &TestApp, function: &str, code: i32) -> Value {
    let id = app.invoke_async(function, script(code)).await;
    app.wait_final(id, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_a_success_keeps_its_record_but_not_its_input_output_or_logs() {
    let app = spawn_app().await;
    let f = app
        .register(
            "lean",
            "granda-test/sh",
            json!({"input": "args", "store_output": "on_failure"}),
        )
        .await;
    assert_eq!(f["store_output"], "on_failure");

    // A sync caller still gets the output; only the record goes without it.
    let answer = app.invoke("lean", script(0)).await;
    assert_eq!(answer.status(), 200);
    let id = crate::support::id_of(&answer);
    assert_eq!(answer.text().await.unwrap(), "out-0\n");
    let sync = app.invocation(id).await;
    let not_async = run_async(&app, "lean", 0).await;
    for r in [&sync, &not_async] {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["exit_code"], 0);
        assert!(r["duration_ms"].as_i64().is_some(), "{r}");
        assert!(r["finished_at"].is_string(), "{r}");
        assert_eq!(r["input_size"], script(0).len() as i64);
        assert!(r["input"].is_null(), "{r}");
        assert!(r["output"].is_null(), "{r}");
        assert!(r["logs"].is_null(), "{r}");
        assert_eq!(r["not_stored"], "not stored (store_output: on_failure)");
    }
    assert_eq!(
        stored_bytes(&app, "lean").await,
        0,
        "successes count nothing against max_stored_bytes"
    );

    // A failure of the same function keeps everything.
    let failed = run_async(&app, "lean", 4).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["exit_code"], 4);
    assert_eq!(failed["input"], script(4));
    assert_eq!(failed["output"], "out-4\n");
    assert_eq!(failed["logs"], "err-4\n");
    assert!(failed.get("not_stored").is_none(), "{failed}");
    assert_eq!(
        stored_bytes(&app, "lean").await,
        (script(4).len() + "out-4\n".len() + "err-4\n".len()) as i64
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_a_retried_failure_keeps_everything_and_the_default_keeps_everything() {
    let app = spawn_app().await;
    // Retried once, then dead: the input stays for the retry, and the dead record keeps it all.
    app.register(
        "flaky",
        "granda-test/sh",
        json!({"input": "args", "max_attempts": 2, "retry_on": ["error"],
               "store_output": "on_failure"}),
    )
    .await;
    let r = run_async(&app, "flaky", 5).await;
    assert_eq!(r["status"], "dead", "{r}");
    assert_eq!(r["attempt"], 2);
    assert_eq!(r["input"], script(5));
    assert_eq!(r["output"], "out-5\n");
    assert_eq!(r["logs"], "err-5\n");
    assert!(r.get("not_stored").is_none(), "{r}");

    let f = app
        .register("full", "granda-test/sh", json!({"input": "args"}))
        .await;
    assert_eq!(f["store_output"], "always");
    let ok = run_async(&app, "full", 0).await;
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(ok["input"], script(0));
    assert_eq!(ok["output"], "out-0\n");
    assert_eq!(ok["logs"], "err-0\n");
    assert!(ok.get("not_stored").is_none(), "{ok}");
    let failed = run_async(&app, "full", 3).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["output"], "out-3\n");
    assert_eq!(failed["logs"], "err-3\n");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_store_output_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    let refused = app
        .post_json(
            "/v1/functions",
            &json!({"name": "odd", "image": "granda-test/echo", "store_output": "sometimes"}),
        )
        .await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("store_output") || message.contains("on_failure"),
        "the message names the field or its values: {message}"
    );
    assert!(message.contains("on_failure"), "{message}");
    assert_eq!(
        error_code(app.get("/v1/functions/odd").await, 404).await,
        "not_found"
    );

    app.register("echo", "granda-test/echo", json!({})).await;
    let update = app
        .put_json("/v1/functions/echo", &json!({"store_output": "never"}))
        .await;
    assert_eq!(error_code(update, 422).await, "invalid");
    let read = app.get_json("/v1/functions/echo").await;
    assert_eq!(read["store_output"], "always");
    // A good value is taken, and read back.
    let changed = app
        .put_json("/v1/functions/echo", &json!({"store_output": "on_failure"}))
        .await;
    assert_eq!(changed.status(), 200);
    let read = app.get_json("/v1/functions/echo").await;
    assert_eq!(read["store_output"], "on_failure");
    app.shutdown().await;
}
