//! Stopping (`granda::shutdown`): every task of the ingress and the worker hears the stop, and
//! the heartbeat stops last.

use std::time::Duration;

use serde_json::json;

use crate::support::spawn_app_with;

/// Told to stop after serving a call, the ingress and the worker return before the shutdown
/// bound: no loop of either (outbox, cron, pruner, inbound router, reapers, takeover, cancels,
/// heartbeat, consumers, quorum probe) was still running to be waited out. The worker's row is
/// gone and stays gone: its heartbeat had stopped before the row was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_stops_when_told_and_the_heartbeat_before_the_worker_is_forgotten() {
    let mut app = spawn_app_with(|s| s.worker_lease_ms = 900).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    assert_eq!(app.invoke("echo", "x").await.status(), 200);
    let worker = app.worker_id();
    let row = async |pool: &sqlx::PgPool| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM workers WHERE id = $1")
            .bind(&worker)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(row(&app.pool).await, 1, "the worker beats while it runs");
    let took = app.stop().await;
    assert!(
        took < granda::SHUTDOWN_BOUND,
        "stopping took {took:?}: a task did not hear the stop"
    );
    assert_eq!(row(&app.pool).await, 0, "a stopped worker is forgotten");
    // Three beats' time (the lease is 900 ms, a beat every 300 ms): none comes.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(row(&app.pool).await, 0, "no beat after the worker stopped");
    app.shutdown().await;
}
