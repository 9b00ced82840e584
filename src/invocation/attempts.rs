//! An invocation's attempts: one row in `invocation_attempts` for each attempt that did not end
//! it (it failed and was retried, its run was lost with its worker and the message delivered
//! again, or it was retried by hand), written by the same statement that put the invocation back to `queued`, so
//! the happy path writes nothing more; the last attempt is read off the record itself
//! ([`of`]). `GET /v1/invocations/{id}` shows them as `attempts`, the dashboard as a row each
//! in the invocation's timeline.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Record, Status};

/// One attempt of an invocation: which worker ran it, when, and how it ended.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow, Serialize, utoipa::ToSchema)]
#[schema(as = InvocationAttempt)]
pub(crate) struct Attempt {
    /// Counts from 1.
    pub(crate) attempt: i32,
    pub(crate) worker: Option<String>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    /// Unset while the attempt runs.
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) status: AttemptStatus,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) duration_ms: Option<i64>,
}

/// How an attempt ended (or that it runs): `running`, a final status, `retried` (it failed and
/// the invocation was queued again), `lost` (the run was lost with its worker and its message
/// delivered again) or the final status it had before a retry by hand. Stored as its word
/// (`text`): a word the enum lacks is a decoding error, not a default.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub(crate) enum AttemptStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Dead,
    Cancelled,
    Retried,
    Lost,
}

impl AttemptStatus {
    /// The attempt's status for an invocation's own `status`; `None` while it is queued (no
    /// attempt runs).
    pub(crate) fn of(status: Status) -> Option<AttemptStatus> {
        Some(match status {
            Status::Queued => return None,
            Status::Running => AttemptStatus::Running,
            Status::Succeeded => AttemptStatus::Succeeded,
            Status::Failed => AttemptStatus::Failed,
            Status::TimedOut => AttemptStatus::TimedOut,
            Status::Dead => AttemptStatus::Dead,
            Status::Cancelled => AttemptStatus::Cancelled,
        })
    }
}

impl std::fmt::Display for AttemptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttemptStatus::Running => "running",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Failed => "failed",
            AttemptStatus::TimedOut => "timed_out",
            AttemptStatus::Dead => "dead",
            AttemptStatus::Cancelled => "cancelled",
            AttemptStatus::Retried => "retried",
            AttemptStatus::Lost => "lost",
        })
    }
}

/// The attempts before the current one, in order: what [`of`] adds the record's own to.
pub(crate) async fn earlier(pool: &PgPool, id: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as::<_, Attempt>(
        "SELECT attempt, worker, started_at, finished_at, status, exit_code, error, duration_ms
         FROM invocation_attempts WHERE invocation_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// Every attempt of `record` ([`of`]), reading the stored ones only when it may have some (after
/// its first attempt, or queued again).
pub(crate) async fn load(pool: &PgPool, record: &Record) -> Result<Vec<Attempt>, sqlx::Error> {
    let stored = if record.attempt > 1 || (record.attempt > 0 && record.status() == Status::Queued)
    {
        earlier(pool, record.id).await?
    } else {
        Vec::new()
    };
    Ok(of(record, stored))
}

/// Every attempt of `record`: the `earlier` ones stored, then its current or last one, read off
/// the record (none while it waits for its first, or for a retry).
pub(crate) fn of(record: &Record, mut earlier: Vec<Attempt>) -> Vec<Attempt> {
    earlier.retain(|a| a.attempt < record.attempt || record.status() == Status::Queued);
    let current = match (record.status(), AttemptStatus::of(record.status())) {
        (_, None) => None,
        (Status::Running, Some(status)) => Some(Attempt {
            attempt: record.attempt,
            worker: record.worker.clone(),
            started_at: record.started_at,
            finished_at: None,
            status,
            exit_code: None,
            error: None,
            duration_ms: None,
        }),
        _ if record.attempt == 0 => None,
        (_, Some(status)) => Some(Attempt {
            attempt: record.attempt,
            worker: record.worker.clone(),
            started_at: record.started_at,
            finished_at: record.finished_at,
            status,
            exit_code: record.exit_code,
            error: record.error.clone(),
            duration_ms: record.duration_ms,
        }),
    };
    earlier.extend(current);
    earlier
}

/// Notes that worker `dead`'s attempt `attempt` of `id` was lost (the worker died or was cut off,
/// and the message came again): only on a takeover or a redelivery, never on the happy path. A
/// row already there (a retry's) stays.
pub(crate) async fn note_lost(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    dead: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO invocation_attempts (invocation_id, attempt, worker, status, error)
         VALUES ($1, $2, $3, 'lost', 'the run was lost with its worker (killed or cut off); the message was delivered again')
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(attempt)
    .bind(dead)
    .execute(pool)
    .await?;
    Ok(())
}

/// After claiming attempt `attempt` of `id`: when the run before it was lost on worker `lost_on`
/// (a takeover of a dead worker's run, or a redelivery to this worker), notes it
/// ([`note_lost`]); a failure to is logged, the run goes on.
pub(crate) async fn note_lost_if(pool: &PgPool, id: Uuid, attempt: i32, lost_on: Option<&str>) {
    let Some(worker) = lost_on.filter(|_| attempt > 1) else {
        return;
    };
    if let Err(e) = note_lost(pool, id, attempt - 1, worker).await {
        tracing::warn!(error = %e, %id, "could not note the lost attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_status_is_shown_and_sent_as_the_word_it_is_stored_as() {
        let all = [
            AttemptStatus::Running,
            AttemptStatus::Succeeded,
            AttemptStatus::Failed,
            AttemptStatus::TimedOut,
            AttemptStatus::Dead,
            AttemptStatus::Cancelled,
            AttemptStatus::Retried,
            AttemptStatus::Lost,
        ];
        for s in all {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
        assert_eq!(AttemptStatus::TimedOut.to_string(), "timed_out");
        // Each invocation status but `queued` is an attempt's, by the same word.
        for s in [
            Status::Running,
            Status::Succeeded,
            Status::Failed,
            Status::TimedOut,
            Status::Dead,
            Status::Cancelled,
        ] {
            assert_eq!(AttemptStatus::of(s).unwrap().to_string(), s.as_str());
        }
        assert_eq!(AttemptStatus::of(Status::Queued), None);
    }
}
