//! Webhooks against bad input and hostile senders: validation, control characters, squatted
//! idempotency keys, unknown hooks answered early, the shared byte budget; and retries keep env.

use super::schemes::{pairs, standard_headers, stripe_header};
use super::*;
use crate::support::{error_code, eventually, partial_post, spawn_app, status_line};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_listed_read_deleted_and_validated() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    app.register("other", "granda-test/echo", json!({})).await;
    let a = create(&app, json!({"function": "echo", "scheme": "github"})).await;
    let secret = a["secret"].as_str().expect("a generated secret");
    assert_eq!(secret.len(), 64);
    let b = create(&app, json!({"function": "other", "scheme": "none"})).await;

    let all: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 2);
    assert!(
        !all.to_string().contains(secret),
        "a list never shows secrets"
    );
    let some: Value = app
        .get("/v1/webhooks?function=other")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(some["webhooks"][0]["id"], b["id"]);
    let one: Value = app
        .get(&format!("/v1/webhooks/{}", a["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["scheme"], "github");
    assert!(one.get("secret").is_none());

    for (body, why) in [
        (
            json!({"function": "echo", "scheme": "gitlab"}),
            "unknown scheme",
        ),
        (
            json!({"function": "nobody", "scheme": "github"}),
            "unknown function",
        ),
        (
            json!({"function": "echo", "scheme": "standard", "secret": "whsec_!!"}),
            "not base64",
        ),
        (
            json!({"function": "echo", "scheme": "github", "secret": ""}),
            "empty secret",
        ),
        (
            json!({"function": "echo", "scheme": "github", "header": "x-sig"}),
            "header on github",
        ),
        (
            json!({"function": "echo", "scheme": "none", "secret": "x"}),
            "secret on none",
        ),
        (
            json!({"function": "echo", "scheme": "hmac-sha256", "header": "bad header"}),
            "bad header name",
        ),
        (
            json!({"function": "echo", "scheme": "github", "extra": 1}),
            "unknown field",
        ),
    ] {
        let response = app.post_json("/v1/webhooks", &body).await;
        assert_eq!(response.status(), 422, "{why}");
    }

    let b_id = b["id"].as_str().unwrap();
    let response = app.delete(&format!("/v1/webhooks/{b_id}")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        error_code(
            app.post_with(&format!("/hooks/{b_id}"), &[], "x").await,
            404
        )
        .await,
        "not_found"
    );
    assert_eq!(
        error_code(app.get(&format!("/v1/webhooks/{b_id}")).await, 404).await,
        "not_found"
    );
    assert_eq!(
        error_code(app.post_with("/hooks/not-a-uuid", &[], "x").await, 404).await,
        "not_found"
    );

    // Deleting the function deletes its webhooks.
    let response = app.delete("/v1/functions/echo").await;
    assert_eq!(response.status(), 204);
    let all: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert!(all["webhooks"].as_array().unwrap().is_empty());
    app.shutdown().await;
}

/// Issue 14, item 1: what a signed delivery says about itself (its type, its id) becomes env and,
/// for a hot function, request headers. Control characters are refused at the door, nothing is
/// queued, and the hot function keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_with_control_characters_in_its_type_is_refused_and_hot_keeps_answering()
{
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hook = create(
        &app,
        json!({"function": "hot", "scheme": "standard", "secret": secret}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();

    let poisoned = br#"{"type":"\u0001\r\nX-Injected: 1","data":{}}"#;
    let h = standard_headers(secret, "msg_poison", now(), poisoned);
    let response = app
        .post_with(&format!("/hooks/{id}"), &pairs(&h), poisoned.to_vec())
        .await;
    assert_eq!(error_code(response, 400).await, "bad_request");
    // A Stripe-style id in the body with a control character is refused the same way.
    let stripe = create(&app, json!({"function": "hot", "scheme": "stripe"})).await;
    let stripe_secret = stripe["secret"].as_str().unwrap();
    let body = br#"{"id":"evt_1\u0007","type":"invoice.paid"}"#;
    let sig = stripe_header(stripe_secret, now(), body);
    let response = app
        .post_with(
            &format!("/hooks/{}", stripe["id"].as_str().unwrap()),
            &[("stripe-signature", sig.as_str())],
            body.to_vec(),
        )
        .await;
    assert_eq!(error_code(response, 400).await, "bad_request");
    assert!(app.invocations_of("hot").await.is_empty(), "nothing queued");

    // The hot function answers, and sees no injected header.
    let response = app.invoke("hot", "headers").await;
    assert_eq!(response.status(), 200);
    let headers = response.text().await.unwrap().to_ascii_lowercase();
    assert!(!headers.contains("x-injected"), "{headers}");
    // A well-formed signed delivery still runs.
    let good = br#"{"type":"user.created","data":{}}"#;
    let h = standard_headers(secret, "msg_good", now(), good);
    let (status, run) = deliver(&app, id, &pairs(&h), good).await;
    assert_eq!(status, 202);
    let record = app.wait_final(run.unwrap(), RUN).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    app.shutdown().await;
}

/// Issue 14, item 9: a caller's `Idempotency-Key: webhook:<hook id>:<delivery>` lives in the
/// callers' namespace, so the real delivery later still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_idempotency_key_cannot_squat_a_webhook_delivery() {
    let app = spawn_app().await;
    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(&app, json!({"function": "env", "scheme": "github"})).await;
    let id = hook["id"].as_str().unwrap();
    let secret = hook["secret"].as_str().unwrap();
    let squat = format!("webhook:{id}:d-squat");
    let response = app
        .post_with(
            "/v1/functions/env/invocations",
            &[("idempotency-key", squat.as_str())],
            "squatter",
        )
        .await;
    assert_eq!(response.status(), 202);
    let squatter: Value = response.json().await.unwrap();

    let body = br#"{"action":"opened"}"#;
    let sig = format!(
        "sha256={}",
        hex::encode(hmac_bytes(secret.as_bytes(), &[body]))
    );
    let headers = [
        ("x-hub-signature-256", sig.as_str()),
        ("x-github-event", "push"),
        ("x-github-delivery", "d-squat"),
    ];
    let response = app
        .post_with(&format!("/hooks/{id}"), &headers, body.to_vec())
        .await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let delivered: Value = response.json().await.unwrap();
    assert_ne!(
        delivered["id"], squatter["id"],
        "the delivery got its own run"
    );
    let record = app
        .wait_final(delivered["id"].as_str().unwrap().parse().unwrap(), RUN)
        .await;
    assert_eq!(record["status"], "succeeded");
    assert!(
        record["output"]
            .as_str()
            .unwrap()
            .contains("GRANDA_WEBHOOK_DELIVERY=d-squat\n")
    );
    // Each namespace still deduplicates its own: the caller's retry and the sender's retry.
    let again = app
        .post_with(
            "/v1/functions/env/invocations",
            &[("idempotency-key", squat.as_str())],
            "squatter",
        )
        .await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], squatter["id"]);
    let (status, retry) = deliver(&app, id, &headers, body).await;
    assert_eq!(status, 202);
    assert_eq!(
        retry.unwrap().to_string(),
        delivered["id"].as_str().unwrap()
    );
    app.shutdown().await;
}

/// Issue 14, item 12: an unknown hook id is answered 404 before its (large) body is read, and
/// a body announced over the cap is refused 413 unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_hook_is_answered_before_its_body_is_read() {
    let app = spawn_app().await;
    let path = format!("/hooks/{}", Uuid::new_v4());
    let mut stream = partial_post(
        &app,
        &path,
        &[("content-type", "application/json")],
        6_000_000,
        64 * 1024,
    )
    .await;
    let line = status_line(&mut stream, Duration::from_secs(10)).await;
    assert!(line.starts_with("HTTP/1.1 404"), "{line}");

    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(&app, json!({"function": "env", "scheme": "none"})).await;
    let path = format!("/hooks/{}", hook["id"].as_str().unwrap());
    let over = app.settings.max_body_bytes + 1;
    let mut stream = partial_post(
        &app,
        &path,
        &[("content-type", "application/json")],
        over,
        1024,
    )
    .await;
    let line = status_line(&mut stream, Duration::from_secs(10)).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    assert!(app.invocations_of("env").await.is_empty());
    app.shutdown().await;
}

/// Issue 14, item 12: unauthenticated bodies share one byte budget. One delivery holding most
/// of it makes the next wait and get 503; when it is gone, deliveries fit again. (Issue 26: a
/// delivery holds the bytes it has sent, not the ones it announces.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_share_a_byte_budget() {
    let app = crate::support::spawn_app_with(|s| {
        s.unauthenticated_body_budget_bytes = 1_000_000;
    })
    .await;
    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(&app, json!({"function": "env", "scheme": "none"})).await;
    let path = format!("/hooks/{}", hook["id"].as_str().unwrap());
    // Waits until the gauge of unauthenticated body bytes in flight reads `bytes`.
    let in_flight = |bytes: f64, what: &'static str| {
        let (app, gauge) = (&app, "granda_unauthenticated_body_bytes_in_flight");
        eventually(Duration::from_secs(10), what, move || async move {
            (app.metric(gauge).await == Some(bytes)).then_some(())
        })
    };
    // A delivery of 700 kB, sent whole.
    let large = || {
        app.post_with(
            &path,
            &[("content-type", "text/plain")],
            vec![b'y'; 700_000],
        )
    };

    // A slow sender: 700 kB announced, 600 kB sent. What it sent shows in the gauge.
    let slow = partial_post(
        &app,
        &path,
        &[("content-type", "application/json")],
        700_000,
        600_000,
    )
    .await;
    in_flight(600_000.0, "the reservation never showed").await;
    let response = large().await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    // Small bodies still fit beside it.
    let (status, _) = deliver(&app, hook["id"].as_str().unwrap(), &[], b"small").await;
    assert_eq!(status, 202);

    drop(slow);
    in_flight(0.0, "the reservation was kept").await;
    assert_eq!(large().await.status(), 202);
    app.shutdown().await;
}

/// Issue 17: a webhook invocation's own env is stored with it, so a manual retry (and the
/// outbox) send it again: the retried run sees `GRANDA_WEBHOOK_*` and `GRANDA_CONTENT_TYPE` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_webhook_invocation_keeps_its_own_env() {
    let app = spawn_app().await;
    // The body is the script (input mode args): print the env, then fail so it can be retried.
    app.register(
        "envfail",
        "granda-test/sh",
        json!({"input": "args", "max_attempts": 1}),
    )
    .await;
    let hook = create(&app, json!({"function": "envfail", "scheme": "none"})).await;
    let hook_id = hook["id"].as_str().unwrap();
    let (status, id) = deliver(
        &app,
        hook_id,
        &[("content-type", "application/json")],
        br#"["env | sort; exit 3"]"#,
    )
    .await;
    assert_eq!(status, 202);
    let id = id.unwrap();
    let seen = |record: &Value| {
        let out = record["output"].as_str().unwrap_or_default().to_string();
        assert!(
            out.contains(&format!("GRANDA_WEBHOOK_ID={hook_id}")),
            "{record}"
        );
        assert!(
            out.contains("GRANDA_CONTENT_TYPE=application/json"),
            "{record}"
        );
    };
    let first = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(first["status"], "failed", "{first}");
    seen(&first);

    let response = app
        .post_json(&format!("/v1/invocations/{id}/retry"), &json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        let record = app.invocation(id).await;
        if record["status"] == "failed" && record["attempt"].as_i64() > Some(1) {
            break record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second run: {record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    seen(&again);
    app.shutdown().await;
}
