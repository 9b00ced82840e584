//! Messages whose values Postgres or a function's env can't take (NUL, control characters,
//! non-ASCII identifiers, headers too large to pass on) are dead-lettered at once with their
//! reason, and hold up nothing behind them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use granda::broker::Topology;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::json;

use super::{
    confirm_channel, dead_letters, events_with_payload, header_text, publish, publish_props,
    subscribe, wait_until,
};
use crate::schedules::delete_queue;
use crate::support::spawn_app;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(name.into(), value);
    BasicProperties::default().with_headers(table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgres_or_env_refuse_are_dead_lettered_at_once_and_block_nothing() {
    let app = spawn_app().await;
    app.register(
        "catchall",
        "granda-test/echo",
        json!({"queue": "parked-refused"}),
    )
    .await;
    subscribe(&app, "catchall", "#").await;
    let (conn, ch) = confirm_channel().await;
    let exchange = Topology::new(&app.settings.amqp_prefix).inbound_exchange();

    // Body = case name; the reason each must be dead-lettered with.
    let cases: Vec<(&str, BasicProperties, &str)> = vec![
        (
            "nul-message-id",
            BasicProperties::default().with_message_id(ShortString::from("id\0nul")),
            "bad message_id",
        ),
        (
            "non-ascii-message-id",
            BasicProperties::default().with_message_id(ShortString::from("zürich-1")),
            "bad message_id",
        ),
        (
            "nul-content-type",
            BasicProperties::default().with_content_type(ShortString::from("text/plain\0")),
            "bad content_type",
        ),
        (
            "crlf-content-type",
            BasicProperties::default()
                .with_content_type(ShortString::from("text/plain\r\nX-Evil: 1")),
            "bad content_type",
        ),
        (
            "nul-header-value",
            with_header("tenant", long("ac\0me")),
            "bad header \"tenant\"",
        ),
        (
            "crlf-header-value",
            with_header("tenant", long("acme\r\nX-Evil: 1")),
            "bad header \"tenant\"",
        ),
        (
            "control-header-name",
            with_header("ten\nant", long("acme")),
            "bad header",
        ),
        (
            "nul-in-nested-header",
            with_header(
                "nested",
                AMQPValue::FieldArray(vec![long("ok"), long("n\0ul")].into()),
            ),
            "bad header \"nested\"",
        ),
        (
            "headers-too-large-for-env",
            with_header("big", long(&"x".repeat(2000))),
            "can't be passed on to functions: GRANDA_EVENT_HEADERS",
        ),
    ];
    let n = cases.len();
    let published = Instant::now();
    for (body, props, _) in &cases {
        let props = props.clone().with_headers({
            let mut h = props.headers().clone().unwrap_or_default();
            h.insert("case".into(), long(body));
            h
        });
        publish_props(&ch, &exchange, "refused.case", body.as_bytes(), props).await;
    }
    // A good message right behind them.
    publish(&ch, &app, "refused.good", b"good", Some("good-1"), &[]).await;

    // Each lands in the dead-letter queue with its reason, without the ~20 retries a message
    // Postgres refuses would otherwise go through (minutes, one at a time).
    let dead = dead_letters(&ch, &app, n, Duration::from_secs(20)).await;
    eprintln!(
        "{n} refused messages dead-lettered {:?} after publishing",
        published.elapsed()
    );
    let reasons: BTreeMap<String, String> = dead
        .iter()
        .map(|m| {
            (
                String::from_utf8(m.data.clone()).unwrap(),
                header_text(m, "x-granda-reason"),
            )
        })
        .collect();
    for (body, _, reason) in &cases {
        let got = reasons
            .get(*body)
            .unwrap_or_else(|| panic!("{body} not dead-lettered: {reasons:?}"));
        assert!(got.starts_with(reason), "{body}: {got:?}");
        let m = dead.iter().find(|m| m.data == body.as_bytes()).unwrap();
        assert_eq!(header_text(m, "x-granda-routing-key"), "refused.case");
        assert!(
            m.properties
                .headers()
                .as_ref()
                .is_some_and(|h| !h.inner().contains_key("x-death")),
            "{body} was dead-lettered by the broker after retries, not by the router"
        );
    }
    wait_until(
        "the good message is routed",
        Duration::from_secs(15),
        || async { events_with_payload(&app, "good").await == 1 },
    )
    .await;
    eprintln!(
        "the good message behind them was routed {:?} after publishing",
        published.elapsed()
    );
    let (events, invocations): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM invocations)")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (events, invocations),
        (1, 1),
        "refused messages record nothing"
    );
    assert_eq!(
        app.metric("granda_inbound_messages_total{outcome=\"dead\"}")
            .await,
        Some(n as f64)
    );
    let _ = conn.close(200, "".into()).await;
    delete_queue(&app, "parked-refused").await;
    app.shutdown().await;
}
