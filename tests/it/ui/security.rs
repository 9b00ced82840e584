//! The dashboard's security, checked with plain HTTP (no browser): sessions bound to their key,
//! scopes, where login goes, CSRF tokens, the security headers.

use serde_json::json;

use crate::support::{TestApp, make_key, spawn_app};

/// Percent-encodes a form value.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
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
pub(crate) struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    pub(crate) fn new(app: &TestApp) -> Browser {
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
    pub(crate) async fn logged_in(app: &TestApp, key: &str) -> Browser {
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

    /// The session cookie (`granda_session=…`), once logged in.
    pub(crate) fn cookie(&self) -> &str {
        self.cookie.as_deref().unwrap_or_default()
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> reqwest::Response {
        self.post_form_with(path, pairs, &[]).await
    }

    pub(crate) async fn post_form_with(
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
    pub(crate) async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await.text().await.unwrap();
        csrf_in(&page)
    }
}

pub(crate) fn csrf_in(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    page.find(marker)
        .map(|i| {
            let rest = &page[i + marker.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .unwrap_or_default()
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

    let r = app.delete(&format!("/v1/keys/{id}")).await;
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
            "/ui/invocations\"",
            "/ui/dead-letters",
            "/ui/webhooks",
            "/ui/keys",
            "/ui/schedules",
            "/ui/events",
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
        "/ui/invocations",
        "/ui/invocations?status=failed",
        "/ui/dead-letters",
        "/ui/webhooks",
        "/ui/keys",
        "/ui/schedules",
        "/ui/events",
        "/ui/functions/secretive/builds/1",
        "/ui/functions/new/source",
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
    // The console's forms too: make a key or a webhook, roll back, retry in bulk.
    for (path, form) in [
        ("/ui/keys", vec![("name", "by-ci"), ("scope", "admin")]),
        (
            "/ui/webhooks",
            vec![("function", "secretive"), ("scheme", "none")],
        ),
        ("/ui/functions/secretive/rollback", vec![("version", "1")]),
        (
            "/ui/functions/new/source",
            vec![("name", "by-ci"), ("runtime", "shell"), ("source", "cat")],
        ),
        (
            "/ui/dead-letters/retry",
            vec![("id", "0190a5f0-0000-7000-8000-000000000000")],
        ),
    ] {
        let mut form = form;
        form.push(("csrf", &csrf));
        assert_eq!(ci.post_form(path, &form).await.status(), 403, "POST {path}");
    }
    // Nor subscribe a function to a topic or delete a subscription.
    let made: serde_json::Value = app
        .post_json(
            "/v1/functions/secretive/subscriptions",
            &json!({"pattern": "orders.*"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let sub = made["id"].as_str().unwrap();
    let r = ci
        .post_form(
            "/ui/events",
            &[
                ("function", "secretive"),
                ("pattern", "by-ci.#"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status(), 403, "POST /ui/events");
    let path = format!("/ui/functions/secretive/subscriptions/{sub}/delete");
    let r = ci.post_form(&path, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 403, "POST {path}");
    let subs: serde_json::Value = app
        .get("/v1/functions/secretive/subscriptions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(subs["subscriptions"], json!([made]));
    let keys: serde_json::Value = app.get("/v1/keys").await.json().await.unwrap();
    assert!(!keys.to_string().contains("by-ci"), "{keys}");
    let hooks: serde_json::Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert_eq!(hooks["webhooks"], serde_json::json!([]));
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
