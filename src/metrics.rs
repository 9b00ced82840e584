//! Metrics this process keeps (counters, gauges, histograms), rendered in Prometheus text format
//! at `/metrics`. One registry per Granda instance, shared by its ingress and worker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds of the time histograms, in seconds.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A series: metric name and its labels, already in `k="v",…` form.
type Series = (&'static str, String);

#[derive(Default)]
struct Registry {
    counters: BTreeMap<Series, u64>,
    gauges: BTreeMap<Series, f64>,
    histograms: BTreeMap<Series, Histogram>,
    help: BTreeMap<&'static str, &'static str>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Registry>,
}

impl Metrics {
    /// Adds one to the counter `name{labels}`.
    pub fn inc(&self, name: &'static str, labels: String) {
        *self
            .inner
            .lock()
            .expect("lock")
            .counters
            .entry((name, labels))
            .or_default() += 1;
    }

    /// Adds `n` to the counter `name{labels}`.
    pub fn add(&self, name: &'static str, labels: String, n: u64) {
        *self
            .inner
            .lock()
            .expect("lock")
            .counters
            .entry((name, labels))
            .or_default() += n;
    }

    /// Sets the gauge `name{labels}`.
    pub fn set(&self, name: &'static str, labels: String, value: f64) {
        self.inner
            .lock()
            .expect("lock")
            .gauges
            .insert((name, labels), value);
    }

    /// Records `value` (seconds) in the histogram `name{labels}`.
    pub fn observe(&self, name: &'static str, labels: String, value: f64) {
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

    /// A `# HELP` line for `name`.
    pub fn describe(&self, name: &'static str, help: &'static str) {
        self.inner.lock().expect("lock").help.insert(name, help);
    }

    /// The value of a gauge, if set (for tests and the scheduler's own view).
    pub fn gauge(&self, name: &'static str, labels: &str) -> Option<f64> {
        self.inner
            .lock()
            .expect("lock")
            .gauges
            .get(&(name, labels.to_string()))
            .copied()
    }

    pub fn render(&self) -> String {
        let inner = self.inner.lock().expect("lock");
        let mut out = String::from("# TYPE granda_up gauge\ngranda_up 1\n");
        let mut last = "";
        let mut header = |out: &mut String, name: &'static str, kind: &str| {
            if name != last {
                if let Some(help) = inner.help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}");
                }
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last = name;
            }
        };
        for ((name, labels), value) in &inner.counters {
            header(&mut out, name, "counter");
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        for ((name, labels), value) in &inner.gauges {
            header(&mut out, name, "gauge");
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        for ((name, labels), h) in &inner.histograms {
            header(&mut out, name, "histogram");
            let sep = if labels.is_empty() { "" } else { "," };
            for (bound, count) in SECONDS_BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
        out
    }
}

/// Escapes a label value for the text format.
pub fn label(value: &str) -> String {
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
}
