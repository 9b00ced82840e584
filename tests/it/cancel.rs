//! Cancelling invocations (`POST /v1/invocations/{id}/cancel`): a queued one never runs, a running
//! one is stopped (cold: its container killed; warm/hot: its kept container replaced, and the
//! next call works), never retried, recorded `cancelled` with who asked; a sync caller is answered
//! 409 with `X-Granda-Status: cancelled`; the callback says `cancelled`; 409 for an ended one
//! (with its status), 404 for an unknown one or another namespace's, 400 for a malformed id.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{
    ADMIN_KEY, TestApp, client_with_key, eventually, make_key, spawn_app, spawn_app_with,
};
use crate::ui::security::Browser;

/// `POST /v1/invocations/{id}/cancel` with `client`.
async fn cancel_with(app: &TestApp, client: &reqwest::Client, id: &str) -> (u16, Value) {
    let response = client
        .post(app.url(&format!("/v1/invocations/{id}/cancel")))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn cancel(app: &TestApp, id: Uuid) -> (u16, Value) {
    cancel_with(app, &app.client, &id.to_string()).await
}

/// The containers of invocation `id` (a cold run's) that exist now.
async fn containers_of(app: &TestApp, id: Uuid) -> Vec<String> {
    app.containers_labelled(&[&format!("granda.invocation={id}")])
        .await
}

/// Waits until invocation `id` is `running` and has a container.
async fn running_with_container(app: &TestApp, id: Uuid) {
    eventually(Duration::from_secs(30), "a running container", || async {
        let running = app.invocation(id).await["status"] == "running";
        (running && !containers_of(app, id).await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_invocation_is_cancelled_at_once_and_never_runs() {
    // One slot: while `nap` runs, the next call waits queued.
    let app = spawn_app_with(|s| {
        s.max_concurrency = Some(1);
        s.fair_share = false;
    })
    .await;
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "60"}}),
    )
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let running = app.invoke_async("nap", "").await;
    running_with_container(&app, running).await;
    let queued = app.invoke_async("echo", "never").await;
    assert_eq!(app.invocation(queued).await["status"], "queued");

    let (_, key) = make_key(&app, "ops-bot", "invoke").await;
    let (status, body) = cancel_with(&app, &client_with_key(&key), &queued.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert!(
        body["cancelled_by"]
            .as_str()
            .is_some_and(|by| by.contains("ops-bot")),
        "{body}"
    );
    assert!(body["finished_at"].is_string(), "{body}");

    // The dashboard: a queued invocation's page has a Cancel button (a form with the session's
    // CSRF token); without the token nothing is cancelled.
    let by_ui = app.invoke_async("echo", "ui").await;
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let page_path = format!("/ui/invocations/{by_ui}");
    let page = admin.get(&page_path).await.text().await.unwrap();
    assert!(page.contains("/cancel\""), "a Cancel form: {page}");
    let post = format!("/ui/invocations/{by_ui}/cancel");
    assert_eq!(admin.post_form(&post, &[]).await.status(), 403);
    assert_eq!(app.invocation(by_ui).await["status"], "queued");
    let csrf = admin.csrf(&page_path).await;
    assert_eq!(
        admin.post_form(&post, &[("csrf", &csrf)]).await.status(),
        303
    );
    let record = app.invocation(by_ui).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert!(
        record["cancelled_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("session of key GRANDA_ADMIN_KEY")),
        "{record}"
    );
    let page = admin.get(&page_path).await.text().await.unwrap();
    assert!(!page.contains("/cancel\""), "no Cancel once cancelled");
    assert!(page.contains("badge cancelled"));

    // The running one is cancelled too: the slot frees, and the queued message reaches the
    // worker, which finds it final and settles it without a run.
    assert_eq!(cancel(&app, running).await.0, 200);
    let after = app.invoke_async("echo", "after").await;
    let done = app.wait_final(after, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = app.invocation(queued).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["attempt"], 0, "it never ran: {record}");
    assert!(record["started_at"].is_null(), "{record}");
    assert!(
        record["output"].is_null() || record["output"] == "",
        "{record}"
    );
    assert!(containers_of(&app, queued).await.is_empty());
    assert_eq!(app.invocation(by_ui).await["attempt"], 0);

    // Both counted once, by status.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("granda_invocations_total{function=\"echo\",status=\"cancelled\"} 2"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cold_invocation_is_stopped_and_never_retried() {
    let app = spawn_app().await;
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "60"}, "max_attempts": 3, "retry_on": ["error", "timeout"]}),
    )
    .await;
    let id = app.invoke_async("nap", "").await;
    running_with_container(&app, id).await;

    let asked = Instant::now();
    let (status, body) = cancel(&app, id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert!(
        body["cancelled_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("key GRANDA_ADMIN_KEY")),
        "{body}"
    );
    eventually(Duration::from_secs(5), "the container gone", || async {
        containers_of(&app, id).await.is_empty().then_some(())
    })
    .await;
    let stopped_in = asked.elapsed();
    assert!(stopped_in < Duration::from_secs(5), "{stopped_in:?}");
    eprintln!("cancel to container gone: {stopped_in:?}");

    // Not retried, though retries are configured: it stays cancelled after its first attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = app.invocation(id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["attempt"], 1, "{record}");
    assert!(containers_of(&app, id).await.is_empty());

    // Ended: 409 with the status; unknown: 404; malformed: 400.
    let (status, body) = cancel(&app, id).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["status"], "cancelled", "{body}");
    app.register("echo", "granda-test/echo", json!({})).await;
    let response = app.invoke("echo", "hi").await;
    let done = crate::support::id_of(&response);
    assert_eq!(response.status(), 200);
    let (status, body) = cancel(&app, done).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["status"], "succeeded", "{body}");
    assert_eq!(app.invocation(done).await["status"], "succeeded");
    assert_eq!(cancel(&app, Uuid::now_v7()).await.0, 404);
    assert_eq!(cancel_with(&app, &app.client, "not-an-id").await.0, 400);
    // A read key may not cancel; another namespace's key finds nothing.
    let (_, read) = make_key(&app, "reader", "read").await;
    assert_eq!(
        cancel_with(&app, &client_with_key(&read), &done.to_string())
            .await
            .0,
        403
    );
    let made = app
        .post_json("/v1/namespaces", &json!({"name": "team-a"}))
        .await;
    assert_eq!(made.status(), 201);
    let other = app
        .post_json(
            "/v1/keys",
            &json!({"name": "team-a-invoke", "scope": "invoke", "namespace": "team-a"}),
        )
        .await;
    let other: Value = other.json().await.unwrap();
    let other = client_with_key(other["key"].as_str().unwrap());
    let id2 = app.invoke_async("nap", "").await;
    assert_eq!(cancel_with(&app, &other, &id2.to_string()).await.0, 404);
    assert_eq!(cancel(&app, id2).await.0, 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_caller_of_a_cancelled_call_is_answered() {
    let app = spawn_app().await;
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "60"}}),
    )
    .await;
    let caller = {
        let client = app.client.clone();
        let url = app.url("/v1/functions/nap/invoke");
        tokio::spawn(async move {
            let response = client.post(url).body("").send().await.unwrap();
            let status = response.status().as_u16();
            let header = response.headers()["x-granda-status"]
                .to_str()
                .unwrap()
                .to_string();
            (status, header, Instant::now())
        })
    };
    let id: Uuid = eventually(Duration::from_secs(30), "the sync call running", || async {
        let list = app.invocations_of("nap").await;
        list.first()
            .filter(|r| r["status"] == "running")
            .and_then(|r| r["id"].as_str()?.parse().ok())
    })
    .await;
    running_with_container(&app, id).await;
    let asked = Instant::now();
    assert_eq!(cancel(&app, id).await.0, 200);
    let (status, header, answered) = tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .expect("the sync caller is answered")
        .unwrap();
    assert_eq!((status, header.as_str()), (409, "cancelled"));
    assert!(answered.duration_since(asked) < Duration::from_secs(5));
    assert_eq!(app.invocation(id).await["status"], "cancelled");
    app.shutdown().await;
}

/// The hot (or warm) containers of this app's worker.
async fn pool_containers(app: &TestApp, pool: &str) -> Vec<String> {
    app.containers_labelled(&[&format!("granda.pool={pool}")])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_hot_or_warm_call_is_stopped_and_its_process_replaced() {
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    let first = app.invoke("hot", "pid").await;
    assert_eq!(first.status(), 200);
    let before = pool_containers(&app, "hot").await;
    assert_eq!(before.len(), 1);
    let id = app.invoke_async("hot", "hang").await;
    eventually(Duration::from_secs(30), "the hang running", || async {
        (app.invocation(id).await["status"] == "running").then_some(())
    })
    .await;
    let asked = Instant::now();
    assert_eq!(cancel(&app, id).await.0, 200);
    eventually(Duration::from_secs(5), "the hot container gone", || async {
        let now = pool_containers(&app, "hot").await;
        (!now.iter().any(|c| before.contains(c))).then_some(())
    })
    .await;
    eprintln!("cancel to hot container gone: {:?}", asked.elapsed());
    // The next call works, in a new process.
    let response = app.invoke("hot", "count").await;
    let next = crate::support::id_of(&response);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "1");
    assert_eq!(app.invocation(next).await["cold"], true);
    assert_eq!(app.invocation(id).await["status"], "cancelled");

    // Warm: an exec in a kept container, stopped with its container.
    app.register(
        "warm",
        "granda-test/sh",
        json!({"mode": "warm", "input": "args"}),
    )
    .await;
    let ok = app.invoke("warm", r#"["echo ok"]"#).await;
    assert_eq!(ok.status(), 200);
    let before = pool_containers(&app, "warm").await;
    assert_eq!(before.len(), 1, "{before:?}");
    let id = app.invoke_async("warm", r#"["sleep 60"]"#).await;
    eventually(Duration::from_secs(30), "the warm run running", || async {
        (app.invocation(id).await["status"] == "running").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cancel(&app, id).await.0, 200);
    eventually(
        Duration::from_secs(5),
        "the warm container gone",
        || async {
            let now = pool_containers(&app, "warm").await;
            (!now.iter().any(|c| before.contains(c))).then_some(())
        },
    )
    .await;
    let again = app.invoke("warm", r#"["echo again"]"#).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap().trim(), "again");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_of_a_cancelled_invocation_says_cancelled() {
    let app = spawn_app_with(|s| {
        s.callback_allow_nets = granda::callback::AllowNets::parse("127.0.0.0/8").unwrap();
    })
    .await;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let state = seen.clone();
    let receiver = axum::Router::new().route(
        "/done",
        axum::routing::post(move |body: axum::Json<Value>| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(body.0);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    app.register(
        "nap",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "60"}}),
    )
    .await;
    let response = app
        .post_with(
            "/v1/functions/nap/invocations",
            &[("x-callback-url", url.as_str())],
            String::new(),
        )
        .await;
    assert_eq!(response.status(), 202);
    let id: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    running_with_container(&app, id).await;
    assert_eq!(cancel(&app, id).await.0, 200);
    let body = eventually(Duration::from_secs(30), "the callback", || async {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(body["data"]["status"], "cancelled", "{body}");
    assert_eq!(
        body["data"]["id"].as_str(),
        Some(id.to_string().as_str()),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_for_its_backoff_is_cancelled_and_never_runs_again() {
    let app = spawn_app_with(|s| {
        s.retry_base_ms = 4_000;
        s.retry_max_ms = 4_000;
    })
    .await;
    app.register(
        "fail",
        "granda-test/fail",
        json!({"max_attempts": 3, "retry_on": ["error"]}),
    )
    .await;
    let id = app.invoke_async("fail", "x").await;
    // Its first attempt failed: queued again, waiting for its backoff.
    eventually(Duration::from_secs(30), "a retry waiting", || async {
        let r = app.invocation(id).await;
        (r["status"] == "queued" && r["attempt"] == 1).then_some(())
    })
    .await;
    let (status, body) = cancel(&app, id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    // Past the backoff (with its jitter): the parked message came back and was settled unrun.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let record = app.invocation(id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(
        record["attempt"], 1,
        "no attempt after the cancel: {record}"
    );
    app.shutdown().await;
}
