//! Metrics this process keeps (counters, gauges, histograms), rendered in Prometheus text format
//! at `/metrics`. One registry per Granda instance, shared by its ingress and worker.
//!
//! Every family has `# HELP` and `# TYPE`: the help text comes from [`FAMILIES`], the catalogue of
//! every family Granda records (a unit test checks that each `"granda_…"` name in the sources is
//! in it). Label values are names, kinds and outcomes, never counts: a count is a counter of its
//! own (`granda_event_invocations_total`), so that series stay few and sums stay sums.
//!
//! HTTP requests are measured by [`track_http`], a middleware on the ingress's router: by route
//! *template* (axum's `MatchedPath`, e.g. `/v1/functions/{name}`; `unmatched` for paths no route
//! has), method and status. Its duration is the time to the response's head (a streamed body,
//! like a deploy's NDJSON log, goes on after it).
//!
//! No holes: every family in [`FAMILIES`] has its `# HELP` and `# TYPE` from the start, and the
//! ones whose label values are known (triggers, outcomes) have those series at 0
//! ([`Metrics::default`]); a function's own series are at 0 from its first run
//! ([`Metrics::function_seen`]) and removed when it is deleted ([`Metrics::forget_function`];
//! every `/metrics`, of an ingress or a standalone worker, first drops the series of functions
//! deleted meanwhile through another process, [`Metrics::forget_deleted`]).
//! `granda_build_info{version,commit}` and the standard `process_*` series (CPU, RSS, open
//! descriptors, start time, from `/proc`) are rendered with the rest.
//!
//! Why hand-written and not the `prometheus-client` crate (0.26), looked at again for issue 30:
//! it would add little to the build (measured: 3 new crates, itself, its derive macro and
//! `dtoa`; about 1.2 s of CPU in a clean build) and nothing measurable on the hot path (one
//! mutex and a map update either way), but its typed families (`Family<Labels, Counter>`, each
//! registered up front with a label type) would change every place that records a metric, across
//! the worker, scheduler and ingress, while another change adds families per namespace. What it
//! would give us is here: HELP and TYPE on every family ([`FAMILIES`]), escaped label values
//! ([`label`]), families present from the start, series removed with their function, and
//! `promtool check metrics` passes on the output (tests/it/otel.rs). Worth the move for
//! OpenMetrics exemplars (a trace id on a histogram bucket) or native histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the time histograms, in seconds.
/// The top one is the longest timeout a function may have (`GRANDA_MAX_TIMEOUT_MS`'s default).
pub(crate) const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    900.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

mod deleted;
mod families;
pub(crate) use families::FAMILIES;

/// The help text of `name` in [`FAMILIES`].
fn catalogued_help(name: &str) -> Option<&'static str> {
    FAMILIES.iter().find(|f| f.0 == name).map(|f| f.2)
}

/// A series: metric name and its labels, already in `k="v",…` form.
type Series = (&'static str, String);

#[derive(Default)]
struct Registry {
    counters: BTreeMap<Series, u64>,
    gauges: BTreeMap<Series, f64>,
    histograms: BTreeMap<Series, Histogram>,
    help: BTreeMap<&'static str, &'static str>,
    /// The functions with series of their own ([`Metrics::function_seen`]).
    functions: std::collections::BTreeSet<String>,
}

pub struct Metrics {
    inner: Mutex<Registry>,
}

/// Counters whose label values are all known, at 0 from the start: (family, label, values).
const KNOWN_AT_ZERO: &[(&str, &str, &[&str])] = &[
    (
        "granda_invocations_accepted_total",
        "trigger",
        &["sync", "async", "webhook", "event", "schedule"],
    ),
    (
        "granda_callback_deliveries_total",
        "outcome",
        &["delivered", "failed"],
    ),
    (
        "granda_inbound_messages_total",
        "outcome",
        &["accepted", "duplicate", "dead"],
    ),
];

/// Counters without labels, at 0 from the start.
const UNLABELLED_AT_ZERO: &[&str] = &[
    "granda_callback_retries_total",
    "granda_worker_broker_reconnects_total",
    "granda_events_published_total",
    "granda_event_invocations_total",
    "granda_schedule_fired_total",
    "granda_schedule_skipped_total",
];

/// The final statuses an invocation can reach (`granda_invocations_total{status}`).
const FINAL_STATUSES: &[&str] = &["succeeded", "failed", "timed_out", "dead", "cancelled"];

/// Why an attempt was retried (`granda_invocation_retries_total{reason}`).
pub(crate) const RETRY_REASONS: &[&str] = &["error", "timeout", "platform"];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        for (name, label_name, values) in KNOWN_AT_ZERO {
            for value in *values {
                registry
                    .counters
                    .insert((name, format!("{label_name}=\"{value}\"")), 0);
            }
        }
        for name in UNLABELLED_AT_ZERO {
            registry.counters.insert((name, String::new()), 0);
        }
        Metrics {
            inner: Mutex::new(registry),
        }
    }
}

impl Metrics {
    /// Adds one to the counter `name{labels}`.
    pub(crate) fn inc(&self, name: &'static str, labels: String) {
        *self
            .inner
            .lock()
            .expect("lock")
            .counters
            .entry((name, labels))
            .or_default() += 1;
    }

    /// Adds `n` to the counter `name{labels}`.
    pub(crate) fn add(&self, name: &'static str, labels: String, n: u64) {
        *self
            .inner
            .lock()
            .expect("lock")
            .counters
            .entry((name, labels))
            .or_default() += n;
    }

    /// Sets the gauge `name{labels}`.
    pub(crate) fn set(&self, name: &'static str, labels: String, value: f64) {
        self.inner
            .lock()
            .expect("lock")
            .gauges
            .insert((name, labels), value);
    }

    /// Records `value` (seconds) in the histogram `name{labels}`.
    pub(crate) fn observe(&self, name: &'static str, labels: String, value: f64) {
        let mut inner = self.inner.lock().expect("lock");
        let h = inner.histograms.entry((name, labels)).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; SECONDS_BUCKETS.len()];
        }
        for (i, bound) in SECONDS_BUCKETS.iter().enumerate() {
            if value <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += value;
        h.count += 1;
    }

    /// A function's series at 0 (its final statuses, retries, cold starts), once: from its
    /// first run on, a rate over them is 0 rather than nothing.
    pub(crate) fn function_seen(&self, function: &str) {
        let labels = format!("function=\"{}\"", label(function));
        let mut inner = self.inner.lock().expect("lock");
        if inner
            .counters
            .contains_key(&("granda_cold_starts_total", labels.clone()))
        {
            return;
        }
        inner.functions.insert(function.to_string());
        inner
            .counters
            .insert(("granda_cold_starts_total", labels.clone()), 0);
        for status in FINAL_STATUSES {
            inner
                .counters
                .entry((
                    "granda_invocations_total",
                    format!("{labels},status=\"{status}\""),
                ))
                .or_default();
        }
        for reason in RETRY_REASONS {
            inner
                .counters
                .entry((
                    "granda_invocation_retries_total",
                    format!("{labels},reason=\"{reason}\""),
                ))
                .or_default();
        }
    }

    /// Removes every series of `function` (it was deleted).
    pub(crate) fn forget_function(&self, function: &str) {
        let labels = format!("function=\"{}\"", label(function));
        let ours = |l: &String| l == &labels || l.starts_with(&format!("{labels},"));
        let mut inner = self.inner.lock().expect("lock");
        inner.functions.remove(function);
        inner.counters.retain(|(_, l), _| !ours(l));
        inner.gauges.retain(|(_, l), _| !ours(l));
        inner.histograms.retain(|(_, l), _| !ours(l));
    }

    /// A `# HELP` line for `name`.
    pub(crate) fn describe(&self, name: &'static str, help: &'static str) {
        self.inner.lock().expect("lock").help.insert(name, help);
    }

    /// The value of a gauge, if set.
    #[cfg(test)]
    pub(crate) fn gauge(&self, name: &'static str, labels: &str) -> Option<f64> {
        self.inner
            .lock()
            .expect("lock")
            .gauges
            .get(&(name, labels.to_string()))
            .copied()
    }

    pub(crate) fn render(&self) -> String {
        let inner = self.inner.lock().expect("lock");
        let mut out = String::from(
            "# HELP granda_up 1 while this process is up.\n# TYPE granda_up gauge\ngranda_up 1\n",
        );
        let _ = writeln!(
            out,
            "# HELP granda_build_info The version and git commit this process was built from.\n\
             # TYPE granda_build_info gauge\n\
             granda_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            label(env!("CARGO_PKG_VERSION")),
            label(env!("GRANDA_GIT_COMMIT")),
        );
        process_metrics(&mut out);
        // Every family: the catalogued ones (even before their first series) and any other.
        let mut names: std::collections::BTreeMap<&str, &str> = FAMILIES
            .iter()
            .filter(|f| f.0 != "granda_up")
            .map(|f| (f.0, f.1))
            .collect();
        names.extend(inner.counters.keys().map(|k| (k.0, "counter")));
        names.extend(inner.gauges.keys().map(|k| (k.0, "gauge")));
        names.extend(inner.histograms.keys().map(|k| (k.0, "histogram")));
        // `{}` is left out when a series has no labels.
        let braced = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let of = |name: &'static str| (name, String::new())..;
        for (name, kind) in names {
            let help = inner
                .help
                .get(name)
                .copied()
                .or_else(|| catalogued_help(name))
                .unwrap_or("A Granda metric.");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            match kind {
                "counter" => {
                    for ((_, labels), value) in inner
                        .counters
                        .range(of(name))
                        .take_while(|(k, _)| k.0 == name)
                    {
                        let _ = writeln!(out, "{name}{} {value}", braced(labels));
                    }
                }
                "gauge" => {
                    for ((_, labels), value) in inner
                        .gauges
                        .range(of(name))
                        .take_while(|(k, _)| k.0 == name)
                    {
                        let _ = writeln!(out, "{name}{} {value}", braced(labels));
                    }
                }
                _ => {
                    for ((_, labels), h) in inner
                        .histograms
                        .range(of(name))
                        .take_while(|(k, _)| k.0 == name)
                    {
                        let sep = if labels.is_empty() { "" } else { "," };
                        for (bound, count) in SECONDS_BUCKETS.iter().zip(&h.counts) {
                            let _ = writeln!(
                                out,
                                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}"
                            );
                        }
                        let _ =
                            writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
                        let _ = writeln!(out, "{name}_sum{} {}", braced(labels), h.sum);
                        let _ = writeln!(out, "{name}_count{} {}", braced(labels), h.count);
                    }
                }
            }
        }
        out
    }
}

/// The standard `process_*` series of this process, from `/proc/self` (Linux; nothing elsewhere).
fn process_metrics(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command's closing parenthesis: state is field 3, so index i is field i+3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num =
        |field: usize| -> f64 { f.get(field - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // SAFETY: sysconf reads configuration values; no memory is handed over.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct given.
    let max_fds = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur as f64,
        _ => 0.0,
    };
    let series: [(&str, &str, &str, f64); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (num(14) + num(15)) / ticks.max(1.0),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            num(24) * page,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            num(23),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + num(22) / ticks.max(1.0),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

impl Metrics {
    /// A build from source finished after `seconds`.
    pub(crate) fn build_finished(&self, runtime: &str, succeeded: bool, seconds: f64) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        let runtime = format!("runtime=\"{}\"", label(runtime));
        self.inc(
            "granda_builds_total",
            format!("{runtime},outcome=\"{outcome}\""),
        );
        self.observe("granda_build_duration_seconds", runtime, seconds);
    }

    /// A callback reached a final state: `delivered` or `failed`.
    pub(crate) fn callback_finished(&self, outcome: &str) {
        self.inc(
            "granda_callback_deliveries_total",
            format!("outcome=\"{}\"", label(outcome)),
        );
    }
}

/// The route template a request matched, left in a response's extensions by [`note_route`]
/// for [`track_http`] (which, outside a nested router, sees no `MatchedPath` of its own).
#[derive(Clone)]
struct RouteTemplate(String);

/// Middleware for a nested router (the dashboard): passes the full route template it matched
/// out to [`track_http`].
pub(crate) async fn note_route(request: Request, next: Next) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(path) = matched {
        response.extensions_mut().insert(RouteTemplate(path));
    }
    response
}

/// Middleware: counts and times every request by route template, method and status.
pub(crate) async fn track_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.clone())
        .or(matched)
        .filter(|p| !p.contains("__private__"))
        .unwrap_or_else(|| "unmatched".into());
    let route = format!("route=\"{}\",method=\"{method}\"", label(&route));
    metrics.inc(
        "granda_http_requests_total",
        format!("{route},status=\"{}\"", response.status().as_u16()),
    );
    metrics.observe(
        "granda_http_request_duration_seconds",
        route,
        started.elapsed().as_secs_f64(),
    );
    response
}

/// A method as a label value: the standard ones by name, any other as `other` (a client picks
/// the method, and must not make series without bound).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Escapes a label value for the text format.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_text_format() {
        let m = Metrics::default();
        m.describe("granda_x_total", "Things.");
        m.inc("granda_x_total", format!("function=\"{}\"", label("a\"b")));
        m.inc("granda_x_total", format!("function=\"{}\"", label("a\"b")));
        m.set("granda_depth", "queue=\"default\"".into(), 3.0);
        m.observe("granda_run_seconds", "function=\"f\"".into(), 0.3);
        m.observe("granda_run_seconds", "function=\"f\"".into(), 7.0);
        let text = m.render();
        assert!(text.contains("# HELP granda_x_total Things.\n# TYPE granda_x_total counter\n"));
        assert!(
            text.contains("granda_x_total{function=\"a\\\"b\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("granda_depth{queue=\"default\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("granda_run_seconds_bucket{function=\"f\",le=\"0.5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("granda_run_seconds_bucket{function=\"f\",le=\"10\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("granda_run_seconds_bucket{function=\"f\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("granda_run_seconds_count{function=\"f\"} 2\n"),
            "{text}"
        );
        assert_eq!(m.gauge("granda_depth", "queue=\"default\""), Some(3.0));
    }

    #[test]
    fn every_family_has_help_and_type_and_unlabelled_series_have_no_braces() {
        let m = Metrics::default();
        m.inc("granda_events_published_total", String::new());
        m.set(
            "granda_unauthenticated_body_bytes_in_flight",
            String::new(),
            0.0,
        );
        m.observe("granda_never_catalogued_seconds", String::new(), 1.0);
        let text = m.render();
        assert!(
            text.contains("\ngranda_events_published_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\ngranda_never_catalogued_seconds_sum 1\n"),
            "{text}"
        );
        assert!(!text.contains("{}"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
    }

    #[test]
    fn known_series_start_at_zero_and_a_forgotten_functions_series_go() {
        let m = Metrics::default();
        let text = m.render();
        assert!(text.contains("granda_invocations_accepted_total{trigger=\"event\"} 0\n"));
        assert!(
            text.contains("\ngranda_events_published_total 0\n"),
            "{text}"
        );
        // Every catalogued family is described before its first series.
        for (name, kind, _) in FAMILIES {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        }
        assert!(text.contains("granda_build_info{version=\""), "{text}");
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        m.function_seen("f");
        m.observe(
            "granda_invocation_duration_seconds",
            "function=\"f\"".into(),
            850.0,
        );
        m.inc("granda_cold_starts_total", "function=\"fg\"".into());
        let text = m.render();
        assert!(text.contains("granda_invocations_total{function=\"f\",status=\"dead\"} 0\n"));
        assert!(
            text.contains("granda_invocation_retries_total{function=\"f\",reason=\"error\"} 0\n")
        );
        assert!(
            text.contains(
                "granda_invocation_duration_seconds_bucket{function=\"f\",le=\"900\"} 1\n"
            ),
            "{text}"
        );
        m.forget_function("f");
        let text = m.render();
        assert!(!text.contains("function=\"f\""), "{text}");
        assert!(
            text.contains("function=\"fg\""),
            "another function's stay: {text}"
        );
    }

    /// Every metric name written in the sources (a `"granda_…"` literal) is in [`FAMILIES`], so
    /// that its HELP says what it is.
    #[test]
    fn every_recorded_family_is_catalogued() {
        let not_metrics = [
            "granda_session",
            // The Postgres channel cancels are announced on.
            "granda_cancel",
            // The examples in this file's tests.
            "granda_x_total",
            "granda_depth",
            "granda_run_seconds",
            "granda_never_catalogued_seconds",
        ];
        let mut files = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut missing = Vec::new();
        let mut seen = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("\"granda_").skip(1) {
                let Some(end) = piece.find('"') else { continue };
                let rest = &piece[..end];
                if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    continue;
                }
                let name = format!("granda_{rest}");
                seen += 1;
                if !not_metrics.contains(&name.as_str()) && catalogued_help(&name).is_none() {
                    missing.push(format!("{name} ({})", path.display()));
                }
            }
        }
        assert!(seen > 20, "{seen}");
        assert!(missing.is_empty(), "not in FAMILIES: {missing:?}");
    }
}
