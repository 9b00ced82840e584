//! A function can't act as the console (issue: "credentials withheld, origins apart"): whatever
//! authenticated a request never reaches a function, a function's page can't use an admin's
//! session in a real browser, a function can't set the session cookie, and with
//! `GRANDA_FUNCTIONS_URL` each origin refuses the other's paths.

use std::time::Duration;

use anyhow::ensure;
use fantoccini::Locator;
use serde_json::json;

use crate::support::{TestApp, client_with_key, id_of, spawn_app, spawn_app_with};

/// An operator's own admin key: any string of 16+ characters, no `gk_` prefix.
const OPERATOR_KEY: &str = "operator-chose-this-admin-key-42";

/// An app with the public CGI function `thief` (test image `granda-test/thief`).
async fn with_a_public_thief() -> TestApp {
    let app = spawn_app().await;
    app.register(
        "thief",
        "granda-test/thief",
        json!({"response": "cgi", "public": true}),
    )
    .await;
    app
}

async fn call(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    client_with_key(key)
        .get(app.url(path))
        .header("cookie", "granda_session=session-token-of-an-admin; own=1")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bearer_token_reaches_a_cold_warm_or_hot_function() {
    let app = spawn_app_with(|s| {
        s.admin_key = Some(granda::keys::Secret(OPERATOR_KEY.to_string()));
    })
    .await;
    // (The app's own client sends the test's gk_ key; this app knows only the operator's.)
    let admin = client_with_key(OPERATOR_KEY);
    for (name, image, mode, public) in [
        ("cold", "granda-test/cgi", "cold", true),
        ("warm", "granda-test/cgi", "warm", false),
        ("hot", "granda-test/hot-web", "hot", false),
    ] {
        let r = admin
            .post(app.url("/v1/functions"))
            .json(
                &json!({"name": name, "image": image, "response": "cgi", "mode": mode,
                          "public": public}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{name}: {}", r.text().await.unwrap());
    }
    // The operator's key (valid), a made-up bearer token (invalid, but it may be someone's key
    // elsewhere) on a public function: neither reaches it, nor does the session cookie.
    for (name, path) in [
        ("cold", "/fn/cold/env"),
        ("warm", "/fn/warm/env"),
        ("hot", "/fn/hot/request"),
    ] {
        let r = call(&app, OPERATOR_KEY, path).await;
        assert_eq!(r.status(), 200, "{name}");
        let seen = r.text().await.unwrap();
        assert!(
            !seen.contains(OPERATOR_KEY)
                && !seen.contains("session-token-of-an-admin")
                && !seen.to_ascii_lowercase().contains("authorization"),
            "{name} saw: {seen}"
        );
        assert!(
            seen.contains("own=1"),
            "{name}: its own cookie passes: {seen}"
        );
    }
    let r = call(&app, "not-a-key-but-a-secret-0123456789", "/fn/cold/env").await;
    assert_eq!(r.status(), 200);
    let seen = r.text().await.unwrap();
    assert!(!seen.contains("not-a-key-but-a-secret"), "{seen}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_answer_is_sandboxed_and_can_not_set_the_session_cookie() {
    let app = with_a_public_thief().await;
    app.register(
        "hot",
        "granda-test/hot-web",
        json!({"response": "cgi", "mode": "hot"}),
    )
    .await;
    let key = crate::support::ADMIN_KEY;
    for path in ["/fn/thief/session", "/fn/hot/session"] {
        let r = call(&app, key, path).await;
        assert_eq!(r.status(), 200, "{path}");
        let csp: Vec<_> = r
            .headers()
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            csp.iter()
                .any(|c| c.starts_with("sandbox") && !c.contains("allow-same-origin")),
            "{path}: {csp:?}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let cookies: Vec<_> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(cookies, vec!["own=1; Path=/".to_string()], "{path}");
    }
    // The API's sync invoke answers a CGI function's page too: sandboxed as well.
    let r = app.post_with("/v1/functions/hot/invoke", &[], "x").await;
    assert!(r.headers().get("content-security-policy").is_some());

    // A 204 carries no body, whatever the function printed.
    for path in ["/fn/thief/nocontent", "/fn/hot/nocontent"] {
        let r = call(&app, key, path).await;
        assert_eq!(r.status(), 204, "{path}");
        assert!(
            r.headers().get("content-length").is_none_or(|l| l == "0"),
            "{path}: {:?}",
            r.headers().get("content-length")
        );
        assert!(r.bytes().await.unwrap().is_empty(), "{path}");
    }
    // A hot function's status that is no final one never reaches the caller.
    for status in [101, 999] {
        let r = call(&app, key, &format!("/fn/hot/status/{status}")).await;
        assert_eq!(r.status(), 502, "status {status}");
        let id = id_of(&r);
        let record = app.wait_final(id, Duration::from_secs(15)).await;
        assert_eq!(record["status"], "failed", "{record}");
    }
    // The kept process still serves after those.
    let r = call(&app, key, "/fn/hot/echo").await;
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_for_any_origin_answers_a_star_and_no_credentials() {
    let app = spawn_app().await;
    app.register(
        "open",
        "granda-test/hot-web",
        json!({"response": "cgi", "mode": "hot", "public": true,
               "cors": {"allow_origins": ["*"], "allow_methods": ["GET"]}}),
    )
    .await;
    let r = reqwest::Client::new()
        .get(app.url("/fn/open/created"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, app.url("/fn/open"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_functions_url_each_origin_refuses_the_other_s_paths() {
    const FN_HOST: &str = "fn.granda-usercontent.test";
    let app = spawn_app_with(|s| s.functions_url = Some(format!("http://{FN_HOST}"))).await;
    let made = app
        .register(
            "page",
            "granda-test/thief",
            json!({"response": "cgi", "public": true}),
        )
        .await;
    assert_eq!(
        made["invoke_url"],
        format!("http://{FN_HOST}/fn/page"),
        "{made}"
    );
    let on = |host: &'static str, path: &str| {
        reqwest::Client::new()
            .get(app.url(path))
            .header("host", host)
            .header(
                "authorization",
                format!("Bearer {}", crate::support::ADMIN_KEY),
            )
            .send()
    };
    // The functions' origin serves functions, unsandboxed (it is an origin of their own)...
    let r = on(FN_HOST, "/fn/page/x").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-security-policy").is_none());
    assert_eq!(r.text().await.unwrap(), "thief\n");
    // ...and nothing else: no dashboard, no API.
    for path in ["/ui/login", "/ui/keys", "/v1/functions", "/metrics", "/"] {
        let r = on(FN_HOST, path).await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the functions' origin");
    }
    // The console's origin (any other host) refuses functions' paths.
    let r = app.get("/fn/page/x").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains(FN_HOST),
        "{body}"
    );
    assert_eq!(app.get("/v1/functions/page").await.status(), 200);
    assert_eq!(
        reqwest::Client::new()
            .get(app.url("/ui/login"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.shutdown().await;
}

/// The red team's attack, in a real browser: an admin logged in to the dashboard opens a public
/// function's page whose script reads `/ui/keys` for its CSRF token and posts a new admin key.
/// The sandbox makes the page an opaque origin: the read fails, and no key is made.
#[tokio::test(flavor = "multi_thread")]
async fn a_thieving_function_page_makes_no_key_in_a_logged_in_browser() {
    let app = with_a_public_thief().await;
    crate::ui::as_admin_in_chromium(app, async |client, app| {
        // Logged in: the dashboard's key page is readable from the console's own origin.
        client.goto(&app.url("/ui/keys")).await?;
        crate::ui::text_of(client, "#create-key").await?;
        client.goto(&app.url("/fn/thief/steal")).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client.title().await? != "done" {
            ensure!(
                std::time::Instant::now() < deadline,
                "the page's script never finished"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = client.find(Locator::Css("#out")).await?.text().await?;
        ensure!(
            out.starts_with("blocked:") || out == "no-token",
            "the page got through: {out}"
        );
        let keys = app.get_json("/v1/keys").await;
        ensure!(
            !keys.to_string().contains("stolen"),
            "a key was made: {keys}"
        );
        Ok(())
    })
    .await;
}
