//! Listing a function's invocations: newest first, paged, filtered by status.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{error_code, spawn_app};

/// The ids of the invocations on a page of a list, in its order.
fn ids_on(page: &Value) -> Vec<&str> {
    page["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_are_listed_newest_first_paged_and_filtered() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    app.register("fail", "granda-test/fail", json!({})).await;
    let mut ids: Vec<Uuid> = Vec::new();
    for i in 0..5 {
        ids.push(app.invoke_async("echo", format!("n{i}")).await);
    }
    let failed = app.invoke_async("fail", "").await;
    for id in ids.iter().chain([&failed]) {
        app.wait_final(*id, Duration::from_secs(30)).await;
    }
    let newest_first: Vec<String> = ids.iter().rev().map(|i| i.to_string()).collect();

    let page = app.get_json("/v1/functions/echo/invocations?limit=2").await;
    assert_eq!(ids_on(&page), newest_first[..2]);
    let next = page["next"].as_str().expect("a next cursor on a full page");

    let page = app
        .get_json(&format!(
            "/v1/functions/echo/invocations?limit=2&before={next}"
        ))
        .await;
    assert_eq!(ids_on(&page), newest_first[2..4]);

    let all = app.get_json("/v1/functions/echo/invocations").await;
    assert_eq!(all["invocations"].as_array().unwrap().len(), 5);
    assert!(all["next"].is_null());

    let ok = app
        .get_json("/v1/functions/fail/invocations?status=succeeded")
        .await;
    assert!(ok["invocations"].as_array().unwrap().is_empty());
    let bad = app
        .get_json("/v1/functions/fail/invocations?status=failed")
        .await;
    assert_eq!(bad["invocations"][0]["id"], failed.to_string());

    for (path, status, code) in [
        (
            "/v1/functions/echo/invocations?status=done",
            400,
            "bad_request",
        ),
        ("/v1/functions/echo/invocations?limit=0", 400, "bad_request"),
        (
            "/v1/functions/echo/invocations?before=zz",
            400,
            "bad_request",
        ),
        ("/v1/functions/nobody/invocations", 404, "not_found"),
    ] {
        assert_eq!(
            error_code(app.get(path).await, status).await,
            code,
            "{path}"
        );
    }
    app.shutdown().await;
}

/// Claims and final records stay heap-only updates (no index entry written) only while no index
/// key or predicate mentions a column they change (migration 0011).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_index_of_invocations_mentions_a_column_a_claim_or_final_record_changes() {
    let app = spawn_app().await;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'invocations'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(indexes.len() >= 4, "{indexes:?}");
    let changed = [
        "status",
        "attempt",
        "started_at",
        "worker",
        "output",
        "exit_code",
        "error",
        "finished_at",
        "duration_ms",
        "retry_at",
        "cold",
    ];
    // A column as a whole word (`callback_status` is not `status`: the final record leaves it).
    let mentions = |def: &str, column: &str| {
        def.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == column)
    };
    for (name, def) in &indexes {
        for column in changed {
            assert!(
                !mentions(def, column),
                "index {name} mentions {column}, so updates of it can't be HOT: {def}"
            );
        }
    }
    let hot: Vec<Vec<String>> =
        sqlx::query_scalar("SELECT reloptions FROM pg_class WHERE relname = 'invocations'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(hot, vec![vec!["fillfactor=80".to_string()]]);
    app.shutdown().await;
}

/// The recorder's batch (`store::finish_many`): each record written as `finish` writes it, only
/// where it is still `queued` or `running`, and the ids written returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_final_records_writes_each_as_one_would_and_skips_the_final_ones() {
    use granda::invocation::{Outcome, Status, store};
    let app = spawn_app().await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (id, status) in ids.iter().zip(["running", "queued", "succeeded"]) {
        sqlx::query(
            "INSERT INTO invocations (id, function, status, trigger, queued_at, input)
             VALUES ($1, 'f', $2, 'async', now(), 'the input')",
        )
        .bind(id)
        .bind(status)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let ok = Outcome {
        status: Some(Status::Succeeded),
        output: b"out 0".to_vec(),
        logs: "log 0".into(),
        exit_code: Some(0),
        duration_ms: Some(12),
        ..Default::default()
    };
    let unstored = Outcome {
        status: Some(Status::Succeeded),
        output: b"out 1".to_vec(),
        exit_code: Some(0),
        unstored: true,
        ..Default::default()
    };
    let late = Outcome {
        status: Some(Status::Failed),
        error: Some("too late".into()),
        ..Default::default()
    };
    let mut written = store::finish_many(
        &app.pool,
        &[(ids[0], &ok), (ids[1], &unstored), (ids[2], &late)],
    )
    .await
    .unwrap();
    written.sort();
    assert_eq!(written, vec![ids[0], ids[1]]);
    type Row = (
        Uuid,
        String,
        Option<Vec<u8>>,
        Option<String>,
        Option<i32>,
        Option<i64>,
        Option<Vec<u8>>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, status, output, logs, exit_code, duration_ms, input, finished_at IS NOT NULL
             FROM invocations ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows[0].1, "succeeded");
    assert_eq!(rows[0].2.as_deref(), Some(&b"out 0"[..]));
    assert_eq!(rows[0].3.as_deref(), Some("log 0"));
    assert_eq!((rows[0].4, rows[0].5), (Some(0), Some(12)));
    assert_eq!(rows[0].6.as_deref(), Some(&b"the input"[..]));
    assert!(rows[0].7);
    // store_output on_failure: nothing of the run kept.
    assert_eq!(
        (rows[1].1.as_str(), &rows[1].2, &rows[1].6),
        ("succeeded", &None, &None)
    );
    // Already final: untouched.
    assert_eq!((rows[2].1.as_str(), &rows[2].2), ("succeeded", &None));
    let again = store::finish_many(&app.pool, &[(ids[0], &late)])
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// The recorder's batched claims (`store::claim_many`, `store::claim_or_create_many`): each row
/// claimed as one claim would claim it, and only those returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_claims_claims_each_as_one_would_and_only_those() {
    use granda::invocation::store::{self, NewClaim};
    use granda::invocation::{NewInvocation, Trigger};
    let app = spawn_app().await;
    sqlx::query(
        "INSERT INTO workers (id, started_at, heartbeat_at, concurrency, in_flight, queues, lease_until)
         VALUES ('alive', now(), now(), 1, 1, '{}', now() + interval '1 hour')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // queued; running on a worker without a lease (dead); final; running on a live worker;
    // running on the dead worker, which this claim does not name.
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for (id, (status, worker)) in ids.iter().zip([
        ("queued", None),
        ("running", Some("gone")),
        ("succeeded", None),
        ("running", Some("alive")),
        ("running", Some("gone")),
    ]) {
        sqlx::query(
            "INSERT INTO invocations (id, function, status, trigger, queued_at, worker, attempt)
             VALUES ($1, 'f', $2, 'async', now(), $3, CASE WHEN $2 = 'queued' THEN 0 ELSE 1 END)",
        )
        .bind(id)
        .bind(status)
        .bind(worker)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let dead = [None, Some("gone"), None, Some("alive"), None];
    let claims: Vec<(Uuid, Option<String>)> = ids
        .iter()
        .zip(dead)
        .map(|(id, d)| (*id, d.map(String::from)))
        .collect();
    let mut claimed = store::claim_many(&app.pool, &claims, "w1").await.unwrap();
    claimed.sort_by_key(|c| c.0);
    let claimed: Vec<(Uuid, i32)> = claimed.into_iter().map(|(id, a, _)| (id, a)).collect();
    assert_eq!(claimed, vec![(ids[0], 1), (ids[1], 2)]);
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, worker FROM invocations ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let rows: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(s, w)| (s.as_str(), w.as_deref()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("running", Some("w1")),
            ("running", Some("w1")),
            ("succeeded", None),
            ("running", Some("alive")),
            ("running", Some("gone")),
        ]
    );

    // Sync calls: a new one is created `running` (its input kept up to the cap, its size whole),
    // a refused one is not created, a queued one (its caller stopped waiting) is claimed.
    let new = |id, input: &'static [u8]| {
        NewClaim::new(
            &NewInvocation {
                id,
                function: "g",
                trigger: Trigger::Sync,
                input,
                stored_input_cap: 4,
                idempotency_key: None,
                key_id: None,
            },
            chrono::Utc::now().timestamp_millis() - 50,
        )
    };
    let calls: Vec<NewClaim> = (0..3).map(|_| new(Uuid::now_v7(), b"0123456789")).collect();
    store::refuse(&app.pool, calls[1].id).await.unwrap();
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, queued_at, published_at, input, input_size)
         VALUES ($1, 'g', 'queued', 'sync', now(), now(), '0123', 10)",
    )
    .bind(calls[2].id)
    .execute(&app.pool)
    .await
    .unwrap();
    let mut claimed = store::claim_or_create_many(&app.pool, &calls, "w1")
        .await
        .unwrap();
    claimed.sort_by_key(|c| c.0);
    let claimed: Vec<(Uuid, i32)> = claimed.into_iter().map(|(id, a, _)| (id, a)).collect();
    assert_eq!(claimed, vec![(calls[0].id, 1), (calls[2].id, 1)]);
    type Row = (String, String, Option<Vec<u8>>, i64, Option<String>, bool);
    let row: Row = sqlx::query_as(
        "SELECT status, trigger, input, input_size, worker, queue_ms >= 50 FROM invocations WHERE id = $1",
    )
    .bind(calls[0].id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "running".to_string(),
            "sync".to_string(),
            Some(b"0123".to_vec()),
            10,
            Some("w1".to_string()),
            true
        )
    );
    assert!(store::get(&app.pool, calls[1].id).await.unwrap().is_none());
    app.shutdown().await;
}
