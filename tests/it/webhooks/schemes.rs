//! Each signature scheme end to end: GitHub, Stripe, Standard Webhooks, plain HMAC and none, with
//! tolerance, replay, deduplication and secret rotation.

use super::*;
use crate::support::{error_code, spawn_app};
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

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

pub(crate) fn stripe_header(secret: &str, t: i64, body: &[u8]) -> String {
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

pub(crate) fn standard_headers(
    secret: &str,
    msg_id: &str,
    t: i64,
    body: &[u8],
) -> Vec<(String, String)> {
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

pub(crate) fn pairs(h: &[(String, String)]) -> Vec<(&str, &str)> {
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
