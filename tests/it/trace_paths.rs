//! Trace context on the paths that do not start at a caller's HTTP call to a function, each
//! checked against the real OTLP/HTTP receiver (tests/otlp/receiver.py) of a `granda up`
//! process: a published event's fan-out, a webhook delivery, a schedule's tick, an inbound AMQP
//! message's own `traceparent`, a result callback's POST, and a retried invocation's attempts
//! (one `invocation` and `run` span each, and a row each in `attempts`), and the outbox's
//! re-publish of a record the broker never confirmed (in the trace stored with it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::faults::infra::{GrandaProcess, free_port};
use crate::otel::{Receiver, descends, named, server};
use crate::support::*;

/// The trace id and parent span id of `TRACEPARENT=00-<trace>-<span>-01` in a run's env output.
fn traceparent_in(output: &str) -> (String, String) {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("TRACEPARENT="))
        .unwrap_or_else(|| panic!("no TRACEPARENT in {output}"));
    let parts: Vec<&str> = line.split('-').collect();
    assert_eq!(parts.len(), 4, "{line}");
    (parts[1].to_string(), parts[2].to_string())
}

/// Whether the spans of a trace hold one named `name` and `child` descends from it, all spans
/// between them there (a parent is exported when it ends, after its children).
fn under(spans: &[Value], child: impl Fn(&Value) -> bool, name: &str) -> bool {
    let Some(ancestor) = spans.iter().find(|s| s["name"] == name) else {
        return false;
    };
    spans
        .iter()
        .any(|s| child(s) && descends(spans, s, ancestor))
}

/// Waits until the span the function saw (`seen`, its TRACEPARENT) is a `run` span of `trace`
/// descending from the span named `entry`; returns the trace's spans. (The receiver's `trace`
/// times out, naming what it has, when it never is.)
async fn ran_under(receiver: &Receiver, trace: &str, entry: &str, seen: &str) -> Vec<Value> {
    let spans = receiver
        .trace(trace, |s| under(s, |x| x["span_id"] == seen, entry))
        .await;
    let run = spans.iter().find(|s| s["span_id"] == seen).unwrap();
    assert_eq!(run["name"], "run", "{spans:#?}");
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_webhooks_schedules_inbound_callbacks_and_retries_each_carry_one_trace() {
    ensure_test_images();
    granda::tls::install_provider();
    let receiver = Receiver::start();
    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let db_name = format!("granda_test_{tag}");
    let prefix = format!("granda-test-{tag}");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let env = vec![
        (
            "GRANDA_DATABASE_URL",
            format!("{}/{db_name}", postgres_base()),
        ),
        ("GRANDA_AMQP_URL", amqp_url()),
        ("GRANDA_AMQP_PREFIX", prefix.clone()),
        ("GRANDA_LISTEN", format!("127.0.0.1:{port}")),
        ("GRANDA_WORKER_ID", format!("up-{tag}")),
        ("GRANDA_ADMIN_KEY", ADMIN_KEY.to_string()),
        ("GRANDA_CALLBACK_ALLOW_NETS", "127.0.0.0/8".to_string()),
        ("GRANDA_RETRY_BASE_MS", "100".to_string()),
        ("GRANDA_RETRY_MAX_MS", "200".to_string()),
        ("GRANDA_OUTBOX_GRACE_MS", "2000".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", receiver.port),
        ),
        ("OTEL_SERVICE_NAME", "granda-up".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let up = GrandaProcess::spawn(&["up"], &env);
    up.wait_healthy(&base, Duration::from_secs(60)).await;
    let client = client_with_key(ADMIN_KEY);
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();
    let get = |path: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let final_record = |id: String| async move {
        eventually(Duration::from_secs(60), "a final record", || async {
            let r = get(format!("/v1/invocations/{id}")).await;
            let status = r["status"].as_str().unwrap_or_default();
            (!["queued", "running", ""].contains(&status)).then_some(r)
        })
        .await
    };
    let r = post(
        "/v1/functions",
        json!({"name": "env", "image": "granda-test/env"}),
    )
    .await;
    assert_eq!(r.unwrap().status(), 201, "{}", up.log());

    // A published event: each subscriber's invocation is in the publisher's trace, under the
    // `publish event` span.
    let r = post(
        "/v1/functions/env/subscriptions",
        json!({"pattern": "orders.*"}),
    )
    .await;
    assert_eq!(r.unwrap().status(), 201);
    let event_trace = "1bf92f3577b34da6a3ce929d0e0e4736";
    let published = client
        .post(format!("{base}/v1/events/orders.created"))
        .header(
            "traceparent",
            format!("00-{event_trace}-00f067aa0ba902b7-01"),
        )
        .body("an order")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    let published: Value = published.json().await.unwrap();
    let id = published["invocations"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let record = final_record(id).await;
    let (trace, seen) = traceparent_in(record["output"].as_str().unwrap());
    assert_eq!(trace, event_trace, "{record}");
    let spans = ran_under(&receiver, &trace, "publish event", &seen).await;
    assert!(descends(
        &spans,
        named(&spans, "publish event"),
        server(&spans)
    ));

    // A webhook delivery: a trace of its own, from the ingress's span of the request.
    let hook: Value = post("/v1/webhooks", json!({"function": "env", "scheme": "none"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut hook_traces = Vec::new();
    for _ in 0..2 {
        let delivered = reqwest::Client::new()
            .post(format!("{base}/hooks/{}", hook["id"].as_str().unwrap()))
            .body("a delivery")
            .send()
            .await
            .unwrap();
        assert_eq!(delivered.status(), 202);
        let delivered: Value = delivered.json().await.unwrap();
        let record = final_record(delivered["id"].as_str().unwrap().to_string()).await;
        let (trace, seen) = traceparent_in(record["output"].as_str().unwrap());
        let spans = receiver
            .trace(&trace, |s| {
                under(s, |x| x["span_id"] == seen, "POST /hooks/{id}")
            })
            .await;
        let http = server(&spans);
        assert_eq!(http["name"], "POST /hooks/{id}", "{spans:#?}");
        assert_eq!(http["parent_span_id"], "", "a root: {spans:#?}");
        let run = spans.iter().find(|s| s["span_id"] == seen).unwrap();
        assert!(descends(&spans, run, http), "{spans:#?}");
        hook_traces.push(trace);
    }
    assert_ne!(hook_traces[0], hook_traces[1], "a trace per delivery");

    // An inbound AMQP message's own traceparent is continued.
    let inbound_trace = "2bf92f3577b34da6a3ce929d0e0e4736";
    let connection = granda::broker::connect(&amqp_url(), "test-inbound")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(
            format!("00-{inbound_trace}-b7ad6b7169203331-01")
                .into_bytes()
                .into(),
        ),
    );
    let exchange = granda::broker::Topology::new(&prefix).inbound_exchange();
    channel
        .basic_publish(
            exchange.as_str().into(),
            "orders.shipped".into(),
            lapin::options::BasicPublishOptions::default(),
            b"shipped",
            lapin::BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    let spans = receiver
        .trace(inbound_trace, |s| {
            under(s, |x| x["name"] == "run", "inbound")
        })
        .await;
    let inbound = named(&spans, "inbound");
    assert_eq!(inbound["parent_span_id"], "b7ad6b7169203331", "{spans:#?}");
    assert!(
        descends(&spans, named(&spans, "run"), inbound),
        "{spans:#?}"
    );

    // A schedule: each tick starts a trace of its own.
    let r = post(
        "/v1/schedules",
        json!({"function": "env", "cron": "* * * * * *"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let schedule: Value = r.json().await.unwrap();
    let runs = eventually(Duration::from_secs(30), "two ticks' runs", || async {
        let list = get("/v1/functions/env/invocations?limit=50".into()).await;
        let done: Vec<Value> = list["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["trigger"] == "schedule" && r["status"] == "succeeded")
            .cloned()
            .collect();
        (done.len() >= 2).then_some(done)
    })
    .await;
    let _ = client
        .delete(format!(
            "{base}/v1/schedules/{}",
            schedule["id"].as_str().unwrap()
        ))
        .send()
        .await;
    let mut tick_traces = Vec::new();
    for record in &runs[..2] {
        let (trace, seen) = traceparent_in(record["output"].as_str().unwrap());
        let spans = ran_under(&receiver, &trace, "schedule", &seen).await;
        assert_eq!(
            named(&spans, "schedule")["parent_span_id"],
            "",
            "{spans:#?}"
        );
        tick_traces.push(trace);
    }
    assert_ne!(tick_traces[0], tick_traces[1], "a trace per tick");

    // A result callback's POST carries the invocation's trace, from a `callback` span.
    let seen_headers: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let state = seen_headers.clone();
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |headers: HeaderMap| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(headers);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback_url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let callback_trace = "3bf92f3577b34da6a3ce929d0e0e4736";
    let accepted = client
        .post(format!("{base}/v1/functions/env/invocations"))
        .header(
            "traceparent",
            format!("00-{callback_trace}-051581bf3cb55c13-01"),
        )
        .header("x-callback-url", &callback_url)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "{}", up.log());
    let headers = eventually(Duration::from_secs(30), "the callback", || async {
        seen_headers.lock().unwrap().first().cloned()
    })
    .await;
    let traceparent = headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], callback_trace, "{traceparent}");
    let spans = receiver
        .trace(callback_trace, |s| {
            under(
                s,
                |x| x["name"] == "callback",
                "POST /v1/functions/{name}/invocations",
            ) && under(
                s,
                |x| x["name"] == "run",
                "POST /v1/functions/{name}/invocations",
            )
        })
        .await;
    let callback = named(&spans, "callback");
    assert_eq!(callback["span_id"], parts[2], "{spans:#?}");
    assert!(descends(&spans, callback, server(&spans)), "{spans:#?}");

    // A retried invocation: an `invocation` and a `run` span per attempt in the caller's
    // trace, and a row per attempt in its record.
    let r = post(
        "/v1/functions",
        json!({"name": "flaky", "image": "granda-test/fail", "max_attempts": 2, "retry_on": ["error"]}),
    )
    .await;
    assert_eq!(r.unwrap().status(), 201);
    let retry_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let accepted: Value = client
        .post(format!("{base}/v1/functions/flaky/invocations"))
        .header(
            "traceparent",
            format!("00-{retry_trace}-00f067aa0ba902b7-01"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = final_record(accepted["id"].as_str().unwrap().to_string()).await;
    assert_eq!(record["status"], "dead", "{record}");
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{record}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status"], "retried");
    assert_eq!(attempts[0]["exit_code"], 3);
    assert_eq!(attempts[0]["worker"], format!("up-{tag}"));
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["status"], "dead");
    let spans = receiver
        .trace(retry_trace, |s| {
            let http = "POST /v1/functions/{name}/invocations";
            [1, 2].iter().all(|n| {
                under(
                    s,
                    |x| x["name"] == "invocation" && x["attributes"]["attempt"] == *n,
                    http,
                )
            }) && s
                .iter()
                .filter(|x| x["name"] == "run" && under(s, |y| y == *x, http))
                .count()
                == 2
        })
        .await;
    // Each run is in its own attempt's `invocation`.
    let attempt_of = |run: &Value| {
        spans
            .iter()
            .find(|s| s["span_id"] == run["parent_span_id"])
            .map(|s| s["attributes"]["attempt"].clone())
    };
    let mut numbers: Vec<String> = spans
        .iter()
        .filter(|s| s["name"] == "run")
        .filter_map(|run| attempt_of(run).map(|a| a.to_string()))
        .collect();
    numbers.sort();
    assert_eq!(numbers, vec!["1", "2"], "{spans:#?}");

    // The outbox: a record the broker never confirmed is published again in the trace it was
    // accepted in (stored with it).
    let pool = sqlx::PgPool::connect(&format!("{}/{db_name}", postgres_base()))
        .await
        .unwrap();
    let outbox_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, input, input_size, queued_at, traceparent)
         VALUES ($1, 'env', 'queued', 'async', ''::bytea, 0, now() - interval '1 minute', $2)",
    )
    .bind(id)
    .bind(format!("00-{outbox_trace}-00f067aa0ba902b7-01"))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let record = final_record(id.to_string()).await;
    let (trace, seen) = traceparent_in(record["output"].as_str().unwrap());
    assert_eq!(trace, outbox_trace, "{record}");
    let spans = ran_under(&receiver, &trace, "republish", &seen).await;
    assert_eq!(
        named(&spans, "republish")["parent_span_id"],
        "00f067aa0ba902b7",
        "{spans:#?}"
    );

    up.sigterm();
    up.wait_exit(Duration::from_secs(30)).await;
    if let Ok(admin) = sqlx::PgPool::connect(&format!("{}/postgres", postgres_base())).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
    }
    if let Ok(connection) = granda::broker::connect(&amqp_url(), "test-cleanup").await {
        let topology = granda::broker::Topology::new(&prefix);
        let settings = granda::config::Settings::from_env();
        let _ = granda::broker::delete_topology(
            &connection,
            &topology,
            &["default"],
            &settings.backoff().levels(),
        )
        .await;
    }
}
