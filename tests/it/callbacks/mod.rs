//! Result callbacks: Standard Webhooks POSTs of the final result signed with the function's key,
//! retried on 5xx, recorded on the invocation; internal targets refused where a URL enters and at
//! connect time; https with an operator-given CA; a bound on callbacks held for delivery.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::{TestApp, client_with_key, error_code, spawn_app_with};

mod tls_and_bounds;

/// The test receivers listen on loopback, which callbacks may only reach when allowed.
pub(crate) fn allow_loopback(s: &mut granda::config::Settings) {
    s.callback_allow_nets = granda::callback::AllowNets::parse("127.0.0.0/8").unwrap();
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes, Instant)>>>;

/// A receiver on 127.0.0.1 that fails its first `failures` requests with 500 (and a body that
/// must not reach the record), then answers 200.
#[derive(Clone)]
pub(crate) struct Receiver {
    url: String,
    seen: Seen,
}

pub(crate) async fn receiver(failures: usize) -> Receiver {
    let seen: Seen = Arc::default();
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let mut seen = state.lock().unwrap();
                seen.push((headers, body, Instant::now()));
                if seen.len() <= failures {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal detail: db at 10.0.0.7",
                    )
                } else {
                    (StatusCode::OK, "")
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
pub(crate) async fn callback_done(app: &TestApp, id: Uuid) -> Value {
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
            start.elapsed() < Duration::from_secs(60),
            "callback still {status}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Standard Webhooks verification, written from the spec: HMAC-SHA256 under the base64-decoded
/// key after `whsec_`, over `{webhook-id}.{webhook-timestamp}.{body}`, `v1,<base64>`.
pub(crate) fn verify(key: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let secret = BASE64.decode(key.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = BASE64.encode(mac.finalize().into_bytes());
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|sig| sig.strip_prefix("v1,") == Some(expected.as_str()))
}

pub(crate) async fn callback_key(app: &TestApp, function: &str) -> String {
    let response = app
        .get(&format!("/v1/functions/{function}/callback-key"))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["key"].as_str().unwrap().to_string()
}

pub(crate) async fn async_with_callback(
    app: &TestApp,
    function: &str,
    url: &str,
    input: &str,
) -> Uuid {
    let response = app
        .post_with(
            &format!("/v1/functions/{function}/invocations"),
            &[("x-callback-url", url)],
            input.to_string(),
        )
        .await;
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_callback_that_fails_twice_then_succeeds_is_retried_with_backoff_and_signed() {
    let app = spawn_app_with(|s| {
        allow_loopback(s);
        s.callback_backoff_ms = 100;
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let rx = receiver(2).await;
    let id = async_with_callback(&app, "echo", &rx.url, "the result").await;
    let record = callback_done(&app, id).await;
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["callback"]["status"], "delivered", "{record}");
    assert_eq!(record["callback"]["attempts"], 3);
    assert_eq!(record["callback"]["url"], rx.url.as_str());
    assert!(record["callback"]["error"].is_null());

    let key = callback_key(&app, "echo").await;
    let seen = rx.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (n, (headers, body, _)) in seen.iter().enumerate() {
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(payload["type"], "invocation.finished");
        let data = &payload["data"];
        assert_eq!(data["id"], id.to_string().as_str());
        assert_eq!(data["function"], "echo");
        assert_eq!(data["status"], "succeeded");
        assert_eq!(data["exit_code"], 0);
        assert_eq!(data["attempt"], n + 1);
        assert_eq!(data["output"], "the result");
        assert_eq!(data["output_encoding"], "utf-8");
        assert!(data["duration_ms"].as_u64().is_some());
        assert_eq!(headers["webhook-id"], id.to_string().as_str());
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            verify(&key, headers, body),
            "signature of attempt {}",
            n + 1
        );
        assert!(!verify(&granda::callback::new_key(), headers, body));
        assert!(!verify(&key, headers, b"tampered"));
    }
    // Exponential backoff: about 100 ms, then about 200 ms.
    let gap1 = seen[1].2 - seen[0].2;
    let gap2 = seen[2].2 - seen[1].2;
    assert!(gap1 >= Duration::from_millis(90), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(190), "{gap2:?}");

    // A bad callback URL is refused before anything is queued.
    for bad in ["ftp://x/y", "not a url", "http://no-such-host.invalid/cb"] {
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
pub(crate) async fn a_functions_default_callback_covers_events_and_failures_are_bounded() {
    let app = spawn_app_with(|s| {
        allow_loopback(s);
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
            &json!({"name": "x", "image": "granda-test/echo", "callback_url": "ftp://e.com/"}),
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
        let payload: Value = serde_json::from_slice(&seen[0].1).unwrap();
        assert_eq!(payload["data"]["status"], "failed");
        assert_eq!(payload["data"]["exit_code"], 3);
    }

    // A call's own X-Callback-Url wins over the default; a receiver that keeps failing gets
    // exactly max_attempts tries, then the callback is marked failed with a reason class, not
    // the receiver's answer.
    let id = async_with_callback(&app, "fail", &down.url, "").await;
    let record = callback_done(&app, id).await;
    assert_eq!(record["callback"]["status"], "failed");
    assert_eq!(record["callback"]["attempts"], 3);
    assert_eq!(record["callback"]["error"], "receiver answered 5xx");
    assert!(!record.to_string().contains("10.0.0.7"), "{record}");
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

/// Issue 14, item 6 (and issue 26: `::ffff:0:a.b.c.d`, local-use NAT64): every spelling of an
/// internal target is refused where it enters, with no operator allowance: 400 on invoke, 422 on registration and update; nothing is queued or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn internal_callback_targets_are_refused_where_they_enter() {
    let app = spawn_app_with(|_| {}).await;
    let rx = receiver(0).await;
    let port = rx.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    app.register("echo", "granda-test/echo", json!({})).await;
    let internal = [
        format!("http://127.0.0.1:{port}/done"),
        format!("http://2130706433:{port}/done"),
        format!("http://0x7f000001:{port}/done"),
        format!("http://0177.0.0.1:{port}/done"),
        format!("http://[::ffff:127.0.0.1]:{port}/done"),
        // Issue 26: the IPv4-translated (SIIT) spelling of loopback.
        format!("http://[::ffff:0:127.0.0.1]:{port}/done"),
        format!("http://localhost:{port}/done"),
        format!("http://user:pw@127.0.0.1:{port}/done"),
        format!("http://user:pw@example.com:{port}/done"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://[fd00::1]/".to_string(),
        "http://100.64.0.1/".to_string(),
        "http://0.0.0.0/".to_string(),
    ];
    for url in &internal {
        let response = app
            .post_with(
                "/v1/functions/echo/invocations",
                &[("x-callback-url", url.as_str())],
                "x",
            )
            .await;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("X-Callback-Url: refused")
                || message.contains("user name or password"),
            "{url}: {message}"
        );
    }
    for url in [
        "http://169.254.169.254/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[::ffff:0:127.0.0.1]/",
        "http://[64:ff9b:1::7f00:1]/",
    ] {
        let response = app
            .post_json(
                "/v1/functions",
                &json!({"name": "meta", "image": "granda-test/echo", "callback_url": url}),
            )
            .await;
        assert_eq!(error_code(response, 422).await, "invalid", "{url}");
    }
    let response = app
        .client
        .put(app.url("/v1/functions/echo"))
        .json(&json!({"callback_url": format!("http://localhost:{port}/done")}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 422).await, "invalid");
    assert!(app.invocations_of("echo").await.is_empty());
    assert_eq!(app.get("/v1/functions/meta").await.status(), 404);
    assert!(rx.seen.lock().unwrap().is_empty());
    app.shutdown().await;
}

/// Issue 14, item 6, connect time: URLs already stored (written before the rule, or while an
/// allowance was set) to a loopback address and to a name that resolves to one are refused when
/// the callback is sent, and the record says why in a reason class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn stored_internal_targets_are_refused_at_connect_time() {
    let app = spawn_app_with(|s| s.callback_max_attempts = 2).await;
    let rx = receiver(0).await;
    let port = rx.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    for (function, url) in [
        ("literal", format!("http://127.0.0.1:{port}/done")),
        ("decimal", format!("http://2130706433:{port}/done")),
        ("name", format!("http://localhost:{port}/done")),
    ] {
        app.register(function, "granda-test/echo", json!({})).await;
        sqlx::query("UPDATE functions SET callback_url = $2 WHERE name = $1")
            .bind(function)
            .bind(&url)
            .execute(&app.pool)
            .await
            .unwrap();
        let id = app.invoke_async(function, "secret output").await;
        let record = callback_done(&app, id).await;
        assert_eq!(record["status"], "succeeded", "{function}: {record}");
        assert_eq!(
            record["callback"]["status"], "failed",
            "{function}: {record}"
        );
        assert_eq!(
            record["callback"]["error"], "refused: loopback address",
            "{function}: {record}"
        );
        assert_eq!(
            record["callback"]["attempts"], 1,
            "refusals are not retried"
        );
    }
    assert!(rx.seen.lock().unwrap().is_empty());
    app.shutdown().await;
}

/// Issue 14, item 11: a key per function, shown to admins only, rotatable; the signature covers
/// the body's id, status, exit code, function and attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn callbacks_are_signed_with_a_rotatable_key_per_function() {
    let app = spawn_app_with(allow_loopback).await;
    let rx = receiver(0).await;
    app.register("echo", "granda-test/echo", json!({"callback_url": rx.url}))
        .await;
    app.register("fail", "granda-test/fail", json!({"callback_url": rx.url}))
        .await;
    let echo_key = callback_key(&app, "echo").await;
    let fail_key = callback_key(&app, "fail").await;
    assert!(echo_key.starts_with("whsec_") && fail_key.starts_with("whsec_"));
    assert_ne!(echo_key, fail_key);
    assert_eq!(
        app.get("/v1/functions/nope/callback-key").await.status(),
        404
    );
    // The installation-wide key is gone: it would verify nothing.
    assert_eq!(app.get("/v1/callbacks/key").await.status(), 404);

    // Admins only.
    let (_, key) = crate::support::make_key(&app, "caller", "invoke").await;
    let invoker = client_with_key(&key);
    for request in [
        invoker.get(app.url("/v1/functions/echo/callback-key")),
        invoker.post(app.url("/v1/functions/echo/callback-key")),
    ] {
        assert_eq!(request.send().await.unwrap().status(), 403);
    }
    assert_eq!(callback_key(&app, "echo").await, echo_key);

    let a = app.invoke_async("echo", "one").await;
    callback_done(&app, a).await;
    let b = app.invoke_async("fail", "").await;
    callback_done(&app, b).await;
    let (first, second) = {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        (seen[0].clone(), seen[1].clone())
    };
    let ((echo_h, echo_b), (fail_h, fail_b)) = if first.0["webhook-id"] == a.to_string().as_str() {
        ((first.0, first.1), (second.0, second.1))
    } else {
        ((second.0, second.1), (first.0, first.1))
    };
    assert!(verify(&echo_key, &echo_h, &echo_b));
    assert!(!verify(&fail_key, &echo_h, &echo_b));
    assert!(verify(&fail_key, &fail_h, &fail_b));
    assert!(!verify(&echo_key, &fail_h, &fail_b));
    // Changing any signed field breaks the signature.
    let payload: Value = serde_json::from_slice(&fail_b).unwrap();
    assert_eq!(payload["data"]["status"], "failed");
    assert_eq!(payload["data"]["exit_code"], 3);
    for (field, forged) in [
        ("status", json!("succeeded")),
        ("exit_code", json!(0)),
        ("function", json!("echo")),
        ("attempt", json!(2)),
        ("id", json!(a)),
    ] {
        let mut changed = payload.clone();
        changed["data"][field] = forged;
        let body = serde_json::to_vec(&changed).unwrap();
        assert!(!verify(&fail_key, &fail_h, &body), "{field}");
    }
    let mut replayed = fail_h.clone();
    replayed.insert("webhook-id", a.to_string().parse().unwrap());
    assert!(!verify(&fail_key, &replayed, &fail_b));

    // Rotation: the new key is shown once by POST, then by GET; the next callback uses it.
    let response = app
        .post_json("/v1/functions/echo/callback-key", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.unwrap();
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, echo_key);
    assert_eq!(callback_key(&app, "echo").await, new_key);
    assert_eq!(callback_key(&app, "fail").await, fail_key);
    let c = app.invoke_async("echo", "two").await;
    callback_done(&app, c).await;
    let (h, b) = {
        let seen = rx.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        (seen[2].0.clone(), seen[2].1.clone())
    };
    assert_eq!(h["webhook-id"], c.to_string().as_str());
    assert!(verify(&new_key, &h, &b));
    assert!(!verify(&echo_key, &h, &b));
    app.shutdown().await;
}

/// A receiver that holds every request until `release` says so, counting how many it holds.
pub(crate) struct Stalling {
    url: String,
    holding: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

/// Issue 14 (audit): `GET /v1/invocations/{id}` showed an `invoke` key the callback URL (the
/// function's default one too), which the function's own view hides from it. An invoke key sees
/// the callback's state, not its URL; an admin key sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn an_invoke_key_sees_a_callbacks_state_but_not_its_url() {
    let app = spawn_app_with(allow_loopback).await;
    let rx = receiver(0).await;
    app.register("echo", "granda-test/echo", json!({"callback_url": rx.url}))
        .await;
    let (_, key) = crate::support::make_key(&app, "caller", "invoke").await;
    let invoker = client_with_key(&key);
    let response = invoker
        .post(app.url("/v1/functions/echo/invocations"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let as_admin = callback_done(&app, id).await;
    assert_eq!(as_admin["callback"]["status"], "delivered", "{as_admin}");
    assert_eq!(as_admin["callback"]["url"], rx.url.as_str());

    let response = invoker
        .get(app.url(&format!("/v1/invocations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let as_invoker: Value = response.json().await.unwrap();
    assert_eq!(
        as_invoker["callback"]["status"], "delivered",
        "{as_invoker}"
    );
    assert!(as_invoker["callback"].get("url").is_none(), "{as_invoker}");
    assert!(!as_invoker.to_string().contains(&rx.url), "{as_invoker}");
    app.shutdown().await;
}
