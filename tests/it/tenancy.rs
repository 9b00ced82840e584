//! Issue 27, what a team sees of its own: which key made each call (`key_id` and the key's name
//! on the record, the `?key_id=` filter, the dashboard's invocation page), the dashboard per
//! namespace (a namespaced key logs in and sees only its namespace; a global session switches
//! namespace), and the usage page and the throttled count of `/v1/usage`.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use anyhow::ensure;
use fantoccini::Locator;

use crate::support::{TestApp, client_with_key, id_of, spawn_app};
use crate::ui::security::Browser;
use crate::ui::{as_admin_in_chromium, click, h1_after, shots, text_of};

/// Makes namespace `name` (with `quotas`) with the global admin key.
async fn make_namespace(app: &TestApp, name: &str, quotas: Value) {
    let mut body = json!({"name": name});
    body.as_object_mut()
        .unwrap()
        .extend(quotas.as_object().unwrap().clone());
    let r = app.post_json("/v1/namespaces", &body).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// A key named `name`, bound to `namespace` (global when `None`): (id, key).
async fn key(app: &TestApp, name: &str, scope: &str, namespace: Option<&str>) -> (Uuid, String) {
    let r = app
        .post_json(
            "/v1/keys",
            &json!({"name": name, "scope": scope, "namespace": namespace}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    (
        body["id"].as_str().unwrap().parse().unwrap(),
        body["key"].as_str().unwrap().to_string(),
    )
}

/// Namespace `team-b` and its admin key `b-admin`: (the key, a client that sends it).
async fn team_b(app: &TestApp) -> (String, reqwest::Client) {
    make_namespace(app, "team-b", json!({})).await;
    let (_, b_admin) = key(app, "b-admin", "admin", Some("team-b")).await;
    let b = client_with_key(&b_admin);
    (b_admin, b)
}

/// Registers `name` (`granda-test/echo`) with `client`, in that key's namespace.
async fn register_with(app: &TestApp, client: &reqwest::Client, name: &str, extra: Value) {
    let mut body = json!({"name": name, "image": "granda-test/echo"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = client
        .post(app.url("/v1/functions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// The final record of invocation `id`, read with `client`.
async fn final_record(app: &TestApp, client: &reqwest::Client, id: Uuid) -> Value {
    crate::support::eventually(Duration::from_secs(30), "a final record", || async {
        let r = client
            .get(app.url(&format!("/v1/invocations/{id}")))
            .send()
            .await
            .unwrap();
        let record: Value = r.json().await.ok()?;
        (!matches!(record["status"].as_str(), Some("queued" | "running") | None)).then_some(record)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_name_the_key_that_made_the_call() {
    let app = spawn_app().await;
    make_namespace(&app, "team-b", json!({})).await;
    let (b_admin_id, b_admin) = key(&app, "b-admin", "admin", Some("team-b")).await;
    let (ci_id, ci_key) = key(&app, "b-ci", "invoke", Some("team-b")).await;
    let b = client_with_key(&b_admin);
    let ci = client_with_key(&ci_key);
    register_with(&app, &b, "echo", json!({})).await;
    app.register("open", "granda-test/echo", json!({"public": true}))
        .await;

    // A sync call (the worker writes its record, the key id in the signed message), an async
    // call (the ingress writes it) and a call of the function's URL, all with the CI key.
    let sync = ci
        .post(app.url("/v1/functions/echo/invoke"))
        .body("s")
        .send()
        .await
        .unwrap();
    assert_eq!(sync.status(), 200);
    let sync = id_of(&sync);
    let r = ci
        .post(app.url("/v1/functions/echo/invocations"))
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let queued: Uuid = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = ci
        .post(app.url("/fn/echo.team-b"))
        .body("u")
        .send()
        .await
        .unwrap();
    assert_eq!(url.status(), 200);
    let url = id_of(&url);
    for id in [sync, queued, url] {
        let record = final_record(&app, &b, id).await;
        assert_eq!(record["key_id"], ci_id.to_string(), "{record}");
        assert_eq!(record["key_name"], "b-ci", "{record}");
    }
    // The team's admin's own call names its key; a keyless call of a public function none.
    let own = b
        .post(app.url("/v1/functions/echo/invoke"))
        .body("o")
        .send()
        .await
        .unwrap();
    let own = final_record(&app, &b, id_of(&own)).await;
    assert_eq!(own["key_id"], b_admin_id.to_string());
    let keyless = reqwest::Client::new()
        .post(app.url("/fn/open"))
        .body("k")
        .send()
        .await
        .unwrap();
    assert_eq!(keyless.status(), 200);
    let keyless = final_record(&app, &app.client, id_of(&keyless)).await;
    assert!(keyless["key_id"].is_null(), "{keyless}");
    assert!(keyless["key_name"].is_null(), "{keyless}");

    // The list filter keeps one key's calls; a malformed key id is 400.
    let page: Value = b
        .get(app.url(&format!("/v1/invocations?key_id={ci_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<&str> = page["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = [sync.to_string(), queued.to_string(), url.to_string()];
    want.sort();
    assert_eq!(ids, want);
    let r = b
        .get(app.url("/v1/invocations?key_id=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A dashboard call carries the key its session logged in with, and the invocation page
    // names it.
    let browser = Browser::logged_in(&app, &b_admin).await;
    let csrf = browser.csrf("/ui/functions/echo").await;
    let r = browser
        .post_form(
            "/ui/functions/echo/invoke",
            &[("body", "ui"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    let at = page.find("/ui/invocations/").expect("a link to the run");
    let id: Uuid = page[at + "/ui/invocations/".len()..][..36].parse().unwrap();
    let record = final_record(&app, &b, id).await;
    assert_eq!(record["key_id"], b_admin_id.to_string());
    let shown = browser
        .get(&format!("/ui/invocations/{sync}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(shown.contains("b-ci"), "the key's name on the page");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_key_s_dashboard_sees_only_its_namespace() {
    let app = spawn_app().await;
    let (b_admin, b) = team_b(&app).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    app.register("only-default", "granda-test/echo", json!({}))
        .await;
    register_with(&app, &b, "echo", json!({})).await;
    register_with(&app, &b, "only-b", json!({})).await;
    let theirs = id_of(&app.invoke("only-default", "x").await);
    let ours = b
        .post(app.url("/v1/functions/only-b/invoke"))
        .body("y")
        .send()
        .await
        .unwrap();
    let ours = id_of(&ours);

    let browser = Browser::logged_in(&app, &b_admin).await;
    let home = browser.get("/ui").await.text().await.unwrap();
    assert!(home.contains("only-b.team-b"), "{home}");
    assert!(!home.contains("only-default"), "{home}");
    assert!(home.contains("id=\"namespace\""), "names its namespace");
    assert!(
        !home.contains("namespace-switcher"),
        "a bound session has no switcher"
    );
    // A function's name resolves in the session's namespace: `echo` is team-b's.
    let echo = browser.get("/ui/functions/echo").await;
    assert_eq!(echo.status(), 200);
    assert!(echo.text().await.unwrap().contains("/fn/echo.team-b"));
    for path in [
        "/ui/functions/only-default".to_string(),
        "/ui/functions/only-default/edit".to_string(),
        "/ui/functions/echo.default".to_string(),
        format!("/ui/invocations/{theirs}"),
        "/ui/queues".to_string(),
    ] {
        assert_eq!(browser.get(&path).await.status(), 404, "{path}");
    }
    assert_eq!(
        browser
            .get(&format!("/ui/invocations/{ours}"))
            .await
            .status(),
        200
    );
    let list = browser.get("/ui/invocations").await.text().await.unwrap();
    // (The list shows an id's last 12 characters: its first ones are the time.)
    assert!(list.contains(&ours.to_string()[24..]));
    assert!(!list.contains(&theirs.to_string()[24..]), "{list}");
    // Forms: no reaching out of its namespace, no switching.
    let csrf = browser.csrf("/ui/functions/new").await;
    let r = browser
        .post_form(
            "/ui/functions/only-default/invoke",
            &[("body", "x"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = browser
        .post_form(
            "/ui/namespace",
            &[("namespace", "default"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = browser
        .post_form("/ui/functions/only-default/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(app.get("/v1/functions/only-default").await.status(), 200);
    // A function made in the dashboard lands in the session's namespace.
    let r = browser
        .post_form(
            "/ui/functions/new",
            &[
                ("name", "made-here"),
                ("image", "granda-test/echo"),
                ("input", "stdin"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let r = b
        .get(app.url("/v1/functions/made-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get("/v1/functions/made-here").await.status(), 404);
    // Its keys page lists its namespace's keys only.
    let keys = browser.get("/ui/keys").await.text().await.unwrap();
    assert!(
        keys.contains("b-admin") && !keys.contains("GRANDA_ADMIN_KEY"),
        "{keys}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_session_switches_namespace() {
    let app = spawn_app().await;
    let (_, b) = team_b(&app).await;
    app.register("only-default", "granda-test/echo", json!({}))
        .await;
    register_with(&app, &b, "only-b", json!({})).await;

    let browser = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;
    let home = browser.get("/ui").await.text().await.unwrap();
    assert!(home.contains("namespace-switcher"), "{home}");
    assert!(
        home.contains("only-default") && !home.contains("only-b"),
        "{home}"
    );
    let csrf = crate::ui::security::csrf_in(&home);
    // Unknown and malformed namespaces: 404, nothing changes.
    for bad in ["team-z", "Not A Name"] {
        let r = browser
            .post_form("/ui/namespace", &[("namespace", bad), ("csrf", &csrf)])
            .await;
        assert_eq!(r.status(), 404, "{bad}");
    }
    let r = browser
        .post_form("/ui/namespace", &[("namespace", "team-b"), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 303);
    let home = browser.get("/ui").await.text().await.unwrap();
    assert!(
        home.contains("only-b.team-b") && !home.contains("only-default"),
        "{home}"
    );
    assert!(home.contains("<option value=\"team-b\" selected"), "{home}");
    let r = browser
        .post_form(
            "/ui/functions/only-b/invoke",
            &[("body", "hi"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        browser.get("/ui/functions/only-default").await.status(),
        404
    );
    // The queues stay the installation's, for a global session in any namespace.
    assert_eq!(browser.get("/ui/queues").await.status(), 200);
    let r = browser
        .post_form(
            "/ui/namespace",
            &[("namespace", "default"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        browser.get("/ui/functions/only-default").await.status(),
        200
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_page_and_report_count_calls_and_throttled_ones() {
    let app = spawn_app().await;
    make_namespace(&app, "team-b", json!({"invocations_per_minute": 3})).await;
    let (_, b_admin) = key(&app, "b-admin", "admin", Some("team-b")).await;
    let b = client_with_key(&b_admin);
    register_with(&app, &b, "echo", json!({})).await;
    // Three calls fit the minute, then 429s (unless the minute turns: then a few more fit).
    let mut ok = 0;
    let mut throttled = 0;
    for _ in 0..6 {
        let r = b
            .post(app.url("/v1/functions/echo/invoke"))
            .body("x")
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => throttled += 1,
            other => panic!("{other}"),
        }
    }
    assert!(ok >= 3 && throttled >= 1, "{ok} ok, {throttled} throttled");

    let report: Value = b
        .get(app.url("/v1/usage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["usage"][0]["invocations"], ok, "{report}");
    let ns = &report["namespaces"][0];
    assert_eq!(ns["namespace"], "team-b", "{report}");
    assert_eq!(ns["throttled"]["rate"], throttled, "{report}");
    assert!(ns["stored_bytes"].as_i64().unwrap() > 0, "{report}");

    let browser = Browser::logged_in(&app, &b_admin).await;
    let page = browser.get("/ui/usage?period=24h").await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains(&format!("<td id=\"calls\">{ok}</td>")),
        "{page}"
    );
    assert!(
        page.contains(&format!("<td id=\"throttled\">{throttled}</td>")),
        "{page}"
    );
    assert!(page.contains("id=\"usage-chart\"") && page.contains("class=\"bar\""));
    assert_eq!(browser.get("/ui/usage?period=1y").await.status(), 400);
    // The global admin's session in `default` sees none of it.
    let admin = Browser::logged_in(&app, crate::support::ADMIN_KEY).await;
    let page = admin.get("/ui/usage").await.text().await.unwrap();
    assert!(page.contains("<td id=\"calls\">0</td>"), "{page}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_to_functions_invokes_those_only() {
    let app = spawn_app().await;
    let (b_admin, b) = team_b(&app).await;
    register_with(&app, &b, "hook", json!({})).await;
    register_with(&app, &b, "other", json!({})).await;
    let other = id_of(
        &b.post(app.url("/v1/functions/other/invoke"))
            .body("o")
            .send()
            .await
            .unwrap(),
    );
    // Only an invoke key, only function names.
    for (scope, functions) in [
        ("admin", json!(["hook"])),
        ("invoke", json!([])),
        ("invoke", json!(["no.dots"])),
    ] {
        let r = b
            .post(app.url("/v1/keys"))
            .json(&json!({"name": "x", "scope": scope, "functions": functions}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{scope} {functions}");
    }
    let r = b
        .post(app.url("/v1/keys"))
        .json(&json!({"name": "sender", "scope": "invoke", "functions": ["hook"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    assert_eq!(made["functions"], json!(["hook"]));
    let sender = client_with_key(made["key"].as_str().unwrap());

    // Its function: every way of calling it, and its records.
    let r = sender
        .post(app.url("/v1/functions/hook/invoke"))
        .body("h")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mine = id_of(&r);
    for path in ["/fn/hook.team-b", "/v1/functions/hook/invocations"] {
        let r = sender.post(app.url(path)).body("h").send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let r = sender
        .get(app.url(&format!("/v1/invocations/{mine}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Anything else is missing: other functions, their records, events, lists.
    for (method, path) in [
        ("POST", "/v1/functions/other/invoke".to_string()),
        ("POST", "/v1/functions/other/invocations".to_string()),
        ("POST", "/fn/other.team-b".to_string()),
        ("GET", format!("/v1/invocations/{other}")),
        ("POST", "/v1/events/orders.new".to_string()),
        ("GET", "/v1/invocations".to_string()),
        ("GET", "/v1/functions/hook".to_string()),
    ] {
        let r = sender
            .request(method.parse().unwrap(), app.url(&path))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
    }
    // No dashboard session: its pages would show the namespace's other functions.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}&next=%2Fui", made["key"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The CLI makes one: `granda keys create --function`.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .args([
            "keys",
            "create",
            "--name",
            "cli-sender",
            "--function",
            "hook",
            "--json",
        ])
        .env("GRANDA_URL", &app.address)
        .env("GRANDA_KEY", &b_admin)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["functions"], json!(["hook"]), "{made}");
    assert_eq!(made["namespace"], "team-b", "{made}");
    app.shutdown().await;
}

/// In Chromium: the global admin picks a namespace in the header's switcher, the functions page
/// then lists that namespace's, the usage page draws its chart, and both fit a phone.
#[tokio::test(flavor = "multi_thread")]
async fn the_namespace_switcher_in_a_browser() {
    let app = spawn_app().await;
    let (_, b) = team_b(&app).await;
    app.register("only-default", "granda-test/echo", json!({}))
        .await;
    register_with(&app, &b, "only-b", json!({})).await;
    let r = b
        .post(app.url("/v1/functions/only-b/invoke"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    as_admin_in_chromium(app, async |client, app| {
        client.goto(&app.url("/ui")).await?;
        let table = text_of(client, "#functions").await?;
        ensure!(
            table.contains("only-default") && !table.contains("only-b"),
            "{table}"
        );
        client
            .find(Locator::Css("#namespace"))
            .await?
            .select_by_value("team-b")
            .await?;
        click(client, "#namespace-switcher button").await?;
        h1_after(client, |h| h.starts_with("Functions")).await?;
        let table = text_of(client, "#functions").await?;
        ensure!(
            table.contains("only-b.team-b") && !table.contains("only-default"),
            "{table}"
        );
        shots(client, "namespace").await?;
        client.goto(&app.url("/ui/usage?period=24h")).await?;
        let calls = text_of(client, "#calls").await?;
        ensure!(calls == "1", "calls: {calls}");
        client.find(Locator::Css("#usage-chart rect.bar")).await?;
        shots(client, "usage").await?;
        Ok(())
    })
    .await;
}
