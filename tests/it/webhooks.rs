//! Webhooks from external systems: every scheme with a good signature, a bad one, a stale
//! timestamp (where the scheme has one), a replayed delivery id and a rotated secret.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::{TestApp, error_code, spawn_app};

const RUN: Duration = Duration::from_secs(30);

fn hmac_bytes(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Creates a webhook; panics unless 201.
async fn create(app: &TestApp, body: Value) -> Value {
    let response = app.post_json("/v1/webhooks", &body).await;
    let status = response.status();
    let hook: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{hook}");
    hook
}

async fn rotate(app: &TestApp, id: &str, body: Value) -> Value {
    let response = app
        .post_json(&format!("/v1/webhooks/{id}/rotate"), &body)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Delivers to `/hooks/{id}`; returns the status and the invocation id of a 202.
async fn deliver(
    app: &TestApp,
    hook: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Option<Uuid>) {
    let response = app
        .post_with(&format!("/hooks/{hook}"), headers, body.to_vec())
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    if status >= 500 {
        panic!("delivery answered {status}: {body}");
    }
    let id = (status == 202).then(|| body["id"].as_str().unwrap().parse().unwrap());
    (status, id)
}

/// Asserts a 401 with the API's error shape.
async fn assert_rejected(app: &TestApp, hook: &str, headers: &[(&str, &str)], body: &[u8]) {
    let response = app
        .post_with(&format!("/hooks/{hook}"), headers, body.to_vec())
        .await;
    assert_eq!(error_code(response, 401).await, "unauthorized");
}

fn rejections(metrics: &str, scheme: &str, reason: &str) -> u64 {
    let prefix =
        format!("granda_webhook_rejections_total{{scheme=\"{scheme}\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}

// GitHub's docs: secret "It's a Secret to Everybody", body "Hello, World!".
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_deliveries_are_verified_deduplicated_and_see_their_headers() {
    let app = spawn_app().await;
    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(
        &app,
        json!({"function": "env", "scheme": "github", "secret": GITHUB_SECRET}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(hook["url"], app.url(&format!("/hooks/{id}")));
    assert!(hook.get("secret").is_none(), "a given secret is not echoed");

    let delivery = Uuid::new_v4().to_string();
    let headers = [
        ("x-hub-signature-256", GITHUB_SIGNATURE),
        ("x-github-event", "push"),
        ("x-github-delivery", delivery.as_str()),
        ("content-type", "application/json"),
    ];
    let started = Instant::now();
    let (status, first) = deliver(&app, id, &headers, b"Hello, World!").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 202);
    println!("github delivery answered 202 in {elapsed:?}");
    let first = first.unwrap();
    let record = app.wait_final(first, RUN).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["trigger"], "webhook");
    assert_eq!(record["input"], "Hello, World!");
    let output = record["output"].as_str().unwrap();
    assert!(output.contains("GRANDA_WEBHOOK_EVENT=push\n"), "{output}");
    assert!(
        output.contains(&format!("GRANDA_WEBHOOK_DELIVERY={delivery}\n")),
        "{output}"
    );
    assert!(output.contains(&format!("GRANDA_WEBHOOK_ID={id}\n")));
    assert!(output.contains("GRANDA_CONTENT_TYPE=application/json\n"));
    assert!(!output.contains(GITHUB_SECRET));

    // GitHub redelivers with the same delivery id: the first invocation, no second run.
    let response = app
        .post_with(&format!("/hooks/{id}"), &headers, "Hello, World!")
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], first.to_string());
    assert_eq!(body["status"], "succeeded");

    // A bad signature, a missing one, another body: 401 and nothing runs.
    let bad = [
        ("x-hub-signature-256", "sha256=0000"),
        ("x-github-delivery", "d-bad"),
    ];
    assert_rejected(&app, id, &bad, b"Hello, World!").await;
    assert_rejected(
        &app,
        id,
        &[("x-github-delivery", "d-none")],
        b"Hello, World!",
    )
    .await;
    assert_rejected(&app, id, &headers[..1], b"Hello, World?").await;
    assert_eq!(app.invocations_of("env").await.len(), 1);
    let metrics = app.metrics().await;
    assert_eq!(
        rejections(&metrics, "github", "bad_signature"),
        2,
        "{metrics}"
    );
    assert_eq!(rejections(&metrics, "github", "missing_signature"), 1);
    assert!(!metrics.contains(GITHUB_SECRET));

    // Without a delivery id there is nothing to deduplicate by.
    let (s1, a) = deliver(&app, id, &headers[..1], b"Hello, World!").await;
    let (s2, b) = deliver(&app, id, &headers[..1], b"Hello, World!").await;
    assert_eq!((s1, s2), (202, 202));
    assert_ne!(a, b);

    // Time to 202, over a few deliveries.
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        let d = format!("timing-{i}");
        let h = [
            ("x-hub-signature-256", GITHUB_SIGNATURE),
            ("x-github-delivery", d.as_str()),
        ];
        let started = Instant::now();
        let (status, id) = deliver(&app, id, &h, b"Hello, World!").await;
        times.push(started.elapsed());
        assert_eq!(status, 202);
        ids.push(id.unwrap());
    }
    times.sort();
    println!(
        "time to 202 over 10 github deliveries: p50 {:?}, max {:?}",
        times[5], times[9]
    );
    assert!(times[5] < Duration::from_millis(500), "{times:?}");
    for i in ids.into_iter().chain([a.unwrap(), b.unwrap()]) {
        assert_eq!(app.wait_final(i, RUN).await["status"], "succeeded");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_secret_rotation_keeps_the_old_secret_for_the_grace_period() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let hook = create(
        &app,
        json!({"function": "echo", "scheme": "github", "secret": GITHUB_SECRET}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    let rotated = rotate(&app, id, json!({})).await;
    let second = rotated["secret"]
        .as_str()
        .expect("a generated secret, shown once");
    assert!(rotated["previous_secret_valid_until"].is_string());
    let fetched: Value = app
        .get(&format!("/v1/webhooks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(fetched.get("secret").is_none());

    let sign = |secret: &str, body: &[u8]| {
        format!(
            "sha256={}",
            hex::encode(hmac_bytes(secret.as_bytes(), &[body]))
        )
    };
    // The old secret (GitHub's vector) and the new one both verify.
    let (s, _) = deliver(
        &app,
        id,
        &[("x-hub-signature-256", GITHUB_SIGNATURE)],
        b"Hello, World!",
    )
    .await;
    assert_eq!(s, 202);
    let (s, _) = deliver(
        &app,
        id,
        &[("x-hub-signature-256", &sign(second, b"new"))],
        b"new",
    )
    .await;
    assert_eq!(s, 202);

    // Rotating again with no grace: only the newest verifies.
    let third = rotate(
        &app,
        id,
        json!({"secret": "third secret", "grace_seconds": 0}),
    )
    .await;
    assert!(
        third.get("secret").is_none(),
        "a given secret is not echoed"
    );
    assert_rejected(
        &app,
        id,
        &[("x-hub-signature-256", &sign(second, b"x"))],
        b"x",
    )
    .await;
    assert_rejected(
        &app,
        id,
        &[("x-hub-signature-256", GITHUB_SIGNATURE)],
        b"Hello, World!",
    )
    .await;
    let (s, _) = deliver(
        &app,
        id,
        &[("x-hub-signature-256", &sign("third secret", b"y"))],
        b"y",
    )
    .await;
    assert_eq!(s, 202);
    app.shutdown().await;
}

fn stripe_header(secret: &str, t: i64, body: &[u8]) -> String {
    let sig = hex::encode(hmac_bytes(
        secret.as_bytes(),
        &[t.to_string().as_bytes(), b".", body],
    ));
    format!("t={t},v1={},v1={sig}", "ab".repeat(32))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_deliveries_check_signature_tolerance_event_id_and_rotation() {
    let app = spawn_app().await;
    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(&app, json!({"function": "env", "scheme": "stripe"})).await;
    let id = hook["id"].as_str().unwrap();
    let secret = hook["secret"]
        .as_str()
        .expect("a generated secret")
        .to_string();
    assert!(secret.starts_with("whsec_"));

    let body = br#"{"id":"evt_1NG8Du2eZvKYlo2C","type":"invoice.paid","data":{}}"#;
    let h = stripe_header(&secret, now(), body);
    let (status, first) = deliver(&app, id, &[("stripe-signature", &h)], body).await;
    assert_eq!(status, 202);
    let record = app.wait_final(first.unwrap(), RUN).await;
    let output = record["output"].as_str().unwrap();
    assert!(
        output.contains("GRANDA_WEBHOOK_EVENT=invoice.paid\n"),
        "{output}"
    );
    assert!(output.contains("GRANDA_WEBHOOK_DELIVERY=evt_1NG8Du2eZvKYlo2C\n"));

    // Stripe retries the same event (same id, fresh signature): the first invocation.
    let h = stripe_header(&secret, now() - 5, body);
    let (status, again) = deliver(&app, id, &[("stripe-signature", &h)], body).await;
    assert_eq!((status, again), (202, first));

    // Signed with another secret; signed properly but 301 s old: 401.
    let other = br#"{"id":"evt_2","type":"x"}"#;
    assert_rejected(
        &app,
        id,
        &[(
            "stripe-signature",
            &stripe_header("whsec_wrong", now(), other),
        )],
        other,
    )
    .await;
    assert_rejected(
        &app,
        id,
        &[(
            "stripe-signature",
            &stripe_header(&secret, now() - 301, other),
        )],
        other,
    )
    .await;
    assert_rejected(&app, id, &[("stripe-signature", "v1=abc")], other).await;
    let metrics = app.metrics().await;
    assert_eq!(
        rejections(&metrics, "stripe", "bad_signature"),
        1,
        "{metrics}"
    );
    assert_eq!(rejections(&metrics, "stripe", "stale_timestamp"), 1);
    assert_eq!(rejections(&metrics, "stripe", "malformed_signature"), 1);
    assert_eq!(app.invocations_of("env").await.len(), 1);

    // Rotation: both secrets verify during the grace period.
    let new = rotate(&app, id, json!({})).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    for (n, s) in [(3, &secret), (4, &new)] {
        let b = format!(r#"{{"id":"evt_{n}","type":"x"}}"#);
        let h = stripe_header(s, now(), b.as_bytes());
        assert_eq!(
            deliver(&app, id, &[("stripe-signature", &h)], b.as_bytes())
                .await
                .0,
            202
        );
    }
    app.shutdown().await;
}

fn standard_headers(secret: &str, msg_id: &str, t: i64, body: &[u8]) -> Vec<(String, String)> {
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let ts = t.to_string();
    let sig = B64.encode(hmac_bytes(
        &key,
        &[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body],
    ));
    vec![
        ("webhook-id".into(), msg_id.into()),
        ("webhook-timestamp".into(), ts),
        // Several signatures, space-separated; one stale-key decoy first.
        (
            "webhook-signature".into(),
            format!("v1,{} v1,{sig}", B64.encode([0u8; 32])),
        ),
        ("content-type".into(), "application/json".into()),
    ]
}

fn pairs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_check_signature_tolerance_replay_and_rotation() {
    let app = spawn_app().await;
    app.register("env", "granda-test/env", json!({})).await;
    // The Standard Webhooks test vector's secret.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hook = create(
        &app,
        json!({"function": "env", "scheme": "standard", "secret": secret}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();

    let body = br#"{"type":"user.created","timestamp":"2026-01-01T00:00:00Z","data":{"id":1}}"#;
    let h = standard_headers(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now(), body);
    let (status, first) = deliver(&app, id, &pairs(&h), body).await;
    assert_eq!(status, 202);
    let record = app.wait_final(first.unwrap(), RUN).await;
    let output = record["output"].as_str().unwrap();
    assert!(
        output.contains("GRANDA_WEBHOOK_DELIVERY=msg_2KWPBgLlAfxdpx2AI54pPJ85f4W\n"),
        "{output}"
    );
    assert!(output.contains("GRANDA_WEBHOOK_EVENT=user.created\n"));
    assert!(output.contains("GRANDA_CONTENT_TYPE=application/json\n"));

    // The same message id again (a retry): the first invocation.
    let h = standard_headers(secret, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now(), body);
    assert_eq!(deliver(&app, id, &pairs(&h), body).await, (202, first));

    // Tampered body, stale and future timestamps, missing headers: 401.
    let h = standard_headers(secret, "msg_b", now(), body);
    assert_rejected(&app, id, &pairs(&h), br#"{"type":"user.deleted"}"#).await;
    let h = standard_headers(secret, "msg_c", now() - 301, body);
    assert_rejected(&app, id, &pairs(&h), body).await;
    let h = standard_headers(secret, "msg_d", now() + 301, body);
    assert_rejected(&app, id, &pairs(&h), body).await;
    let h = standard_headers(secret, "msg_e", now(), body);
    assert_rejected(&app, id, &pairs(&h[1..]), body).await;
    let metrics = app.metrics().await;
    assert_eq!(
        rejections(&metrics, "standard", "stale_timestamp"),
        2,
        "{metrics}"
    );
    assert_eq!(rejections(&metrics, "standard", "bad_signature"), 1);
    assert_eq!(rejections(&metrics, "standard", "missing_signature"), 1);
    assert_eq!(app.invocations_of("env").await.len(), 1);

    // Rotation: the generated secret is whsec_ + base64; the old one works in the grace period.
    let new = rotate(&app, id, json!({})).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(new.starts_with("whsec_"));
    for (n, s) in [(1, secret), (2, new.as_str())] {
        let h = standard_headers(s, &format!("msg_rot{n}"), now(), body);
        assert_eq!(deliver(&app, id, &pairs(&h), body).await.0, 202);
    }
    let bad_secret = app
        .post_json(
            &format!("/v1/webhooks/{id}/rotate"),
            &json!({"secret": "whsec_%%%"}),
        )
        .await;
    assert_eq!(error_code(bad_secret, 422).await, "invalid");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_hmac_and_none_schemes() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let hook = create(
        &app,
        json!({"function": "echo", "scheme": "hmac-sha256", "secret": "s3cr3t",
               "header": "X-My-Signature", "encoding": "base64", "id_header": "X-Request-Id"}),
    )
    .await;
    assert_eq!(hook["header"], "x-my-signature");
    assert_eq!(hook["encoding"], "base64");
    let id = hook["id"].as_str().unwrap();
    let sign = |secret: &str, body: &[u8]| B64.encode(hmac_bytes(secret.as_bytes(), &[body]));

    let good = sign("s3cr3t", b"payload");
    let h = [("x-my-signature", good.as_str()), ("x-request-id", "r-1")];
    let (status, first) = deliver(&app, id, &h, b"payload").await;
    assert_eq!(status, 202);
    let record = app.wait_final(first.unwrap(), RUN).await;
    assert_eq!(record["output"], "payload");
    assert_eq!(deliver(&app, id, &h, b"payload").await, (202, first));
    // Without the id header: not deduplicated.
    let (_, a) = deliver(&app, id, &h[..1], b"payload").await;
    let (_, b) = deliver(&app, id, &h[..1], b"payload").await;
    assert!(a.is_some() && b.is_some() && a != b);
    let wrong = sign("other", b"payload");
    assert_rejected(&app, id, &[("x-my-signature", wrong.as_str())], b"payload").await;
    assert_rejected(&app, id, &[("x-my-signature", "%%%")], b"payload").await;
    let metrics = app.metrics().await;
    assert_eq!(
        rejections(&metrics, "hmac-sha256", "bad_signature"),
        1,
        "{metrics}"
    );
    assert_eq!(
        rejections(&metrics, "hmac-sha256", "malformed_signature"),
        1
    );
    // Rotation with a given secret and the default grace: both verify.
    rotate(&app, id, json!({"secret": "newer"})).await;
    for s in ["s3cr3t", "newer"] {
        let sig = sign(s, b"rot");
        assert_eq!(
            deliver(&app, id, &[("x-my-signature", sig.as_str())], b"rot")
                .await
                .0,
            202
        );
    }

    // none: anything goes in; an id header still deduplicates.
    let open = create(
        &app,
        json!({"function": "echo", "scheme": "none", "id_header": "x-id"}),
    )
    .await;
    assert!(open.get("secret").is_none());
    let open = open["id"].as_str().unwrap();
    let (s1, x) = deliver(&app, open, &[("x-id", "1")], b"free").await;
    let (s2, y) = deliver(&app, open, &[("x-id", "1")], b"free").await;
    let (s3, z) = deliver(&app, open, &[], b"free").await;
    assert_eq!((s1, s2, s3), (202, 202, 202));
    assert_eq!(x, y);
    assert_ne!(x, z);
    assert_eq!(app.wait_final(z.unwrap(), RUN).await["output"], "free");
    let rotate_none = app
        .post_json(&format!("/v1/webhooks/{open}/rotate"), &json!({}))
        .await;
    assert_eq!(error_code(rotate_none, 422).await, "invalid");
    app.shutdown().await;
}

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
    let response = app
        .client
        .delete(app.url(&format!("/v1/webhooks/{b_id}")))
        .send()
        .await
        .unwrap();
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
    let response = app
        .client
        .delete(app.url("/v1/functions/echo"))
        .send()
        .await
        .unwrap();
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

/// Sends a request head announcing `length` body bytes and `sent` of them, then reads the
/// answer's status line within `within` (the body is never completed).
async fn partial_post(
    app: &TestApp,
    path: &str,
    length: usize,
    sent: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = app.address.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; sent]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

async fn status_line(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the server answered before the body was sent");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_string()
}

/// Issue 14, item 12: an unknown hook id is answered 404 before its (large) body is read, and
/// a body announced over the cap is refused 413 unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_hook_is_answered_before_its_body_is_read() {
    let app = spawn_app().await;
    let path = format!("/hooks/{}", Uuid::new_v4());
    let mut stream = partial_post(&app, &path, 6_000_000, 64 * 1024).await;
    let line = status_line(&mut stream, Duration::from_secs(10)).await;
    assert!(line.starts_with("HTTP/1.1 404"), "{line}");

    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(&app, json!({"function": "env", "scheme": "none"})).await;
    let path = format!("/hooks/{}", hook["id"].as_str().unwrap());
    let over = app.settings.max_body_bytes + 1;
    let mut stream = partial_post(&app, &path, over, 1024).await;
    let line = status_line(&mut stream, Duration::from_secs(10)).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    assert!(app.invocations_of("env").await.is_empty());
    app.shutdown().await;
}

/// Issue 14, item 12: unauthenticated bodies share one byte budget. One delivery holding most
/// of it makes the next wait and get 503 (unread); when it is gone, deliveries fit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_share_a_byte_budget() {
    let app = crate::support::spawn_app_with(|s| {
        s.unauthenticated_body_budget_bytes = 1_000_000;
    })
    .await;
    app.register("env", "granda-test/env", json!({})).await;
    let hook = create(&app, json!({"function": "env", "scheme": "none"})).await;
    let path = format!("/hooks/{}", hook["id"].as_str().unwrap());
    let gauge = "granda_unauthenticated_body_bytes_in_flight";

    // A slow sender: 700 kB announced, 1 kB sent. Its reservation shows in the gauge.
    let slow = partial_post(&app, &path, 700_000, 1024).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.metric(gauge).await != Some(700_000.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reservation never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = app
        .post_with(
            &path,
            &[("content-type", "text/plain")],
            vec![b'y'; 700_000],
        )
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    // Small bodies still fit beside it.
    let (status, _) = deliver(&app, hook["id"].as_str().unwrap(), &[], b"small").await;
    assert_eq!(status, 202);

    drop(slow);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.metric(gauge).await != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reservation was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = app
        .post_with(
            &path,
            &[("content-type", "text/plain")],
            vec![b'y'; 700_000],
        )
        .await;
    assert_eq!(response.status(), 202);
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
