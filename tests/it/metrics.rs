//! `/metrics`: every family has `# HELP` and `# TYPE`; HTTP requests are counted and timed by
//! route template (never a raw path with ids in it); builds and callbacks are counted; no label
//! carries a count.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, eventually, spawn_app, spawn_app_with};

/// One sample line: its name, its labels and its value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Parses the text format's sample lines (label values here hold no `,` or `"`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value of {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("k=v");
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    (k.to_string(), v.expect("a quoted value").to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
            }
        })
        .collect()
}

/// Checks the whole exposition: HELP and TYPE on every family, no numeric label values.
fn check_exposition(text: &str) -> Vec<Sample> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                typed.insert(name.into(), kind.into()).is_none(),
                "two TYPE lines for {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            helped.insert(name.into());
        }
    }
    let samples = samples(text);
    for s in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| s.name.strip_suffix(suffix))
            .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(&s.name);
        assert!(typed.contains_key(family), "{} has no # TYPE", s.name);
        assert!(helped.contains(family), "{} has no # HELP", s.name);
        for (k, v) in &s.labels {
            // `le` is a bucket's bound and `status` an HTTP status code: numbers by definition,
            // and bounded. Any other numeric value is a count in a label.
            if k == "le" || k == "status" {
                continue;
            }
            assert!(
                v.parse::<f64>().is_err(),
                "{}{{{k}=\"{v}\"}}: a label whose value is a number",
                s.name
            );
        }
    }
    samples
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

async fn value(app: &TestApp, series: &str) -> Option<f64> {
    app.metric(series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_measured_by_route_template_and_every_family_is_described() {
    let app = spawn_app().await;
    let id = "00000000-0000-0000-0000-000000000000";
    assert_eq!(app.get("/v1/functions").await.status(), 200);
    assert_eq!(app.get("/v1/functions/nope-one").await.status(), 404);
    assert_eq!(app.get("/v1/functions/nope-two").await.status(), 404);
    assert_eq!(
        app.get(&format!("/v1/invocations/{id}")).await.status(),
        404
    );
    assert_eq!(app.get("/no/such/route/4711").await.status(), 404);
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser
        .get(app.url("/ui/functions/nope-three"))
        .send()
        .await;
    // No session: sent to the login form.
    assert_eq!(page.unwrap().status(), 303);
    assert_eq!(app.get("/ui/no-such-page").await.status(), 404);
    let anonymous = reqwest::get(app.url("/v1/functions")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let published = app.post_with("/v1/events/orders.created", &[], "{}").await;
    assert_eq!(published.status(), 202);

    let text = app.metrics().await;
    let samples = check_exposition(&text);
    let requests = "granda_http_requests_total";
    let count = |route: &str, method: &str, status: &str| {
        find(
            &samples,
            requests,
            &[("route", route), ("method", method), ("status", status)],
        )
        .is_some()
    };
    assert!(count("/v1/functions", "GET", "200"), "{text}");
    assert!(
        count("/v1/functions", "GET", "401"),
        "refused by auth, counted: {text}"
    );
    assert!(count("/v1/functions/{name}", "GET", "404"), "{text}");
    assert!(count("/v1/invocations/{id}", "GET", "404"), "{text}");
    assert!(count("unmatched", "GET", "404"), "{text}");
    assert!(count("/v1/events/{topic}", "POST", "202"), "{text}");
    // The dashboard's own routes, nested under /ui, by their full template.
    assert!(count("/ui/functions/{name}", "GET", "303"), "{text}");
    assert!(
        value(
            &app,
            "granda_http_requests_total{route=\"/v1/functions/{name}\",method=\"GET\",status=\"404\"}"
        )
        .await
            == Some(2.0),
        "both names in one series: {text}"
    );
    let durations = find(
        &samples,
        "granda_http_request_duration_seconds_count",
        &[("route", "/v1/functions/{name}"), ("method", "GET")],
    );
    assert!(durations.is_some(), "{text}");
    // No raw path: no id, no name, no unknown path in any label.
    for raw in [
        "nope-one",
        "nope-two",
        "nope-three",
        id,
        "no/such",
        "orders.created",
    ] {
        assert!(!text.contains(raw), "{raw} leaked into a label: {text}");
    }
    // An event's fan-out is a counter, not a label.
    assert!(!text.contains("fanned_out"), "{text}");
    assert_eq!(
        value(&app, "granda_events_published_total").await,
        Some(1.0)
    );
    assert_eq!(
        value(&app, "granda_event_invocations_total").await,
        Some(0.0)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_counted_by_outcome_and_timed() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/v1/functions",
            &json!({"name": "broken", "runtime": "shell", "source": "case in\n"}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "build_failed", "{body}");
    let text = app.metrics().await;
    check_exposition(&text);
    assert_eq!(
        value(
            &app,
            "granda_builds_total{runtime=\"shell\",outcome=\"failed\"}"
        )
        .await,
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &app,
            "granda_build_duration_seconds_count{runtime=\"shell\"}"
        )
        .await,
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("# HELP granda_builds_total "), "{text}");
    app.shutdown().await;
}

/// A receiver on 127.0.0.1 that answers 500 to its first request and 200 after.
async fn flaky_receiver() -> String {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move || {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_deliveries_are_counted_by_outcome() {
    let app = spawn_app_with(|s| {
        s.callback_allow_nets = granda::callback::AllowNets::parse("127.0.0.0/8").unwrap();
        s.callback_backoff_ms = 50;
    })
    .await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let url = flaky_receiver().await;
    let response = app
        .post_with(
            "/v1/functions/echo/invocations",
            &[("x-callback-url", url.as_str())],
            "hi",
        )
        .await;
    assert_eq!(response.status(), 202);
    let delivered = "granda_callback_deliveries_total{outcome=\"delivered\"}";
    eventually(
        Duration::from_secs(60),
        "the callback is delivered",
        || async { value(&app, delivered).await.filter(|v| *v >= 1.0) },
    )
    .await;
    let text = app.metrics().await;
    check_exposition(&text);
    assert_eq!(value(&app, delivered).await, Some(1.0), "{text}");
    assert_eq!(
        value(&app, "granda_callback_retries_total").await,
        Some(1.0),
        "{text}"
    );
    // Known from the start, at 0 (issue 30: no holes), and still 0.
    assert_eq!(
        value(&app, "granda_callback_deliveries_total{outcome=\"failed\"}").await,
        Some(0.0),
        "{text}"
    );
    app.shutdown().await;
}

/// Issue 30: `granda_invocation_retries_total` counts (it was documented and never incremented),
/// a function's series are at 0 from its first run, and a deleted function's series go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_counted_and_a_deleted_functions_series_are_removed() {
    let app = spawn_app_with(|s| {
        s.retry_base_ms = 100;
        s.retry_max_ms = 400;
    })
    .await;
    // Known label values are there before any event.
    let text = app.metrics().await;
    for series in [
        "granda_invocations_accepted_total{trigger=\"webhook\"} 0",
        "granda_callback_deliveries_total{outcome=\"failed\"} 0",
        "granda_schedule_fired_total 0",
        "# TYPE granda_invocation_retries_total counter",
        "# TYPE granda_image_pull_seconds histogram",
    ] {
        assert!(text.contains(series), "{series}:\n{text}");
    }
    app.register(
        "flaky",
        "granda-test/fail",
        json!({"max_attempts": 3, "retry_on": ["error"]}),
    )
    .await;
    let id = app.invoke_async("flaky", "x").await;
    let record = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "dead", "{record}");
    let retries = "granda_invocation_retries_total{function=\"flaky\",reason=\"error\"}";
    assert_eq!(value(&app, retries).await, Some(2.0));
    assert_eq!(
        value(
            &app,
            "granda_invocation_retries_total{function=\"flaky\",reason=\"timeout\"}"
        )
        .await,
        Some(0.0)
    );
    assert_eq!(
        value(
            &app,
            "granda_invocations_total{function=\"flaky\",status=\"succeeded\"}"
        )
        .await,
        Some(0.0)
    );
    assert_eq!(app.delete("/v1/functions/flaky").await.status(), 204);
    let text = app.metrics().await;
    assert!(!text.contains("function=\"flaky\""), "{text}");
    app.shutdown().await;
}

/// Issue 30: a function deleted through the ingress loses its series on a standalone worker
/// that ran it too (its own registry, its own `/metrics`), and a namespaced function's series
/// go with it (they are labelled with its stored name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_functions_series_go_from_a_standalone_workers_metrics_too() {
    use crate::faults::infra::{GrandaProcess, free_port};
    use crate::support::{ADMIN_KEY, client_with_key, postgres_base};
    // The ingress's own worker serves another queue: the standalone worker runs `default`.
    let app = spawn_app_with(|s| s.queues = vec!["not-this-one".into()]).await;
    app.register("echo", "granda-test/echo", json!({})).await;
    let db = app.settings.database_url.rsplit('/').next().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let worker = GrandaProcess::spawn(
        &["worker"],
        &[
            ("GRANDA_DATABASE_URL", format!("{}/{db}", postgres_base())),
            ("GRANDA_AMQP_URL", app.settings.amqp_url.clone()),
            ("GRANDA_AMQP_PREFIX", app.settings.amqp_prefix.clone()),
            (
                "GRANDA_WORKER_ID",
                format!("deleted-{}", uuid::Uuid::new_v4().simple()),
            ),
            ("GRANDA_WORKER_LISTEN", listen.clone()),
            ("GRANDA_ADMIN_KEY", ADMIN_KEY.to_string()),
        ],
    );
    let base = format!("http://{listen}");
    worker.wait_healthy(&base, Duration::from_secs(60)).await;
    let response = app.invoke("echo", "hi").await;
    assert_eq!(response.status(), 200, "{}", worker.log());
    let client = client_with_key(ADMIN_KEY);
    let scrape = || async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = scrape().await;
    assert!(
        text.contains("granda_invocations_total{function=\"echo\",status=\"succeeded\"} 1"),
        "{text}"
    );
    assert_eq!(app.delete("/v1/functions/echo").await.status(), 204);
    let text = scrape().await;
    assert!(!text.contains("function=\"echo\""), "{text}");
    assert!(
        text.contains("# TYPE granda_invocations_total counter"),
        "{text}"
    );
    worker.sigterm();
    worker.wait_exit(Duration::from_secs(30)).await;
    app.shutdown().await;
}
