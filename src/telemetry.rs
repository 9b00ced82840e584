//! Logging and tracing.
//!
//! **Logs**: `tracing` to stderr, filtered by `RUST_LOG` (default `info`, with lapin's chatter at
//! `warn` and Postgres's notices, such as "relation _sqlx_migrations already exists, skipping"
//! at each start, shown only when asked for: `RUST_LOG=debug` or
//! `RUST_LOG=info,sqlx::postgres::notice=info`). Text by default, colours only when stderr is a
//! terminal and `NO_COLOR` is unset (<https://no-color.org>). `GRANDA_LOG_FORMAT=json`: one JSON
//! object a line (`JsonLines`): `timestamp`, `level`, `target`, `message`, `fields`, the spans
//! it happened in with their fields, and the W3C `trace_id` and `span_id` it belongs to.
//!
//! **Traces**: every span of Granda's own (target `granda…`) is an OpenTelemetry span
//! (`tracing-opentelemetry`). The ingress continues a caller's `traceparent`/`tracestate` (W3C
//! Trace Context) or starts a trace (`http_span`); a work message carries the context of the
//! span that published it in its AMQP headers `traceparent`/`tracestate`
//! ([`crate::message::Work::properties`]); the worker continues it, and gives the run span's
//! context to the function (`trace_headers`). Spans are exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the
//! standard `OTEL_*` settings (`OTEL_SERVICE_NAME`, default `granda`; `OTEL_TRACES_SAMPLER`;
//! `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`); when unset, the context still travels (a function
//! sees the trace it is part of), and nothing is exported. The exporter posts through Granda's
//! own reqwest client (rustls), on the runtime that started it (`Bridge`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

/// The filter when `RUST_LOG` is unset.
pub(crate) const DEFAULT_FILTER: &str = "info,lapin=warn,sqlx::postgres::notice=warn";

/// The instrumentation scope Granda's spans are recorded under.
const SCOPE: &str = "granda";

/// How log lines are written (`GRANDA_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, with the trace and span ids.
    Json,
}

/// Sets up logging and tracing for this process, with the log format of `GRANDA_LOG_FORMAT`
/// (text when unset or unknown). Call once, inside the Tokio runtime; a second call does nothing.
pub fn init() {
    let format = std::env::var("GRANDA_LOG_FORMAT")
        .ok()
        .and_then(|f| <LogFormat as clap::ValueEnum>::from_str(&f, true).ok())
        .unwrap_or_default();
    init_with(format);
}

/// [`init`] with the log format given.
pub(crate) fn init_with(format: LogFormat) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let (provider, export_problem) = tracer_provider();
    let tracer = provider.tracer(SCOPE);
    if PROVIDER.set(provider.clone()).is_err() {
        return;
    }
    opentelemetry::global::set_tracer_provider(provider);
    // Only Granda's own spans become OpenTelemetry spans; events stay logs (not span events).
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_tracked_inactivity(false)
        .with_filter(filter::filter_fn(|meta| {
            meta.is_span()
                && *meta.level() <= tracing::Level::INFO
                && meta.target().starts_with("granda")
        }));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => json_layer(std::io::stderr).with_filter(filter).boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .try_init()
        .is_ok();
    if installed && let Some(problem) = export_problem {
        tracing::error!(error = %problem, "traces are not exported");
    }
}

/// The JSON log layer, writing to `writer` (see [`JsonLines`]).
pub(crate) fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = Arc::new(OnceLock::new());
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines {
            dispatch: dispatch.clone(),
        })
        .with_writer(writer)
        .and_then(Register(dispatch))
}

/// Hands [`JsonLines`] the dispatcher it formats for: inside an event's callback the current
/// one can't be asked for (tracing answers "none" to a nested ask), and the trace ids are read
/// through it.
struct Register(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for Register {
    fn on_register_dispatch(&self, dispatch: &tracing::Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to anything but the empty string.
pub(crate) fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether spans are to be exported: an OTLP endpoint is set, and `OTEL_TRACES_EXPORTER` is not
/// `none` (`OTEL_SDK_DISABLED=true` turns it off too).
fn export_wanted() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v.trim() != "none")
        && std::env::var("OTEL_SDK_DISABLED").map_or(true, |v| !v.eq_ignore_ascii_case("true"))
}

/// The tracer provider: exporting over OTLP/HTTP when [`export_wanted`], else recording spans
/// only to give their context on. The sampler is the SDK's: `OTEL_TRACES_SAMPLER` (default
/// `parentbased_always_on`). Second: why exporting was wanted and can't be.
fn tracer_provider() -> (SdkTracerProvider, Option<String>) {
    let builder = SdkTracerProvider::builder();
    if !export_wanted() {
        return (builder.build(), None);
    }
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("granda");
    }
    let builder = builder.with_resource(resource.build());
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into());
    if protocol.trim() != "http/protobuf" {
        return (
            builder.build(),
            Some(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Granda exports http/protobuf only"
            )),
        );
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return (
            builder.build(),
            Some("not started in a Tokio runtime".into()),
        );
    };
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    // The client is rustls with the ring provider: installed first, whoever calls this.
    crate::tls::install_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(Bridge {
            client: reqwest::Client::builder()
                .timeout(export_timeout())
                .build()
                .expect("a client builds"),
            runtime,
        })
        .build();
    match exporter {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(e) => (builder.build(), Some(e.to_string())),
    }
}

/// The provider [`init_with`] set up, for [`shutdown`].
static PROVIDER: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// Exports the spans still buffered and stops exporting: at the end of a process.
pub(crate) fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, default 10 s): the most an export may take.
fn export_timeout() -> std::time::Duration {
    let ms = std::env::var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(10_000);
    std::time::Duration::from_millis(ms)
}

/// The OTLP exporter's HTTP client: Granda's reqwest (rustls), run on the Tokio runtime that
/// set tracing up. The SDK's batch processor calls it from a thread of its own.
#[derive(Debug)]
struct Bridge {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Bridge {
    async fn send_bytes(
        &self,
        request: axum::http::Request<bytes::Bytes>,
    ) -> Result<axum::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut sent = self
            .client
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            sent = sent.header(name, value);
        }
        let answered = self
            .runtime
            .spawn(async move {
                let response = sent.send().await?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await??;
        let (status, headers, body) = answered;
        let mut response = axum::http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// `traceparent` (and `tracestate` when there is one) of `cx`, as W3C Trace Context headers;
/// empty for a context without a valid span.
pub(crate) fn headers_of(cx: &opentelemetry::Context) -> Vec<(&'static str, String)> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| carrier.remove(k).filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
}

/// The W3C Trace Context headers of the current span (see [`headers_of`]): what a message
/// published now carries, and what a function run now is given.
pub(crate) fn trace_headers() -> Vec<(&'static str, String)> {
    headers_of(&tracing::Span::current().context())
}

/// The context that W3C Trace Context headers, got by `get`, carry; an empty one (a new trace)
/// when they are missing or malformed. The values are hints: a forged one only misplaces spans.
pub(crate) fn context_from<'a>(get: impl Fn(&str) -> Option<&'a str>) -> opentelemetry::Context {
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| Some((k.to_string(), get(k)?.to_string())))
        .collect();
    TraceContextPropagator::new().extract(&carrier)
}

/// The span of one HTTP request to the ingress: a child of the caller's context when its
/// `traceparent` is valid, else the root of a new trace.
pub(crate) fn http_span(
    method: &axum::http::Method,
    route: &str,
    headers: &axum::http::HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "granda::http",
        "http.request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = context_from(|k| headers.get(k).and_then(|v| v.to_str().ok()));
    let _ = span.set_parent(parent);
    span
}

/// Middleware: each request to the ingress in its [`http_span`].
pub(crate) async fn trace_http(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = http_span(request.method(), &route, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record(
        "http.response.status_code",
        response.status().as_u16() as i64,
    );
    response
}

/// Records a finished span under `parent` from `start` to `end`: for time Granda measured but did
/// not spend in a span of its own (an invocation's wait in its queue).
pub(crate) fn record_span(
    parent: &opentelemetry::Context,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<opentelemetry::KeyValue>,
) {
    let tracer = opentelemetry::global::tracer(SCOPE);
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(end.max(start));
}

/// A log line as JSON (`GRANDA_LOG_FORMAT=json`): `timestamp` (RFC 3339, UTC), `level`,
/// `target`, `message`, `fields` (the event's others), `span` (the innermost span's name and
/// fields), `spans` (all, outermost first) and, inside a traced span, `trace_id` and `span_id`.
pub(crate) struct JsonLines {
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut Visitor(&mut fields));
        let message = fields.remove("message").unwrap_or(Value::from(""));
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("message".into(), message);
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        let mut ids = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                let mut entry = Map::new();
                entry.insert("name".into(), span.name().into());
                if let Some(formatted) = span.extensions().get::<FormattedFields<N>>()
                    && let Ok(Value::Object(f)) = serde_json::from_str(formatted.as_str())
                {
                    entry.extend(f);
                }
                ids.push(span.id());
                spans.push(Value::Object(entry));
            }
            if let Some(innermost) = spans.last() {
                line.insert("span".into(), innermost.clone());
            }
            line.insert("spans".into(), Value::Array(spans));
        }
        // The innermost span with a trace (spans of other crates have none).
        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
        let traced = dispatch.and_then(|dispatch| {
            ids.iter().rev().find_map(|id| {
                let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
                let span = cx.span();
                let sc = span.span_context();
                sc.is_valid()
                    .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
            })
        });
        if let Some((trace_id, span_id)) = traced {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values.
struct Visitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".as_ref())));
        assert!(!colours(true, Some("1".as_ref())));
        assert!(!colours(false, None));
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_a_malformed_one_is_not() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_from(|k| (k == "traceparent").then_some(tp));
        assert_eq!(headers_of(&cx), vec![("traceparent", tp.to_string())]);
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let cx = context_from(|k| (k == "traceparent").then_some(bad));
            assert!(headers_of(&cx).is_empty(), "{bad}");
        }
    }

    /// A shared buffer the JSON layer writes to.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_log_lines_parse_and_carry_the_trace_and_span_ids() {
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer(SCOPE))
                    .with_filter(filter::filter_fn(|m| m.is_span())),
            )
            .with(json_layer(move || sink.clone()));
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (inner_span_id, outside) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!(n = 3, "before any span");
            let span = tracing::info_span!("granda.test", id = "abc");
            let _ = span.set_parent(context_from(|k| (k == "traceparent").then_some(tp)));
            let _entered = span.enter();
            tracing::warn!(n = 1, ok = true, what = %"a \"quoted\"\nline", "in the span");
            let cx = tracing::Span::current().context();
            (
                cx.span().span_context().span_id().to_string(),
                trace_headers(),
            )
        });
        assert!(!outside.is_empty());
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "before any span");
        assert_eq!(lines[0]["fields"]["n"], 3);
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        let line = &lines[1];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "in the span");
        assert_eq!(line["fields"]["n"], 1);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["fields"]["what"], "a \"quoted\"\nline");
        assert_eq!(line["span"]["name"], "granda.test");
        assert_eq!(line["span"]["id"], "abc");
        assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span_id"], inner_span_id.as_str());
        assert_ne!(
            line["span_id"], "00f067aa0ba902b7",
            "its own span, not the caller's"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(line["timestamp"].as_str().unwrap()).is_ok());
    }
}
