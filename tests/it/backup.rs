//! Backups (docs/operations.md "Backups"): a real `pg_dump` of a running installation, restored
//! with `pg_restore` into a fresh database, serves the same records and runs the same functions
//! (their secrets too: the installation secret is in the dump) with a new app and fresh queues.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{postgres_base, spawn_app, spawn_app_with};

/// Runs `program` with `args`; panics with its stderr unless it succeeds.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restored_into_a_fresh_database_serves_the_same_records_and_runs_again() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    app.register("fail", "granda-test/fail", json!({})).await;
    app.register(
        "env",
        "granda-test/env",
        json!({"secrets": {"TOKEN": "kept-in-the-dump"}}),
    )
    .await;
    let mut ids: Vec<Uuid> = Vec::new();
    for i in 0..3 {
        let r = app.invoke("echo", format!("sync {i}")).await;
        assert_eq!(r.status(), 200);
        ids.push(crate::support::id_of(&r));
        ids.push(app.invoke_async("echo", format!("async {i}")).await);
    }
    ids.push(app.invoke_async("fail", "broken").await);
    let mut before: Vec<Value> = Vec::new();
    for id in &ids {
        before.push(app.wait_final(*id, Duration::from_secs(60)).await);
    }

    // pg_dump while the installation runs (one consistent snapshot), in the custom format.
    let path = std::env::temp_dir().join(format!("granda-{}.dump", Uuid::new_v4()));
    let file = path.to_str().unwrap();
    run(
        "pg_dump",
        &[
            "--format=custom",
            "--file",
            file,
            "--dbname",
            &app.settings.database_url,
        ],
    );

    // Restore into a database of its own, as onto a new server.
    let restored = format!(
        "granda_restored_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = PgPool::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {restored}")))
        .execute(&admin)
        .await
        .unwrap();
    let restored_url = format!("{}/{restored}", postgres_base());
    run(
        "pg_restore",
        &[
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            &restored_url,
            file,
        ],
    );

    // The old installation is gone; a new one (its own queues: RabbitMQ is not backed up) runs on
    // the restored database.
    app.shutdown().await;
    let url = restored_url.clone();
    let again = spawn_app_with(move |s| s.database_url = url).await;
    for (id, was) in ids.iter().zip(&before) {
        let now = again.invocation(*id).await;
        assert_eq!(
            &now, was,
            "invocation {id} reads as it did before the backup"
        );
    }
    let listed = again.invocations_of("echo").await;
    assert_eq!(listed.len(), 6, "every record of echo is listed");

    // The functions run again, with their secrets (sealed under the installation's key, which
    // the dump holds).
    let r = again.invoke("echo", "after the restore").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "after the restore");
    let r = again.invoke("env", "").await;
    assert_eq!(r.status(), 200);
    let env = r.text().await.unwrap();
    assert!(env.contains("TOKEN=kept-in-the-dump\n"), "{env}");
    let id = again.invoke_async("echo", "async after").await;
    let r = again.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(r["output"], "async after");

    again.shutdown().await;
    let _ = std::fs::remove_file(&path);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {restored} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
}
