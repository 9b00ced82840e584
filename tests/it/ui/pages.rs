//! The console's pages over plain HTTP (issue 31): hot runs labelled hot, dead letters discarded
//! after a confirm, the function forms' run settings, a function's triggers on its page, the
//! invocations list's time range, the schedules table.

use std::time::Duration;

use serde_json::{Value, json};

use super::security::{Browser, csrf_in};
use crate::support::{ADMIN_KEY, spawn_app, spawn_app_with};

/// The page at `path`, asserting 200.
async fn page(b: &Browser, path: &str) -> String {
    let r = b.get(path).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_run_reads_hot_and_a_cold_one_cold() {
    let app = spawn_app().await;
    app.register("hot", "granda-test/hot", json!({"mode": "hot"}))
        .await;
    app.register("plain", "granda-test/echo", json!({})).await;
    // The first hot run starts the container; the second finds it kept.
    for _ in 0..2 {
        let r = app.invoke("hot", "hi").await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    let r = app.invoke("plain", "hi").await;
    assert_eq!(r.status(), 200);
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;

    let hot = page(&admin, "/ui/invocations?function=hot").await;
    assert!(
        hot.contains(r#"<td class="hide-narrow run">hot</td>"#),
        "a kept hot container's run reads hot: {hot}"
    );
    assert!(!hot.contains(">warm<"), "{hot}");
    let records = app.invocations_of("hot").await;
    let warm_one = records
        .iter()
        .find(|r| r["cold"] == json!(false))
        .expect("a run in a kept container");
    assert_eq!(warm_one["mode"], "hot", "the API says the mode: {warm_one}");
    let id = warm_one["id"].as_str().unwrap();
    let one = page(&admin, &format!("/ui/invocations/{id}")).await;
    assert!(one.contains(r#"<td id="run">hot</td>"#), "{one}");

    let plain = page(&admin, "/ui/invocations?function=plain").await;
    assert!(
        plain.contains(r#"<td class="hide-narrow run">cold</td>"#),
        "{plain}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_discarded_for_good_after_a_confirm() {
    let app = spawn_app_with(|s| {
        s.retry_base_ms = 100;
        s.retry_max_ms = 200;
    })
    .await;
    app.register(
        "doomed",
        "granda-test/fail",
        json!({"max_attempts": 2, "retry_on": ["error"]}),
    )
    .await;
    app.register("fine", "granda-test/echo", json!({})).await;
    let dead = app.invoke_async("doomed", "d1").await;
    let kept = app.invoke_async("doomed", "d2").await;
    let alive = app.invoke_async("fine", "ok").await;
    for id in [dead, kept, alive] {
        app.wait_final(id, Duration::from_secs(60)).await;
    }
    assert_eq!(app.invocation(dead).await["status"], "dead");
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;

    // Each dead letter says its exit code and stderr's last line, and offers Discard.
    let list = page(&admin, "/ui/dead-letters").await;
    assert!(list.contains("exit 3: something broke"), "{list}");
    let discard = format!("/ui/dead-letters/{dead}/discard");
    assert!(list.contains(&format!(r#"href="{discard}""#)), "{list}");

    // The link asks first, saying why it died; nothing is discarded by asking.
    let confirm = page(&admin, &discard).await;
    assert!(confirm.contains("exit 3: something broke"), "{confirm}");
    assert!(confirm.contains("confirm-discard"), "{confirm}");
    assert!(app.invocation(dead).await["discarded_at"].is_null());

    // Without the CSRF token: refused, nothing changes.
    let r = admin.post_form(&discard, &[]).await;
    assert_eq!(r.status(), 403);
    assert!(app.invocation(dead).await["discarded_at"].is_null());

    let r = admin
        .post_form(&discard, &[("csrf", &csrf_in(&confirm))])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/dead-letters");
    let record = app.invocation(dead).await;
    assert_eq!(record["status"], "dead", "{record}");
    assert!(record["discarded_at"].is_string(), "{record}");

    // It left the dead letters (the page and the API), the other one stayed.
    let list = page(&admin, "/ui/dead-letters").await;
    assert!(!list.contains(&dead.to_string()), "{list}");
    assert!(list.contains(&kept.to_string()), "{list}");
    let api: Value = app.get_json("/v1/dead-letters").await;
    let ids: Vec<&str> = api["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![kept.to_string()], "{api}");

    // For good: no retry, no second discard.
    let r = app
        .post_json(&format!("/v1/invocations/{dead}/retry"), &json!({}))
        .await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("discarded"));
    let r = app.delete(&format!("/v1/dead-letters/{dead}")).await;
    assert_eq!(r.status(), 409);
    assert_eq!(app.invocation(dead).await["status"], "dead");

    // The API discards too; only dead ones, with clear errors.
    let r = app.delete(&format!("/v1/dead-letters/{alive}")).await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("only a dead invocation"));
    assert!(app.invocation(alive).await["discarded_at"].is_null());
    assert_eq!(app.delete("/v1/dead-letters/nope").await.status(), 400);
    let r = app
        .delete("/v1/dead-letters/0190a5f0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(r.status(), 404);
    let r = app.delete(&format!("/v1/dead-letters/{kept}")).await;
    assert_eq!(r.status(), 204);
    let page_after = page(&admin, "/ui/dead-letters").await;
    assert!(page_after.contains("No dead invocations."), "{page_after}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_forms_set_and_clear_the_run_settings() {
    let app = spawn_app().await;
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let new = page(&admin, "/ui/functions/new").await;
    for id in [
        "mode",
        "network",
        "response",
        "public",
        "user",
        "secrets",
        "cors",
        "cors_methods",
    ] {
        assert!(new.contains(&format!(r#"id="{id}""#)), "{id}: {new}");
        assert!(new.contains(&format!(r#"for="{id}""#)), "label of {id}");
    }
    let csrf = csrf_in(&new);
    let form = |extra: &[(&'static str, &'static str)]| {
        let mut f = vec![
            ("name", "shaped"),
            ("image", "granda-test/echo"),
            ("input", "stdin"),
            ("mode", "warm"),
            ("network", "bridge"),
            ("response", "cgi"),
            ("public", "on"),
            ("user", "1000:1000"),
            ("secrets", "TOKEN=s3cr3t-value\nOTHER=x"),
            (
                "cors_origins",
                "https://app.example.org, https://b.example.org",
            ),
            ("cors_methods", "GET POST"),
            ("cors_headers", "X-Trace"),
            ("cors_max_age", "60"),
            ("max_concurrency", "4"),
        ];
        f.extend_from_slice(extra);
        f
    };

    // A bad CORS origin: refused with the API's words next to its field, nothing stored.
    let mut bad = form(&[]);
    bad.retain(|(k, _)| *k != "cors_origins");
    bad.push(("cors_origins", "app.example.org"));
    bad.push(("csrf", &csrf));
    let r = admin.post_form("/ui/functions/new", &bad).await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"<div class="field invalid" id="field-cors">"#),
        "{text}"
    );
    assert!(text.contains("is not `*` or an origin"), "{text}");
    assert!(
        text.contains(r#"value="bridge" selected"#),
        "kept filled in"
    );
    assert_eq!(app.get("/v1/functions/shaped").await.status(), 404);

    let mut good = form(&[]);
    good.push(("csrf", &csrf));
    let r = admin.post_form("/ui/functions/new", &good).await;
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let f: Value = app.get_json("/v1/functions/shaped").await;
    assert_eq!(f["mode"], "warm", "{f}");
    assert_eq!(f["network"], "bridge", "{f}");
    assert_eq!(f["response"], "cgi", "{f}");
    assert_eq!(f["public"], true, "{f}");
    assert_eq!(f["user"], "1000:1000", "{f}");
    assert_eq!(f["max_concurrency"], 4, "{f}");
    assert_eq!(f["secrets"], json!(["OTHER", "TOKEN"]), "{f}");
    assert_eq!(
        f["cors"]["allow_origins"],
        json!(["https://app.example.org", "https://b.example.org"])
    );
    assert_eq!(f["cors"]["allow_methods"], json!(["GET", "POST"]));
    assert_eq!(f["cors"]["max_age_s"], 60);

    // The edit form shows the settings and the secrets' names, never their values.
    let edit = page(&admin, "/ui/functions/shaped/edit").await;
    assert!(edit.contains(r#"value="warm" selected"#), "{edit}");
    assert!(edit.contains(r#"value="cgi" selected"#), "{edit}");
    assert!(edit.contains("Stored: OTHER, TOKEN."), "{edit}");
    assert!(
        !edit.contains("s3cr3t-value"),
        "a secret's value on the page"
    );
    assert!(edit.contains("https://app.example.org, https://b.example.org"));

    // Editing clears max_concurrency, CORS and the user, drops one secret and keeps the other.
    let csrf = csrf_in(&edit);
    let r = admin
        .post_form(
            "/ui/functions/shaped/edit",
            &[
                ("image", "granda-test/echo"),
                ("input", "stdin"),
                ("mode", "cold"),
                ("network", "none"),
                ("response", "body"),
                ("user", ""),
                ("secrets", "-OTHER"),
                ("cors_origins", ""),
                ("max_concurrency", ""),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let f: Value = app.get_json("/v1/functions/shaped").await;
    assert_eq!(f["mode"], "cold", "{f}");
    assert_eq!(f["network"], "none", "{f}");
    assert_eq!(f["public"], false, "unticked: {f}");
    assert!(f["user"].is_null(), "{f}");
    assert!(f["max_concurrency"].is_null(), "cleared: {f}");
    assert!(f["cors"].is_null(), "{f}");
    assert_eq!(f["secrets"], json!(["TOKEN"]), "{f}");
    // A secrets line that is neither NAME=value nor -NAME: refused next to the field.
    let r = admin
        .post_form(
            "/ui/functions/shaped/edit",
            &[
                ("image", "granda-test/echo"),
                ("secrets", "just words"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(r#"<div class="field invalid" id="field-secrets">"#),
        "{text}"
    );
    assert_eq!(
        app.get_json("/v1/functions/shaped").await["secrets"],
        json!(["TOKEN"])
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_page_lists_its_webhooks_schedules_and_subscriptions() {
    let app = spawn_app().await;
    app.register("hooked", "granda-test/echo", json!({})).await;
    app.register("other", "granda-test/echo", json!({})).await;
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let bare = page(&admin, "/ui/functions/hooked").await;
    for none in ["no-webhooks", "no-schedules", "no-subscriptions"] {
        assert!(bare.contains(&format!(r#"id="{none}""#)), "{none}: {bare}");
    }

    let hook: Value = app
        .post_json(
            "/v1/webhooks",
            &json!({"function": "hooked", "scheme": "none"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let schedule: Value = app
        .post_json(
            "/v1/schedules",
            &json!({"function": "hooked", "cron": "*/5 * * * *", "enabled": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    let sub: Value = app
        .post_json(
            "/v1/functions/hooked/subscriptions",
            &json!({"pattern": "orders.*"}),
        )
        .await
        .json()
        .await
        .unwrap();
    // Another function's triggers stay on its own page.
    let foreign: Value = app
        .post_json(
            "/v1/webhooks",
            &json!({"function": "other", "scheme": "none"}),
        )
        .await
        .json()
        .await
        .unwrap();

    let text = page(&admin, "/ui/functions/hooked").await;
    let hook_id = hook["id"].as_str().expect("a webhook");
    let schedule_id = schedule["id"].as_str().expect("a schedule");
    let sub_id = sub["id"].as_str().expect("a subscription");
    assert!(
        text.contains(&format!(r#"href="/ui/webhooks/{hook_id}""#)),
        "{text}"
    );
    assert!(
        text.contains(&format!(r#"href="/ui/schedules#schedule-{schedule_id}""#)),
        "{text}"
    );
    assert!(text.contains("paused"), "{text}");
    assert!(
        text.contains(&format!(r#"href="/ui/events#subscription-{sub_id}""#)),
        "{text}"
    );
    assert!(text.contains("orders.*"), "{text}");
    assert!(!text.contains(foreign["id"].as_str().unwrap()), "{text}");
    // An invoke key's session sees the function's invoke box, not its triggers (admin matters,
    // as in the API).
    let (_, invoke_key) = crate::support::make_key(&app, "runner", "invoke").await;
    let runner = Browser::logged_in(&app, &invoke_key).await;
    let seen = page(&runner, "/ui/functions/hooked").await;
    assert!(seen.contains("Function hooked"), "{seen}");
    assert!(
        !seen.contains(hook_id),
        "a read session sees a webhook: {seen}"
    );
    assert!(!seen.contains(r#"id="triggers""#), "{seen}");
    // The links land on rows that carry those anchors.
    let schedules = page(&admin, "/ui/schedules").await;
    assert!(schedules.contains(&format!(r#"id="schedule-{schedule_id}""#)));
    let events = page(&admin, "/ui/events").await;
    assert!(events.contains(&format!(r#"id="subscription-{sub_id}""#)));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invocations_list_and_the_function_chart_take_a_time_range() {
    let app = spawn_app().await;
    app.register("ranged", "granda-test/echo", json!({})).await;
    let old = app.invoke_async("ranged", "old").await;
    let new = app.invoke_async("ranged", "new").await;
    for id in [old, new] {
        app.wait_final(id, Duration::from_secs(60)).await;
    }
    // One of them was queued two days ago.
    sqlx::query("UPDATE invocations SET queued_at = now() - interval '2 days' WHERE id = $1")
        .bind(old)
        .execute(&app.pool)
        .await
        .unwrap();
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let all = page(&admin, "/ui/invocations?function=ranged").await;
    assert!(all.contains(&old.to_string()) && all.contains(&new.to_string()));
    assert!(all.contains(r#"<select id="range" name="range">"#), "{all}");
    let day = page(&admin, "/ui/invocations?function=ranged&range=24h").await;
    assert!(day.contains(&new.to_string()), "{day}");
    assert!(!day.contains(&old.to_string()), "{day}");
    assert!(day.contains(r#"<option value="24h" selected>"#), "{day}");
    let week = page(&admin, "/ui/invocations?function=ranged&range=7d").await;
    assert!(week.contains(&old.to_string()) && week.contains(&new.to_string()));
    // The function's chart spans the same ranges: the old run is a bar of the week's chart
    // (in the 6 h interval 2 days ago), not of the last hour's.
    let week = page(&admin, "/ui/functions/ranged?range=7d").await;
    assert!(week.contains("<h2 id=\"chart\">Last 7 days</h2>"), "{week}");
    assert!(
        week.contains("1 invocations, 0 failed, 2880 to 3240 min ago"),
        "{week}"
    );
    let hour = page(&admin, "/ui/functions/ranged").await;
    assert!(hour.contains("<h2 id=\"chart\">Last hour</h2>"), "{hour}");
    assert!(hour.contains(r#"href="/ui/functions/ranged?range=7d#chart""#));
    assert!(!hour.contains("2880 to"), "{hour}");
    assert_eq!(
        admin.get("/ui/functions/ranged?range=1y").await.status(),
        400
    );
    let r = admin.get("/ui/invocations?range=1y").await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("range must be one of 1h, 24h, 7d")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_table_names_each_schedule_and_labels_its_checkbox() {
    let app = spawn_app().await;
    app.register("ticking", "granda-test/echo", json!({})).await;
    let made: Value = app
        .post_json(
            "/v1/schedules",
            &json!({"function": "ticking", "cron": "@daily", "enabled": false}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = made["id"].as_str().expect("a schedule").to_string();
    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let text = page(&admin, "/ui/schedules").await;
    assert!(text.contains("<th>Schedule</th>"), "{text}");
    let short = &id.replace('-', "")[20..];
    assert!(
        text.contains(&format!(
            r#"<td class="name"><code title="{id}">…{short}</code></td>"#
        )),
        "{text}"
    );
    assert!(text.contains("<caption"), "{text}");
    // The checkbox's label names it by id, outside it.
    assert!(
        text.contains(r#"<input class="check" id="schedule-paused" type="checkbox""#),
        "{text}"
    );
    assert!(text.contains(r#"<label for="schedule-paused">"#), "{text}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_registered_with_defer_check_is_pending_until_a_worker_runs_it() {
    let mut app = spawn_app().await;
    // An ingress with no engine of its own: nothing answers for the queue `later-q`.
    let ingress =
        granda::producer::Application::build_with_pool(app.settings.clone(), app.pool.clone())
            .await
            .unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(ingress.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let body = json!({"name": "later", "image": "granda-test/echo", "queue": "later-q"});
    let r = app
        .client
        .post(format!("{base}/v1/functions?defer_check=true"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    app.register("checked", "granda-test/echo", json!({})).await;

    let admin = Browser::logged_in(&app, ADMIN_KEY).await;
    let list = page(&admin, "/ui").await;
    assert_eq!(list.matches(">pending</span>").count(), 1, "{list}");
    let later = page(&admin, "/ui/functions/later").await;
    assert!(later.contains(r#"id="pending""#), "{later}");
    let checked = page(&admin, "/ui/functions/checked").await;
    assert!(!checked.contains(r#"id="pending""#), "{checked}");

    // A worker of the queue comes and runs it: no longer pending.
    app.add_worker(|s| s.queues = vec!["later-q".into()]).await;
    let id = app.invoke_async("later", "hi").await;
    let done = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let list = page(&admin, "/ui").await;
    assert!(!list.contains(">pending</span>"), "{list}");
    let later = page(&admin, "/ui/functions/later").await;
    assert!(!later.contains(r#"id="pending""#), "{later}");
    let _ = stop.send(true);
    app.shutdown().await;
}
