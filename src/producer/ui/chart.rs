//! A function's "last hour" chart as inline SVG, drawn on the server on a real time axis: bars
//! for invocations per interval (failures in red on top), and each recent run's duration as a
//! point at the time it finished, joined by a line; tick labels in UTC wall-clock time. It is
//! drawn twice, wide for desktops and narrow (bigger type, fewer ticks) for phones, and the
//! stylesheet shows the one that fits.

use chrono::{DateTime, Duration, Timelike, Utc};
use maud::{Markup, html};

const H: f64 = 190.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 50.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 26.0;

/// One run on the duration line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Point {
    pub(crate) duration_ms: f64,
    pub(crate) failed: bool,
    /// When it finished.
    pub(crate) at: DateTime<Utc>,
}

/// The time a chart spans: its intervals, and its ticks (wide and narrow) with their labels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Span {
    /// `?range=` on a function's page.
    pub(crate) key: &'static str,
    pub(crate) words: &'static str,
    pub(crate) buckets: i64,
    pub(crate) bucket_secs: i64,
    pub(crate) wide_tick_minutes: i64,
    pub(crate) narrow_tick_minutes: i64,
    pub(crate) tick_format: &'static str,
}

/// The spans a function's page offers: the last hour (the default), day and week.
pub(crate) const SPANS: [Span; 3] = [
    Span {
        key: "1h",
        words: "Last hour",
        buckets: 12,
        bucket_secs: 300,
        wide_tick_minutes: 10,
        narrow_tick_minutes: 20,
        tick_format: "%H:%M",
    },
    Span {
        key: "24h",
        words: "Last 24 hours",
        buckets: 24,
        bucket_secs: 3600,
        wide_tick_minutes: 180,
        narrow_tick_minutes: 360,
        tick_format: "%H:%M",
    },
    Span {
        key: "7d",
        words: "Last 7 days",
        buckets: 28,
        bucket_secs: 21_600,
        wide_tick_minutes: 1440,
        narrow_tick_minutes: 2880,
        tick_format: "%d %b",
    },
];

/// How a chart is drawn for a screen size.
#[derive(Clone, Copy, Debug)]
struct Size {
    width: f64,
    font: f64,
    tick_minutes: i64,
    class: &'static str,
}

const WIDE: Size = Size {
    width: 600.0,
    font: 11.0,
    tick_minutes: 10,
    class: "wide",
};
const NARROW: Size = Size {
    width: 360.0,
    font: 13.0,
    tick_minutes: 20,
    class: "narrow",
};

/// `buckets`: (invocations, failed) per interval of `minutes`, oldest first, the last ending
/// `now`; `runs`: recent finished runs (those older than the buckets' span are left out).
#[cfg(test)]
pub(crate) fn render(
    buckets: &[(i64, i64)],
    minutes: i64,
    runs: &[Point],
    now: DateTime<Utc>,
) -> Markup {
    render_span(&SPANS[0], buckets, minutes, runs, now)
}

/// [`render`] over `span` (its ticks and their labels).
pub(crate) fn render_span(
    span: &Span,
    buckets: &[(i64, i64)],
    minutes: i64,
    runs: &[Point],
    now: DateTime<Utc>,
) -> Markup {
    let span_secs = (buckets.len().max(1) as i64 * minutes * 60) as f64;
    let shown: Vec<Point> = runs
        .iter()
        .filter(|p| {
            let ago = (now - p.at).num_milliseconds() as f64 / 1000.0;
            (0.0..=span_secs).contains(&ago)
        })
        .copied()
        .collect();
    html! {
        (draw(Size { tick_minutes: span.wide_tick_minutes, ..WIDE }, span, buckets, minutes, &shown, now, span_secs))
        (draw(Size { tick_minutes: span.narrow_tick_minutes, ..NARROW }, span, buckets, minutes, &shown, now, span_secs))
        p.legend {
            span.bars {} "invocations per " (minutes) " min"
            span.fails {} "failed"
            span.line {} "duration of each run, when it finished (" (shown.len()) ")"
        }
    }
}

fn draw(
    size: Size,
    span: &Span,
    buckets: &[(i64, i64)],
    minutes: i64,
    runs: &[Point],
    now: DateTime<Utc>,
    span_secs: f64,
) -> Markup {
    let w = size.width;
    let plot_w = w - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max_count = buckets.iter().map(|b| b.0).max().unwrap_or(0).max(1) as f64;
    let slot = plot_w / buckets.len().max(1) as f64;
    let max_ms = runs
        .iter()
        .map(|p| p.duration_ms)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    // x of a moment: the right edge is now, the left edge the start of the first bucket.
    let x_at = |t: DateTime<Utc>| {
        let ago = (now - t).num_milliseconds() as f64 / 1000.0;
        LEFT + plot_w * (1.0 - ago / span_secs)
    };
    let xy = |p: &Point| (x_at(p.at), TOP + plot_h - p.duration_ms / max_ms * plot_h);
    let mut sorted: Vec<&Point> = runs.iter().collect();
    sorted.sort_by_key(|p| p.at);
    let line: String = sorted
        .iter()
        .map(|p| {
            let (x, y) = xy(p);
            format!("{x:.1},{y:.1} ")
        })
        .collect();
    let ticks = ticks(now, span_secs, size.tick_minutes);
    let font = size.font;
    html! {
        svg class={ "chart " (size.class) } viewBox={ "0 0 " (w) " " (H) } role="img"
            aria-label={ "Invocations per interval and durations of runs: " (span.words) } {
            @for t in &ticks {
                @let x = x_at(*t);
                line x1=(fmt(x)) y1=(TOP) x2=(fmt(x)) y2=(TOP + plot_h + 4.0) stroke="#e6e9ed" {}
                text.tick x=(fmt(x)) y=(H - 8.0) text-anchor="middle" font-size=(font) fill="#4a5562" { (t.format(span.tick_format)) }
            }
            line x1=(LEFT) y1=(TOP + plot_h) x2=(w - RIGHT) y2=(TOP + plot_h) stroke="#b9c0c8" {}
            @for (i, (count, failed)) in buckets.iter().enumerate() {
                @let h = *count as f64 / max_count * plot_h;
                @let fh = *failed as f64 / max_count * plot_h;
                @let x = LEFT + i as f64 * slot + slot * 0.15;
                rect x=(fmt(x)) y=(fmt(TOP + plot_h - h)) width=(fmt(slot * 0.7)) height=(fmt(h)) fill="#c9d6e8" {
                    title { (count) " invocations, " (failed) " failed, " ((buckets.len() - 1 - i) as i64 * minutes) " to " ((buckets.len() - i) as i64 * minutes) " min ago" }
                }
                @if *failed > 0 {
                    rect x=(fmt(x)) y=(fmt(TOP + plot_h - fh)) width=(fmt(slot * 0.7)) height=(fmt(fh)) fill="#e59a9a" {}
                }
            }
            @if sorted.len() > 1 {
                polyline points=(line) fill="none" stroke="#1f5fbf" stroke-width="1.5" {}
            }
            @for p in &sorted {
                @let (x, y) = xy(p);
                circle cx=(fmt(x)) cy=(fmt(y)) r="3" fill=(if p.failed { "#c22" } else { "#1f5fbf" }) {
                    title { (format!("{:.0} ms", p.duration_ms)) ", finished " (p.at.format("%H:%M:%S UTC")) }
                }
            }
            // Axes: counts on the left, durations on the right; the time axis is in UTC.
            text x=(LEFT - 6.0) y=(TOP + font) text-anchor="end" font-size=(font) fill="#4a5562" { (max_count as i64) }
            text x=(LEFT - 6.0) y=(TOP + plot_h) text-anchor="end" font-size=(font) fill="#4a5562" { "0" }
            text x=(w - RIGHT + 6.0) y=(TOP + font) font-size=(font) fill="#1f5fbf" { (short_ms(max_ms)) }
            text x=(w - RIGHT + 6.0) y=(TOP + plot_h) font-size=(font) fill="#1f5fbf" { "0" }
            text x=(w - RIGHT + 6.0) y=(H - 8.0) font-size=(font) fill="#4a5562" { "UTC" }
        }
    }
}

/// Wall-clock times on whole multiples of `every` minutes within the span ending `now`.
fn ticks(now: DateTime<Utc>, span_secs: f64, every: i64) -> Vec<DateTime<Utc>> {
    let start = now - Duration::milliseconds((span_secs * 1000.0) as i64);
    let Some(start_minute) = start.with_second(0).and_then(|t| t.with_nanosecond(0)) else {
        return Vec::new();
    };
    // Whole multiples of `every` minutes since the epoch: on the hour, or at midnight UTC.
    let mut t = start_minute;
    while t < start || (t.timestamp() / 60) % every != 0 {
        t += Duration::minutes(1);
    }
    let mut out = Vec::new();
    while t <= now {
        out.push(t);
        t += Duration::minutes(every);
    }
    out
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn short_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn runs_sit_at_the_time_they_finished() {
        let now = at("2026-01-31T12:00:00Z");
        let runs = [
            Point {
                duration_ms: 10.0,
                failed: false,
                at: at("2026-01-31T11:30:00Z"),
            },
            Point {
                duration_ms: 30.0,
                failed: true,
                at: now,
            },
            // Older than the hour: left out.
            Point {
                duration_ms: 99.0,
                failed: false,
                at: at("2026-01-31T10:00:00Z"),
            },
        ];
        let svg = render(&[(0, 0), (3, 1), (5, 0)], 20, &runs, now).into_string();
        // Wide: plot from 44 to 550; half an hour ago is the middle, now the right edge.
        assert!(svg.contains(r#"cx="297.0""#), "{svg}");
        assert!(svg.contains(r#"cx="550.0""#), "{svg}");
        assert!(!svg.contains("99ms"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        // Ticks every 10 min wide (11:00 … 12:00), every 20 min narrow.
        for label in ["11:00", "11:10", "11:50", "12:00"] {
            assert!(svg.contains(&format!(">{label}<")), "{label}");
        }
        assert_eq!(svg.matches(">11:20<").count(), 2, "{svg}");
        assert_eq!(svg.matches(">11:10<").count(), 1, "{svg}");
    }

    #[test]
    fn a_week_ticks_at_midnight_and_a_day_every_three_hours() {
        let now = at("2026-01-31T12:00:00Z");
        let week = render_span(&SPANS[2], &[(1, 0); 28], 360, &[], now).into_string();
        for day in ["25 Jan", "31 Jan"] {
            assert!(week.contains(&format!(">{day}<")), "{day}: {week}");
        }
        assert!(!week.contains(">24 Jan<"), "{week}");
        let day = render_span(&SPANS[1], &[(1, 0); 24], 60, &[], now).into_string();
        for tick in ["12:00", "15:00", "09:00"] {
            assert!(day.contains(&format!(">{tick}<")), "{tick}: {day}");
        }
        assert!(!day.contains(">13:00<"), "{day}");
    }

    #[test]
    fn copes_with_nothing() {
        let svg = render(&[(0, 0); 12], 5, &[], Utc::now()).into_string();
        assert!(svg.contains("<svg"));
        assert!(!svg.contains("NaN"));
    }
}
