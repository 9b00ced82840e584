//! Webhooks from external systems: every scheme with a good signature, a bad one, a stale
//! timestamp (where the scheme has one), a replayed delivery id and a rotated secret.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::support::{TestApp, error_code};

mod hostile;
mod rejections;
mod schemes;

pub(crate) const RUN: Duration = Duration::from_secs(30);

pub(crate) fn hmac_bytes(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Creates a webhook; panics unless 201.
pub(crate) async fn create(app: &TestApp, body: Value) -> Value {
    let response = app.post_json("/v1/webhooks", &body).await;
    let status = response.status();
    let hook: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{hook}");
    hook
}

pub(crate) async fn rotate(app: &TestApp, id: &str, body: Value) -> Value {
    let response = app
        .post_json(&format!("/v1/webhooks/{id}/rotate"), &body)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Delivers to `/hooks/{id}`; returns the status and the invocation id of a 202.
pub(crate) async fn deliver(
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
pub(crate) async fn assert_rejected(
    app: &TestApp,
    hook: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let response = app
        .post_with(&format!("/hooks/{hook}"), headers, body.to_vec())
        .await;
    assert_eq!(error_code(response, 401).await, "unauthorized");
}

pub(crate) fn rejections(metrics: &str, scheme: &str, reason: &str) -> u64 {
    let prefix =
        format!("granda_webhook_rejections_total{{scheme=\"{scheme}\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}

// GitHub's docs: secret "It's a Secret to Everybody", body "Hello, World!".
pub(crate) const GITHUB_SECRET: &str = "It's a Secret to Everybody";
pub(crate) const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
