//! Published events: fan-out to 0, 1 and 3 subscribers, AMQP topic patterns, the events exchange
//! for outside observers, subscriptions management and idempotent publishing.

use std::time::Duration;

use futures_util::StreamExt;
use granda::broker::Topology;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, error_code, spawn_app};

const RUN: Duration = Duration::from_secs(30);

async fn subscribe(app: &TestApp, function: &str, pattern: &str) -> Value {
    let response = app
        .post_json(
            &format!("/v1/functions/{function}/subscriptions"),
            &json!({ "pattern": pattern }),
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

/// Publishes; panics unless 202. Returns the answer.
async fn publish(app: &TestApp, topic: &str, body: &str) -> Value {
    let response = app
        .post_with(
            &format!("/v1/events/{topic}"),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{answer}");
    answer
}

/// (function, invocation id) pairs of an answer, sorted by function.
fn fanned_out(answer: &Value) -> Vec<(String, Uuid)> {
    answer["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["function"].as_str().unwrap().to_string(),
                i["id"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_to_zero_one_and_three_subscribers() {
    let app = spawn_app().await;
    for name in ["star", "hash", "exact", "payments"] {
        app.register(name, "granda-test/env", json!({})).await;
    }
    subscribe(&app, "star", "orders.*").await;
    subscribe(&app, "hash", "orders.#").await;
    subscribe(&app, "exact", "orders.created").await;
    // Two matching patterns of one function: still one invocation.
    subscribe(&app, "exact", "#.created").await;
    subscribe(&app, "payments", "payments.*").await;

    // An observer outside Granda, bound to the events exchange.
    let connection = granda::broker::connect(&app.settings.amqp_url, "test-observer")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exchange = Topology::new(&app.settings.amqp_prefix).events_exchange();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = granda::broker::declare_listening_queue(&channel, &exchange, "orders.#")
        .await
        .unwrap();
    let mut observed = channel
        .basic_consume(
            queue.name().clone(),
            "observer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Three subscribers.
    let answer = publish(&app, "orders.created", r#"{"order": 1}"#).await;
    let event_id = answer["id"].as_str().unwrap().to_string();
    let three = fanned_out(&answer);
    let names: Vec<&str> = three.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["exact", "hash", "star"]);
    for (function, id) in &three {
        let record = app.wait_final(*id, RUN).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["trigger"], "event");
        assert_eq!(record["function"], function.as_str());
        assert_eq!(record["input"], r#"{"order": 1}"#);
        let output = record["output"].as_str().unwrap();
        assert!(
            output.contains("GRANDA_EVENT_TOPIC=orders.created\n"),
            "{output}"
        );
        assert!(output.contains(&format!("GRANDA_EVENT_ID={event_id}\n")));
        assert!(output.contains("GRANDA_CONTENT_TYPE=application/json\n"));
    }
    let delivery = tokio::time::timeout(Duration::from_secs(5), observed.next())
        .await
        .expect("the observer gets the event")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.routing_key.as_str(), "orders.created");
    assert_eq!(delivery.data, br#"{"order": 1}"#);
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        event_id
    );

    // One subscriber: `orders.#` matches `orders` (zero more words); `orders.*` does not.
    let one = fanned_out(&publish(&app, "orders", "{}").await);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, "hash");
    let two = fanned_out(&publish(&app, "orders.eu.created", "{}").await);
    let names: Vec<&str> = two.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["exact", "hash"]);

    // Nobody subscribes: recorded with zero invocations, not an error.
    let none = publish(&app, "inventory.low", "{}").await;
    assert!(fanned_out(&none).is_empty());
    let recorded: Value = app
        .get(&format!("/v1/events/{}", none["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(recorded["topic"], "inventory.low");
    assert_eq!(recorded["invocations"], json!([]));
    assert_eq!(recorded["payload"], "{}");
    let recorded: Value = app
        .get(&format!("/v1/events/{event_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(recorded["invocations"].as_array().unwrap().len(), 3);

    // payments saw none of it; star ran once, hash three times.
    assert!(app.invocations_of("payments").await.is_empty());
    assert_eq!(app.invocations_of("star").await.len(), 1);
    assert_eq!(app.invocations_of("hash").await.len(), 3);
    for (_, id) in one.iter().chain(&two) {
        assert_eq!(app.wait_final(*id, RUN).await["status"], "succeeded");
    }
    for bad in ["orders..x", "orders.*", "a%20b", "or%2Fders"] {
        let response = app.post_with(&format!("/v1/events/{bad}"), &[], "{}").await;
        assert_eq!(error_code(response, 400).await, "bad_request", "{bad}");
    }
    let _ = connection.close(200, "".into()).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_created_listed_deleted_and_checked() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let sub = subscribe(&app, "echo", "orders.*").await;
    assert_eq!(sub["function"], "echo");
    assert_eq!(sub["pattern"], "orders.*");
    subscribe(&app, "echo", "users.#").await;
    let dup = app
        .post_json(
            "/v1/functions/echo/subscriptions",
            &json!({"pattern": "orders.*"}),
        )
        .await;
    assert_eq!(error_code(dup, 409).await, "conflict");
    for bad in ["", "orders.", "orders.**", "a b", "orders.#x"] {
        let response = app
            .post_json("/v1/functions/echo/subscriptions", &json!({"pattern": bad}))
            .await;
        assert_eq!(error_code(response, 422).await, "invalid", "{bad:?}");
    }
    let missing = app
        .post_json(
            "/v1/functions/nobody/subscriptions",
            &json!({"pattern": "a"}),
        )
        .await;
    assert_eq!(error_code(missing, 404).await, "not_found");
    let list: Value = app
        .get("/v1/functions/echo/subscriptions")
        .await
        .json()
        .await
        .unwrap();
    let patterns: Vec<&str> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(patterns, ["orders.*", "users.#"]);

    let path = format!(
        "/v1/functions/echo/subscriptions/{}",
        sub["id"].as_str().unwrap()
    );
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_eq!(error_code(app.delete(&path).await, 404).await, "not_found");
    // Unsubscribed: no invocation for orders.created, still one for users.
    assert!(fanned_out(&publish(&app, "orders.created", "x").await).is_empty());
    let users = fanned_out(&publish(&app, "users.signed-up", "hi").await);
    assert_eq!(users.len(), 1);
    assert_eq!(app.wait_final(users[0].1, RUN).await["output"], "hi");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_with_an_idempotency_key_runs_nothing_twice() {
    let app = spawn_app().await;
    app.register("echo", "granda-test/echo", json!({})).await;
    subscribe(&app, "echo", "orders.*").await;
    let send = || {
        app.post_with(
            "/v1/events/orders.paid",
            &[("idempotency-key", "order-42-paid")],
            "paid",
        )
    };
    let first = send().await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = send().await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["invocations"], again["invocations"]);
    assert_eq!(app.invocations_of("echo").await.len(), 1);
    let other_topic = app
        .post_with(
            "/v1/events/orders.refunded",
            &[("idempotency-key", "order-42-paid")],
            "x",
        )
        .await;
    assert_eq!(error_code(other_topic, 409).await, "conflict");
    app.shutdown().await;
}

/// Issue 14, item 13: a function has at most `GRANDA_MAX_SUBSCRIPTIONS_PER_FUNCTION`
/// subscriptions (422 past it; a duplicate is still 409), and room comes back on unsubscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_per_function() {
    let app = crate::support::spawn_app_with(|s| s.max_subscriptions_per_function = 3).await;
    app.register("a", "granda-test/echo", json!({})).await;
    app.register("b", "granda-test/echo", json!({})).await;
    let first = subscribe(&app, "a", "x.1").await;
    subscribe(&app, "a", "x.2").await;
    subscribe(&app, "a", "x.#").await;
    let over = app
        .post_json("/v1/functions/a/subscriptions", &json!({"pattern": "x.4"}))
        .await;
    assert_eq!(error_code(over, 422).await, "invalid");
    let dup = app
        .post_json("/v1/functions/a/subscriptions", &json!({"pattern": "x.2"}))
        .await;
    assert_eq!(error_code(dup, 409).await, "conflict");
    // Another function has its own room.
    subscribe(&app, "b", "x.4").await;
    let gone = app
        .delete(&format!(
            "/v1/functions/a/subscriptions/{}",
            first["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(gone.status(), 204);
    subscribe(&app, "a", "x.4").await;
    // The index follows every change: x.4 reaches both, x.1 only through a's `x.#`.
    let answer = publish(&app, "x.4", "{}").await;
    let names: Vec<String> = fanned_out(&answer).into_iter().map(|(f, _)| f).collect();
    assert_eq!(names, ["a", "b"]);
    let answer = publish(&app, "x.1", "{}").await;
    let names: Vec<String> = fanned_out(&answer).into_iter().map(|(f, _)| f).collect();
    assert_eq!(names, ["a"]);
    app.shutdown().await;
}

/// Issue 14, item 13: 10,000 long patterns (put in behind the cap) don't make a publish scan
/// them. Matched linearly, each publish took 0.42 s and stalled `/healthz`: here the median
/// publish must stay under 200 ms and the median `/healthz`, asked while publishes go on, under
/// 100 ms (generous bounds, far below what a scan costs; the times seen are printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_patterns_are_matched_through_the_index() {
    let app = spawn_app().await;
    app.register("one", "granda-test/echo", json!({})).await;
    app.register("many", "granda-test/echo", json!({})).await;
    subscribe(&app, "one", "orders.created").await;
    let tail = vec!["#"; 40].join(".");
    sqlx::query(
        "INSERT INTO subscriptions (id, function, pattern)
         SELECT gen_random_uuid(), 'many', 'w' || i || '.' || $1 || '.never'
         FROM generate_series(1, 10000) AS i",
    )
    .bind(&tail)
    .execute(&app.pool)
    .await
    .unwrap();
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    // The first publish builds the index; the next ones reuse it.
    publish(&app, "orders.created", "{}").await;
    let mut publishes = Vec::new();
    for _ in 0..9 {
        let start = std::time::Instant::now();
        let answer = publish(&app, "orders.created", "{}").await;
        publishes.push(start.elapsed());
        let names: Vec<String> = fanned_out(&answer).into_iter().map(|(f, _)| f).collect();
        assert_eq!(names, ["one"]);
    }
    // /healthz while publishes (of a topic nothing runs for, still matched) go on beside it.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = {
        let http = app.client.clone();
        let url = app.url("/v1/events/orders.nobody");
        tokio::spawn(async move {
            while !*stopped.borrow() {
                let r = http.post(&url).json(&json!({})).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        })
    };
    let mut healthz = Vec::new();
    for _ in 0..9 {
        let start = std::time::Instant::now();
        assert_eq!(app.get("/healthz").await.status(), 200);
        healthz.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    publisher.await.unwrap();
    let (publish_median, healthz_median) = (median(publishes.clone()), median(healthz.clone()));
    eprintln!(
        "10000 patterns: publish median {publish_median:?} (all {publishes:?}), /healthz median {healthz_median:?} (all {healthz:?})"
    );
    assert!(
        publish_median < Duration::from_millis(200),
        "publish median {publish_median:?}"
    );
    assert!(
        healthz_median < Duration::from_millis(100),
        "/healthz median {healthz_median:?}"
    );
    // A topic a long pattern matches reaches it (and `one` is not matched).
    let long_topic = format!("w77.{}.never", vec!["a"; 50].join("."));
    let answer = publish(&app, &long_topic, "{}").await;
    let names: Vec<String> = fanned_out(&answer).into_iter().map(|(f, _)| f).collect();
    assert_eq!(names, ["many"]);
    app.shutdown().await;
}
