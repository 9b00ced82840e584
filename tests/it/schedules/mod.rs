//! Schedules: the API (validation, `next_runs`, pause and resume, OpenAPI), each tick fired
//! exactly once by two server processes on one database, nothing while paused, catch-up after
//! every server was down, and the pattern and time-zone arithmetic (DST).

mod across_servers;
pub mod servers;
mod times;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::{TestApp, error_code, spawn_app, spawn_app_with};

async fn create(app: &TestApp, body: Value) -> Value {
    let r = app.post_json("/v1/schedules", &body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v
}

/// Invocations of `function` by schedule, counted per `GRANDA_SCHEDULED_AT` (from the env each
/// one was recorded with, not from the claims table).
async fn ticks(pool: &sqlx::PgPool, function: &str) -> BTreeMap<DateTime<Utc>, i64> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT extra_env->>'GRANDA_SCHEDULED_AT', count(*) FROM invocations
         WHERE function = $1 AND trigger = 'schedule' GROUP BY 1",
    )
    .bind(function)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(at, n)| {
            let at = at.expect("every scheduled invocation has GRANDA_SCHEDULED_AT");
            (
                DateTime::parse_from_rfc3339(&at)
                    .unwrap()
                    .with_timezone(&Utc),
                n,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_gets_its_schedule_id_and_time_in_env() {
    let app = spawn_app().await;
    app.register("envs", "granda-test/env", json!({})).await;
    let s = create(
        &app,
        json!({"function": "envs", "cron": "* * * * * *",
               "payload": "a,b", "content_type": "text/csv; charset=utf-8"}),
    )
    .await;
    let id = s["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let record = loop {
        let list = app.invocations_of("envs").await;
        if let Some(done) = list.iter().find(|r| r["status"] == "succeeded") {
            break done.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let r = app.delete(&format!("/v1/schedules/{id}")).await;
    assert_eq!(r.status(), 204);
    let out = record["output"].as_str().unwrap();
    assert!(out.contains(&format!("GRANDA_SCHEDULE_ID={id}\n")), "{out}");
    let at = out
        .lines()
        .find_map(|l| l.strip_prefix("GRANDA_SCHEDULED_AT="))
        .expect("GRANDA_SCHEDULED_AT");
    let at = DateTime::parse_from_rfc3339(at).unwrap();
    assert_eq!(at.timestamp_subsec_nanos(), 0);
    assert_eq!(record["trigger"], "schedule");
    assert!(
        out.contains("GRANDA_CONTENT_TYPE=text/csv; charset=utf-8\n"),
        "{out}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_schedules_and_shows_next_runs() {
    let app = spawn_app().await;
    app.register("job", "granda-test/echo", json!({"queue": "parked-job"}))
        .await;
    for (body, why) in [
        (json!({"function": "job", "cron": "* * *"}), "cron"),
        (json!({"function": "job", "cron": "61 * * * *"}), "cron"),
        (
            json!({"function": "job", "cron": "* * * * *", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (json!({"function": "nope", "cron": "* * * * *"}), "function"),
        (
            json!({"function": "job", "cron": "* * * * *", "catch_up": "all"}),
            "catch_up",
        ),
        (
            json!({"function": "job", "cron": "* * * * *", "extra": 1}),
            "extra",
        ),
        // It becomes GRANDA_CONTENT_TYPE: printable ASCII only.
        (
            json!({"function": "job", "cron": "* * * * *", "content_type": "text/plain\r\nX: y"}),
            "content_type",
        ),
        (
            json!({"function": "job", "cron": "* * * * *", "content_type": "text/plaîn"}),
            "content_type",
        ),
    ] {
        let r = app.post_json("/v1/schedules", &body).await;
        assert!(!error_code(r, 422).await.is_empty(), "{why}");
    }
    let none: Value = app.get("/v1/schedules").await.json().await.unwrap();
    assert_eq!(none["schedules"], json!([]));

    let s = create(
        &app,
        json!({"function": "job", "cron": "0 9 * * *", "timezone": "Europe/Berlin",
               "payload": {"hello": "world"}, "catch_up": "latest"}),
    )
    .await;
    assert_eq!(s["content_type"], "application/json");
    assert_eq!(s["payload"], r#"{"hello":"world"}"#);
    assert_eq!(s["catch_up"], "latest");
    assert_eq!(s["enabled"], true);
    let runs: Vec<DateTime<Utc>> = serde_json::from_value(s["next_runs"].clone()).unwrap();
    assert_eq!(runs.len(), 5);
    for r in &runs {
        let berlin = r.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(berlin.format("%H:%M:%S").to_string(), "09:00:00", "{r}");
    }
    let id = s["id"].as_str().unwrap();

    let got: Value = app
        .get(&format!("/v1/schedules/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], s["id"]);
    let list: Value = app
        .get("/v1/schedules?function=job")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);

    let r = app
        .client
        .put(app.url(&format!("/v1/schedules/{id}")))
        .json(&json!({"cron": "@hourly", "timezone": "UTC"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let changed: Value = r.json().await.unwrap();
    assert_eq!(changed["cron"], "@hourly");
    let next: DateTime<Utc> = serde_json::from_value(changed["next_runs"][0].clone()).unwrap();
    assert_eq!(next.format("%M:%S").to_string(), "00:00");
    let r = app
        .client
        .put(app.url(&format!("/v1/schedules/{id}")))
        .json(&json!({"cron": "nope"}))
        .send()
        .await
        .unwrap();
    error_code(r, 422).await;
    let still: Value = app
        .get(&format!("/v1/schedules/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["cron"], "@hourly", "a refused update changed nothing");

    let r = app.delete(&format!("/v1/schedules/{id}")).await;
    assert_eq!(r.status(), 204);
    error_code(app.get(&format!("/v1/schedules/{id}")).await, 404).await;
    error_code(app.get("/v1/schedules/not-a-uuid").await, 404).await;

    // The API is in the OpenAPI document.
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in ["/v1/schedules", "/v1/schedules/{id}"] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} not in /openapi.json"
        );
    }
    for method in ["get", "post"] {
        assert!(
            spec["paths"]["/v1/schedules"][method].is_object(),
            "{method}"
        );
    }
    for method in ["get", "put", "delete"] {
        assert!(
            spec["paths"]["/v1/schedules/{id}"][method].is_object(),
            "{method}"
        );
    }

    // The dashboard lists schedules (behind its login like every page).
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/ui/schedules"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_redirection() || r.status() == 401,
        "{}",
        r.status()
    );
    delete_queue(&app, "parked-job").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_server_was_down_catch_up_latest_fires_the_latest_missed_tick_and_none_skips() {
    let app = spawn_app().await;
    app.register("late", "granda-test/echo", json!({"queue": "parked-late"}))
        .await;
    let mut ids = BTreeMap::new();
    for catch_up in ["none", "latest"] {
        let s = create(
            &app,
            json!({"function": "late", "cron": "*/5 * * * *", "catch_up": catch_up,
                   "enabled": false, "payload": catch_up}),
        )
        .await;
        ids.insert(
            catch_up,
            s["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap(),
        );
    }
    // As if every server had been down for two hours: the cursor is far behind.
    sqlx::query(
        "UPDATE schedules SET enabled = true,
                next_fire_at = date_trunc('hour', now()) - interval '2 hours'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let behind: (i64,) =
            sqlx::query_as("SELECT count(*) FROM schedules WHERE next_fire_at <= now()")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if behind.0 == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let horizon = Utc::now() - chrono::Duration::seconds(30);
    let fired: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT convert_from(input, 'UTF8'), extra_env->>'GRANDA_SCHEDULED_AT' FROM invocations
         WHERE function = 'late'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let missed = |which: &str| -> Vec<DateTime<Utc>> {
        fired
            .iter()
            .filter(|(i, _)| i == which)
            .map(|(_, at)| {
                DateTime::parse_from_rfc3339(at.as_deref().unwrap())
                    .unwrap()
                    .with_timezone(&Utc)
            })
            .filter(|at| *at < horizon)
            .collect()
    };
    assert_eq!(missed("none"), Vec::<DateTime<Utc>>::new());
    let latest = missed("latest");
    assert_eq!(latest.len(), 1, "{fired:?}");
    // The latest missed tick: a multiple of five minutes, within the last five before the horizon.
    assert_eq!(latest[0].timestamp() % 300, 0);
    assert!(horizon - latest[0] <= chrono::Duration::minutes(5));
    let skipped = app
        .metric("granda_schedule_skipped_total")
        .await
        .unwrap_or(0.0);
    assert!(skipped >= 2.0 * 23.0, "{skipped}");
    delete_queue(&app, "parked-late").await;
    app.shutdown().await;
}

/// Deletes the work queue `queue` of `app` (functions parked on a queue no worker consumes).
pub async fn delete_queue(app: &TestApp, queue: &str) {
    let topology = granda::broker::Topology::new(&app.settings.amqp_prefix);
    if let Ok(c) = granda::broker::connect(&crate::support::amqp_url(), "test-cleanup").await {
        if let Ok(ch) = c.create_channel().await {
            let _ = ch
                .queue_delete(topology.work_queue(queue).into(), Default::default())
                .await;
        }
        let _ = c.close(200, "".into()).await;
    }
}

/// Runs the `granda` CLI against `app`; returns (exit code, stdout).
async fn cli(app: &TestApp, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .args(args)
        .env("GRANDA_URL", &app.address)
        .env("GRANDA_KEY", crate::support::ADMIN_KEY)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running granda");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_pauses_resumes_and_removes_schedules() {
    let app = spawn_app().await;
    app.register(
        "cronjob",
        "granda-test/echo",
        json!({"queue": "parked-cli"}),
    )
    .await;
    let (code, out) = cli(
        &app,
        &[
            "--json",
            "schedules",
            "create",
            "cronjob",
            "0 6 * * *",
            "-z",
            "Asia/Tokyo",
            "--paused",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["enabled"], false);
    let (code, out) = cli(&app, &["schedules", "ls"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&id) && out.contains("paused") && out.contains("Asia/Tokyo"),
        "{out}"
    );
    let (code, out) = cli(&app, &["schedules", "resume", &id]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("next_runs:") && out.contains("T21:00:00Z"),
        "{out}"
    );
    let (code, out) = cli(&app, &["--json", "schedules", "pause", &id]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["enabled"],
        false
    );
    let (code, _) = cli(&app, &["schedules", "rm", &id]).await;
    assert_eq!(code, 0);
    let (code, _) = cli(&app, &["schedules", "get", &id]).await;
    assert_eq!(code, 3, "not found");
    let (code, _) = cli(&app, &["schedules", "create", "cronjob", "nope"]).await;
    assert_eq!(code, 1, "a bad pattern is refused");
    delete_queue(&app, "parked-cli").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_republishes_a_scheduled_invocation_with_its_env() {
    let app = spawn_app_with(|s| s.outbox_grace_ms = 500).await;
    app.register("swept", "granda-test/env", json!({})).await;
    // Recorded in a transaction, never published: as if the ingress died right after the commit.
    let id = uuid::Uuid::now_v7();
    let mut env = BTreeMap::new();
    env.insert("GRANDA_SCHEDULE_ID".to_string(), "s-1".to_string());
    env.insert(
        "GRANDA_SCHEDULED_AT".to_string(),
        "2026-01-01T00:00:00Z".to_string(),
    );
    let mut tx = app.pool.begin().await.unwrap();
    granda::invocation::store::insert_queued_in(
        &mut tx,
        &granda::invocation::NewInvocation {
            id,
            function: "swept",
            trigger: granda::invocation::Trigger::Schedule,
            input: b"",
            stored_input_cap: 1024,
            idempotency_key: None,
            key_id: None,
        },
        &env,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["trigger"], "schedule");
    let out = record["output"].as_str().unwrap();
    assert!(out.contains("GRANDA_SCHEDULE_ID=s-1\n"), "{out}");
    assert!(
        out.contains("GRANDA_SCHEDULED_AT=2026-01-01T00:00:00Z\n"),
        "{out}"
    );
    app.shutdown().await;
}
