//! Result callbacks: signed POSTs of the final result, retried on 5xx, recorded on the invocation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::{TestApp, error_code, spawn_app_with};

/// A receiver on 127.0.0.1 that fails its first `failures` requests with 500, then answers 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes, Instant)>>>,
}

async fn receiver(failures: usize) -> Receiver {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes, Instant)>>> = Arc::default();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let mut seen = state.lock().unwrap();
                seen.push((headers, body, Instant::now()));
                if seen.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, seen }
}

/// Polls the invocation until its callback is delivered or failed.
async fn callback_done(app: &TestApp, id: Uuid) -> Value {
    let start = Instant::now();
    loop {
        let record = app.invocation(id).await;
        let status = record["callback"]["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if status == "delivered" || status == "failed" {
            return record;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "callback still {status}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn verify(key: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let ts = headers["x-granda-timestamp"].to_str().unwrap();
    let id = headers["x-granda-invocation-id"].to_str().unwrap();
    let sig = headers["x-granda-signature"].to_str().unwrap();
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}.{id}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap()).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_fails_twice_then_succeeds_is_retried_with_backoff_and_signed() {
    let app = spawn_app_with(|s| s.callback_backoff_ms = 100).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let rx = receiver(2).await;
    let response = app
        .post_with(
            "/v1/functions/echo/invocations",
            &[("x-callback-url", rx.url.as_str())],
            "the result",
        )
        .await;
    assert_eq!(response.status(), 202);
    let id: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let record = callback_done(&app, id).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["callback"]["status"], "delivered", "{record}");
    assert_eq!(record["callback"]["attempts"], 3);
    assert_eq!(record["callback"]["url"], rx.url.as_str());
    assert!(record["callback"]["error"].is_null());

    let key: Value = app.get("/v1/callbacks/key").await.json().await.unwrap();
    let key = key["key"].as_str().unwrap();
    let seen = rx.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (n, (headers, body, _)) in seen.iter().enumerate() {
        assert_eq!(body.as_ref(), b"the result");
        assert_eq!(headers["x-granda-invocation-id"], id.to_string().as_str());
        assert_eq!(headers["x-granda-status"], "succeeded");
        assert_eq!(headers["x-granda-exit-code"], "0");
        assert_eq!(headers["x-granda-function"], "echo");
        assert_eq!(headers["x-granda-attempt"], (n + 1).to_string().as_str());
        assert!(
            headers["x-granda-duration-ms"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        assert!(verify(key, headers, body), "signature of attempt {}", n + 1);
        assert!(!verify("another key", headers, body));
        assert!(!verify(key, headers, b"tampered"));
    }
    // Exponential backoff: about 100 ms, then about 200 ms.
    let gap1 = seen[1].2 - seen[0].2;
    let gap2 = seen[2].2 - seen[1].2;
    assert!(gap1 >= Duration::from_millis(90), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(190), "{gap2:?}");

    // A bad callback URL is refused before anything is queued.
    for bad in ["ftp://x/y", "https://example.com/cb", "not a url"] {
        let response = app
            .post_with(
                "/v1/functions/echo/invocations",
                &[("x-callback-url", bad)],
                "x",
            )
            .await;
        assert_eq!(error_code(response, 400).await, "bad_request", "{bad}");
    }
    assert_eq!(app.invocations_of("echo").await.len(), 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_default_callback_covers_events_and_failures_are_bounded() {
    let app = spawn_app_with(|s| {
        s.callback_backoff_ms = 20;
        s.callback_max_attempts = 3;
    })
    .await;
    let ok = receiver(0).await;
    let down = receiver(usize::MAX).await;
    app.register("fail", "granda-test/fail", json!({"callback_url": ok.url}))
        .await;
    let response = app
        .post_json(
            "/v1/functions",
            &json!({"name": "x", "image": "granda-test/echo", "callback_url": "https://e.com/"}),
        )
        .await;
    assert_eq!(error_code(response, 422).await, "invalid");

    // The function's default applies to event invocations; a failed run is reported too.
    let sub = app
        .post_json(
            "/v1/functions/fail/subscriptions",
            &json!({"pattern": "jobs.#"}),
        )
        .await;
    assert_eq!(sub.status(), 201);
    let answer: Value = app
        .post_with("/v1/events/jobs.nightly", &[], "go")
        .await
        .json()
        .await
        .unwrap();
    let id: Uuid = answer["invocations"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .parse()
        .unwrap();
    let record = callback_done(&app, id).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["callback"]["status"], "delivered");
    {
        let seen = ok.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0["x-granda-status"], "failed");
        assert_eq!(seen[0].0["x-granda-exit-code"], "3");
    }

    // A call's own X-Callback-Url wins over the default; a receiver that keeps failing gets
    // exactly max_attempts tries, then the callback is marked failed.
    let response = app
        .post_with(
            "/v1/functions/fail/invocations",
            &[("x-callback-url", down.url.as_str())],
            "",
        )
        .await;
    let id: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let record = callback_done(&app, id).await;
    assert_eq!(record["callback"]["status"], "failed");
    assert_eq!(record["callback"]["attempts"], 3);
    assert!(
        record["callback"]["error"]
            .as_str()
            .unwrap()
            .contains("500")
    );
    assert_eq!(down.seen.lock().unwrap().len(), 3);
    assert_eq!(ok.seen.lock().unwrap().len(), 1);

    // Removing the default: no callback on the record.
    let response = app
        .client
        .put(app.url("/v1/functions/fail"))
        .json(&json!({"callback_url": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let f: Value = response.json().await.unwrap();
    assert!(f["callback_url"].is_null());
    let id = app.invoke_async("fail", "").await;
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert!(record.get("callback").is_none(), "{record}");
    app.shutdown().await;
}
