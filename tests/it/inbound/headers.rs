//! AMQP headers of every type are kept as JSON (tables → objects, arrays → arrays, timestamps →
//! numbers, UTF-8 bytes → strings), in the event record and in `GRANDA_EVENT_HEADERS`; a header
//! that can't be kept (bytes that are not UTF-8) refuses the message with its reason.

use std::time::Duration;

use granda::broker::Topology;
use granda::producer::inbound::{ascii_json, headers_json};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use serde_json::{Value, json};

use super::{
    confirm_channel, dead_letters, events_with_payload, header_text, publish_props, subscribe,
    wait_until,
};
use crate::support::spawn_app;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// One header of every AMQP type RabbitMQ carries, nested in tables and arrays (a short string
/// has no type code of its own on the wire: RabbitMQ's `s` is a 16-bit integer).
fn every_type() -> (FieldTable, Value) {
    let mut inner = FieldTable::default();
    inner.insert("region".into(), long("eu-west"));
    inner.insert("weight".into(), AMQPValue::Double(2.5));
    let mut t = FieldTable::default();
    t.insert("text".into(), long("Zürich"));
    t.insert("yes".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("u16".into(), AMQPValue::ShortUInt(16));
    t.insert("i64".into(), AMQPValue::LongLongInt(-1 << 40));
    t.insert("f32".into(), AMQPValue::Float(0.5));
    t.insert(
        "price".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 1999,
        }),
    );
    t.insert("sent".into(), AMQPValue::Timestamp(1_767_225_600));
    t.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(b"raw text".to_vec())),
    );
    t.insert("nothing".into(), AMQPValue::Void);
    t.insert("where".into(), AMQPValue::FieldTable(inner));
    t.insert(
        "tags".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            long("a"),
            AMQPValue::LongInt(2),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(false)])),
        ])),
    );
    let expected = json!({
        "text": "Zürich", "yes": true, "i8": -8, "u16": 16,
        "i64": -1_099_511_627_776_i64, "f32": 0.5, "price": 19.99, "sent": 1_767_225_600,
        "bytes": "raw text", "nothing": null,
        "where": {"region": "eu-west", "weight": 2.5},
        "tags": ["a", 2, [false]],
    });
    (t, expected)
}

#[test]
fn every_amqp_header_type_maps_to_json() {
    let (mut table, mut expected) = every_type();
    table.insert("short".into(), AMQPValue::ShortString("s".into()));
    expected["short"] = json!("s");
    let got = headers_json(Some(&table)).unwrap();
    assert_eq!(Value::Object(got), expected);

    let refused = |name: &str, v: AMQPValue| {
        let mut t = FieldTable::default();
        t.insert(name.into(), v);
        headers_json(Some(&t)).unwrap_err().to_string()
    };
    let why = refused(
        "blob",
        AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0xfe, 0x00])),
    );
    assert!(
        why.contains("\"blob\"") && why.contains("not UTF-8"),
        "{why}"
    );
    let mut deep = AMQPValue::Boolean(true);
    for _ in 0..40 {
        deep = AMQPValue::FieldArray(FieldArray::from(vec![deep]));
    }
    assert!(refused("deep", deep).contains("nest"));
    let mut bad_key = FieldTable::default();
    bad_key.insert("a\u{7}".into(), long("x"));
    assert!(refused("t", AMQPValue::FieldTable(bad_key)).contains("control"));

    // As env: printable ASCII, the same JSON once decoded.
    let value = json!({"city": "Zürich", "emoji": "🦀", "q": "\"x\""});
    let text = ascii_json(&value);
    assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{text}");
    assert!(
        text.contains(r"Z\u00fcrich") && text.contains(r"\ud83e\udd80"),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_of_every_type_reach_the_function_and_the_event_record() {
    let app = spawn_app().await;
    app.register("headers", "granda-test/env", json!({})).await;
    subscribe(&app, "headers", "typed.#").await;
    let (conn, ch) = confirm_channel().await;
    let exchange = Topology::new(&app.settings.amqp_prefix).inbound_exchange();
    let (table, expected) = every_type();
    publish_props(
        &ch,
        &exchange,
        "typed.all",
        b"typed",
        BasicProperties::default().with_headers(table),
    )
    .await;
    // Bytes that are not text can't be a JSON string: refused, with the reason.
    let mut blob = FieldTable::default();
    blob.insert(
        "blob".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0xde, 0xad, 0xbe, 0xef])),
    );
    publish_props(
        &ch,
        &exchange,
        "typed.blob",
        b"blob",
        BasicProperties::default().with_headers(blob),
    )
    .await;

    let dead = dead_letters(&ch, &app, 1, Duration::from_secs(20)).await;
    assert_eq!(dead[0].data, b"blob");
    let reason = header_text(&dead[0], "x-granda-reason");
    assert!(
        reason.starts_with("bad header \"blob\"") && reason.contains("not UTF-8"),
        "{reason}"
    );

    wait_until("the typed event", Duration::from_secs(20), || async {
        events_with_payload(&app, "typed").await == 1
    })
    .await;
    let (stored,): (Value,) =
        sqlx::query_as("SELECT headers FROM events WHERE topic = 'typed.all'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, expected);

    let list = app.invocations_of("headers").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().unwrap().parse().unwrap();
    let record = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let out = record["output"].as_str().unwrap();
    let env = out
        .lines()
        .find_map(|l| l.strip_prefix("GRANDA_EVENT_HEADERS="))
        .unwrap_or_else(|| panic!("no GRANDA_EVENT_HEADERS in {out}"));
    assert_eq!(
        serde_json::from_str::<Value>(env).unwrap(),
        expected,
        "{env}"
    );
    assert_eq!(events_with_payload(&app, "blob").await, 0);
    let _ = conn.close(200, "".into()).await;
    app.shutdown().await;
}
