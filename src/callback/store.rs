//! Delivery state on the invocation record, and the claims that make one process deliver it.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Marks an invocation's result to be POSTed to `url` when it is final.
pub(crate) async fn attach(pool: &PgPool, id: Uuid, url: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE invocations SET callback_url = $2, callback_status = 'pending' WHERE id = $1",
    )
    .bind(id)
    .bind(url)
    .execute(pool)
    .await?;
    Ok(())
}

/// The callback part of an invocation record, for the API (`None`: it has no callback).
pub(crate) async fn state(pool: &PgPool, id: Uuid) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<State> = sqlx::query_as(
        "SELECT callback_url, callback_status, callback_attempts, callback_error, callback_done_at
         FROM invocations WHERE id = $1 AND callback_url IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|s| {
        json!({
            "url": s.callback_url,
            "status": s.callback_status,
            "attempts": s.callback_attempts,
            "error": s.callback_error,
            "done_at": s.callback_done_at,
        })
    }))
}

#[derive(sqlx::FromRow)]
pub(super) struct State {
    callback_url: String,
    callback_status: Option<String>,
    callback_attempts: i32,
    callback_error: Option<String>,
    callback_done_at: Option<DateTime<Utc>>,
}

/// A final invocation whose result is to be POSTed (its output is read once room is made).
#[derive(sqlx::FromRow)]
pub(super) struct Due {
    pub(super) id: Uuid,
    pub(super) function: String,
    /// The invocation's status, as stored (text here: the callback sits below
    /// [`crate::invocation`], which it does not import).
    pub(super) status: String,
    pub(super) exit_code: Option<i32>,
    pub(super) duration_ms: Option<i64>,
    pub(super) output_len: i64,
    pub(super) callback_url: String,
    pub(super) callback_attempts: i32,
    pub(super) callback_key: Option<String>,
    /// The trace context the invocation was accepted in: each POST is a span of that trace.
    pub(super) traceparent: Option<String>,
    pub(super) tracestate: Option<String>,
}

/// What a claim returns.
macro_rules! claimed {
    () => {
        "RETURNING id, function, status, exit_code, duration_ms,
                   COALESCE(octet_length(output), 0)::bigint AS output_len, callback_url,
                   callback_attempts, traceparent, tracestate,
                   (SELECT f.callback_key FROM functions f WHERE f.name = invocations.function)
                     AS callback_key"
    };
}

/// Claims invocation `$1`'s callback if it is due (or was claimed by a process that went away).
pub(super) const CLAIM_ONE: &str = concat!(
    "UPDATE invocations SET callback_status = 'delivering', callback_claimed_at = now()
     WHERE id = $1 AND callback_url IS NOT NULL
       AND status IN ('succeeded', 'failed', 'timed_out', 'dead', 'cancelled')
       AND (callback_status = 'pending'
            OR (callback_status = 'delivering' AND callback_claimed_at < now() - interval '15 minutes'))
     ",
    claimed!()
);

/// Claims the oldest due callback that waited for a free slot.
pub(super) const CLAIM_NEXT: &str = concat!(
    "UPDATE invocations SET callback_status = 'delivering', callback_claimed_at = now()
     WHERE id = (SELECT id FROM invocations
                 WHERE callback_status = 'pending' AND callback_url IS NOT NULL
                   AND status IN ('succeeded', 'failed', 'timed_out', 'dead', 'cancelled')
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
       AND callback_status = 'pending'
     ",
    claimed!()
);
