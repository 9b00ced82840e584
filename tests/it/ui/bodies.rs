//! Dashboard form bodies: none is read before its session is known, forms are capped (64 KiB
//! but for the function, invoke and source forms of a session that may use them), and the login
//! form is read within its cap and the shared budget of unauthenticated bodies.

use std::time::{Duration, Instant};

use serde_json::json;

use super::security::Browser;
use crate::support::make_key;
use crate::support::{ADMIN_KEY, partial_post, spawn_app_with, status_line};

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// Issue 14 (audit): a made-up session cookie made the dashboard read a 6 MB form before the
/// session was looked up, and the login form was read without any budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_bodies_are_read_only_for_a_live_session_and_within_caps() {
    let app = spawn_app_with(|s| s.unauthenticated_body_budget_bytes = 1_000_000).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let wait = Duration::from_secs(10);

    // A cookie of no session, with 6 MB announced and 64 KiB sent: to the login form, unread.
    let fake = ("cookie", "granda_session=made-up-session");
    let mut stream =
        partial_post(&app, "/ui/functions/new", &[FORM, fake], 6_000_000, 65_536).await;
    let line = status_line(&mut stream, wait).await;
    assert!(line.starts_with("HTTP/1.1 303"), "{line}");

    // A live session: a small form announced over 64 KiB is refused unread.
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let cookie = ("cookie", admin.cookie());
    let mut stream = partial_post(&app, "/ui/keys", &[FORM, cookie], 1_000_000, 1024).await;
    let line = status_line(&mut stream, wait).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    // The invoke box takes a payload larger than that.
    let csrf = admin.csrf("/ui/functions/echo").await;
    let payload = format!("{}end", "p".repeat(200_000));
    let r = admin
        .post_form(
            "/ui/functions/echo/invoke",
            &[("body", &payload), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let runs = app.invocations_of("echo").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["input_size"], 200_003, "{runs:?}");

    // An invoke session may use the invoke box, not the function forms: those stay capped.
    let (_, invoke_key) = make_key(&app, "caller", "invoke").await;
    let caller = Browser::logged_in(&app, &invoke_key).await;
    let cookie = ("cookie", caller.cookie());
    let mut stream =
        partial_post(&app, "/ui/functions/new", &[FORM, cookie], 1_000_000, 1024).await;
    let line = status_line(&mut stream, wait).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");

    // Login: over its cap, refused unread; under it, a slow sender holds its bytes in the budget.
    let mut stream = partial_post(&app, "/ui/login", &[FORM], 1_000_000, 1024).await;
    let line = status_line(&mut stream, wait).await;
    assert!(line.starts_with("HTTP/1.1 413"), "{line}");
    let gauge = "granda_unauthenticated_body_bytes_in_flight";
    let slow = partial_post(&app, "/ui/login", &[FORM], 60_000, 100).await;
    let deadline = Instant::now() + wait;
    // It holds what it sent (issue 26), not what it announced.
    while app.metric(gauge).await != Some(100.0) {
        assert!(Instant::now() < deadline, "the login body was not reserved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(slow);
    let deadline = Instant::now() + wait;
    while app.metric(gauge).await != Some(0.0) {
        assert!(Instant::now() < deadline, "the reservation was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Logging in still works.
    Browser::logged_in(&app, ADMIN_KEY).await;
    app.shutdown().await;
}
