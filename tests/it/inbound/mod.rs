//! Events published straight to RabbitMQ (`<prefix>.inbound`): with lapin and with Python's pika,
//! fanned out once per subscriber, `message_id` as idempotency key, bad messages dead-lettered
//! with their reason, and a router killed mid-batch losing and duplicating nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use granda::broker::Topology;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde_json::{Value, json};

mod crash;
mod headers;
mod refusals;
mod snippets;

use crate::schedules::delete_queue;
use crate::support::{TestApp, amqp_url, spawn_app, spawn_app_with};

async fn subscribe(app: &TestApp, function: &str, pattern: &str) {
    let r = app
        .post_json(
            &format!("/v1/functions/{function}/subscriptions"),
            &json!({ "pattern": pattern }),
        )
        .await;
    assert_eq!(r.status(), 201);
}

async fn confirm_channel() -> (Connection, Channel) {
    let c = granda::broker::connect(&amqp_url(), "test-publisher")
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (c, ch)
}

/// Publishes to the inbound exchange with confirms (mandatory: a message no queue takes fails).
async fn publish(
    ch: &Channel,
    app: &TestApp,
    topic: &str,
    body: &[u8],
    message_id: Option<&str>,
    headers: &[(&str, &str)],
) {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            (*k).into(),
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
        );
    }
    let mut props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_headers(table);
    if let Some(id) = message_id {
        props = props.with_message_id(ShortString::from(id));
    }
    let exchange = Topology::new(&app.settings.amqp_prefix).inbound_exchange();
    publish_props(ch, &exchange, topic, body, props).await;
}

/// Publishes persistent `body` with `props` to `exchange`, mandatory, and waits for the confirm.
async fn publish_props(
    ch: &Channel,
    exchange: &str,
    topic: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            topic.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props.with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matches!(confirm, Confirmation::Ack(None)),
        "not confirmed: {confirm:?}"
    );
}

/// Takes `n` messages off the app's inbound dead-letter queue, waiting up to `within`.
async fn dead_letters(
    ch: &Channel,
    app: &TestApp,
    n: usize,
    within: Duration,
) -> Vec<lapin::message::Delivery> {
    let dead = Topology::new(&app.settings.amqp_prefix).inbound_dead_queue();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n {
        assert!(
            start.elapsed() < within,
            "{} of {n} dead-lettered within {within:?}: {:?}",
            got.len(),
            got.iter()
                .map(|m: &lapin::message::Delivery| String::from_utf8_lossy(&m.data).to_string())
                .collect::<Vec<_>>()
        );
        match ch
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => got.push(m.delivery),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    got
}

/// A long-string header of a delivery, as text; panics if it is missing.
fn header_text(m: &lapin::message::Delivery, name: &str) -> String {
    let headers = m.properties.headers().clone().unwrap_or_default();
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).to_string(),
        other => panic!("{name}: {other:?} in {headers:?}"),
    }
}

/// Invocations per (input, function) for the event trigger, in the database of `pool`.
async fn ledger(pool: &sqlx::PgPool) -> BTreeMap<(String, String), i64> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT convert_from(input, 'UTF8'), function, count(*) FROM invocations
         WHERE trigger = 'event' GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(i, f, n)| ((i, f), n)).collect()
}

async fn events_with_payload(app: &TestApp, payload: &str) -> i64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM events WHERE convert_from(payload, 'UTF8') = $1")
            .bind(payload)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    n
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publish_runs_each_subscriber_once_and_a_repeated_message_id_runs_once() {
    let app = spawn_app().await;
    app.register("shipper", "granda-test/env", json!({})).await;
    app.register("billing", "granda-test/echo", json!({})).await;
    app.register("bystander", "granda-test/echo", json!({}))
        .await;
    subscribe(&app, "shipper", "orders.*").await;
    subscribe(&app, "billing", "orders.#").await;
    subscribe(&app, "bystander", "payments.*").await;
    let (conn, ch) = confirm_channel().await;
    let body = br#"{"order":1}"#;
    // The same message twice, as a publisher that retries does.
    for _ in 0..2 {
        publish(
            &ch,
            &app,
            "orders.created",
            body,
            Some("order-1"),
            &[("tenant", "acme")],
        )
        .await;
    }

    wait_until("the duplicate is seen", Duration::from_secs(20), || async {
        app.metric("granda_inbound_messages_total{outcome=\"duplicate\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert_eq!(events_with_payload(&app, r#"{"order":1}"#).await, 1);
    let l = ledger(&app.pool).await;
    let key = |f: &str| (r#"{"order":1}"#.to_string(), f.to_string());
    assert_eq!(l.get(&key("shipper")), Some(&1), "{l:?}");
    assert_eq!(l.get(&key("billing")), Some(&1), "{l:?}");
    assert_eq!(l.get(&key("bystander")), None, "{l:?}");

    // The run sees the topic, the event, the content type, the message id and the headers.
    let shipper = app.invocations_of("shipper").await;
    let id = shipper[0]["id"].as_str().unwrap().parse().unwrap();
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["trigger"], "event");
    let out = record["output"].as_str().unwrap();
    assert!(out.contains("GRANDA_EVENT_TOPIC=orders.created\n"), "{out}");
    assert!(
        out.contains("GRANDA_CONTENT_TYPE=application/json\n"),
        "{out}"
    );
    assert!(out.contains("GRANDA_EVENT_MESSAGE_ID=order-1\n"), "{out}");
    assert!(
        out.contains(r#"GRANDA_EVENT_HEADERS={"tenant":"acme"}"#),
        "{out}"
    );
    let event_id = out
        .lines()
        .find_map(|l| l.strip_prefix("GRANDA_EVENT_ID="))
        .unwrap();
    let event: Value = app
        .get(&format!("/v1/events/{event_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(event["topic"], "orders.created");
    assert_eq!(event["invocations"].as_array().unwrap().len(), 2);
    let billing = app.invocations_of("billing").await;
    let id = billing[0]["id"].as_str().unwrap().parse().unwrap();
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["output"], r#"{"order":1}"#);

    // Without a message id, each delivery is its own event.
    publish(&ch, &app, "orders.updated", b"anon", None, &[]).await;
    publish(&ch, &app, "orders.updated", b"anon", None, &[]).await;
    wait_until("two anonymous events", Duration::from_secs(20), || async {
        events_with_payload(&app, "anon").await == 2
    })
    .await;
    let _ = conn.close(200, "".into()).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pika_publishes_with_confirms_and_the_subscriber_runs_once() {
    let app = spawn_app().await;
    app.register("pyconsumer", "granda-test/echo", json!({}))
        .await;
    subscribe(&app, "pyconsumer", "sensors.#").await;
    let exchange = Topology::new(&app.settings.amqp_prefix).inbound_exchange();
    let script = r#"
import sys, pika
url, exchange = sys.argv[1], sys.argv[2]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
props = pika.BasicProperties(content_type="text/plain", delivery_mode=2,
                             message_id="reading-42", headers={"source": "pika"})
for _ in range(2):  # a retry with the same message_id runs once
    channel.basic_publish(exchange, "sensors.kitchen.temp", b"21.5", props, mandatory=True)
connection.close()
print("published")
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &amqp_url(), &exchange])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the pika publisher failed (pika is installed by scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "published");
    wait_until("the pika event ran", Duration::from_secs(30), || async {
        let list = app.invocations_of("pyconsumer").await;
        list.iter().any(|r| r["status"] == "succeeded")
    })
    .await;
    wait_until("both deliveries seen", Duration::from_secs(20), || async {
        app.metric("granda_inbound_messages_total{outcome=\"duplicate\"}")
            .await
            == Some(1.0)
    })
    .await;
    let list = app.invocations_of("pyconsumer").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["input"], "21.5");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_lands_in_the_dead_letter_queue_with_its_reason() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    app.register(
        "catchall",
        "granda-test/echo",
        json!({"queue": "parked-dead"}),
    )
    .await;
    subscribe(&app, "catchall", "#").await;
    let (conn, ch) = confirm_channel().await;
    publish(
        &ch,
        &app,
        "bad topic!",
        b"spaces",
        Some("b1"),
        &[("keep", "me")],
    )
    .await;
    publish(&ch, &app, "a..b", b"empty word", Some("b2"), &[]).await;
    publish(&ch, &app, "fine.topic", &vec![b'x'; 2000], Some("b3"), &[]).await;
    publish(&ch, &app, "fine.topic", b"ok", Some("b4"), &[]).await;

    let mut reasons = BTreeMap::new();
    for m in dead_letters(&ch, &app, 3, Duration::from_secs(20)).await {
        let id = m.properties.message_id().as_ref().unwrap().to_string();
        if id == "b1" {
            assert_eq!(
                header_text(&m, "keep"),
                "me",
                "the publisher's headers are kept"
            );
            assert_eq!(m.data, b"spaces");
            assert_eq!(header_text(&m, "x-granda-routing-key"), "bad topic!");
        }
        reasons.insert(id, header_text(&m, "x-granda-reason"));
    }
    assert!(reasons["b1"].starts_with("bad topic"), "{reasons:?}");
    assert!(reasons["b2"].starts_with("bad topic"), "{reasons:?}");
    assert!(reasons["b3"].starts_with("too large"), "{reasons:?}");
    assert!(!reasons.contains_key("b4"));
    wait_until(
        "the good one is accepted",
        Duration::from_secs(20),
        || async { events_with_payload(&app, "ok").await == 1 },
    )
    .await;
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "refused messages record nothing");
    assert_eq!(
        app.metric("granda_inbound_messages_total{outcome=\"dead\"}")
            .await,
        Some(3.0)
    );
    let _ = conn.close(200, "".into()).await;
    delete_queue(&app, "parked-dead").await;
    app.shutdown().await;
}
