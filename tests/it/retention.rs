//! Retention and the pruner: ended records go after their retention (and answer 404), failures
//! are kept longer, a function's retention beats its namespace's, which beats the
//! installation's; records still needed are never pruned; one server prunes at a time; bad
//! retentions are refused and change nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{TestApp, eventually, spawn_app_with};

/// A UUIDv7 of `ago` before now, as an id made then.
fn id_from(ago: Duration) -> Uuid {
    let at = std::time::SystemTime::now() - ago;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        since.as_secs(),
        since.subsec_nanos(),
    ))
}

/// Writes an invocation record of `function` that arrived and ended `ago` before now, with
/// `status` and `callback_status`, as the worker would have left it.
async fn old_record(
    pool: &PgPool,
    function: &str,
    status: &str,
    callback_status: Option<&str>,
    ago: Duration,
) -> Uuid {
    let id = id_from(ago);
    let ended = !matches!(status, "queued" | "running");
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, queued_at, started_at, finished_at,
                                  published_at, callback_url, callback_status, retry_at)
         VALUES ($1, $2, $3, 'async', now() - make_interval(secs => $4),
                 now() - make_interval(secs => $4), CASE WHEN $5 THEN now() - make_interval(secs => $4) END,
                 now(), CASE WHEN $6::text IS NOT NULL THEN 'http://127.0.0.1:9/' END, $6,
                 CASE WHEN $3 = 'queued' THEN now() + interval '1 hour' END)",
    )
    .bind(id)
    .bind(function)
    .bind(status)
    .bind(ago.as_secs_f64())
    .bind(ended)
    .bind(callback_status)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn status_of(app: &TestApp, id: Uuid) -> u16 {
    app.get(&format!("/v1/invocations/{id}"))
        .await
        .status()
        .as_u16()
}

/// Waits until `id`'s row is gone and the API answers 404 for it. (The row, not only the
/// answer: a record of another namespace is 404 to the default namespace's admin from the start.)
async fn until_pruned(app: &TestApp, id: Uuid, within: Duration) {
    eventually(within, &format!("{id} pruned"), || async {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (rows == 0 && status_of(app, id).await == 404).then_some(())
    })
    .await
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a time, not {v}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_records_are_pruned_after_their_retention_and_failures_later() {
    let app = spawn_app_with(|s| {
        s.retention_s = 2;
        s.failed_retention_s = 5;
        s.prune_interval_ms = 200;
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    app.register("fail", "granda-test/fail", json!({})).await;
    // The usage report's counts of refused calls (per namespace, hour and reason) go with the
    // installation's retention too: an hour long past, and one not yet begun.
    sqlx::query(
        "INSERT INTO namespace_throttled (namespace, hour, reason, calls) VALUES
             ('default', date_trunc('hour', now()) - interval '1 day', 'rate', 3),
             ('default', date_trunc('hour', now()) + interval '1 hour', 'rate', 4)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let ok = app.invoke_async("echo", "hello").await;
    let failed = app.invoke_async("fail", "").await;
    app.wait_final(ok, Duration::from_secs(60)).await;
    app.wait_final(failed, Duration::from_secs(60)).await;

    // Each record says until when it is kept: its end plus its retention.
    let ok_record = app.invocation(ok).await;
    let failed_record = app.invocation(failed).await;
    assert_eq!(ok_record["status"], "succeeded");
    assert_eq!(failed_record["status"], "failed");
    let ok_until = time(&ok_record["kept_until"]);
    let failed_until = time(&failed_record["kept_until"]);
    assert_eq!(
        (ok_until - time(&ok_record["finished_at"])).num_seconds(),
        2
    );
    assert_eq!(
        (failed_until - time(&failed_record["finished_at"])).num_seconds(),
        5
    );

    until_pruned(&app, ok, Duration::from_secs(30)).await;
    assert!(Utc::now() >= ok_until, "pruned before its time");
    // The failure outlives the success: it is there until its own time.
    loop {
        let status = status_of(&app, failed).await;
        if status == 404 {
            assert!(
                Utc::now() >= failed_until,
                "the failure was pruned before {failed_until}"
            );
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Utc::now() < failed_until + chrono::Duration::seconds(30),
            "the failure was not pruned within 30 s of its time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Listed nowhere either, and counted.
    assert!(app.invocations_of("echo").await.is_empty());
    let pruned = app
        .metric("granda_records_pruned_total{table=\"invocations\"}")
        .await
        .unwrap_or(0.0);
    assert!(pruned >= 2.0, "pruned {pruned}");
    let throttled: Vec<(i64,)> = sqlx::query_as("SELECT calls FROM namespace_throttled")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        throttled,
        vec![(4,)],
        "only the hour past its retention is pruned"
    );
    // Where the server does not vacuum on its own, the pass vacuumed what it deleted from, so
    // the space is reused; where it does, that is the server's job.
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if autovacuum == "off" {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let vacuumed: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(
                "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'invocations'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            if vacuumed.is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "autovacuum is off and the pruner never vacuumed invocations"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_retention_beats_its_namespaces_which_beats_the_installations() {
    let app = spawn_app_with(|s| {
        s.retention_s = 3600;
        s.failed_retention_s = 3600;
        s.prune_interval_ms = 200;
    })
    .await;
    let made = app
        .post_json("/v1/namespaces", &json!({"name": "team", "retention_s": 2}))
        .await;
    assert_eq!(made.status(), 201);
    let in_team = |body: Value| {
        app.client
            .post(app.url("/v1/functions"))
            .header("granda-namespace", "team")
            .json(&body)
            .send()
    };
    let r = in_team(json!({"name": "short", "image": "granda-test/echo"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = in_team(json!({"name": "long", "image": "granda-test/echo", "retention_s": 3600}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    app.register("plain", "granda-test/echo", json!({})).await;
    let own = app
        .register("own", "granda-test/echo", json!({"retention_s": 2}))
        .await;
    assert_eq!(own["retention_s"], 2);

    // What a read says applies.
    let read = app.get_json("/v1/functions/own").await;
    assert_eq!(read["retention"]["kept_s"], 2);
    assert_eq!(read["retention"]["failed_kept_s"], 3600);
    assert_eq!(read["retention"]["from"], "function");
    let read = app.get_json("/v1/functions/plain").await;
    assert_eq!(read["retention"]["from"], "installation");
    assert_eq!(read["retention"]["kept_s"], 3600);
    // A read sent back as an update is accepted.
    let back = app
        .put_json("/v1/functions/own", &read_back(&app, "own").await)
        .await;
    assert_eq!(back.status(), 200, "{}", back.text().await.unwrap());

    let ago = Duration::from_secs(30);
    let short = old_record(&app.pool, "short.team", "succeeded", None, ago).await;
    let long = old_record(&app.pool, "long.team", "succeeded", None, ago).await;
    let plain = old_record(&app.pool, "plain", "succeeded", None, ago).await;
    let own = old_record(&app.pool, "own", "succeeded", None, ago).await;
    // A function deleted since: its namespace's retention.
    let gone = old_record(&app.pool, "deleted.team", "succeeded", None, ago).await;

    until_pruned(&app, short, Duration::from_secs(30)).await;
    until_pruned(&app, own, Duration::from_secs(30)).await;
    until_pruned(&app, gone, Duration::from_secs(30)).await;
    // A pass later (all three went in passes after these were written), the others stay.
    // Counted as each batch returns (a moment after its commit).
    eventually(Duration::from_secs(10), "three prunes counted", || async {
        let pruned = app
            .metric("granda_records_pruned_total{table=\"invocations\"}")
            .await?;
        (pruned >= 3.0).then_some(())
    })
    .await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations WHERE id = ANY($1)")
        .bind(vec![long, plain])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 2, "the longer retentions keep theirs");
    assert_eq!(
        app.get(&format!("/v1/invocations/{plain}"))
            .await
            .status()
            .as_u16(),
        200
    );
    app.shutdown().await;
}

/// What `GET /v1/functions/{name}` answers, as a client would send it back.
async fn read_back(app: &TestApp, name: &str) -> Value {
    let mut read = app.get_json(&format!("/v1/functions/{name}")).await;
    read.as_object_mut().unwrap().remove("secrets");
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_still_needed_are_never_pruned() {
    let app = spawn_app_with(|s| {
        s.retention_s = 1;
        s.failed_retention_s = 1;
        s.prune_interval_ms = 100;
    })
    .await;
    let ago = Duration::from_secs(120);
    let pool = &app.pool;
    let queued = old_record(pool, "echo", "queued", None, ago).await;
    let running = old_record(pool, "echo", "running", None, ago).await;
    let pending = old_record(pool, "echo", "succeeded", Some("pending"), ago).await;
    let delivering = old_record(pool, "echo", "failed", Some("delivering"), ago).await;
    let delivered = old_record(pool, "echo", "succeeded", Some("delivered"), ago).await;
    let dead = old_record(pool, "echo", "dead", None, ago).await;
    let event = id_from(ago);
    sqlx::query("INSERT INTO events (id, topic, payload, size) VALUES ($1, 'orders.new', '', 0)")
        .bind(event)
        .execute(pool)
        .await
        .unwrap();

    until_pruned(&app, delivered, Duration::from_secs(30)).await;
    until_pruned(&app, dead, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(30), "the old event pruned", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE id = $1")
            .bind(event)
            .fetch_one(pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    for id in [queued, running, pending, delivering] {
        assert_eq!(status_of(&app, id).await, 200, "{id} was pruned");
    }
    // Once its callback is done, it goes too; a queued one only once it ended.
    sqlx::query("UPDATE invocations SET callback_status = 'failed' WHERE id = $1")
        .bind(pending)
        .execute(pool)
        .await
        .unwrap();
    until_pruned(&app, pending, Duration::from_secs(30)).await;
    for id in [queued, running, delivering] {
        assert_eq!(status_of(&app, id).await, 200, "{id} was pruned");
    }
    let events = app
        .metric("granda_records_pruned_total{table=\"events\"}")
        .await
        .unwrap_or(0.0);
    assert!(events >= 1.0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_prunes_at_a_time() {
    let app = spawn_app_with(|s| {
        s.retention_s = 1;
        s.prune_interval_ms = 100;
    })
    .await;
    // Another server's pass, as far as the lock goes: this session holds it.
    // (The app's own pruner may hold it for a moment: a pass every 100 ms.)
    let mut other = app.pool.acquire().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(granda::retention::LOCK)
        .fetch_one(&mut *other)
        .await
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock never came free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = old_record(
        &app.pool,
        "echo",
        "succeeded",
        None,
        Duration::from_secs(60),
    )
    .await;
    let policy = granda::retention::Policy::of(&app.settings);
    let metrics = granda::Metrics::default();
    assert_eq!(
        granda::retention::pass(&app.pool, policy, &metrics)
            .await
            .unwrap(),
        None,
        "a pass runs only with the lock"
    );
    // The app's own pruner does not prune while another holds the lock: ten intervals.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(status_of(&app, old).await, 200);

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(granda::retention::LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    until_pruned(&app, old, Duration::from_secs(30)).await;

    // Passes run at once are correct: each row goes once, whoever gets the lock.
    let ids: Vec<Uuid> = {
        let mut ids = Vec::new();
        for _ in 0..50 {
            ids.push(
                old_record(
                    &app.pool,
                    "echo",
                    "succeeded",
                    None,
                    Duration::from_secs(60),
                )
                .await,
            );
        }
        ids
    };
    let (a, b) = tokio::join!(
        granda::retention::pass(&app.pool, policy, &metrics),
        granda::retention::pass(&app.pool, policy, &metrics),
    );
    let pruned: u64 = [a.unwrap(), b.unwrap()]
        .iter()
        .flatten()
        .map(|p| p.invocations)
        .sum();
    assert!(pruned <= 50, "{pruned} rows counted for 50");
    // Both may have found the app's own pruner holding the lock, in a pass that began before the
    // last rows were written: the rows left go in one of its next passes (every 100 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM invocations WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} of 50 old records still kept after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_retentions_are_refused_and_change_nothing() {
    let app = spawn_app_with(|_| {}).await;
    app.register("echo", "granda-test/echo", json!({"retention_s": 60}))
        .await;
    for bad in [
        json!(-1),
        json!(0),
        json!(1.5),
        json!("60"),
        json!(i64::MAX),
    ] {
        let made = app
            .post_json(
                "/v1/functions",
                &json!({"name": "other", "image": "granda-test/echo", "retention_s": bad}),
            )
            .await;
        assert!(
            matches!(made.status().as_u16(), 400 | 422),
            "{bad}: {}",
            made.status()
        );
        let changed = app
            .put_json("/v1/functions/echo", &json!({"retention_s": bad}))
            .await;
        assert!(
            matches!(changed.status().as_u16(), 400 | 422),
            "{bad}: {}",
            changed.status()
        );
        let ns = app
            .put_json("/v1/namespaces/default", &json!({"retention_s": bad}))
            .await;
        assert!(
            matches!(ns.status().as_u16(), 400 | 422),
            "{bad}: {}",
            ns.status()
        );
    }
    assert_eq!(app.get("/v1/functions/other").await.status(), 404);
    assert_eq!(app.get_json("/v1/functions/echo").await["retention_s"], 60);
    assert!(app.get_json("/v1/namespaces/default").await["retention_s"].is_null());
    // `null` clears a function's own.
    let cleared = app
        .put_json("/v1/functions/echo", &json!({"retention_s": null}))
        .await;
    assert_eq!(cleared.status(), 200);
    assert!(app.get_json("/v1/functions/echo").await["retention_s"].is_null());
    app.shutdown().await;
}
