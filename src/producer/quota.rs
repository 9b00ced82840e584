//! A namespace's quotas at the ingress: before a call is accepted, its namespace's stored-bytes
//! cap and `invocations_per_minute` (429 with `Retry-After`, nothing enqueued). The third quota,
//! `max_concurrency`, is held by the workers at claim time ([`crate::namespace::admit`]).

use super::AppState;
use crate::error::ApiError;
use crate::metrics::label;
use crate::namespace;

/// 429 if a call of the stored function `function` would go over its namespace's quotas; else
/// the call is counted against `invocations_per_minute`.
pub(crate) async fn check(app: &AppState, function: &str) -> Result<(), ApiError> {
    let ns = namespace::split(function).1;
    let Some(quotas) = app.recent.quotas.get(&app.pool, ns).await? else {
        return Ok(());
    };
    let throttled = |reason: &str| {
        app.metrics.inc(
            "granda_namespace_throttled_total",
            format!("namespace=\"{}\",reason=\"{reason}\"", label(ns)),
        );
    };
    if let Some(max) = quotas.max_stored_bytes {
        let used = app.recent.stored_bytes(&app.pool, ns).await?;
        if used >= max {
            throttled("stored");
            note_throttled(app, ns, "stored").await;
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "namespace {ns:?} holds {used} bytes of records, its max_stored_bytes is {max}"
                ),
                retry_after: 60,
            });
        }
    }
    if let Some(per_minute) = quotas.invocations_per_minute
        && let Some(retry_after) = namespace::take_call(&app.pool, ns, per_minute).await?
    {
        throttled("rate");
        note_throttled(app, ns, "rate").await;
        return Err(ApiError::TooManyRequests {
            message: format!(
                "namespace {ns:?} may start {per_minute} invocations a minute; try again in {retry_after} s"
            ),
            retry_after,
        });
    }
    Ok(())
}

/// Counts a refused call of namespace `ns` in `namespace_throttled` (per hour and reason), for
/// the usage report: a refused call leaves no record. A failure to count is logged, never the
/// caller's answer.
async fn note_throttled(app: &AppState, ns: &str, reason: &str) {
    let counted = sqlx::query(
        "INSERT INTO namespace_throttled (namespace, hour, reason, calls)
         VALUES ($1, date_trunc('hour', now()), $2, 1)
         ON CONFLICT (namespace, hour, reason) DO UPDATE SET calls = namespace_throttled.calls + 1",
    )
    .bind(ns)
    .bind(reason)
    .execute(&app.pool)
    .await;
    if let Err(e) = counted {
        tracing::warn!(namespace = ns, error = %e, "could not count a throttled call");
    }
}
