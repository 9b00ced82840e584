//! API keys: each route class without a key, with a wrong one, with too small a scope, with a
//! revoked one; public functions; the first admin key; `granda keys`; `GRANDA_AUTH=off`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{
    ADMIN_KEY, TestApp, client_with_key, id_of, make_key, spawn_app, spawn_app_with,
};

/// A key of the right shape that was never made.
const WRONG_KEY: &str = "gk_not-a-key-at-all-000000000000000000000000";

async fn call(
    client: &reqwest::Client,
    app: &TestApp,
    method: &Method,
    path: &str,
) -> reqwest::Response {
    let mut request = client.request(method.clone(), app.url(path));
    if method == Method::POST && (path == "/v1/functions" || path == "/v1/keys") {
        request = request.json(&json!({}));
    } else if method == Method::POST {
        request = request.body("x");
    }
    request.send().await.unwrap()
}

/// POSTs `body` to `path` with `client` and whatever key it sends.
async fn post(
    client: &reqwest::Client,
    app: &TestApp,
    path: &str,
    body: &'static str,
) -> reqwest::Response {
    client.post(app.url(path)).body(body).send().await.unwrap()
}

async fn assert_unauthorized(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_class_checks_its_key() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let id = app.invoke_async("echo", "hi").await;
    let (_, invoke_key) = make_key(&app, "ci", "invoke").await;
    let (admin_id, admin_key) = make_key(&app, "ops", "admin").await;

    let anonymous = reqwest::Client::new();
    let wrong = client_with_key(WRONG_KEY);
    let invoker = client_with_key(&invoke_key);
    let admin = client_with_key(&admin_key);
    let invocation = format!("/v1/invocations/{id}");

    let admin_routes = [
        (Method::GET, "/v1/functions"),
        (Method::POST, "/v1/functions"),
        (Method::GET, "/v1/functions/echo"),
        (Method::PUT, "/v1/functions/echo"),
        (Method::DELETE, "/v1/functions/nope"),
        (Method::GET, "/v1/functions/echo/invocations"),
        (Method::GET, "/v1/keys"),
        (Method::POST, "/v1/keys"),
        (Method::GET, "/metrics"),
    ];
    let invoke_routes = [
        (Method::POST, "/v1/functions/echo/invoke"),
        (Method::POST, "/v1/functions/echo/invocations"),
        (Method::POST, "/fn/echo"),
        (Method::GET, invocation.as_str()),
    ];
    for (method, path) in admin_routes.iter().chain(&invoke_routes) {
        let what = format!("{method} {path}");
        assert_unauthorized(call(&anonymous, &app, method, path).await, &what).await;
        assert_unauthorized(call(&wrong, &app, method, path).await, &what).await;
        let r = call(&admin, &app, method, path).await;
        assert!(
            ![401, 403].contains(&r.status().as_u16()),
            "{what}: {}",
            r.status()
        );
    }
    for (method, path) in &admin_routes {
        let r = call(&invoker, &app, method, path).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "invoke key on {method} {path}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    for (method, path) in &invoke_routes {
        let r = call(&invoker, &app, method, path).await;
        assert!(
            r.status().is_success(),
            "invoke key on {method} {path}: {}",
            r.status()
        );
    }

    // Malformed credentials are 401 too, and no answer echoes what was sent.
    for header in [
        "Basic Zm9vOmJhcg==",
        "Bearer",
        "Bearer  ",
        "gk_raw-key-without-scheme",
    ] {
        let r = anonymous
            .get(app.url("/v1/functions"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_unauthorized(r, header).await;
    }
    let r = wrong.get(app.url("/v1/functions")).send().await.unwrap();
    assert!(!r.text().await.unwrap().contains("not-a-key"));

    // Open routes.
    for path in ["/healthz", "/readyz"] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert!(r.status() != 401, "{path}");
    }
    // Webhooks are not behind API keys (their signatures authenticate them).
    let r = post(&anonymous, &app, "/hooks/some-id", "{}").await;
    assert_ne!(r.status(), 401);

    // A revoked key stops working at once; revoking twice is 404.
    let r = app.delete(&format!("/v1/keys/{admin_id}")).await;
    assert_eq!(r.status(), 204);
    assert_unauthorized(
        call(&admin, &app, &Method::GET, "/v1/functions").await,
        "revoked",
    )
    .await;
    let r = app.delete(&format!("/v1/keys/{admin_id}")).await;
    assert_eq!(r.status(), 404);

    // Listing shows names, scopes and prefixes, never keys or hashes.
    let listed = app.get("/v1/keys").await.text().await.unwrap();
    assert!(listed.contains("\"ops\"") && listed.contains("revoked_at"));
    assert!(!listed.contains(&admin_key) && !listed.contains(&invoke_key));
    assert!(!listed.contains("hash"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_function_s_url_is_open_and_only_that() {
    let app = spawn_app().await;
    app.register("open", "granda-test/echo", json!({"public": true}))
        .await;
    app.register("closed", "granda-test/echo", json!({})).await;
    let anonymous = reqwest::Client::new();

    let r = post(&anonymous, &app, "/fn/open", "hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    // Only its own URL: the API routes of the same function still need a key.
    for path in [
        "/v1/functions/open/invoke",
        "/v1/functions/open/invocations",
    ] {
        let r = post(&anonymous, &app, path, "x").await;
        assert_unauthorized(r, path).await;
    }
    let r = post(&anonymous, &app, "/fn/closed", "x").await;
    assert_unauthorized(r, "closed").await;
    // A missing function looks like a closed one: no probing for names.
    let r = post(&anonymous, &app, "/fn/missing", "x").await;
    assert_unauthorized(r, "missing").await;

    // Made private again, it closes.
    let r = app
        .put_json("/v1/functions/open", &json!({"public": false}))
        .await;
    assert_eq!(r.status(), 200);
    let r = post(&anonymous, &app, "/fn/open", "x").await;
    assert_unauthorized(r, "no longer public").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_setting_a_first_one_is_made_once() {
    let app = spawn_app_with(|s| s.admin_key = None).await;
    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT name, scope, hash FROM api_keys")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "admin");
    assert_eq!(rows[0].2.len(), 32, "a SHA-256, not the key");
    // The test key was never configured here, so it is refused.
    let r = app.get("/v1/functions").await;
    assert_eq!(r.status(), 401);
    // A second start makes no second key.
    assert!(
        granda::keys::bootstrap(&app.pool, None)
            .await
            .unwrap()
            .is_none()
    );
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    app.shutdown().await;
}

/// `granda keys ARGS` against `app`, with the admin key.
async fn granda_keys(app: &TestApp, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .arg("keys")
        .args(args)
        .env("GRANDA_URL", &app.address)
        .env("GRANDA_KEY", ADMIN_KEY)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granda_keys_create_prints_a_working_key_once() {
    let app = spawn_app().await;
    let output = granda_keys(&app, &["create", "--name", "ci", "--scope", "invoke"]).await;
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("gk_"), "{key}");
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT hash FROM api_keys WHERE name = 'ci'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, granda::keys::hash(&key));

    app.register("echo", "granda-test/echo", json!({})).await;
    let ci = client_with_key(&key);
    let r = post(&ci, &app, "/fn/echo", "from ci").await;
    assert_eq!(r.text().await.unwrap(), "from ci");
    let r = ci.get(app.url("/v1/functions")).send().await.unwrap();
    assert_eq!(r.status(), 403);

    let listed = granda_keys(&app, &["ls"]).await;
    let listed = String::from_utf8(listed.stdout).unwrap();
    let row = listed
        .lines()
        .find(|l| l.contains(" ci "))
        .unwrap_or_else(|| panic!("no row for ci in {listed}"));
    assert!(row.contains("invoke") && row.contains("live"), "{row}");
    assert!(!listed.contains(&key), "{listed}");
    assert!(!listed.contains(ADMIN_KEY), "{listed}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_off_asks_for_nothing() {
    let app = spawn_app_with(|s| s.auth = granda::config::AuthMode::Off).await;
    let r = reqwest::Client::new()
        .get(app.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_of_a_public_function_get_no_logs_or_engine_errors() {
    let app = spawn_app().await;
    // granda-test/fail writes "something broke" to stderr and exits 3.
    app.register("broken", "granda-test/fail", json!({"public": true}))
        .await;
    let anonymous = reqwest::Client::new();
    let r = post(&anonymous, &app, "/fn/broken", "x").await;
    assert_eq!(r.status(), 502);
    let id = id_of(&r).to_string();
    let text = r.text().await.unwrap();
    assert!(!text.contains("something broke"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["invocation_id"], id.as_str());
    assert_eq!(body["error"]["status"], "failed");
    assert!(body["error"]["detail"].is_null(), "{body}");
    // The stderr is in the record, for those with a key.
    let record = app.get_json(&format!("/v1/invocations/{id}")).await;
    assert!(record["logs"].as_str().unwrap().contains("something broke"));

    // With a key, the same URL keeps the detail.
    let (_, key) = make_key(&app, "ci", "invoke").await;
    for client in [&app.client, &client_with_key(&key)] {
        let r = post(client, &app, "/fn/broken", "x").await;
        assert_eq!(r.status(), 502);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("something broke")),
            "{body}"
        );
    }
    // A wrong key on a public function is no key: the anonymous view.
    let r = post(&client_with_key(WRONG_KEY), &app, "/fn/broken", "x").await;
    assert_eq!(r.status(), 502);
    assert!(!r.text().await.unwrap().contains("something broke"));
    app.shutdown().await;
}

/// Issue 26: publishing an event answers with a `status_url`, which an invoke key (allowed to
/// publish) got 403 on. It may read it now, as it may read an invocation by its id; without a
/// key it is still 401, and an invoke key still can't manage events' subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoke_key_reads_the_status_url_of_the_event_it_published() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let r = app
        .post_json(
            "/v1/functions/echo/subscriptions",
            &json!({"pattern": "orders.*"}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let (_, invoke_key) = make_key(&app, "ci", "invoke").await;
    let invoker = client_with_key(&invoke_key);
    let r = invoker
        .post(app.url("/v1/events/orders.new"))
        .body("{\"n\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let published: Value = r.json().await.unwrap();
    let status_url = published["status_url"].as_str().unwrap();
    let path = reqwest::Url::parse(status_url).unwrap().path().to_string();
    assert_eq!(
        path,
        format!("/v1/events/{}", published["id"].as_str().unwrap())
    );

    let r = invoker.get(app.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "invoke key on GET {path}");
    let event: Value = r.json().await.unwrap();
    assert_eq!(event["id"], published["id"], "{event}");
    assert_eq!(event["topic"], "orders.new");
    assert_eq!(event["invocations"], published["invocations"], "{event}");
    assert_unauthorized(
        call(&reqwest::Client::new(), &app, &Method::GET, &path).await,
        "GET the event without a key",
    )
    .await;
    let r = call(
        &invoker,
        &app,
        &Method::GET,
        "/v1/functions/echo/subscriptions",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    app.shutdown().await;
}
