//! Namespaces (issue 27): two teams with their own keys see and touch nothing of each other's
//! (404 on every route, never 403), names are unique per namespace, function URLs are
//! `/fn/{name}.{namespace}`, `/v1/namespaces` is for global admins, and an installation from
//! before namespaces migrates into `default` with its keys and URLs unchanged.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{ADMIN_KEY, TestApp, client_with_key, spawn_app, spawn_app_with};

/// Makes namespace `name` with the global admin key; panics unless 201.
async fn make_namespace(app: &TestApp, name: &str) {
    let r = app
        .post_json("/v1/namespaces", &json!({"name": name}))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// A key bound to `namespace`, made by the global admin: (id, key).
async fn namespaced_key(app: &TestApp, namespace: &str, scope: &str) -> (String, String) {
    let r = app
        .post_json(
            "/v1/keys",
            &json!({"name": format!("{namespace}-{scope}"), "scope": scope, "namespace": namespace}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["namespace"], namespace);
    (
        body["id"].as_str().unwrap().to_string(),
        body["key"].as_str().unwrap().to_string(),
    )
}

async fn status(r: reqwest::RequestBuilder) -> StatusCode {
    r.send().await.unwrap().status()
}

async fn json_of(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_key_reaches_nothing_of_another_namespace() {
    let app = spawn_app().await;
    make_namespace(&app, "team-a").await;
    make_namespace(&app, "team-b").await;
    let (a_key_id, a_key) = namespaced_key(&app, "team-a", "admin").await;
    let (_, b_key) = namespaced_key(&app, "team-b", "admin").await;
    let a = client_with_key(&a_key);
    let b = client_with_key(&b_key);
    let url = |p: &str| app.url(p);

    // The same name in three namespaces: unique per namespace.
    app.register("echo", "granda-test/echo", json!({})).await;
    for (client, ns) in [(&a, "team-a"), (&b, "team-b")] {
        let (s, body) = json_of(
            client
                .post(url("/v1/functions"))
                .json(&json!({"name": "echo", "image": "granda-test/echo"})),
        )
        .await;
        assert_eq!(s, 201, "{body}");
        assert_eq!(body["name"], "echo");
        assert_eq!(body["namespace"], ns);
        assert!(
            body["invoke_url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/fn/echo.{ns}")),
            "{body}"
        );
    }
    // Taken in its own namespace.
    let r = a
        .post(url("/v1/functions"))
        .json(&json!({"name": "echo", "image": "granda-test/echo"}));
    assert_eq!(status(r).await, 409);

    // Function URLs: each key calls its own; another namespace's is missing.
    let r = a
        .post(url("/fn/echo.team-a"))
        .body("from a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "from a");
    for path in [
        "/fn/echo.team-a",
        "/fn/echo.team-a/x",
        "/fn/echo",
        "/fn/echo.default",
    ] {
        assert_eq!(status(b.post(url(path)).body("x")).await, 404, "{path}");
    }
    // The global admin reaches every namespace's URL; the default one is unchanged.
    assert_eq!(
        status(app.client.post(url("/fn/echo.team-b")).body("x")).await,
        200
    );
    assert_eq!(
        status(app.client.post(url("/fn/echo")).body("x")).await,
        200
    );

    // The API acts in the key's namespace.
    let (_, list) = json_of(b.get(url("/v1/functions"))).await;
    let list = list["functions"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["namespace"], "team-b");
    // A name with a dot never reaches into another namespace.
    for path in [
        "/v1/functions/echo.team-a",
        "/v1/functions/echo.team-a/invocations",
    ] {
        assert_eq!(status(b.get(url(path))).await, 404, "{path}");
    }
    assert_eq!(
        status(b.delete(url("/v1/functions/echo.team-a"))).await,
        404
    );
    assert_eq!(
        status(
            b.put(url("/v1/functions/echo.team-a"))
                .json(&json!({"timeout_ms": 1000}))
        )
        .await,
        404
    );
    assert_eq!(
        status(
            b.post(url("/v1/functions/echo.team-a/invocations"))
                .body("x")
        )
        .await,
        404
    );
    assert_eq!(
        status(b.post(url("/v1/functions/echo.team-a/invoke")).body("x")).await,
        404
    );
    assert_eq!(
        status(b.get(url("/v1/functions/echo.team-a/callback-key"))).await,
        404
    );
    // Naming another namespace is 404, not 403: nothing says it exists.
    assert_eq!(
        status(
            b.get(url("/v1/functions"))
                .header("granda-namespace", "team-a")
        )
        .await,
        404
    );
    assert_eq!(
        status(
            b.get(url("/v1/functions"))
                .header("granda-namespace", "no-such")
        )
        .await,
        404
    );

    // Records: A's invocation is missing to B, A reads it with its namespace and short name.
    let (s, accepted) = json_of(a.post(url("/v1/functions/echo/invocations")).body("rec")).await;
    assert_eq!(s, 202, "{accepted}");
    let id: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();
    let record = crate::support::eventually(Duration::from_secs(60), "A's run", || async {
        let (_, r) = json_of(a.get(url(&format!("/v1/invocations/{id}")))).await;
        (r["status"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(record["function"], "echo");
    assert_eq!(record["namespace"], "team-a");
    assert_eq!(
        status(b.get(url(&format!("/v1/invocations/{id}")))).await,
        404
    );
    assert_eq!(
        status(b.post(url(&format!("/v1/invocations/{id}/retry")))).await,
        404
    );
    // The global admin sees it when naming team-a, not in `default`.
    assert_eq!(
        status(app.client.get(url(&format!("/v1/invocations/{id}")))).await,
        404
    );
    assert_eq!(
        status(
            app.client
                .get(url(&format!("/v1/invocations/{id}")))
                .header("granda-namespace", "team-a")
        )
        .await,
        200
    );
    let (_, all) = json_of(b.get(url("/v1/invocations?limit=500"))).await;
    let ids: Vec<&str> = all["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&id.to_string().as_str()), "{all}");
    let (_, of_a) = json_of(b.get(url("/v1/invocations?function=echo.team-a"))).await;
    assert_eq!(of_a["invocations"], json!([]));

    // Dead letters: A's dead invocation is A's only.
    sqlx::query("UPDATE invocations SET status = 'dead', dead_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, dead_b) = json_of(b.get(url("/v1/dead-letters"))).await;
    assert_eq!(dead_b["dead_letters"], json!([]), "{dead_b}");
    assert_eq!(dead_b["queue_depth"], Value::Null);
    let (_, dead_a) = json_of(a.get(url("/v1/dead-letters"))).await;
    assert_eq!(dead_a["dead_letters"][0]["id"], id.to_string());
    let (_, dead_default) = json_of(app.client.get(url("/v1/dead-letters"))).await;
    assert_eq!(dead_default["dead_letters"], json!([]));

    // Webhooks.
    let (s, hook) = json_of(
        a.post(url("/v1/webhooks"))
            .json(&json!({"function": "echo", "scheme": "none"})),
    )
    .await;
    assert_eq!(s, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap();
    let (s, _) = json_of(
        b.post(url("/v1/webhooks"))
            .json(&json!({"function": "echo.team-a", "scheme": "none"})),
    )
    .await;
    assert_eq!(s, 422);
    for (method, path) in [
        ("GET", format!("/v1/webhooks/{hook_id}")),
        ("DELETE", format!("/v1/webhooks/{hook_id}")),
        ("POST", format!("/v1/webhooks/{hook_id}/rotate")),
        ("GET", format!("/v1/webhooks/{hook_id}/rejections")),
    ] {
        let r = b.request(method.parse().unwrap(), url(&path));
        assert_eq!(status(r).await, 404, "{method} {path}");
    }
    let (_, hooks) = json_of(b.get(url("/v1/webhooks"))).await;
    assert_eq!(hooks["webhooks"], json!([]));
    let (_, hooks) = json_of(a.get(url("/v1/webhooks?function=echo"))).await;
    assert_eq!(hooks["webhooks"].as_array().unwrap().len(), 1);

    // Schedules.
    let (s, schedule) = json_of(
        a.post(url("/v1/schedules"))
            .json(&json!({"function": "echo", "cron": "0 0 1 1 *"})),
    )
    .await;
    assert_eq!(s, 201, "{schedule}");
    let schedule_id = schedule["id"].as_str().unwrap();
    let path = format!("/v1/schedules/{schedule_id}");
    assert_eq!(status(b.get(url(&path))).await, 404);
    assert_eq!(
        status(b.put(url(&path)).json(&json!({"enabled": false}))).await,
        404
    );
    assert_eq!(status(b.delete(url(&path))).await, 404);
    let (_, schedules) = json_of(b.get(url("/v1/schedules"))).await;
    assert_eq!(schedules["schedules"], json!([]));
    let (s, _) = json_of(
        b.post(url("/v1/schedules"))
            .json(&json!({"function": "echo.team-a", "cron": "0 0 1 1 *"})),
    )
    .await;
    assert_eq!(s, 422);

    // Events reach only the publisher's namespace.
    let r = a
        .post(url("/v1/functions/echo/subscriptions"))
        .json(&json!({"pattern": "orders.*"}));
    assert_eq!(status(r).await, 201);
    assert_eq!(
        status(b.get(url("/v1/functions/echo.team-a/subscriptions"))).await,
        404
    );
    let (s, published) = json_of(b.post(url("/v1/events/orders.new")).body("{}")).await;
    assert_eq!(s, 202);
    assert_eq!(published["invocations"], json!([]), "{published}");
    let (_, published) = json_of(app.client.post(url("/v1/events/orders.new")).body("{}")).await;
    assert_eq!(published["invocations"], json!([]), "{published}");
    let (_, published) = json_of(a.post(url("/v1/events/orders.new")).body("{}")).await;
    assert_eq!(published["invocations"].as_array().unwrap().len(), 1);
    let event = published["id"].as_str().unwrap();
    assert_eq!(
        status(b.get(url(&format!("/v1/events/{event}")))).await,
        404
    );
    assert_eq!(
        status(a.get(url(&format!("/v1/events/{event}")))).await,
        200
    );

    // Keys: a namespaced admin manages its namespace's keys only.
    let (_, keys) = json_of(b.get(url("/v1/keys"))).await;
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["namespace"] == "team-b"),
        "{keys}"
    );
    let r = b
        .post(url("/v1/keys"))
        .json(&json!({"name": "x", "scope": "admin", "namespace": "team-a"}));
    assert_eq!(status(r).await, 422);
    let (s, made) = json_of(
        b.post(url("/v1/keys"))
            .json(&json!({"name": "x", "scope": "read"})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(
        made["namespace"], "team-b",
        "a namespaced admin's keys are its namespace's"
    );
    assert_eq!(
        status(b.delete(url(&format!("/v1/keys/{a_key_id}")))).await,
        404
    );
    assert_eq!(
        status(a.get(url("/v1/functions"))).await,
        200,
        "A's key still works"
    );

    // Installation-wide routes don't exist for a namespaced key.
    assert_eq!(status(b.get(url("/v1/namespaces"))).await, 404);
    assert_eq!(status(b.get(url("/v1/namespaces/team-a"))).await, 404);
    assert_eq!(
        status(
            b.post(url("/v1/namespaces"))
                .json(&json!({"name": "team-c"}))
        )
        .await,
        404
    );

    // A namespaced key logs in to the dashboard, which shows its namespace only (see
    // tenancy.rs). (A key is base64url: nothing to escape in the form.)
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={b_key}&next=%2Fui"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_keys_read_and_change_nothing() {
    let app = spawn_app().await;
    make_namespace(&app, "team-r").await;
    let (_, admin) = namespaced_key(&app, "team-r", "admin").await;
    let (_, read) = namespaced_key(&app, "team-r", "read").await;
    let admin = client_with_key(&admin);
    let read = client_with_key(&read);
    let r = admin
        .post(app.url("/v1/functions"))
        .json(&json!({"name": "echo", "image": "granda-test/echo"}));
    assert_eq!(status(r).await, 201);
    assert_eq!(status(read.get(app.url("/v1/functions/echo"))).await, 200);
    assert_eq!(
        status(read.get(app.url("/v1/functions/echo/invocations"))).await,
        200
    );
    assert_eq!(status(read.get(app.url("/v1/dead-letters"))).await, 200);
    assert_eq!(
        status(read.post(app.url("/fn/echo.team-r")).body("x")).await,
        403
    );
    assert_eq!(
        status(read.post(app.url("/v1/functions/echo/invoke")).body("x")).await,
        403
    );
    assert_eq!(
        status(read.delete(app.url("/v1/functions/echo"))).await,
        403
    );
    assert_eq!(
        status(admin.get(app.url("/v1/functions/echo"))).await,
        200,
        "still there"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_made_changed_and_deleted_by_global_admins() {
    let app = spawn_app().await;
    let (s, made) = json_of(
        app.client
            .post(app.url("/v1/namespaces"))
            .json(&json!({"name": "team-q", "max_concurrency": 2, "invocations_per_minute": 10})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(made["max_concurrency"], 2);
    for bad in [
        json!({"name": "team-q"}),
        json!({"name": "Team"}),
        json!({"name": "a.b"}),
        json!({"name": "ok", "max_concurrency": 0}),
        json!({"name": "ok", "invocations_per_minute": -1}),
        json!({"name": "ok", "nope": 1}),
    ] {
        let r = app.post_json("/v1/namespaces", &bad).await;
        assert!(
            matches!(r.status().as_u16(), 409 | 422 | 400),
            "{bad}: {}",
            r.status()
        );
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{bad}");
    }
    let (_, list) = json_of(app.client.get(app.url("/v1/namespaces"))).await;
    let names: Vec<&str> = list["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "team-q"]);
    let (s, put) = json_of(
        app.client
            .put(app.url("/v1/namespaces/team-q"))
            .json(&json!({"max_concurrency": 5})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(put["max_concurrency"], 5);
    assert_eq!(put["invocations_per_minute"], Value::Null);
    assert_eq!(
        status(app.client.get(app.url("/v1/namespaces/nope"))).await,
        404
    );
    assert_eq!(
        status(app.client.get(app.url("/v1/namespaces/%00"))).await,
        404
    );

    // A namespace holding functions is kept unless asked to cascade.
    let (_, key) = namespaced_key(&app, "team-q", "admin").await;
    let q = client_with_key(&key);
    let r = q
        .post(app.url("/v1/functions"))
        .json(&json!({"name": "echo", "image": "granda-test/echo"}));
    assert_eq!(status(r).await, 201);
    assert_eq!(
        status(app.client.delete(app.url("/v1/namespaces/team-q"))).await,
        409
    );
    assert_eq!(status(q.get(app.url("/v1/functions/echo"))).await, 200);
    assert_eq!(
        status(app.client.delete(app.url("/v1/namespaces/default"))).await,
        409
    );
    assert_eq!(
        status(
            app.client
                .delete(app.url("/v1/namespaces/team-q?cascade=true"))
        )
        .await,
        204
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM functions WHERE namespace = 'team-q'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // Its keys went with it.
    crate::support::eventually(
        Duration::from_secs(5),
        "the key to stop working",
        || async { (status(q.get(app.url("/v1/functions"))).await == 401).then_some(()) },
    )
    .await;
    assert_eq!(
        status(app.client.delete(app.url("/v1/namespaces/team-q"))).await,
        404
    );
    app.shutdown().await;
}

/// An installation from before namespaces: its functions, records and keys land in `default`,
/// its keys keep working and its URLs are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_from_before_namespaces_lands_in_default() {
    use sqlx::migrate::MigrateDatabase;
    let db = format!(
        "granda_test_nsmig_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let url = format!("{}/{db}", crate::support::postgres_base());
    sqlx::Postgres::create_database(&url).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let migrator = sqlx::migrate!("./migrations");
    let before: i64 = migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| *v < 20261205180000)
        .max()
        .unwrap();
    migrator.run_to(before, &pool).await.unwrap();
    // What an older Granda stored: a function, a record, a key (the test's admin key, by hash).
    sqlx::query(
        "INSERT INTO functions (name, image, timeout_ms, memory_mb, cpus)
         VALUES ('echo', 'granda-test/echo', 10000, 128, 0.5)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let old_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, queued_at)
         VALUES ($1, 'echo', 'succeeded', 'async', now())",
    )
    .bind(old_id)
    .execute(&pool)
    .await
    .unwrap();
    let invoke_key = "gk_an-invoke-key-from-before-namespaces-000000";
    sqlx::query(
        "INSERT INTO api_keys (id, name, scope, hash, prefix) VALUES ($1, 'old', 'invoke', $2, 'gk_an-in')",
    )
    .bind(Uuid::now_v7())
    .bind(granda::keys::hash(invoke_key).as_slice())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let app = spawn_app_with(|s| s.database_url = url.clone()).await;
    let (namespace,): (String,) =
        sqlx::query_as("SELECT namespace FROM functions WHERE name = 'echo'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(namespace, "default");
    let old = client_with_key(invoke_key);
    let (s, record) = json_of(old.get(app.url(&format!("/v1/invocations/{old_id}")))).await;
    assert_eq!(s, 200, "{record}");
    assert_eq!(record["namespace"], "default");
    assert_eq!(record["function"], "echo");
    let (_, f) = json_of(app.client.get(app.url("/v1/functions/echo"))).await;
    assert_eq!(f["namespace"], "default");
    assert!(
        f["invoke_url"].as_str().unwrap().ends_with("/fn/echo"),
        "{f}"
    );
    let r = old
        .post(app.url("/fn/echo"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "still here");
    let _ = ADMIN_KEY;
    app.shutdown().await;
    let _ = sqlx::Postgres::drop_database(&url).await;
}

/// Makes namespace `name` with `quotas`, a key bound to it, and registers `function` there.
async fn team_with(app: &TestApp, name: &str, quotas: Value, function: Value) -> reqwest::Client {
    let mut body = quotas;
    body["name"] = json!(name);
    let r = app.post_json("/v1/namespaces", &body).await;
    assert_eq!(r.status(), 201);
    let (_, key) = namespaced_key(app, name, "admin").await;
    let client = client_with_key(&key);
    let (s, f) = json_of(client.post(app.url("/v1/functions")).json(&function)).await;
    assert_eq!(s, 201, "{f}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_per_minute_answers_429_with_retry_after_and_enqueues_nothing() {
    let app = spawn_app().await;
    let team = team_with(
        &app,
        "team-r",
        json!({"invocations_per_minute": 3}),
        json!({"name": "echo", "image": "granda-test/echo"}),
    )
    .await;
    // Calls until one is refused (a minute may turn meanwhile and allow 3 more).
    let mut accepted = 0;
    let refused = loop {
        let r = team
            .post(app.url("/v1/functions/echo/invocations"))
            .body("x")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 202);
        accepted += 1;
        assert!(accepted <= 9, "never refused");
    };
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    // The function's URL and sync calls are counted too.
    let r = team
        .post(app.url("/fn/echo.team-r"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 429), "{}", r.status());
    let refused_url = r.status() == 429;
    // Nothing was enqueued for a refused call.
    let records: i64 =
        sqlx::query_scalar("SELECT count(*) FROM invocations WHERE namespace = 'team-r'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(records, accepted + i64::from(!refused_url));
    // Another namespace is not held back.
    app.register("echo", "granda-test/echo", json!({})).await;
    app.invoke_async("echo", "x").await;
    assert!(
        app.metrics()
            .await
            .contains("granda_namespace_throttled_total{namespace=\"team-r\",reason=\"rate\"}")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_full_of_records_answers_429() {
    let app = spawn_app().await;
    let team = team_with(
        &app,
        "team-s",
        json!({"max_stored_bytes": 100}),
        json!({"name": "echo", "image": "granda-test/echo"}),
    )
    .await;
    let body = "y".repeat(200);
    let r = team
        .post(app.url("/v1/functions/echo/invocations"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "an empty namespace takes a call");
    // The sum of stored bytes is read at most every few seconds: refused once it is seen.
    let refused = crate::support::eventually(Duration::from_secs(30), "a 429", || async {
        let r = team
            .post(app.url("/v1/functions/echo/invocations"))
            .body("z")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            Some(r)
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            None
        }
    })
    .await;
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_stored_bytes"),
        "{body}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_across_two_workers_and_fails_nothing() {
    let mut app = spawn_app().await;
    app.add_worker(|_| {}).await;
    let team = team_with(
        &app,
        "team-c",
        json!({"max_concurrency": 2}),
        json!({"name": "nap", "image": "granda-test/sleep", "env": {"SLEEP_SECONDS": "1"}}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let (s, accepted) =
            json_of(team.post(app.url("/v1/functions/nap/invocations")).body("")).await;
        assert_eq!(s, 202);
        ids.push(accepted["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    crate::support::eventually(Duration::from_secs(180), "every run to finish", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM invocations WHERE namespace = 'team-c'
             AND status IN ('queued', 'running')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if left == 0 {
            Some(())
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            None
        }
    })
    .await;
    #[derive(sqlx::FromRow)]
    struct Run {
        status: String,
        started_at: chrono::DateTime<chrono::Utc>,
        finished_at: chrono::DateTime<chrono::Utc>,
        worker: String,
    }
    let runs: Vec<Run> = sqlx::query_as(
        "SELECT status, started_at, finished_at, worker FROM invocations WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(runs.len(), 8);
    assert!(
        runs.iter().all(|r| r.status == "succeeded"),
        "none is failed for waiting"
    );
    // How many ran at once, at most: never more than the quota.
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = runs
        .iter()
        .flat_map(|r| [(r.started_at, 1), (r.finished_at, -1)])
        .collect();
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    assert!(most <= 2, "{most} ran at once");
    assert_eq!(most, 2, "the quota is used");
    let workers: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r.worker.as_str()).collect();
    eprintln!("ran on {workers:?}");
    assert!(
        app.metrics()
            .await
            .contains("granda_namespace_held_total{namespace=\"team-c\"}")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_sums_equal_the_records_and_a_team_sees_its_own() {
    let app = spawn_app().await;
    let team = team_with(
        &app,
        "team-u",
        json!({}),
        json!({"name": "echo", "image": "granda-test/echo", "memory_mb": 256}),
    )
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, a) = json_of(
            team.post(app.url("/v1/functions/echo/invocations"))
                .body(format!("{i}")),
        )
        .await;
        ids.push(a["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    ids.push(app.invoke_async("echo", "d").await);
    for id in &ids {
        crate::support::eventually(Duration::from_secs(60), "runs to finish", || async {
            let s: String = sqlx::query_scalar("SELECT status FROM invocations WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
            (s == "succeeded").then_some(())
        })
        .await;
    }
    let (s, usage) = json_of(team.get(app.url("/v1/usage"))).await;
    assert_eq!(s, 200, "{usage}");
    let rows = usage["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "a team sees its own: {usage}");
    let row = &rows[0];
    assert_eq!(row["namespace"], "team-u");
    assert_eq!(row["function"], "echo");
    let (n, ms): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(duration_ms)::bigint FROM invocations WHERE namespace = 'team-u'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row["invocations"], n);
    assert_eq!(row["by_status"]["succeeded"], n);
    assert_eq!(row["duration_ms"], ms);
    let gb = row["gb_seconds"].as_f64().unwrap();
    let expected = ms as f64 * 256.0 / 1024.0 / 1000.0;
    assert!((gb - expected).abs() < 1e-9, "{gb} vs {expected}");
    // Another namespace's usage is missing to it; the global admin sees both.
    assert_eq!(
        status(team.get(app.url("/v1/usage?namespace=default"))).await,
        404
    );
    let (_, all) = json_of(app.client.get(app.url("/v1/usage"))).await;
    assert_eq!(all["usage"].as_array().unwrap().len(), 2, "{all}");
    let (_, one) = json_of(
        app.client
            .get(app.url("/v1/usage?namespace=team-u&function=echo")),
    )
    .await;
    assert_eq!(one["usage"][0]["invocations"], n);
    // A window without the runs is empty; bad input is 400.
    let (_, none) = json_of(app.client.get(app.url("/v1/usage?to=2000-01-01T00:00:00Z"))).await;
    assert_eq!(none["usage"], json!([]));
    for bad in [
        "/v1/usage?from=yesterday",
        "/v1/usage?nope=1",
        "/v1/usage?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
    ] {
        assert_eq!(status(app.client.get(app.url(bad))).await, 400, "{bad}");
    }
    app.shutdown().await;
}
