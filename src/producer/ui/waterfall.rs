//! An invocation's timeline as the dashboard draws it: queued, each attempt a row (its worker,
//! how it ended, its error) and the wait after it, the last run and the record.

use maud::{Markup, html};

use super::fmt_ms;
use crate::invocation::Record;

/// One bar of an invocation's timeline: what happened, from when and for how long (ms after it
/// was queued).
#[derive(Debug, PartialEq)]
pub(crate) struct Step {
    pub(crate) what: String,
    pub(crate) start_ms: i64,
    pub(crate) took_ms: i64,
    /// The colour of its bar.
    pub(crate) colour: &'static str,
}
/// An invocation's timeline, from what its record knows: the wait in the queue (to its first
/// claim, `queue_ms`), each earlier attempt (`earlier`, [`crate::invocation::attempts`]: a row
/// each, with its worker and how it ended) and the wait after it, the worker's start of the run
/// (claim, image, container create and start: up to `started_at`, which the final record sets to
/// the run's start), the run (`duration_ms`) and the final record (`finished_at`). Without
/// stored earlier attempts (a record from before they were kept) they are one row. `now` ends
/// what still goes on.
pub(crate) fn waterfall(
    r: &Record,
    earlier: &[crate::invocation::attempts::Attempt],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Step> {
    let at = |t: chrono::DateTime<chrono::Utc>| (t - r.queued_at).num_milliseconds().max(0);
    let mut steps = Vec::new();
    let mut step = |what: String, start_ms: i64, end_ms: i64, colour| {
        if end_ms >= start_ms {
            steps.push(Step {
                what,
                start_ms,
                took_ms: end_ms - start_ms,
                colour,
            });
        }
    };
    let earlier: Vec<_> = earlier
        .iter()
        .filter(|a| a.attempt < r.attempt || r.status() == crate::invocation::Status::Queued)
        .collect();
    let first_claim = earlier
        .first()
        .and_then(|a| a.started_at.map(at))
        .or(r.queue_ms)
        .or(r.started_at.map(at));
    let Some(first_claim) = first_claim else {
        step("queued".into(), 0, at(now), "#9aa5b1");
        return steps;
    };
    let picked = r
        .queue_ms
        .unwrap_or(first_claim)
        .clamp(0, first_claim.max(0));
    step("queued".into(), 0, picked, "#9aa5b1");
    // Each earlier attempt, then the wait before the next (its backoff, a takeover's lease).
    let mut after = picked;
    for a in &earlier {
        let start = a.started_at.map(at).unwrap_or(after).max(after);
        let end = a.finished_at.map(at).unwrap_or(start).max(start);
        if start > after {
            step("waited, then claimed again".into(), after, start, "#e0a040");
        }
        let on = a
            .worker
            .as_deref()
            .map(|w| format!(" on {w}"))
            .unwrap_or_default();
        let why = a
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        step(
            format!("attempt {}{on}, {}{why}", a.attempt, a.status),
            start,
            end,
            "#c0392b",
        );
        after = end;
    }
    let Some(started) = r
        .started_at
        .map(at)
        .filter(|_| r.attempt > 0 && r.status() != crate::invocation::Status::Queued)
    else {
        step("queued again".into(), after, at(now), "#9aa5b1");
        return steps;
    };
    let Some(finished) = r.finished_at.map(at) else {
        step(
            format!("running (attempt {})", r.attempt),
            started,
            at(now),
            "#3c9a5f",
        );
        return steps;
    };
    let start = match (r.attempt, earlier.is_empty()) {
        (1, _) => "claimed, image, container created and started".to_string(),
        (_, false) => "waited (backoff), then claimed and started again".to_string(),
        (2, true) => "attempt 1 and its backoff, then claimed and started again".to_string(),
        (n, true) => format!(
            "attempts 1–{} and their backoff, then claimed and started again",
            n - 1
        ),
    };
    let colour = if r.attempt > 1 { "#e0a040" } else { "#7b8fd1" };
    step(start, after, started, colour);
    match r.duration_ms {
        Some(ran) => {
            let ended = (started + ran).min(finished);
            step(
                format!("ran (attempt {})", r.attempt),
                started,
                ended,
                "#3c9a5f",
            );
            step("recorded".into(), ended, finished, "#444");
        }
        None => step(
            "no run (platform error), recorded".into(),
            started,
            finished,
            "#c0392b",
        ),
    }
    steps
}

/// [`waterfall`] as a table of bars (SVG, no inline styles: the dashboard's CSP allows none).
pub(super) fn waterfall_markup(
    r: &Record,
    earlier: &[crate::invocation::attempts::Attempt],
    now: chrono::DateTime<chrono::Utc>,
) -> Markup {
    let steps = waterfall(r, earlier, now);
    let total = steps
        .iter()
        .map(|s| s.start_ms + s.took_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |ms: i64| (ms as f64 / total * 1000.0).round();
    html! {
        h2 { "Timeline" }
        div.scroll {
            table #waterfall {
                thead { tr { th { "Step" } th.num { "At" } th.num { "Took" } th { "" } } }
                tbody {
                    @for s in &steps {
                        tr {
                            td { (s.what) }
                            td.num { "+" (fmt_ms(Some(s.start_ms as f64))) }
                            td.num { (fmt_ms(Some(s.took_ms as f64))) }
                            td {
                                svg width="100%" height="12" viewBox="0 0 1000 12" preserveAspectRatio="none" role="img" aria-label=(s.what) {
                                    rect x=(x(s.start_ms)) y="1" width=((x(s.took_ms)).max(2.0)) height="10" fill=(s.colour) {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
