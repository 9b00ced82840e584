//! Deliveries a webhook refused are written down with why (a missing signature, a wrong one, a
//! malformed delivery id), newest first, for admin keys only; a flood writes a bounded few.

use super::*;
use crate::support::{client_with_key, spawn_app};
use serde_json::{Value, json};

async fn refused(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app.get(&format!("/v1/webhooks/{id}/rejections")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["rejections"].as_array().unwrap().clone()
}

/// An app with the function `hooked` (echo) behind a GitHub webhook; returns it and the hook's id.
async fn app_with_github_hook() -> (TestApp, String) {
    let app = spawn_app().await;
    app.register("hooked", "granda-test/echo", json!({})).await;
    let hook = create(
        &app,
        json!({"function": "hooked", "scheme": "github", "secret": GITHUB_SECRET}),
    )
    .await;
    let id = hook["id"].as_str().unwrap().to_string();
    (app, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deliveries_are_listed_with_why_and_a_flood_writes_a_few() {
    let (app, hook) = app_with_github_hook().await;
    let id = hook.as_str();
    assert!(refused(&app, id).await.is_empty());

    assert_rejected(&app, id, &[], b"Hello, World!").await;
    let wrong = format!("sha256={}", "0".repeat(64));
    assert_rejected(
        &app,
        id,
        &[("x-hub-signature-256", &wrong)],
        b"Hello, World!",
    )
    .await;
    // Signed, but its delivery id is longer than any sender's.
    let long = "d".repeat(300);
    let headers = [
        ("x-hub-signature-256", GITHUB_SIGNATURE),
        ("x-github-delivery", long.as_str()),
    ];
    let (status, _) = deliver(&app, id, &headers, b"Hello, World!").await;
    assert_eq!(status, 400);
    // A good delivery is not a rejection.
    let (status, _) = deliver(
        &app,
        id,
        &[("x-hub-signature-256", GITHUB_SIGNATURE)],
        b"Hello, World!",
    )
    .await;
    assert_eq!(status, 202);

    let list = refused(&app, id).await;
    let reasons: Vec<&str> = list.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["malformed_delivery", "bad_signature", "missing_signature"],
        "{list:?}"
    );
    assert!(
        list[1]["detail"]
            .as_str()
            .unwrap()
            .contains("no signature matches")
    );
    assert!(list[0]["at"].as_str().is_some());

    // Invoke keys don't see them; an unknown webhook is 404.
    let (_, invoke_key) = crate::support::make_key(&app, "ci", "invoke").await;
    let status = client_with_key(&invoke_key)
        .get(app.url(&format!("/v1/webhooks/{id}/rejections")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
    let unknown = app
        .get(&format!("/v1/webhooks/{}/rejections", Uuid::new_v4()))
        .await;
    assert_eq!(unknown.status(), 404);

    // A flood of forged deliveries: every one is refused and counted, a few are written.
    for _ in 0..40 {
        assert_rejected(&app, id, &[("x-hub-signature-256", &wrong)], b"flood").await;
    }
    let counted = rejections(&app.metrics().await, "github", "bad_signature");
    assert!(counted >= 41, "the metric counts them all: {counted}");
    let written = refused(&app, id).await.len();
    // Ten per webhook per 10 s: 43 refusals in a few seconds write 10, or 20 across a window's
    // edge; never all of them.
    assert!((10..=20).contains(&written), "{written} written");
    app.shutdown().await;
}

/// Issue 26: a signed delivery whose event type or delivery id is not ASCII was read as having
/// none: 202, run without its event type, and a replay ran again (no dedup key). Now it is
/// refused (400, the API's error shape), written down, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_with_a_non_ascii_event_or_delivery_id_is_refused_and_written_down() {
    let (app, hook) = app_with_github_hook().await;
    let id = hook.as_str();
    let send = |name: &'static str, value: &'static [u8]| {
        let app = &app;
        async move {
            app.client
                .post(app.url(&format!("/hooks/{id}")))
                .header("x-hub-signature-256", GITHUB_SIGNATURE)
                .header(
                    name,
                    reqwest::header::HeaderValue::from_bytes(value).unwrap(),
                )
                .body("Hello, World!")
                .send()
                .await
                .unwrap()
        }
    };
    for (name, value, what) in [
        ("x-github-event", "p\u{fc}sh".as_bytes(), "event type"),
        ("x-github-delivery", b"d-\xff\xfe".as_slice(), "delivery id"),
    ] {
        // Twice: a replay of the same bytes is refused the same way, never run.
        for _ in 0..2 {
            let response = send(name, value).await;
            assert_eq!(response.status(), 400, "{name}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "bad_request", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(what), "{name}: {message}");
        }
    }
    let list = refused(&app, id).await;
    assert_eq!(list.len(), 4, "{list:?}");
    assert!(
        list.iter().all(|r| r["reason"] == "malformed_delivery"),
        "{list:?}"
    );
    assert!(app.invocations_of("hooked").await.is_empty());
    app.shutdown().await;
}

/// A reason is a closed set: a word it lacks in the table is an error on reading, not shown as
/// if it were one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_reason_outside_the_set_is_an_error_not_a_label() {
    let (app, hook) = app_with_github_hook().await;
    let id = hook.as_str();
    assert_rejected(&app, id, &[], b"Hello, World!").await;
    assert_eq!(refused(&app, id).await[0]["reason"], "missing_signature");

    sqlx::query("UPDATE webhook_rejections SET reason = 'made_up' WHERE webhook_id = $1::uuid")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app.get(&format!("/v1/webhooks/{id}/rejections")).await;
    assert_eq!(response.status(), 500);
}
