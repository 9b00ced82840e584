//! A `granda server` killed with SIGKILL while its inbound router is in the middle of a batch:
//! after another server starts, the ledger holds every message once and every subscriber's
//! invocation of it once.

use std::time::{Duration, Instant};

use granda::broker::Topology;
use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::json;

use super::{confirm_channel, ledger, publish_props};
use crate::schedules::servers::Servers;

const FUNCTIONS: [&str; 3] = ["ledger-a", "ledger-b", "ledger-c"];

async fn count(servers: &Servers, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&servers.pool)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    const N: usize = 300;
    let servers = Servers::new().await;
    // A short outbox grace, so what the killed router committed but never published goes out soon.
    let grace = [("GRANDA_OUTBOX_GRACE_MS", "1000".to_string())];
    let victim = servers.start(&grace).await;
    // Parked on a queue no worker consumes: the ledger is about recording and publishing.
    servers
        .register_parked(&victim, &FUNCTIONS, "parked-ledger")
        .await;
    for f in FUNCTIONS {
        let (status, answer) = servers
            .post(
                &victim,
                &format!("/v1/functions/{f}/subscriptions"),
                &json!({"pattern": "ledger.#"}),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    let (conn, ch) = confirm_channel().await;
    let exchange = Topology::new(&servers.prefix).inbound_exchange();
    let started = Instant::now();
    for i in 0..N {
        let body = format!("m-{i}");
        let props = BasicProperties::default().with_message_id(ShortString::from(body.as_str()));
        publish_props(&ch, &exchange, "ledger.entry", body.as_bytes(), props).await;
    }

    // SIGKILL the only router while the batch is being routed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&servers, "SELECT count(*) FROM events").await < (N / 5) as i64 {
        assert!(Instant::now() < deadline, "the batch did not get under way");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.process.kill9();
    let status = victim.process.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9)),
        "{status:?}"
    );
    // A commit the kill interrupted on the wire is finished (or dropped) by Postgres by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let routed = count(&servers, "SELECT count(*) FROM events").await as usize;
    let unpublished = count(
        &servers,
        "SELECT count(*) FROM invocations WHERE published_at IS NULL",
    )
    .await;
    eprintln!(
        "server killed (SIGKILL) after routing {routed} of {N} messages; \
         {unpublished} of its invocations recorded but not confirmed"
    );
    assert!(routed > 0, "the killed server had routed nothing");
    assert!(routed < N, "the batch was done before the kill: {routed}");

    // Another server starts and finishes the batch.
    let fresh = servers.start(&grace).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while count(&servers, "SELECT count(DISTINCT payload) FROM events").await < N as i64 {
        assert!(Instant::now() < deadline, "not every message was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{N} messages (3 subscribers each) routed in {:?}, one server killed on the way",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &servers,
        "SELECT count(*) FROM invocations WHERE published_at IS NULL",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "invocations left unpublished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The ledger: every message id once, every message once as an event, once per subscriber
    // as an invocation.
    let (events, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT payload) FROM events")
            .fetch_one(&servers.pool)
            .await
            .unwrap();
    assert_eq!((events, distinct), (N as i64, N as i64));
    let ids: Vec<(String, i64)> = sqlx::query_as(
        "SELECT message_id, (SELECT count(*) FROM events e WHERE e.id = m.event_id)
         FROM inbound_messages m",
    )
    .fetch_all(&servers.pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), N, "message ids recorded");
    assert!(
        ids.iter().all(|(_, n)| *n == 1),
        "a message id without its event"
    );
    let rows = ledger(&servers.pool).await;
    assert_eq!(rows.len(), 3 * N, "missing invocations");
    assert!(rows.values().all(|n| *n == 1), "duplicated invocations");
    for i in 0..N {
        for f in FUNCTIONS {
            assert!(rows.contains_key(&(format!("m-{i}"), f.to_string())));
        }
    }
    // The new server recorded exactly what the killed one had not: a redelivery of a message the
    // killed one recorded but never acked was a duplicate.
    let accepted = servers
        .metric(
            &fresh,
            "granda_inbound_messages_total{outcome=\"accepted\"}",
        )
        .await
        .unwrap_or(0.0);
    let duplicates = servers
        .metric(
            &fresh,
            "granda_inbound_messages_total{outcome=\"duplicate\"}",
        )
        .await
        .unwrap_or(0.0);
    eprintln!("the new server: {accepted} accepted, {duplicates} redeliveries seen as duplicates");
    assert_eq!(accepted as usize, N - routed);
    // Each invocation's message reached its queue (the outbox may add harmless duplicates).
    let queue = Topology::new(&servers.prefix).work_queue("parked-ledger");
    let depth = granda::broker::queue_depth(&conn, &queue).await.unwrap();
    assert!(depth as usize >= 3 * N, "{depth}");
    let _ = conn.close(200, "".into()).await;
    fresh.process.sigterm();
    let _ = fresh.process.wait_exit(Duration::from_secs(10)).await;
    servers.cleanup(&["parked-ledger"]).await;
}
