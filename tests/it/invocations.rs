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
