//! A namespace's quotas at the ingress: before a call is accepted, its namespace's stored-bytes
//! cap and `invocations_per_minute` (429 with `Retry-After`, nothing enqueued). The third quota,
//! `max_concurrency`, is held by the workers at claim time ([`crate::namespace::admit`]).

use super::AppState;
use crate::error::ApiError;
use crate::metrics::label;
use crate::namespace;

/// 429 if a call of the stored function `function` would go over its namespace's quotas; else
/// the call is counted against `invocations_per_minute`.
pub async fn check(app: &AppState, function: &str) -> Result<(), ApiError> {
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
        return Err(ApiError::TooManyRequests {
            message: format!(
                "namespace {ns:?} may start {per_minute} invocations a minute; try again in {retry_after} s"
            ),
            retry_after,
        });
    }
    Ok(())
}
