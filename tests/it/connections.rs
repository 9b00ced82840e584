//! Issue 26, item 1: connections are bounded in time and number. Silent connections are closed
//! after the header-read timeout, idle kept-alive ones after the idle timeout, and at the
//! connection cap a new connection makes a waiting one close, so `/healthz` keeps answering.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestApp, eventually, spawn_app_with};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.strip_prefix("http://").unwrap())
        .await
        .unwrap()
}

/// Whether the server closes `stream` within `within` (any bytes it sends first are skipped).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// `/healthz` answers 200 within `within`, over a new connection.
async fn healthz_answers(app: &TestApp, within: Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(
        within,
        reqwest::Client::new().get(app.url("/healthz")).send(),
    )
    .await
    .expect("/healthz did not answer in time")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < within);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_header_timeout() {
    let header = Duration::from_millis(500);
    let app = spawn_app_with(|s| {
        s.header_read_timeout_ms = header.as_millis() as u64;
        s.idle_timeout_ms = 60_000;
    })
    .await;
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(connect(&app).await);
    }
    // A slowloris: half a request head, then nothing.
    let mut partial = connect(&app).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    healthz_answers(&app, Duration::from_secs(5)).await;

    for stream in silent.iter_mut().chain([&mut partial]) {
        assert!(
            closed_within(stream, Duration::from_secs(20)).await,
            "a silent connection was kept"
        );
    }
    // None can close before its timeout.
    assert!(opened.elapsed() >= header);
    let closed = app
        .metric("granda_http_connections_closed_total{reason=\"header_timeout\"}")
        .await
        .unwrap_or_default();
    assert!(closed >= 51.0, "{closed}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_close_after_the_idle_timeout_and_requests_are_never_cut() {
    let (header, idle) = (Duration::from_millis(300), Duration::from_millis(1500));
    let app = spawn_app_with(|s| {
        s.header_read_timeout_ms = header.as_millis() as u64;
        s.idle_timeout_ms = idle.as_millis() as u64;
    })
    .await;
    // One request, answered, then the connection is kept alive for the idle timeout (longer than
    // the header timeout), not closed.
    let mut stream = connect(&app).await;
    let sent = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut stream, Duration::from_secs(20)).await);
    assert!(sent.elapsed() >= idle, "closed after {:?}", sent.elapsed());
    let idle_closed = app
        .metric("granda_http_connections_closed_total{reason=\"idle\"}")
        .await;
    assert!(idle_closed >= Some(1.0), "{idle_closed:?}");

    // A call running longer than both bounds is answered.
    app.register("sh", "granda-test/sh", json!({"input": "args"}))
        .await;
    let started = Instant::now();
    let response = app.invoke("sh", r#"["sleep 2; echo done"]"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap().trim(), "done");
    assert!(started.elapsed() > idle);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_waiting_connections_make_room() {
    let cap = 10;
    let app = spawn_app_with(|s| {
        s.max_connections = cap;
        // Only the cap can close the silent connections in this test.
        s.header_read_timeout_ms = 600_000;
        s.idle_timeout_ms = 600_000;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 * cap {
        silent.push(connect(&app).await);
    }
    healthz_answers(&app, Duration::from_secs(10)).await;
    // The silent connections the ingress held were closed for newer ones.
    let mut closed = 0;
    for stream in &mut silent {
        if closed_within(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert!(closed >= 2 * cap, "{closed} of {} closed", silent.len());
    let held = app.metric("granda_http_connections").await.unwrap();
    assert!(held <= cap as f64, "{held}");
    let evicted = eventually(Duration::from_secs(10), "evictions counted", || async {
        app.metric("granda_http_connections_closed_total{reason=\"evicted\"}")
            .await
            .filter(|n| *n >= (2 * cap) as f64)
    })
    .await;
    assert!(evicted >= (2 * cap) as f64);
    app.shutdown().await;
}
