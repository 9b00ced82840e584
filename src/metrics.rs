//! Counters this process keeps, rendered in Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Monotonic counters by name and label set.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Metrics {
    /// Adds one to `name{labels}`; `labels` is already in `k="v",…` form.
    pub fn inc(&self, name: &'static str, labels: String) {
        *self
            .counters
            .lock()
            .expect("lock")
            .entry((name, labels))
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let counters = self.counters.lock().expect("lock");
        let mut out = String::from("# TYPE granda_up gauge\ngranda_up 1\n");
        let mut last = "";
        for ((name, labels), value) in counters.iter() {
            if *name != last {
                out.push_str(&format!("# TYPE {name} counter\n"));
                last = name;
            }
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
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
    fn counters_render_in_text_format() {
        let m = Metrics::default();
        m.inc("granda_x_total", format!("function=\"{}\"", label("a\"b")));
        m.inc("granda_x_total", format!("function=\"{}\"", label("a\"b")));
        let text = m.render();
        assert!(text.contains("# TYPE granda_x_total counter\n"));
        assert!(
            text.contains("granda_x_total{function=\"a\\\"b\"} 2\n"),
            "{text}"
        );
    }
}
