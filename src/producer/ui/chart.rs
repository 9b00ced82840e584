//! A function's chart as inline SVG, drawn on the server: bars for invocations per interval
//! (failures in red on top), and a line over the durations of the latest runs.

use maud::{Markup, html};

const W: f64 = 600.0;
const H: f64 = 180.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 44.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 22.0;

/// One run on the duration line.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub duration_ms: f64,
    pub failed: bool,
}

/// `buckets`: (invocations, failed) per interval, oldest first, labelled `minutes` apart;
/// `runs`: durations of the latest finished runs, oldest first.
pub fn render(buckets: &[(i64, i64)], minutes: i64, runs: &[Point]) -> Markup {
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max_count = buckets.iter().map(|b| b.0).max().unwrap_or(0).max(1) as f64;
    let slot = plot_w / buckets.len().max(1) as f64;
    let max_ms = runs
        .iter()
        .map(|p| p.duration_ms)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let step = if runs.len() > 1 {
        plot_w / (runs.len() - 1) as f64
    } else {
        0.0
    };
    let xy = |i: usize, p: &Point| {
        let x = if runs.len() > 1 {
            LEFT + i as f64 * step
        } else {
            LEFT + plot_w / 2.0
        };
        (x, TOP + plot_h - p.duration_ms / max_ms * plot_h)
    };
    let line: String = runs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (x, y) = xy(i, p);
            format!("{x:.1},{y:.1} ")
        })
        .collect();
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label="Invocations per interval and durations of the latest runs" {
            line x1=(LEFT) y1=(TOP + plot_h) x2=(W - RIGHT) y2=(TOP + plot_h) stroke="#b9c0c8" {}
            @for (i, (count, failed)) in buckets.iter().enumerate() {
                @let h = *count as f64 / max_count * plot_h;
                @let fh = *failed as f64 / max_count * plot_h;
                @let x = LEFT + i as f64 * slot + slot * 0.15;
                rect x=(fmt(x)) y=(fmt(TOP + plot_h - h)) width=(fmt(slot * 0.7)) height=(fmt(h)) fill="#c9d6e8" {
                    title { (count) " invocations, " (failed) " failed, " ((buckets.len() - 1 - i) as i64 * minutes) " min ago" }
                }
                @if *failed > 0 {
                    rect x=(fmt(x)) y=(fmt(TOP + plot_h - fh)) width=(fmt(slot * 0.7)) height=(fmt(fh)) fill="#e59a9a" {}
                }
            }
            @if runs.len() > 1 {
                polyline points=(line) fill="none" stroke="#1f5fbf" stroke-width="2" {}
            }
            @for (i, p) in runs.iter().enumerate() {
                @let (x, y) = xy(i, p);
                circle cx=(fmt(x)) cy=(fmt(y)) r="3" fill=(if p.failed { "#c22" } else { "#1f5fbf" }) {
                    title { (format!("{:.0} ms", p.duration_ms)) }
                }
            }
            // Axes: counts on the left, durations on the right, time below.
            text x=(LEFT - 6.0) y=(TOP + 10.0) text-anchor="end" font-size="11" fill="#4a5562" { (max_count as i64) }
            text x=(LEFT - 6.0) y=(TOP + plot_h) text-anchor="end" font-size="11" fill="#4a5562" { "0" }
            text x=(W - RIGHT + 6.0) y=(TOP + 10.0) font-size="11" fill="#1f5fbf" { (short_ms(max_ms)) }
            text x=(W - RIGHT + 6.0) y=(TOP + plot_h) font-size="11" fill="#1f5fbf" { "0" }
            text x=(LEFT) y=(H - 6.0) font-size="11" fill="#4a5562" { "−" (buckets.len() as i64 * minutes) " min" }
            text x=(W - RIGHT) y=(H - 6.0) text-anchor="end" font-size="11" fill="#4a5562" { "now" }
        }
        p.legend {
            span.bars {} "invocations per " (minutes) " min"
            span.fails {} "failed"
            span.line {} "duration, last " (runs.len()) " runs"
        }
    }
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

    #[test]
    fn draws_bars_and_a_line() {
        let svg = render(
            &[(0, 0), (3, 1), (5, 0)],
            5,
            &[
                Point {
                    duration_ms: 10.0,
                    failed: false,
                },
                Point {
                    duration_ms: 30.0,
                    failed: true,
                },
            ],
        )
        .into_string();
        assert!(svg.contains("<polyline"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert!(svg.contains("30ms"));
    }

    #[test]
    fn copes_with_nothing() {
        let svg = render(&[(0, 0); 12], 5, &[]).into_string();
        assert!(svg.contains("<svg"));
        assert!(!svg.contains("NaN"));
    }
}
