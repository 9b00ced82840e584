//! Callbacks over https to a receiver whose CA is configured, and the bounds on callbacks held for
//! delivery (count and bytes) against a receiver that stalls.

use super::*;
use crate::support::{TestApp, spawn_app_with};
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A CA and a certificate for 127.0.0.1 made here; the CA's PEM and the server's TLS config.
fn test_pki() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "granda test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// An https receiver on 127.0.0.1 that records what it gets and answers 200.
async fn tls_receiver(config: Arc<rustls::ServerConfig>) -> Receiver {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/done", listener.local_addr().unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            state
                                .lock()
                                .unwrap()
                                .push((parts.headers, body, Instant::now()));
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Empty::<
                                Bytes,
                            >::new(
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Receiver { url, seen }
}

/// Issue 14, item 11: callbacks go out over https, trusting the system's roots plus
/// `GRANDA_CALLBACK_CA_FILE`; without that CA the receiver's certificate is not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_callbacks_reach_a_receiver_whose_ca_is_configured() {
    let (ca_pem, server) = test_pki();
    let rx = tls_receiver(server).await;
    let ca_file = std::env::temp_dir().join(format!("granda-test-ca-{}.pem", Uuid::new_v4()));
    std::fs::write(&ca_file, ca_pem).unwrap();

    let untrusting = spawn_app_with(|s| {
        allow_loopback(s);
        s.callback_max_attempts = 1;
    })
    .await;
    untrusting
        .register("echo", "granda-test/echo", json!({}))
        .await;
    let id = async_with_callback(&untrusting, "echo", &rx.url, "over tls").await;
    let record = callback_done(&untrusting, id).await;
    assert_eq!(record["callback"]["status"], "failed", "{record}");
    assert!(rx.seen.lock().unwrap().is_empty());
    untrusting.shutdown().await;

    let app = spawn_app_with(|s| {
        allow_loopback(s);
        s.callback_ca_file = Some(ca_file.clone());
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let id = async_with_callback(&app, "echo", &rx.url, "over tls").await;
    let record = callback_done(&app, id).await;
    assert_eq!(record["callback"]["status"], "delivered", "{record}");
    let key = callback_key(&app, "echo").await;
    let seen = rx.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let payload: Value = serde_json::from_slice(&seen[0].1).unwrap();
    assert_eq!(payload["data"]["output"], "over tls");
    assert!(verify(&key, &seen[0].0, &seen[0].1));
    std::fs::remove_file(&ca_file).ok();
    app.shutdown().await;
}

async fn stalling_receiver() -> Stalling {
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let (h, m, a) = (holding.clone(), most.clone(), answered.clone());
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |_body: Bytes| {
            let (h, m, a, mut released) = (h.clone(), m.clone(), a.clone(), released.clone());
            async move {
                let now = h.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                h.fetch_sub(1, Ordering::SeqCst);
                a.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Stalling {
        url,
        holding,
        most,
        answered,
        release,
    }
}

async fn callback_states(app: &TestApp, function: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE callback_status = 'pending'),
                count(*) FILTER (WHERE callback_status = 'delivering'),
                count(*) FILTER (WHERE callback_status = 'delivered')
         FROM invocations WHERE function = $1",
    )
    .bind(function)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Issue 14, item 14: with a receiver that stalls, a worker holds at most the configured number
/// of callbacks (and of output bytes); the rest wait as `pending` in Postgres and are all
/// delivered once the receiver answers.
async fn held_callbacks_stay_under(max_inflight: u32, max_bytes: u32, output: usize, bound: usize) {
    const RUNS: usize = 8;
    let app = spawn_app_with(|s| {
        allow_loopback(s);
        s.callback_max_inflight = max_inflight;
        s.callback_max_inflight_bytes = max_bytes;
        s.callback_timeout_ms = 120_000;
    })
    .await;
    let rx = stalling_receiver().await;
    app.register("echo", "granda-test/echo", json!({"callback_url": rx.url}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(app.invoke_async("echo", "x".repeat(output)).await);
    }
    for id in &ids {
        app.wait_final(*id, Duration::from_secs(60)).await;
    }
    // Every run is over: the receiver holds as many callbacks as the bound lets out.
    let start = Instant::now();
    while rx.holding.load(Ordering::SeqCst) < bound {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the receiver never got {bound}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        let (pending, delivering, _) = callback_states(&app, "echo").await;
        // Claimed ones beyond the byte bound wait for room before their output is read.
        assert!(
            delivering as usize <= max_inflight as usize,
            "{delivering} claimed"
        );
        assert_eq!(pending as usize + delivering as usize, RUNS);
        assert!(rx.holding.load(Ordering::SeqCst) <= bound);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rx.release.send(true).unwrap();
    let start = Instant::now();
    loop {
        let (_, _, delivered) = callback_states(&app, "echo").await;
        if delivered as usize == RUNS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{delivered} of {RUNS} delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.answered.load(Ordering::SeqCst), RUNS);
    assert_eq!(rx.most.load(Ordering::SeqCst), bound, "most held at once");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_held_for_delivery_are_bounded_in_count() {
    held_callbacks_stay_under(2, 1 << 20, 10, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_held_for_delivery_are_bounded_in_bytes() {
    // Room for one 1000-byte output at a time, although 8 slots are free.
    held_callbacks_stay_under(8, 1500, 1000, 1).await;
}
