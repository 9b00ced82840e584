//! The dashboard as an operator's console, in Chromium: invocations across functions with
//! filters and search, retrying a failed one after fixing its function, dead letters retried in
//! bulk; API keys, webhooks, event subscriptions, builds and rollback. Screenshots at desktop and phone width.

use std::time::Duration;

use anyhow::ensure;
use fantoccini::{Client, Locator};
use serde_json::json;

use super::security::Browser;
use super::{as_admin_in_chromium, click, fill, h1_after, shots, shots_at, text_of};
use crate::support::make_key;
use crate::support::{ADMIN_KEY, TestApp, spawn_app_with};

fn fast_retries(s: &mut granda::config::Settings) {
    s.retry_base_ms = 100;
    s.retry_max_ms = 400;
}

/// The rows of the table `css` on the page now.
async fn rows(client: &Client, css: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for row in client.find_all(Locator::Css(css)).await? {
        out.push(row.text().await?);
    }
    Ok(out)
}

/// Whether nothing on the page now matches `css`.
async fn none_match(client: &Client, css: &str) -> anyhow::Result<bool> {
    Ok(client.find_all(Locator::Css(css)).await?.is_empty())
}

/// Picks the option `value` of the select `css`.
async fn select(client: &Client, css: &str, value: &str) -> anyhow::Result<()> {
    client
        .find(Locator::Css(css))
        .await?
        .select_by_value(value)
        .await?;
    Ok(())
}

/// Fills in the fields of a form (`css`, value) and submits it with the button `button`.
async fn submit(client: &Client, fields: &[(&str, &str)], button: &str) -> anyhow::Result<()> {
    for (css, value) in fields {
        fill(client, css, value).await?;
    }
    click(client, button).await
}

/// What the API answers `path` with, as JSON.
async fn api_json(app: &TestApp, path: &str) -> anyhow::Result<serde_json::Value> {
    Ok(app.get(path).await.json().await?)
}

/// Waits until the text of `css` passes `ok` (a live page updating itself), or 60 s.
async fn text_becomes(
    client: &Client,
    css: &str,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = match client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if ok(&text) || std::time::Instant::now() > deadline {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_finds_a_failed_invocation_reads_its_logs_fixes_and_retries_it() {
    let app = spawn_app_with(fast_retries).await;
    app.register("flaky", "granda-test/fail", json!({"max_attempts": 1}))
        .await;
    app.register(
        "doomed",
        "granda-test/fail",
        json!({"max_attempts": 2, "retry_on": ["error"]}),
    )
    .await;
    app.register("hello", "granda-test/echo", json!({})).await;
    app.register(
        "napper",
        "granda-test/sleep",
        json!({"env": {"SLEEP_SECONDS": "6"}}),
    )
    .await;
    let hello = app.invoke_async("hello", "hi").await;
    let failed = app.invoke_async("flaky", "payload-1").await;
    let dead1 = app.invoke_async("doomed", "d1").await;
    let dead2 = app.invoke_async("doomed", "d2").await;
    for id in [hello, failed, dead1, dead2] {
        app.wait_final(id, Duration::from_secs(60)).await;
    }
    assert_eq!(app.invocation(failed).await["status"], "failed");
    assert_eq!(app.invocation(dead2).await["status"], "dead");

    // Plain HTTP: a bad filter is a clear 400; an invoke session may not list invocations.
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let r = admin.get("/ui/invocations?status=bogus").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("status must be one of"));
    let (_, invoke_key) = make_key(&app, "runner", "invoke").await;
    let runner = Browser::logged_in(&app, &invoke_key).await;
    assert_eq!(runner.get("/ui/invocations").await.status(), 403);
    assert_eq!(runner.get("/ui/dead-letters").await.status(), 403);
    let csrf = runner.csrf("/ui").await;
    let r = runner
        .post_form(
            &format!("/ui/invocations/{failed}/retry"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(r.status(), 403);
    // Without the session's CSRF token, no retry.
    let r = admin
        .post_form(&format!("/ui/invocations/{failed}/retry"), &[])
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.invocation(failed).await["status"], "failed");

    as_admin_in_chromium(app, async |client: &Client, app: &TestApp| {
        operate(client, app, failed, hello, [dead1, dead2]).await
    })
    .await;
}

async fn operate(
    client: &Client,
    app: &TestApp,
    failed: uuid::Uuid,
    hello: uuid::Uuid,
    dead: [uuid::Uuid; 2],
) -> anyhow::Result<()> {
    // A function's page follows a running invocation to its end without a reload.
    let slow = app.invoke_async("napper", "").await;
    crate::support::eventually(Duration::from_secs(60), "napper runs", || async {
        (app.invocation(slow).await["status"] == "running").then_some(())
    })
    .await;
    client.goto(&app.url("/ui/functions/napper")).await?;
    let first = text_of(client, "#invocations tbody").await?;
    ensure!(first.contains("running"), "{first}");
    client
        .execute("window.notReloaded = true; return null", vec![])
        .await?;
    let later = text_becomes(client, "#invocations tbody", |t| t.contains("succeeded")).await?;
    ensure!(
        later.contains("succeeded"),
        "the page did not follow: {later}"
    );
    let same_page: serde_json::Value = client
        .execute("return window.notReloaded === true", vec![])
        .await?;
    ensure!(same_page == json!(true), "the page was reloaded");

    // Every function's invocations, newest first.
    client.goto(&app.url("/ui/invocations")).await?;
    let all = rows(client, "#invocations tbody tr").await?;
    ensure!(all.len() == 5, "{all:?}");
    shots(client, "invocations").await?;

    // Filter to the failed ones: only flaky's, with a Retry button.
    select(client, "#status", "failed").await?;
    click(client, "#filter").await?;
    let only = text_becomes(client, "#invocations tbody", |t| !t.contains("doomed")).await?;
    ensure!(
        client.current_url().await?.query() == Some("status=failed&trigger=&function=&range="),
        "filters are query parameters: {:?}",
        client.current_url().await?.query()
    );
    let failed_rows = rows(client, "#invocations tbody tr").await?;
    ensure!(
        failed_rows.len() == 1 && failed_rows[0].contains("flaky"),
        "{only}"
    );
    // Other filters: no sync invocations; older than hello's, only hello's predecessors.
    client
        .goto(&app.url("/ui/invocations?trigger=sync"))
        .await?;
    ensure!(text_of(client, "main p.muted").await? == "No invocations match.");
    client
        .goto(&app.url(&format!("/ui/invocations?before={hello}")))
        .await?;
    ensure!(
        none_match(client, "#invocations").await?,
        "hello's was the first"
    );
    // Search by id.
    client.goto(&app.url("/ui/invocations")).await?;
    submit(client, &[("#search-id", &dead[0].to_string())], "#search").await?;
    let h1 = h1_after(client, |h| h.contains(&dead[0].to_string())).await?;
    ensure!(h1.contains(&dead[0].to_string()), "{h1}");

    // Open the failed one from the filtered list and read its logs.
    client
        .goto(&app.url("/ui/invocations?status=failed"))
        .await?;
    click(client, "#invocations tbody tr a").await?;
    let h1 = h1_after(client, |h| h.contains(&failed.to_string())).await?;
    ensure!(h1.contains(&failed.to_string()), "{h1}");
    let logs = text_of(client, "#logs").await?;
    ensure!(logs == "something broke", "logs: {logs:?}");
    shots(client, "invocation-failed").await?;

    // Fix the function (a working image), then retry: the page follows the new attempt live.
    client.goto(&app.url("/ui/functions/flaky/edit")).await?;
    submit(client, &[("#image", "granda-test/echo")], "#save").await?;
    h1_after(client, |h| h == "Function flaky").await?;
    client
        .goto(&app.url(&format!("/ui/invocations/{failed}")))
        .await?;
    click(client, "form.retry button").await?;
    let status = text_becomes(client, "#status", |s| s == "succeeded").await?;
    ensure!(status == "succeeded", "after the retry: {status}");
    ensure!(text_of(client, "#output").await? == "payload-1");
    ensure!(
        none_match(client, "form.retry").await?,
        "a succeeded invocation has no Retry button"
    );
    let record = app.invocation(failed).await;
    ensure!(
        record["status"] == "succeeded" && record["attempt"] == 2,
        "{record}"
    );

    // Dead letters: both of doomed's, retried at once.
    client.goto(&app.url("/ui/dead-letters")).await?;
    let dead_rows = rows(client, "#dead tbody tr").await?;
    ensure!(dead_rows.len() == 2, "{dead_rows:?}");
    // Each says why: the exit code and the last line of its stderr.
    ensure!(
        dead_rows
            .iter()
            .all(|r| r.contains("exit 3: something broke")),
        "{dead_rows:?}"
    );
    shots(client, "dead-letters").await?;
    for checkbox in client
        .find_all(Locator::Css("#dead input[type=checkbox]"))
        .await?
    {
        checkbox.click().await?;
    }
    click(client, "#retry-selected").await?;
    let h1 = h1_after(client, |h| h.starts_with("Retried")).await?;
    ensure!(h1 == "Retried 2 of 2", "{h1}");
    let outcomes = text_of(client, "#outcomes").await?;
    ensure!(outcomes.matches("queued again").count() == 2, "{outcomes}");
    for id in dead {
        let record = app.wait_final(id, Duration::from_secs(60)).await;
        ensure!(record["attempt"].as_i64() > Some(2), "{record}");
    }
    Ok(())
}

/// A GitHub delivery of `body` signed with `secret` to `url`: the status.
async fn deliver(url: &str, secret: &str, body: &'static str) -> u16 {
    let signature = format!(
        "sha256={}",
        granda::webhook::sign_hex(secret.as_bytes(), &[body.as_bytes()])
    );
    reqwest::Client::new()
        .post(url)
        .header("x-hub-signature-256", signature)
        .header("x-github-event", "push")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// What the API answers `key` for an invocation that does not exist: 404 while the key is live,
/// 401 once it is revoked.
async fn key_status(app: &TestApp, key: &str) -> u16 {
    crate::support::client_with_key(key)
        .get(app.url(&format!("/v1/invocations/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_makes_and_revokes_a_key_and_rotates_a_webhook_secret() {
    let app = spawn_app_with(|s| s.webhook_rotation_grace_secs = 0).await;
    app.register("hooked", "granda-test/echo", json!({})).await;
    as_admin_in_chromium(app, keys_and_webhooks).await;
}

async fn keys_and_webhooks(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    // A key with a bad name is refused next to the form; a good one is shown once.
    client.goto(&app.url("/ui/keys")).await?;
    submit(client, &[("#key-name", &"k".repeat(101))], "#create-key").await?;
    let error = text_of(client, "#key-error").await?;
    ensure!(error.contains("1 to 100 characters"), "{error}");
    fill(client, "#key-name", "ci-runner").await?;
    select(client, "#key-scope", "invoke").await?;
    click(client, "#create-key").await?;
    let key = text_of(client, "#new-key").await?;
    ensure!(key.starts_with("gk_"), "the new key: {key:?}");
    ensure!(key_status(app, &key).await == 404, "the new key works");
    client.goto(&app.url("/ui/keys")).await?;
    ensure!(
        !client.source().await?.contains(&key),
        "the key is shown only once"
    );
    shots(client, "keys").await?;
    // Revoke it from its row.
    client
        .find(Locator::XPath(
            "//table[@id='keys']//tr[td[1][text()='ci-runner']]//form[contains(@class,'revoke')]//button",
        ))
        .await?
        .click()
        .await?;
    let row = text_becomes(client, "#keys", |t| t.contains("revoked")).await?;
    ensure!(row.contains("revoked"), "{row}");
    ensure!(
        key_status(app, &key).await == 401,
        "a revoked key is refused"
    );

    // A webhook for hooked, GitHub's scheme, a generated secret shown once with the URL.
    client.goto(&app.url("/ui/webhooks")).await?;
    select(client, "#hook-scheme", "github").await?;
    click(client, "#create-hook").await?;
    let url = text_of(client, "#hook-url").await?;
    let first = text_of(client, "#new-secret").await?;
    ensure!(url.starts_with(&app.url("/hooks/")), "{url}");
    ensure!(deliver(&url, &first, "one").await == 202);
    client.goto(&app.url("/ui/webhooks")).await?;
    ensure!(text_of(client, "#webhooks").await?.contains(&url));
    shots(client, "webhooks").await?;

    // Rotate: the new secret verifies, the old one (no grace here) no longer does.
    click(client, "#webhooks form.rotate button").await?;
    let second = text_of(client, "#new-secret").await?;
    ensure!(second != first && !second.is_empty());
    ensure!(deliver(&url, &second, "two").await == 202);
    ensure!(deliver(&url, &first, "three").await == 401);
    // The refused delivery is on the webhook's page, with why.
    client.goto(&app.url("/ui/webhooks")).await?;
    click(client, "#webhooks a.rejections").await?;
    let refused = text_of(client, "#rejections").await?;
    ensure!(
        refused.contains("bad_signature") && refused.contains("no signature matches"),
        "{refused}"
    );
    shots(client, "webhook-rejections").await?;
    // Its deliveries, from the list.
    client.goto(&app.url("/ui/webhooks")).await?;
    click(client, "#webhooks td.actions a").await?;
    let delivered = text_becomes(client, "#invocations tbody", |t| {
        t.matches("hooked").count() == 2
    })
    .await?;
    ensure!(delivered.matches("hooked").count() == 2, "{delivered}");

    // Delete it: later deliveries are 404.
    client.goto(&app.url("/ui/webhooks")).await?;
    click(client, "#webhooks form.delete button").await?;
    text_becomes(client, "main", |t| t.contains("No webhooks yet.")).await?;
    ensure!(deliver(&url, &second, "four").await == 404);

    // A schedule, made with the form (a bad pattern is refused next to it and nothing is made),
    // then paused, resumed and deleted from its row.
    client.goto(&app.url("/ui/schedules")).await?;
    submit(
        client,
        &[("#schedule-cron", "61 * * * *")],
        "#create-schedule",
    )
    .await?;
    let error = text_of(client, "#schedule-error").await?;
    ensure!(error.contains("cron"), "{error}");
    let listed = api_json(app, "/v1/schedules").await?;
    ensure!(listed["schedules"] == json!([]), "{listed}");
    let fields = [
        ("#schedule-cron", "0 3 * * *"),
        ("#schedule-timezone", "Europe/Berlin"),
        ("#schedule-payload", "nightly"),
    ];
    submit(client, &fields, "#create-schedule").await?;
    text_becomes(client, "#schedules", |t| t.contains("0 3 * * *")).await?;
    let listed = api_json(app, "/v1/schedules").await?;
    let made = &listed["schedules"][0];
    ensure!(
        made["function"] == "hooked"
            && made["timezone"] == "Europe/Berlin"
            && made["payload"] == "nightly"
            && made["enabled"] == true
            && made["catch_up"] == "none",
        "{made}"
    );
    let id = made["id"].as_str().unwrap_or_default().to_string();
    // Its row's `button` (pause or resume): the row shows `state` and the API `enabled`.
    let switch = async |button: &str, state: &str, enabled: bool| {
        click(client, &format!("#schedules form.{button} button")).await?;
        let shown = text_becomes(client, "#schedules td.state", |t| t == state).await?;
        let stored = api_json(app, &format!("/v1/schedules/{id}")).await?;
        ensure!(shown == state && stored["enabled"] == enabled, "{shown}");
        anyhow::Ok(())
    };
    client.goto(&app.url("/ui/schedules")).await?;
    switch("pause", "paused", false).await?;
    shots(client, "schedules").await?;
    switch("resume", "enabled", true).await?;
    click(client, "#schedules form.delete button").await?;
    text_becomes(client, "main", |t| t.contains("No schedules yet.")).await?;
    ensure!(app.get(&format!("/v1/schedules/{id}")).await.status() == 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_reads_build_logs_sees_settings_whole_and_rolls_back_a_version() {
    let app = crate::cli::spawn().await;
    let r = app
        .post_json(
            "/v1/functions",
            &json!({"name": "shout", "runtime": "shell", "source": "cat\n",
                    "description": "to be emptied", "public": true,
                    "secrets": {"API_TOKEN": "s3cr3t-value-never-shown"},
                    "min_warm": 0, "idle_timeout_ms": 30000, "retry_on": ["timeout"]}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for (source, status) in [("tr a-z A-Z\n", 200), ("if then fi (\n", 422)] {
        let r = app
            .client
            .put(app.url("/v1/functions/shout"))
            .json(&json!({ "source": source }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    assert_eq!(
        app.invoke("shout", "abc").await.text().await.unwrap(),
        "ABC"
    );
    as_admin_in_chromium(app, versions).await;
}

async fn versions(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    client.goto(&app.url("/ui/functions/shout")).await?;
    // Settings whole: mode, pool, network, public, retry policy, secret names but no values.
    let settings = text_of(client, "#settings").await?;
    for expected in [
        "cold",
        "idle timeout 30000 ms",
        "none",
        "needs no key",
        "timeout",
        "API_TOKEN",
        "runtime shell, version 2",
    ] {
        ensure!(settings.contains(expected), "{expected:?} in {settings}");
    }
    ensure!(
        !client.source().await?.contains("s3cr3t-value-never-shown"),
        "a secret's value is on the page"
    );
    // Three versions: v3 failed, v2 runs, v1 can be rolled back to.
    let versions = rows(client, "#versions tbody tr").await?;
    ensure!(versions.len() == 3, "{versions:?}");
    ensure!(
        versions[0].contains("failed") && versions[1].contains("running"),
        "{versions:?}"
    );
    let buttons = client.find_all(Locator::Css("form.rollback")).await?;
    ensure!(buttons.len() == 1, "only v1 can be rolled back to");
    shots_at(client, "function-versions", Some("#versions")).await?;

    // The failed build's log says why.
    click(client, "#versions tbody tr:first-child a").await?;
    let h1 = h1_after(client, |h| h == "shout v3").await?;
    ensure!(h1 == "shout v3", "{h1}");
    let log = text_of(client, "#build-log").await?;
    ensure!(!log.is_empty(), "the failed build has a log");
    ensure!(
        none_match(client, "form.rollback").await?,
        "a failed build can't be rolled back to"
    );
    shots(client, "build").await?;

    // Roll back to v1: the function echoes again.
    client.goto(&app.url("/ui/functions/shout")).await?;
    click(client, "form.rollback button").await?;
    let versions = text_becomes(client, "#versions tbody tr:last-child", |t| {
        t.contains("running")
    })
    .await?;
    ensure!(versions.contains("running"), "v1 runs: {versions}");
    ensure!(app.invoke("shout", "abc").await.text().await? == "abc");
    let f: serde_json::Value = app.get("/v1/functions/shout").await.json().await?;
    ensure!(f["version"] == 1, "{f}");

    // A new function from source: the build log appears as it is written, then a link to it.
    client.goto(&app.url("/ui")).await?;
    click(client, "#from-source").await?;
    h1_after(client, |h| h == "New function from source").await?;
    fill(client, "#name", "fresh").await?;
    select(client, "#runtime", "shell").await?;
    submit(client, &[("#source", "tr a-z A-Z")], "#build").await?;
    let status = text_becomes(client, "#build-status", |t| {
        t.starts_with("Built") || t.contains("fail")
    })
    .await?;
    ensure!(status.starts_with("Built and created"), "{status}");
    let log = text_of(client, "#build-log").await?;
    ensure!(!log.is_empty(), "no build log shown");
    super::shot(client, "new-from-source").await?;
    click(client, "#open-function").await?;
    h1_after(client, |h| h == "Function fresh").await?;
    ensure!(app.invoke("fresh", "abc").await.text().await? == "ABC");
    // A refused one says why, and builds nothing.
    client.goto(&app.url("/ui/functions/new/source")).await?;
    submit(
        client,
        &[("#name", "Bad Name"), ("#source", "cat")],
        "#build",
    )
    .await?;
    let status = text_becomes(client, "#build-status.error", |t| !t.is_empty()).await?;
    ensure!(status.contains("name"), "{status}");

    // An emptied description is stored as none, not as "".
    client.goto(&app.url("/ui/functions/shout/edit")).await?;
    submit(client, &[("#description", "")], "#save").await?;
    h1_after(client, |h| h == "Function shout").await?;
    let f: serde_json::Value = app.get("/v1/functions/shout").await.json().await?;
    ensure!(f["description"].is_null(), "{f}");
    ensure!(f["version"] == 1, "the edit kept the version: {f}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_subscribes_a_function_to_a_topic_sees_it_run_and_unsubscribes_it() {
    let app = crate::support::spawn_app().await;
    app.register("listener", "granda-test/echo", json!({}))
        .await;
    as_admin_in_chromium(app, subscriptions).await;
}

async fn subscriptions(client: &Client, app: &TestApp) -> anyhow::Result<()> {
    // From the nav.
    click(client, "header nav a[href='/ui/events']").await?;
    let h1 = h1_after(client, |h| h == "Events").await?;
    ensure!(h1 == "Events", "{h1}");
    ensure!(
        text_of(client, "main")
            .await?
            .contains("No subscriptions yet.")
    );

    // A bad pattern is refused next to the form, with the API's words; a good one is stored.
    submit(client, &[("#sub-pattern", "orders..new")], "#subscribe").await?;
    let error = text_of(client, "#sub-error").await?;
    ensure!(error.contains("dot-separated words"), "{error}");
    let subscribed = "/v1/functions/listener/subscriptions";
    let listed = api_json(app, subscribed).await?;
    ensure!(listed["subscriptions"] == json!([]), "{listed}");
    select(client, "#sub-function", "listener").await?;
    submit(client, &[("#sub-pattern", "orders.*")], "#subscribe").await?;
    let table = text_becomes(client, "#subscriptions", |t| t.contains("orders.*")).await?;
    ensure!(
        table.contains("orders.*") && table.contains("listener"),
        "{table}"
    );
    let listed = api_json(app, subscribed).await?;
    ensure!(
        listed["subscriptions"][0]["pattern"] == "orders.*",
        "{listed}"
    );

    // An event on a matching topic runs the function; the page lists the event and its run.
    let r = app
        .post_json("/v1/events/orders.created", &json!({"order": 42}))
        .await;
    ensure!(r.status() == 202, "publish: {}", r.status());
    let published = r.json::<serde_json::Value>().await?;
    let id = published["invocations"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        published["invocations"][0]["function"] == "listener",
        "{published}"
    );
    client.goto(&app.url("/ui/events")).await?;
    let events = text_of(client, "#events").await?;
    ensure!(
        events.contains("orders.created") && events.contains("listener"),
        "{events}"
    );
    shots(client, "events").await?;
    click(client, "#events td a").await?;
    let record = text_becomes(client, "main", |t| t.contains("succeeded")).await?;
    ensure!(
        record.contains(&id) && record.contains("succeeded") && record.contains("\"order\""),
        "{record}"
    );
    // And among the function's event invocations, from the subscription's row.
    client.goto(&app.url("/ui/events")).await?;
    click(client, "#subscriptions td.actions a").await?;
    let runs = text_becomes(client, "#invocations tbody", |t| t.contains("listener")).await?;
    ensure!(
        runs.contains("listener") && runs.contains("event"),
        "{runs}"
    );

    // Delete it: the next event runs nothing.
    client.goto(&app.url("/ui/events")).await?;
    click(client, "#subscriptions form.delete button").await?;
    text_becomes(client, "main", |t| t.contains("No subscriptions yet.")).await?;
    let listed = api_json(app, subscribed).await?;
    ensure!(listed["subscriptions"] == json!([]), "{listed}");
    let r = app
        .post_json("/v1/events/orders.cancelled", &json!({"order": 42}))
        .await;
    ensure!(r.status() == 202);
    let published = r.json::<serde_json::Value>().await?;
    ensure!(published["invocations"] == json!([]), "{published}");
    Ok(())
}
