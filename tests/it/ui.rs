//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver) logs
//! in, is refused a bad function with the error next to its field, creates the function through
//! the form, invokes it from its page, finds the invocation with its output, looks at the queues,
//! and deletes the function after confirming. Screenshots of every page go to
//! `target/ui-screenshots/`. Without `chromium` and `chromedriver` (scripts/setup.sh installs
//! them) the test fails: it never skips.

use std::time::Duration;

use anyhow::{Context, ensure};
use fantoccini::{Client, Locator};
use serde_json::json;

use crate::browser::{Chromium, click, fill, find_binary, shot, text_of};
use crate::support::{TestApp, spawn_app};

/// The `h1` once the page after a click shows one that passes `ok`: the click's navigation may not
/// have happened yet when this is called, so the old page's heading is waited out, not read.
async fn h1_after(client: &Client, ok: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = match client.find(Locator::Css("h1")).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if ok(&text) || std::time::Instant::now() > deadline {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_browser() {
    let chromium = find_binary("GRANDA_TEST_CHROMIUM", &["chromium", "chromium-browser"]);
    let chromedriver = find_binary("GRANDA_TEST_CHROMEDRIVER", &["chromedriver"]);
    let app = spawn_app().await;

    // Pages need a session: without one, a redirect to the login form.
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = bare.get(app.url("/ui/queues")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        "/ui/login?next=/ui/queues"
    );

    let browser = Chromium::start(&chromium, &chromedriver).await;
    let client = browser.client.clone();

    let result = drive(&client, &app).await;
    if result.is_err() {
        // What the browser showed when it went wrong.
        let _ = shot(&client, "failure").await;
        if let (Ok(url), Ok(source)) = (client.current_url().await, client.source().await) {
            eprintln!("failed at {url}:\n{source}");
        }
    }
    browser.close().await;
    result.unwrap();
    app.shutdown().await;
}

async fn drive(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    // Log in.
    client.goto(&app.url("/ui")).await?;
    let url = client.current_url().await?;
    ensure!(
        url.path() == "/ui/login",
        "not sent to the login form: {url}"
    );
    shot(client, "login").await?;
    // A wrong key is refused; the admin key logs in.
    fill(client, "#key", "gk_not-a-key-at-all").await?;
    click(client, "button[type=submit]").await?;
    // The login page comes back with its error; wait for it before typing again.
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("p.error"))
        .await
        .context("a wrong key must be refused with an error")?;
    ensure!(
        client.current_url().await?.path() == "/ui/login",
        "a wrong key must not log in"
    );
    fill(client, "#key", crate::support::ADMIN_KEY).await?;
    click(client, "button[type=submit]").await?;
    let h1 = h1_after(client, |h| h.starts_with("Functions")).await?;
    ensure!(h1.starts_with("Functions"), "after login: {h1}");
    let cookie = client.get_named_cookie("granda_session").await?;
    ensure!(
        cookie.http_only() == Some(true),
        "session cookie not HttpOnly"
    );

    // A bad name is refused with the shared validation's words next to the field.
    client.goto(&app.url("/ui/functions/new")).await?;
    fill(client, "#name", "Not A Name").await?;
    fill(client, "#image", "granda-test/echo").await?;
    click(client, "#save").await?;
    let error = text_of(client, "#field-name .error").await?;
    ensure!(error.contains("must match"), "name error: {error}");
    ensure!(
        client
            .find(Locator::Css("#image"))
            .await?
            .prop("value")
            .await?
            == Some("granda-test/echo".into()),
        "the refused form lost its image"
    );
    shot(client, "new-function-error").await?;

    // Create it for real.
    fill(client, "#name", "hello").await?;
    fill(client, "#description", "echoes its input <b>escaped</b>").await?;
    click(client, "#save").await?;
    let h1 = h1_after(client, |h| h == "Function hello").await?;
    ensure!(h1 == "Function hello", "after create: {h1}");
    let url = text_of(client, "#invoke-url").await?;
    ensure!(url == app.url("/fn/hello"), "invoke URL: {url}");
    // The API sees what the form stored.
    let f: serde_json::Value = app.get("/v1/functions/hello").await.json().await?;
    ensure!(f["description"] == "echoes its input <b>escaped</b>", "{f}");

    // Invoke from the page.
    fill(client, "#body", "hello from the browser").await?;
    click(client, "#invoke").await?;
    let output = text_of(client, "#result #output").await?;
    ensure!(output == "hello from the browser", "output: {output:?}");
    let badge = text_of(client, "#result .badge").await?;
    ensure!(badge == "succeeded", "status: {badge}");
    let rows = client
        .find_all(Locator::Css("#invocations tbody tr"))
        .await?;
    ensure!(rows.len() == 1, "{} invocation rows", rows.len());
    let svg = client.find_all(Locator::Css("svg.chart circle")).await?;
    ensure!(svg.len() == 1, "{} points on the chart", svg.len());
    // The stylesheet is a static file the CSP allows: the page is styled, legend included.
    let colours: serde_json::Value = client
        .execute(
            "return [getComputedStyle(document.querySelector('header')).backgroundColor,
                     getComputedStyle(document.querySelector('.legend span.bars')).backgroundColor]",
            vec![],
        )
        .await?;
    ensure!(
        colours == json!(["rgb(29, 39, 51)", "rgb(201, 214, 232)"]),
        "styles not applied: {colours}"
    );
    shot(client, "function").await?;

    // The functions list counts it.
    client.goto(&app.url("/ui")).await?;
    let row = text_of(client, "#functions tbody tr").await?;
    ensure!(row.contains("hello") && row.contains("100%"), "row: {row}");
    shot(client, "functions").await?;

    // The invocation's page, through the link on the function's page.
    client.goto(&app.url("/ui/functions/hello")).await?;
    click(client, "#invocations tbody tr a").await?;
    let h1 = h1_after(client, |h| h.starts_with("Invocation ")).await?;
    ensure!(h1.starts_with("Invocation "), "{h1}");
    let record = text_of(client, "#record").await?;
    ensure!(
        record.contains("succeeded") && record.contains(&app.worker_id()),
        "record: {record}"
    );
    ensure!(text_of(client, "#output").await? == "hello from the browser");
    ensure!(text_of(client, "#input").await? == "hello from the browser");
    shot(client, "invocation").await?;

    // The queues: the work queue with the worker consuming it, and the worker's heartbeat.
    client.goto(&app.url("/ui/queues")).await?;
    let queues = text_of(client, "#queues").await?;
    ensure!(queues.contains("default"), "queues: {queues}");
    let workers = text_of(client, "#workers").await?;
    ensure!(workers.contains(&app.worker_id()), "workers: {workers}");
    // The live view reloads the tables in place.
    let before = text_of(client, "#live p.muted:last-child").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = text_of(client, "#live p.muted:last-child").await?;
    ensure!(before != after, "the queues view did not refresh: {after}");
    shot(client, "queues").await?;

    // Phone width: the function's page still fits.
    client.set_window_size(390, 844).await?;
    client.goto(&app.url("/ui/functions/hello")).await?;
    let width: serde_json::Value = client
        .execute("return document.documentElement.scrollWidth", vec![])
        .await?;
    ensure!(
        width.as_u64().is_some_and(|w| w <= 400),
        "the page is {width} px wide on a phone"
    );
    shot(client, "function-phone").await?;
    client.set_window_size(1000, 760).await?;

    // Delete, after confirming.
    client.goto(&app.url("/ui/functions/hello")).await?;
    click(client, "a.danger").await?;
    text_of(client, "#confirm-delete").await?;
    shot(client, "delete").await?;
    click(client, "#confirm-delete").await?;
    let h1 = h1_after(client, |h| h.starts_with("Functions")).await?;
    ensure!(h1.starts_with("Functions"), "after delete: {h1}");
    ensure!(app.get("/v1/functions/hello").await.status() == 404);
    Ok(())
}

// ---- The dashboard's security, checked with plain HTTP (no browser). ----

/// Percent-encodes a form value.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A dashboard user over plain HTTP: no redirects followed, the session cookie sent by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.address.clone(),
            cookie: None,
        }
    }

    /// Logs in with `key`; panics unless the login made a session.
    async fn logged_in(app: &TestApp, key: &str) -> Browser {
        let mut b = Browser::new(app);
        let r = b
            .post_form("/ui/login", &[("key", key), ("next", "/ui")])
            .await;
        assert_eq!(r.status(), 303, "login with a good key");
        let set = r
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_string();
        b.cookie = Some(set.split(';').next().unwrap().to_string());
        b
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
    }

    async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
        self.post_form_with(path, pairs, &[]).await
    }

    async fn post_form_with(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(pairs));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    /// The CSRF token in a page's forms (empty when the page has none).
    async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await.text().await.unwrap();
        csrf_in(&page)
    }
}

fn csrf_in(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    page.find(marker)
        .map(|i| {
            let rest = &page[i + marker.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .unwrap_or_default()
}

async fn make_key(app: &TestApp, name: &str, scope: &str) -> (String, String) {
    let r = app
        .post_json("/v1/keys", &json!({"name": name, "scope": scope}))
        .await;
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_string(),
        body["key"].as_str().unwrap().to_string(),
    )
}

async fn sessions(app: &TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM ui_sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    n
}

fn new_function_form<'a>(name: &'a str, csrf: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("name", name),
        ("image", "granda-test/echo"),
        ("input", "stdin"),
        ("csrf", csrf),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_s_dashboard_session_ends_at_once() {
    let app = spawn_app().await;
    app.register("kept", "granda-test/echo", json!({})).await;
    let (id, key) = make_key(&app, "ops", "admin").await;
    let ops = Browser::logged_in(&app, &key).await;
    // The settings' admin key logs in too, and is not touched by revoking another key.
    let root = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;
    assert_eq!(ops.get("/ui").await.status(), 200);
    let csrf = ops.csrf("/ui/functions/new").await;
    let delete_csrf = ops.csrf("/ui/functions/kept/delete").await;

    let r = app
        .client
        .delete(app.url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // The very next page and form posts are refused, and change nothing.
    let r = ops.get("/ui").await;
    assert_eq!(r.status(), 303, "a page after revoking");
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/login")
    );
    let r = ops
        .post_form("/ui/functions/new", &new_function_form("made-after", &csrf))
        .await;
    assert!(
        r.status() == 303 || r.status() == 401 || r.status() == 403,
        "{}",
        r.status()
    );
    if r.status() == 303 {
        assert!(
            r.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/ui/login")
        );
    }
    assert_eq!(app.get("/v1/functions/made-after").await.status(), 404);
    let r = ops
        .post_form("/ui/functions/kept/delete", &[("csrf", &delete_csrf)])
        .await;
    assert_ne!(r.status().as_u16() / 100, 2);
    assert_eq!(app.get("/v1/functions/kept").await.status(), 200);
    // Its session is gone from the table, not only refused.
    let (left,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM ui_sessions s JOIN api_keys k ON k.name = 'ops'
         WHERE s.key_id::text = k.id::text",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap_or((0,));
    assert_eq!(left, 0);
    assert_eq!(
        sessions(&app).await,
        1,
        "only the other key's session is left"
    );

    // The other key's session goes on.
    assert_eq!(root.get("/ui").await.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_sessions_see_what_invoke_keys_see() {
    let app = spawn_app().await;
    app.register(
        "secretive",
        "granda-test/echo",
        json!({"env": {"SOME_SETTING": "hunter2-value"}}),
    )
    .await;
    // Stored directly: what callback URLs registration accepts is not this test's business.
    sqlx::query("UPDATE functions SET callback_url = 'http://callbacks.example/only-admins'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, key) = make_key(&app, "ci", "invoke").await;
    let ci = Browser::logged_in(&app, &key).await;
    let admin = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;

    // The admin sees the settings; the invoke session does not, nor any admin link.
    let page = admin
        .get("/ui/functions/secretive")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("hunter2-value") && page.contains("only-admins"));
    for path in ["/ui", "/ui/functions/secretive"] {
        let r = ci.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let page = r.text().await.unwrap();
        for hidden in [
            "hunter2-value",
            "SOME_SETTING",
            "only-admins",
            "/ui/functions/new",
            "/edit",
            "/delete",
            "/ui/queues",
        ] {
            assert!(!page.contains(hidden), "{path} shows {hidden}:\n{page}");
        }
    }
    // Admin pages and admin form posts: 403, and nothing changes.
    for path in [
        "/ui/functions/new",
        "/ui/functions/secretive/edit",
        "/ui/functions/secretive/delete",
        "/ui/queues",
        "/ui/queues/live",
    ] {
        assert_eq!(ci.get(path).await.status(), 403, "GET {path}");
    }
    let csrf = ci.csrf("/ui/functions/secretive").await;
    let r = ci
        .post_form("/ui/functions/new", &new_function_form("by-ci", &csrf))
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.get("/v1/functions/by-ci").await.status(), 404);
    let r = ci
        .post_form(
            "/ui/functions/secretive/edit",
            &[("image", "granda-test/sh"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = ci
        .post_form("/ui/functions/secretive/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 403);
    let f: serde_json::Value = app
        .get("/v1/functions/secretive")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(f["image"], "granda-test/echo");

    // What an invoke key may do, the session may do: run it and read the record.
    let r = ci
        .post_form(
            "/ui/functions/secretive/invoke",
            &[("body", "from ci"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("from ci") && !page.contains("hunter2-value"));
    let id = page
        .split("/ui/invocations/")
        .nth(1)
        .map(|rest| rest[..36].to_string())
        .expect("a link to the invocation");
    let r = ci.get(&format!("/ui/invocations/{id}")).await;
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_follows_only_local_dashboard_paths() {
    let app = spawn_app().await;
    let hostile = [
        "/ui\r\nX-Injected: 1",
        "/ui/\nx",
        "//evil.example/ui",
        "https://evil.example/ui",
        "/\\evil.example",
        "/ui/\\evil.example",
        "/ui\\\\evil.example",
        "/ui/../v1/keys",
        "javascript:alert(1)",
    ];
    for next in hostile {
        let b = Browser::new(&app);
        // The form page puts a safe value in its hidden field.
        let r = b
            .http
            .get(format!(
                "{}?{}",
                app.url("/ui/login"),
                form_encode(&[("next", next)])
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{next:?}");
        let page = r.text().await.unwrap();
        assert!(page.contains("name=\"next\" value=\"/ui\""), "{next:?}");
        // A failed login leaves no session and never answers 500.
        let before = sessions(&app).await;
        let r = b
            .post_form("/ui/login", &[("key", "gk_wrong"), ("next", next)])
            .await;
        assert_eq!(r.status(), 401, "{next:?}");
        assert_eq!(sessions(&app).await, before, "{next:?}");
        // A good key logs in and lands on the dashboard, not on `next`.
        let r = b
            .post_form(
                "/ui/login",
                &[("key", crate::support::ADMIN_KEY), ("next", next)],
            )
            .await;
        assert_eq!(r.status(), 303, "{next:?}");
        assert_eq!(r.headers()["location"], "/ui", "{next:?}");
        assert!(r.headers().get("x-injected").is_none());
        assert_eq!(sessions(&app).await, before + 1, "{next:?}");
    }
    // A local dashboard path is still followed.
    let b = Browser::new(&app);
    let r = b
        .post_form(
            "/ui/login",
            &[
                ("key", crate::support::ADMIN_KEY),
                ("next", "/ui/functions/x?y=1"),
            ],
        )
        .await;
    assert_eq!(r.headers()["location"], "/ui/functions/x?y=1");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_forms_need_their_session_s_csrf_token() {
    let app = spawn_app().await;
    let admin = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;
    let other = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;
    let token = admin.csrf("/ui/functions/new").await;
    assert!(token.len() >= 32, "a CSRF token in the form: {token:?}");
    let other_token = other.csrf("/ui/functions/new").await;
    assert_ne!(token, other_token, "one token per session");

    for (what, csrf) in [
        ("none", ""),
        (
            "wrong",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("another session's", other_token.as_str()),
    ] {
        let mut form = new_function_form("forged", csrf);
        if csrf.is_empty() {
            form.pop();
        }
        let r = admin.post_form("/ui/functions/new", &form).await;
        assert_eq!(r.status(), 403, "{what} token");
        assert_eq!(
            app.get("/v1/functions/forged").await.status(),
            404,
            "{what}"
        );
    }
    // Logging out is a form too.
    let r = admin.post_form("/ui/logout", &[]).await;
    assert_eq!(r.status(), 403);
    assert_eq!(admin.get("/ui").await.status(), 200, "still logged in");
    // A cross-site post is refused even with the token; so is a cross-site login.
    let r = admin
        .post_form_with(
            "/ui/functions/new",
            &new_function_form("forged", &token),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = admin
        .post_form_with(
            "/ui/functions/new",
            &new_function_form("forged", &token),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.get("/v1/functions/forged").await.status(), 404);
    let before = sessions(&app).await;
    let r = Browser::new(&app)
        .post_form_with(
            "/ui/login",
            &[("key", crate::support::ADMIN_KEY), ("next", "/ui")],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(sessions(&app).await, before);

    // The right token, same origin: saved.
    let r = admin
        .post_form_with(
            "/ui/functions/new",
            &new_function_form("made", &token),
            &[("origin", &app.address), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.get("/v1/functions/made").await.status(), 200);
    let r = admin.post_form("/ui/logout", &[("csrf", &token)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(admin.get("/ui").await.status(), 303, "logged out");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_response_carries_the_security_headers() {
    let app = spawn_app().await;
    app.register("hello", "granda-test/echo", json!({})).await;
    let anonymous = Browser::new(&app);
    let admin = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;
    let mut answers = vec![
        anonymous.get("/ui/login").await,
        anonymous.get("/ui").await,
        anonymous
            .post_form("/ui/login", &[("key", "gk_wrong")])
            .await,
        admin.get("/ui").await,
        admin.get("/ui/functions/hello").await,
        admin.get("/ui/functions/nope").await,
        admin.get("/ui/queues").await,
        admin.get("/ui/queues/live").await,
        admin.get("/ui/nowhere").await,
    ];
    // The static files the pages link to.
    let queues = admin.get("/ui/queues").await.text().await.unwrap();
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in queues.split(attr).skip(1) {
            let url = &part[..part.find('"').unwrap()];
            if url.starts_with("/ui/static/") {
                assets.push(url.to_string());
            }
        }
    }
    assert!(!assets.is_empty(), "the pages link their CSS and JS");
    for a in &assets {
        let r = anonymous.get(a).await;
        assert_eq!(r.status(), 200, "{a}");
        answers.push(r);
    }
    for r in answers {
        let what = format!("{} {}", r.url().path(), r.status());
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{what}: no CSP"))
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(h["x-frame-options"], "DENY", "{what}");
        assert!(h.get("referrer-policy").is_some(), "{what}");
        let html = h
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap().starts_with("text/html"));
        if html {
            let body = r.text().await.unwrap();
            // Nothing inline that the CSP would block.
            assert!(!body.contains("<script>"), "{what}: inline script");
            assert!(!body.contains("<style"), "{what}: inline style");
            assert!(!body.contains(" style=\""), "{what}: style attribute");
        }
    }
    app.shutdown().await;
}
