//! The dashboard's usage page (`/ui/usage?period=`): what the session's namespace used in a
//! period (the last 24 hours, 7 or 30 days), from the same sums as `GET /v1/usage`
//! ([`crate::producer::usage`]): calls by status, compute seconds (`duration_ms`), GB-seconds,
//! cold starts, record bytes held and calls its quotas refused; per function, with a bar chart
//! of calls (failures in red) and compute seconds per hour or day, drawn as SVG on the server.
//! CPU seconds are not shown: they are not measured (see the usage module).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::Html;
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};

use super::session::Session;
use super::{BASE, UiError, fmt_bytes, layout};
use crate::error::ApiError;
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::usage::{FunctionUsage, namespaces, sum};

/// The periods the page offers: (query value, label, length, bucket).
const PERIODS: [(&str, &str, i64, i64); 3] = [
    ("24h", "last 24 hours", 24 * 3600, 3600),
    ("7d", "last 7 days", 7 * 86400, 86400),
    ("30d", "last 30 days", 30 * 86400, 86400),
];

/// Calls and compute per interval of the period, oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, sqlx::FromRow)]
pub(crate) struct Bucket {
    pub(crate) calls: i64,
    pub(crate) failed: i64,
    pub(crate) duration_ms: i64,
}

/// Calls, failures and compute of namespace `ns` per `bucket_secs` since `from`, oldest first.
async fn buckets(
    app: &AppState,
    ns: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<Bucket>, sqlx::Error> {
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT floor(EXTRACT(EPOCH FROM (queued_at - $1)) / $4)::bigint AS n, count(*)::bigint,
                count(*) FILTER (WHERE status IN ('failed', 'timed_out', 'dead'))::bigint,
                COALESCE(sum(duration_ms), 0)::bigint
         FROM invocations
         WHERE namespace = $3 AND queued_at >= $1 AND queued_at < $2
         GROUP BY 1",
    )
    .bind(from)
    .bind(to)
    .bind(ns)
    .bind(bucket_secs as f64)
    .fetch_all(&app.pool)
    .await?;
    let count = ((to - from).num_seconds() / bucket_secs).max(1) as usize;
    let mut out = vec![Bucket::default(); count];
    for (n, calls, failed, duration_ms) in rows {
        if let Some(b) = usize::try_from(n).ok().and_then(|n| out.get_mut(n)) {
            *b = Bucket {
                calls,
                failed,
                duration_ms,
            };
        }
    }
    Ok(out)
}

/// `GET /ui/usage?period=24h|7d|30d`: the session's namespace's usage.
pub(crate) async fn page(
    session: Session,
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    session.require(Action::ReadFunctions)?;
    let chosen = query.get("period").map(String::as_str).unwrap_or("7d");
    let &(period, label, secs, bucket_secs) =
        PERIODS.iter().find(|p| p.0 == chosen).ok_or_else(|| {
            UiError(ApiError::BadRequest(format!(
                "period must be one of 24h, 7d, 30d; not {chosen:?}"
            )))
        })?;
    let ns = session.namespace().clone();
    // Whole buckets, the last ending at the next bucket boundary.
    let now = Utc::now();
    let to = DateTime::from_timestamp((now.timestamp() / bucket_secs + 1) * bucket_secs, 0)
        .unwrap_or(now);
    let from = to - Duration::seconds(secs);
    let usage = sum(&app.pool, from, to, Some(&ns), None).await?;
    let held = namespaces(&app.pool, from, to, Some(&ns), &usage).await?;
    let held = held.into_iter().next().unwrap_or_default();
    let series = buckets(&app, ns.as_str(), from, to, bucket_secs).await?;
    let total = |f: fn(&FunctionUsage) -> i64| usage.iter().map(f).sum::<i64>();
    let calls = total(|u| u.invocations);
    let status = |s: &'static str| {
        usage
            .iter()
            .map(|u| u.by_status.get(s).copied().unwrap_or(0))
            .sum::<i64>()
    };
    let compute_s = total(|u| u.duration_ms) as f64 / 1000.0;
    let gb_s: f64 = usage.iter().map(|u| u.gb_seconds).sum();
    let throttled: i64 = held.throttled.values().sum();
    Ok(layout(
        "Usage",
        Some(&session),
        html! {
            h1 { "Usage of " (ns.as_str()) }
            form.filters method="get" action={ (BASE) "/usage" } {
                label { "Period "
                    select #period name="period" {
                        @for p in PERIODS { option value=(p.0) selected[p.0 == period] { (p.1) } }
                    }
                }
                button #show type="submit" { "Show" }
            }
            p.muted { "Invocations queued from " (super::fmt_time(Some(from))) " to " (super::fmt_time(Some(to))) " (" (label) ")." }
            div.card {
                table.kv #totals {
                    tr { th { "Calls" } td #calls { (calls) } }
                    tr { th { "Succeeded" } td { (status("succeeded")) } }
                    tr { th { "Failed, timed out, dead" } td { (status("failed") + status("timed_out") + status("dead")) } }
                    tr { th { "Compute seconds" } td #compute { (format!("{compute_s:.1}")) } }
                    tr { th { "GB-seconds" } td #gb-seconds { (format!("{gb_s:.2}")) } }
                    tr { th { "CPU seconds" } td.muted { "not measured" } }
                    tr { th { "Cold starts" } td { (total(|u| u.cold_starts)) } }
                    tr { th { "Records held" } td #stored { (fmt_bytes(held.stored_bytes)) } }
                    tr { th { "Throttled (429)" } td #throttled { (throttled) } }
                }
            }
            h2 { "Per " (if bucket_secs == 3600 { "hour" } else { "day" }) }
            div.card { (chart(&series)) }
            h2 { "Per function" }
            @if usage.is_empty() {
                p.muted { "No invocations in this period." }
            } @else {
                div.scroll {
                    table #usage {
                        thead { tr {
                            th { "Function" } th.num { "Calls" } th.num { "Succeeded" } th.num { "Compute s" }
                            th.num { "GB-s" } th.num.hide-narrow { "Cold" }
                        } }
                        tbody {
                            @for u in &usage {
                                tr {
                                    td { a href={ (BASE) "/functions/" (ns.qualify(&u.function)) } { (u.function) } }
                                    td.num { (u.invocations) }
                                    td.num { (u.by_status.get("succeeded").copied().unwrap_or(0)) }
                                    td.num { (format!("{:.1}", u.duration_ms as f64 / 1000.0)) }
                                    td.num { (format!("{:.2}", u.gb_seconds)) }
                                    td.num.hide-narrow { (u.cold_starts) }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// Bars of calls per bucket (failures in red on top) and a line of compute seconds, on their
/// own scales (calls left, seconds right).
pub(crate) fn chart(series: &[Bucket]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 180.0;
    const PAD: f64 = 36.0;
    let max_calls = series.iter().map(|b| b.calls).max().unwrap_or(0).max(1) as f64;
    let max_ms = series
        .iter()
        .map(|b| b.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = series.len().max(1) as f64;
    let slot = (W - 2.0 * PAD) / n;
    let y = |v: f64, max: f64| H - PAD / 2.0 - (H - PAD) * v / max;
    let line: Vec<String> = series
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{:.1},{:.1}",
                PAD + slot * (i as f64 + 0.5),
                y(b.duration_ms as f64, max_ms)
            )
        })
        .collect();
    html! {
        svg.chart #usage-chart viewBox={ "0 0 " (W) " " (H) } role="img" aria-label="calls and compute seconds per interval" {
            text x="2" y="12" font-size="11" { (max_calls as i64) " calls" }
            text x=(W - 2.0) y="12" font-size="11" text-anchor="end" { (format!("{:.1}", max_ms / 1000.0)) " s" }
            line x1=(PAD) y1=(H - PAD / 2.0) x2=(W - PAD) y2=(H - PAD / 2.0) stroke="#9aa5b1" {}
            @for (i, b) in series.iter().enumerate() {
                @let x = PAD + slot * i as f64 + slot * 0.1;
                @let ok = (b.calls - b.failed) as f64;
                @if b.calls > 0 {
                    rect.bar x=(format!("{x:.1}")) y=(format!("{:.1}", y(ok, max_calls))) width=(format!("{:.1}", slot * 0.8))
                        height=(format!("{:.1}", H - PAD / 2.0 - y(ok, max_calls))) fill="#c9d6e8" {}
                    @if b.failed > 0 {
                        rect.fail x=(format!("{x:.1}")) y=(format!("{:.1}", y(b.calls as f64, max_calls))) width=(format!("{:.1}", slot * 0.8))
                            height=(format!("{:.1}", y(ok, max_calls) - y(b.calls as f64, max_calls))) fill="#e59a9a" {}
                    }
                }
            }
            @if series.iter().any(|b| b.duration_ms > 0) {
                polyline points=(line.join(" ")) fill="none" stroke="#1f5fbf" stroke-width="1.5" {}
            }
        }
        p.legend { span.bars {} "calls" span.fails {} "failed" span.line {} "compute seconds" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One bar per bucket with calls, a red one on top where some failed; no line without
    /// compute.
    #[test]
    fn the_chart_draws_a_bar_per_busy_bucket() {
        let series = [
            Bucket {
                calls: 4,
                failed: 1,
                duration_ms: 2000,
            },
            Bucket::default(),
            Bucket {
                calls: 2,
                failed: 0,
                duration_ms: 500,
            },
        ];
        let svg = chart(&series).into_string();
        assert_eq!(svg.matches("class=\"bar\"").count(), 2, "{svg}");
        assert_eq!(svg.matches("class=\"fail\"").count(), 1, "{svg}");
        assert!(svg.contains("polyline"), "{svg}");
        let idle = chart(&[Bucket::default(); 3]).into_string();
        assert!(
            !idle.contains("polyline") && !idle.contains("<rect"),
            "{idle}"
        );
    }
}
