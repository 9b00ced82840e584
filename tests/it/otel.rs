//! One trace from the caller to the function: `granda up` and a standalone `granda worker`, as
//! processes, export their spans to a real OTLP/HTTP receiver (tests/otlp/receiver.py, decoding
//! with the `opentelemetry-proto` package); their JSON log lines parse; `promtool check metrics`
//! passes on the ingress's and the worker's `/metrics`.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::faults::infra::{GrandaProcess, free_port};
use crate::support::*;

/// The OTLP/HTTP receiver, a child process; killed (by its own id) when dropped.
pub(crate) struct Receiver {
    child: Child,
    pub(crate) port: u16,
    spans: PathBuf,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let spans = std::env::temp_dir().join(format!("granda-otlp-{}.jsonl", Uuid::new_v4()));
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp/receiver.py"))
            .arg("0")
            .arg(&spans)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tests/otlp/receiver.py (scripts/setup.sh installs opentelemetry-proto)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("port? {line:?}"));
        Receiver { child, port, spans }
    }

    /// The spans written so far: each complete line (the receiver may be writing the last one).
    pub(crate) fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.spans).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The spans of `trace_id`, once `done` says they are all there.
    pub(crate) async fn trace(
        &self,
        trace_id: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        eventually(Duration::from_secs(30), "the trace's spans", || async {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            done(&spans).then_some(spans)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.spans);
    }
}

/// The span named `name`; panics with all of them when there is none.
pub(crate) fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

/// The ingress's span of the HTTP request (kind server, named after its method and route).
pub(crate) fn server(spans: &[Value]) -> &Value {
    spans
        .iter()
        .find(|s| s["kind"] == 2)
        .unwrap_or_else(|| panic!("no server span in {spans:#?}"))
}

/// Whether `child` descends from `ancestor` through the parents among `spans`.
pub(crate) fn descends(spans: &[Value], child: &Value, ancestor: &Value) -> bool {
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["span_id"].as_str().unwrap(), s))
        .collect();
    let mut at = child;
    for _ in 0..spans.len() {
        let parent = at["parent_span_id"].as_str().unwrap();
        if parent == ancestor["span_id"] {
            return true;
        }
        match by_id.get(parent) {
            Some(p) => at = p,
            None => return false,
        }
    }
    false
}

/// `promtool check metrics` on `text`: its complaints, empty when it passes.
fn promtool(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup.sh installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        String::new()
    } else {
        said
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_and_an_async_call_are_each_one_trace_from_the_caller_into_the_function() {
    ensure_test_images();
    granda::tls::install_provider();
    let receiver = Receiver::start();
    let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
    let db_name = format!("granda_test_{tag}");
    let prefix = format!("granda-test-{tag}");
    let (port, worker_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let env = |worker: &str| {
        vec![
            (
                "GRANDA_DATABASE_URL",
                format!("{}/{db_name}", postgres_base()),
            ),
            ("GRANDA_AMQP_URL", amqp_url()),
            ("GRANDA_AMQP_PREFIX", prefix.clone()),
            ("GRANDA_LISTEN", format!("127.0.0.1:{port}")),
            ("GRANDA_WORKER_ID", format!("{worker}-{tag}")),
            ("GRANDA_ADMIN_KEY", ADMIN_KEY.to_string()),
            ("GRANDA_LOG_FORMAT", "json".to_string()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", receiver.port),
            ),
            ("OTEL_SERVICE_NAME", format!("granda-{worker}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ]
    };
    let up = GrandaProcess::spawn(&["up"], &env("up"));
    up.wait_healthy(&base, Duration::from_secs(60)).await;
    let mut worker_env = env("worker");
    worker_env.push(("GRANDA_WORKER_LISTEN", format!("127.0.0.1:{worker_port}")));
    let worker = GrandaProcess::spawn(&["worker"], &worker_env);
    worker
        .wait_healthy(
            &format!("http://127.0.0.1:{worker_port}"),
            Duration::from_secs(60),
        )
        .await;
    let client = client_with_key(ADMIN_KEY);
    let registered = client
        .post(format!("{base}/v1/functions"))
        .json(&json!({"name": "env", "image": "granda-test/env"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201, "{}", up.log());

    // A sync call of the function's URL with the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = client
        .get(format!("{base}/fn/env"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("tracestate", "vendor=kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", up.log());
    let seen = response.text().await.unwrap();
    let spans = receiver
        .trace(caller_trace, |s| {
            s.iter().any(|x| x["kind"] == 2)
                && [
                    "publish",
                    "invocation",
                    "claim",
                    "run",
                    "record",
                    "reply",
                    "queue",
                ]
                .iter()
                .all(|n| s.iter().any(|x| x["name"] == *n))
        })
        .await;
    let http = server(&spans);
    assert_eq!(http["name"], "GET /fn/{name}", "{spans:#?}");
    assert_eq!(http["parent_span_id"], caller_span, "{spans:#?}");
    let publish = named(&spans, "publish");
    let invocation = named(&spans, "invocation");
    let run = named(&spans, "run");
    assert!(descends(&spans, publish, http), "{spans:#?}");
    assert_eq!(
        invocation["parent_span_id"], publish["span_id"],
        "{spans:#?}"
    );
    assert_eq!(named(&spans, "queue")["parent_span_id"], publish["span_id"]);
    assert_eq!(named(&spans, "container")["parent_span_id"], run["span_id"]);
    for child in ["claim", "run", "record", "reply"] {
        assert_eq!(
            named(&spans, child)["parent_span_id"],
            invocation["span_id"],
            "{child}: {spans:#?}"
        );
    }
    // The function saw the run span's context, not the caller's own header.
    let run_id = run["span_id"].as_str().unwrap();
    let expected = format!("00-{caller_trace}-{run_id}-01");
    assert!(
        seen.contains(&format!("HTTP_TRACEPARENT={expected}\n")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("TRACEPARENT={expected}\n")),
        "{seen}"
    );
    assert!(seen.contains("HTTP_TRACESTATE=vendor=kept\n"), "{seen}");
    assert!(!seen.contains(caller_span), "{seen}");

    // An async call crosses RabbitMQ to whichever worker takes it: one trace all the same.
    let async_trace = "0af7651916cd43dd8448eb211c80319c";
    let accepted = client
        .post(format!("{base}/v1/functions/env/invocations"))
        .header(
            "traceparent",
            format!("00-{async_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let id: Value = accepted.json().await.unwrap();
    let id = id["id"].as_str().unwrap().to_string();
    let spans = receiver
        .trace(async_trace, |s| {
            s.iter().any(|x| x["kind"] == 2)
                && ["publish", "invocation", "run", "record"]
                    .iter()
                    .all(|n| s.iter().any(|x| x["name"] == *n))
        })
        .await;
    let http = server(&spans);
    assert_eq!(http["parent_span_id"], "b7ad6b7169203331");
    assert_eq!(http["service"], "granda-up");
    let run = named(&spans, "run");
    assert!(descends(&spans, run, http), "{spans:#?}");
    let record: Value = client
        .get(format!("{base}/v1/invocations/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let output = record["output"].as_str().unwrap_or_default().to_string();
    let run_id = run["span_id"].as_str().unwrap();
    assert!(
        output.contains(&format!("TRACEPARENT=00-{async_trace}-{run_id}-01\n")),
        "{record}"
    );

    // A hot function gets the run span's context as its request's `traceparent` header, in
    // place of the caller's.
    let registered = client
        .post(format!("{base}/v1/functions"))
        .json(&json!({"name": "app", "image": "granda-test/hot-web", "mode": "hot", "response": "cgi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let hot_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let answer = client
        .get(format!("{base}/fn/app/request"))
        .header("traceparent", format!("00-{hot_trace}-051581bf3cb55c13-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = answer.text().await.unwrap();
    let spans = receiver
        .trace(hot_trace, |s| s.iter().any(|x| x["name"] == "run"))
        .await;
    let run_id = named(&spans, "run")["span_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        seen.contains(&format!("\ntraceparent: 00-{hot_trace}-{run_id}-01\n")),
        "{seen}"
    );
    assert!(!seen.contains("051581bf3cb55c13"), "{seen}");

    // JSON logs: every line of both processes parses; lines of a run carry its trace.
    for process in [&up, &worker] {
        let log = process.log();
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let parsed: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            assert!(
                parsed["level"].is_string() && parsed["message"].is_string(),
                "{line}"
            );
        }
    }

    // promtool accepts the ingress's and the worker's /metrics (the admin key reads both).
    for url in [
        format!("{base}/metrics"),
        format!("http://127.0.0.1:{worker_port}/metrics"),
    ] {
        let anonymous = reqwest::get(&url).await.unwrap();
        assert_eq!(anonymous.status(), 401, "{url}: GRANDA_METRICS_AUTH=key");
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(promtool(&text), "", "{url}:\n{text}");
        for family in [
            "granda_build_info{version=",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "granda_invocations_accepted_total{trigger=\"webhook\"} 0",
            "# TYPE granda_invocation_retries_total counter",
            "le=\"900\"",
        ] {
            if family == "le=\"900\"" && url.contains(&worker_port.to_string()) {
                continue;
            }
            assert!(text.contains(family), "{family} in {url}:\n{text}");
        }
    }

    up.sigterm();
    worker.sigterm();
    up.wait_exit(Duration::from_secs(30)).await;
    worker.wait_exit(Duration::from_secs(30)).await;
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
