//! Issue 26, item 2: the budget of unauthenticated bodies holds what a request has read, not
//! what it announces, and a body that does not arrive in time is answered 408 and cut.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, eventually, partial_post, spawn_app_with, status_line};

const GAUGE: &str = "granda_unauthenticated_body_bytes_in_flight";

/// A keyless chunked POST to `path` that sends `sent` bytes of a body it never finishes.
async fn trickling_chunked(app: &TestApp, path: &str, sent: usize) -> TcpStream {
    let addr = app.address.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{sent:x}\r\n{}\r\n", "x".repeat(sent));
    stream.write_all(chunk.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_keyless_bodies_do_not_starve_a_public_function() {
    let app = spawn_app_with(|s| s.unauthenticated_body_budget_bytes = 1_000_000).await;
    app.register("target", "granda-test/env", json!({"public": true}))
        .await;
    app.register(
        "other",
        "granda-test/env",
        json!({"public": true, "env": {"GREETING": "hej"}}),
    )
    .await;
    // 12 announce 6 MB and send 2 bytes; 14 send no length and trickle a few bytes.
    let mut slow = Vec::new();
    for _ in 0..12 {
        slow.push(partial_post(&app, "/fn/target", &[], 6_000_000, 2).await);
    }
    for _ in 0..14 {
        slow.push(trickling_chunked(&app, "/fn/target", 3).await);
    }
    // They hold what they sent: 12 × 2 + 14 × 3 bytes.
    eventually(
        Duration::from_secs(10),
        "the trickles were read",
        || async { (app.metric(GAUGE).await == Some(66.0)).then_some(()) },
    )
    .await;
    // An unrelated public function, called without a key, is answered by its run.
    let response = reqwest::Client::new()
        .post(app.url("/fn/other"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("GREETING=hej"));
    drop(slow);
    eventually(
        Duration::from_secs(10),
        "the reservations were returned",
        || async { (app.metric(GAUGE).await == Some(0.0)).then_some(()) },
    )
    .await;
    app.shutdown().await;
}

/// The rest of an answer on `stream` until the server closes it (within `within`).
async fn rest_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the connection was kept open");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_unauthenticated_body_gets_408_and_is_cut() {
    let app = spawn_app_with(|s| s.body_read_timeout_ms = 500).await;
    app.register("pub", "granda-test/env", json!({"public": true}))
        .await;
    let hook: Value = app
        .post_json(
            "/v1/webhooks",
            &json!({"function": "pub", "scheme": "none"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let hook_path = format!("/hooks/{}", hook["id"].as_str().unwrap());
    for path in ["/fn/pub", hook_path.as_str(), "/ui/login"] {
        let mut stream = partial_post(&app, path, &[], 100, 2).await;
        let answer = rest_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        // The dashboard answers with a page; the API with its JSON error.
        if !path.starts_with("/ui") {
            assert!(answer.contains("\"request_timeout\""), "{path}: {answer}");
        }
    }
    // A chunked trickle too.
    let mut stream = trickling_chunked(&app, "/fn/pub", 1).await;
    let line = status_line(&mut stream, Duration::from_secs(10)).await;
    assert!(line.starts_with("HTTP/1.1 408"), "{line}");
    // Nothing ran, and nothing is held.
    assert!(app.invocations_of("pub").await.is_empty());
    assert_eq!(app.metric(GAUGE).await, Some(0.0));
    let refused = app
        .metric("granda_unauthenticated_body_refusals_total{reason=\"timeout\"}")
        .await;
    assert_eq!(refused, Some(4.0));
    // A body sent whole is still read.
    let response = reqwest::Client::new()
        .post(app.url("/fn/pub"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.shutdown().await;
}
