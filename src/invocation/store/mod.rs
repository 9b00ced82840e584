//! Postgres storage of invocations: their arrival, publishing, retries, cancels, dead letters
//! and reads here; the claim before a run in `claims.rs`, the final record in `finals.rs`.

use super::*;

/// The columns of [`Record`], as a literal so queries stay `&'static str`.
macro_rules! select {
    () => {
        "SELECT id, function, status, trigger, attempt, input, input_size, output, output_truncated, logs, logs_truncated, exit_code, error, queued_at, started_at, finished_at, duration_ms, queue_ms, cold, worker, http_method, http_path, http_status, key_id, (SELECT k.name FROM api_keys k WHERE k.id = invocations.key_id) AS key_name, cancelled_by, mode, discarded_at FROM invocations"
    };
}

/// Stores a `queued` invocation. With an idempotency key already used for this function in
/// the last 24 hours, stores nothing and returns the first invocation's id and `false`.
#[tracing::instrument(level = "debug", skip_all, fields(id = %inv.id, function = inv.function))]
/// Records a queued invocation (or finds the one its idempotency key names: `false`), with its
/// own `env`, kept so that the outbox and a retry send it again.
pub(crate) async fn insert_queued(
    pool: &PgPool,
    inv: &NewInvocation<'_>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(Uuid, bool), sqlx::Error> {
    let stored = &inv.input[..inv.input.len().min(inv.stored_input_cap)];
    if let Some(key) = inv.idempotency_key {
        // A key older than a day is free again.
        sqlx::query(
            "UPDATE invocations SET idempotency_key = NULL
             WHERE function = $1 AND idempotency_key = $2 AND queued_at < now() - interval '24 hours'",
        )
        .bind(inv.function)
        .bind(key)
        .execute(pool)
        .await?;
    }
    let (traceparent, tracestate) = trace_context();
    // The whole input stays until the broker has the message, so the outbox can re-publish it.
    let payload = (stored.len() < inv.input.len()).then_some(inv.input);
    let inserted: Option<(Uuid,)> = sqlx::query_as(
        "INSERT INTO invocations (id, function, status, trigger, input, input_size, queued_at, idempotency_key, payload, extra_env,
                                  traceparent, tracestate, key_id)
         VALUES ($1, $2, 'queued', $3, $4, $5, now(), $6, $7, $8, $9, $10, $11)
         ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(inv.id)
    .bind(inv.function)
    .bind(inv.trigger.as_str())
    .bind(stored)
    .bind(inv.input.len() as i64)
    .bind(inv.idempotency_key)
    .bind(payload)
    .bind((!env.is_empty()).then_some(sqlx::types::Json(env)))
    .bind(traceparent)
    .bind(tracestate)
    .bind(inv.key_id)
    .fetch_optional(pool)
    .await?;
    if let Some((id,)) = inserted {
        return Ok((id, true));
    }
    let (id,): (Uuid,) =
        sqlx::query_as("SELECT id FROM invocations WHERE function = $1 AND idempotency_key = $2")
            .bind(inv.function)
            .bind(inv.idempotency_key)
            .fetch_one(pool)
            .await?;
    Ok((id, false))
}

/// Stores a `queued` invocation inside the caller's transaction (schedules and the AMQP
/// router record the claim or the event in the same one), with its own `env`, which the
/// outbox keeps when it re-publishes. No idempotency key: the caller's transaction is the
/// guard. Publish it after the commit (`crate::producer::outbox::publish_now`).
pub async fn insert_queued_in(
    tx: &mut sqlx::PgConnection,
    inv: &NewInvocation<'_>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
    let stored = &inv.input[..inv.input.len().min(inv.stored_input_cap)];
    let payload = (stored.len() < inv.input.len()).then_some(inv.input);
    let (traceparent, tracestate) = trace_context();
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, input, input_size, queued_at, payload, extra_env,
                                  traceparent, tracestate, key_id)
         VALUES ($1, $2, 'queued', $3, $4, $5, now(), $6, $7, $8, $9, $10)",
    )
    .bind(inv.id)
    .bind(inv.function)
    .bind(inv.trigger.as_str())
    .bind(stored)
    .bind(inv.input.len() as i64)
    .bind(payload)
    .bind((!env.is_empty()).then_some(sqlx::types::Json(env)))
    .bind(traceparent)
    .bind(tracestate)
    .bind(inv.key_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// The W3C trace context of the current span (`traceparent`, `tracestate`), stored with a
/// queued invocation so that the outbox's re-publish and its callback join its trace.
fn trace_context() -> (Option<String>, Option<String>) {
    let mut traceparent = None;
    let mut tracestate = None;
    for (name, value) in crate::telemetry::trace_headers() {
        match name {
            "traceparent" => traceparent = Some(value),
            _ => tracestate = Some(value),
        }
    }
    (traceparent, tracestate)
}

/// Removes a `queued` invocation whose message the broker did not confirm, so nothing waits
/// for it and a message that reached its queue anyway finds no record and never runs.
/// `false`: nothing was removed, because a worker claimed it first (it was accepted).
pub(crate) async fn discard(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM invocations WHERE id = $1 AND status = 'queued'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Notes that the broker confirmed the invocation's message: the outbox leaves it alone.
pub(crate) async fn mark_published<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE invocations SET published_at = now(), payload = NULL WHERE id = $1 AND published_at IS NULL",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Notes that a sync call was refused (its publish not confirmed): if its message reached the
/// queue anyway, no worker will record or run it.
pub async fn refuse(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refused_invocations (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Refuses a sync call for good whose publish the broker did not confirm in time, unless a
/// worker's claim created its record first. `true`: refused (no worker will record or run it);
/// `false`: a worker has it, so it was accepted.
///
/// The claim (`claim_or_create`) checks `refused_invocations` with the snapshot its statement
/// started with, so a refusal committed while it runs would not stop it. So the refusal also
/// writes a placeholder record under the same id: the primary key makes the two wait for each
/// other and one of them wins. A claim that loses finds a final record and acks without a run.
/// The placeholder is removed after `linger` (it only has to outlive claims that started
/// before the refusal), so a refused call leaves no record.
pub(crate) async fn refuse_call(
    pool: &PgPool,
    inv: &NewInvocation<'_>,
    linger: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO refused_invocations (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(inv.id)
        .execute(&mut *tx)
        .await?;
    let placed: Option<(Uuid,)> = sqlx::query_as(
        "INSERT INTO invocations (id, function, status, trigger, input_size, queued_at, finished_at,
                                  published_at, error)
         VALUES ($1, $2, 'failed', $3, 0, now(), now(), now(),
                 'refused: the broker did not confirm this call in time; it was not run')
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(inv.id)
    .bind(inv.function)
    .bind(inv.trigger.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if placed.is_none() {
        sqlx::query("DELETE FROM refused_invocations WHERE id = $1")
            .bind(inv.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if placed.is_none() {
        return Ok(false);
    }
    tokio::time::sleep(linger).await;
    sqlx::query(
        "DELETE FROM invocations WHERE id = $1 AND status = 'failed' AND attempt = 0 AND worker IS NULL",
    )
    .bind(inv.id)
    .execute(pool)
    .await?;
    Ok(true)
}

/// Writes the `queued` record of a sync call whose caller stopped waiting (published: its
/// message is on the queue), unless a worker wrote it already.
pub(crate) async fn note_queued(pool: &PgPool, inv: &NewInvocation<'_>) -> Result<(), sqlx::Error> {
    let stored = &inv.input[..inv.input.len().min(inv.stored_input_cap)];
    sqlx::query(
        "INSERT INTO invocations (id, function, status, trigger, input, input_size, queued_at, published_at, key_id)
         VALUES ($1, $2, 'queued', $3, $4, $5, now(), now(), $6)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(inv.id)
    .bind(inv.function)
    .bind(inv.trigger.as_str())
    .bind(stored)
    .bind(inv.input.len() as i64)
    .bind(inv.key_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts a failed attempt back to `queued` until `retry_at`, keeping what the attempt produced.
#[tracing::instrument(level = "debug", skip(pool, outcome))]
pub(crate) async fn requeue<'e>(
    pool: impl sqlx::PgExecutor<'e>,
    id: Uuid,
    worker: &str,
    outcome: &Outcome,
    retry_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    // The attempt's row in the same statement: a retry costs no round trip more.
    let done = sqlx::query(
        "WITH requeued AS (
             UPDATE invocations SET status = 'queued', retry_at = $3, published_at = now(), output = $4,
                    output_truncated = $5, logs = $6, logs_truncated = $7, exit_code = $8, error = $9,
                    duration_ms = $10, finished_at = NULL
             WHERE id = $1 AND status = 'running' AND worker = $2
             RETURNING id, attempt, worker, started_at)
         INSERT INTO invocation_attempts (invocation_id, attempt, worker, started_at, finished_at,
                                          status, exit_code, error, duration_ms)
         SELECT id, attempt, worker, started_at, now(), 'retried', $8, $9, $10 FROM requeued
         ON CONFLICT (invocation_id, attempt) DO UPDATE SET worker = EXCLUDED.worker,
             started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
             status = EXCLUDED.status, exit_code = EXCLUDED.exit_code, error = EXCLUDED.error,
             duration_ms = EXCLUDED.duration_ms",
    )
    .bind(id)
    .bind(worker)
    .bind(retry_at)
    .bind(&outcome.output)
    .bind(outcome.output_truncated)
    .bind(&outcome.logs)
    .bind(outcome.logs_truncated)
    .bind(outcome.exit_code)
    .bind(&outcome.error)
    .bind(outcome.duration_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The invocation's own env, as stored with it (empty when it had none).
pub(crate) async fn extra_env(
    pool: &PgPool,
    id: Uuid,
) -> Result<std::collections::BTreeMap<String, String>, sqlx::Error> {
    type Env = sqlx::types::Json<std::collections::BTreeMap<String, String>>;
    let row: Option<(Option<Env>,)> =
        sqlx::query_as("SELECT extra_env FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row
        .and_then(|(env,)| env)
        .map(|env| env.0)
        .unwrap_or_default())
}

/// Makes a final, not succeeded invocation `queued` again for one more attempt
/// (`POST /v1/invocations/{id}/retry`). `None` if it is not in such a state.
pub(crate) async fn reset_for_retry(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<Record>, sqlx::Error> {
    // The attempt that ended it is kept as a row of its own (the record's fields are reset).
    let done = sqlx::query(
        "WITH last AS (
             SELECT id, attempt, worker, started_at, finished_at, status, exit_code, error, duration_ms
             FROM invocations
             WHERE id = $1 AND status IN ('failed', 'timed_out', 'dead') AND input_size = length(input)
               AND discarded_at IS NULL
             FOR UPDATE),
         kept AS (
             INSERT INTO invocation_attempts (invocation_id, attempt, worker, started_at, finished_at,
                                              status, exit_code, error, duration_ms)
             SELECT id, attempt, worker, started_at, COALESCE(finished_at, now()), status, exit_code,
                    error, duration_ms
             FROM last WHERE attempt > 0
             ON CONFLICT (invocation_id, attempt) DO NOTHING)
         UPDATE invocations i SET status = 'queued', published_at = NULL, retry_at = NULL, error = NULL,
                finished_at = NULL, dead_at = NULL
         FROM last WHERE i.id = last.id",
    )
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    get(pool, id).await
}

/// The Postgres channel a cancel is announced on (its payload: the invocation's id), in the
/// transaction that records it: a worker running that invocation stops it
/// ([`crate::worker`]'s cancel listener).
pub(crate) const CANCEL_CHANNEL: &str = "granda_cancel";

/// Ends a `queued` or `running` invocation as `cancelled`, noting `by` and when (`finished_at`),
/// and announces it on [`CANCEL_CHANNEL`] in the same statement (so only once it is committed).
/// Returns the status it had and the worker that had it (a running one's), or `None` when it
/// was not queued or running (already ended, or no such invocation).
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn cancel(
    pool: &PgPool,
    id: Uuid,
    by: &str,
) -> Result<Option<(Status, Option<String>)>, sqlx::Error> {
    let row: Option<(Status, Option<String>)> = sqlx::query_as(
        "WITH before AS (SELECT id, status, worker FROM invocations
                         WHERE id = $1 AND status IN ('queued', 'running') FOR UPDATE),
              done AS (UPDATE invocations i SET status = 'cancelled', cancelled_by = $2,
                              finished_at = now(), retry_at = NULL, payload = NULL,
                              error = 'cancelled by ' || $2,
                              duration_ms = CASE WHEN b.status = 'running' AND i.started_at IS NOT NULL
                                  THEN GREATEST(0, (EXTRACT(EPOCH FROM (now() - i.started_at)) * 1000)::bigint)
                                  ELSE i.duration_ms END
                       FROM before b WHERE i.id = b.id
                       RETURNING i.id, b.status, b.worker)
         SELECT d.status, d.worker FROM done d, LATERAL (SELECT pg_notify($3, d.id::text)) n",
    )
    .bind(id)
    .bind(by)
    .bind(CANCEL_CHANNEL)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Of `ids`, those now `cancelled` (a worker's check of its runs, beside the notifications).
pub(crate) async fn cancelled_among(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM invocations WHERE id = ANY($1) AND status = 'cancelled'")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// `queued` invocations whose message the broker never confirmed, older than `grace`.
/// Locks them for the caller's transaction so two sweepers never take the same one.
pub(crate) async fn unpublished(
    tx: &mut sqlx::PgConnection,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<Unpublished>, sqlx::Error> {
    sqlx::query_as::<_, Unpublished>(
        "SELECT id, function, trigger, COALESCE(payload, input, ''::bytea) AS input, extra_env,
                traceparent, tracestate FROM invocations
         WHERE status = 'queued' AND published_at IS NULL
           AND queued_at < now() - make_interval(secs => $1)
         ORDER BY queued_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(tx)
    .await
}

/// Ends an invocation that can't run any more (its function is gone, or no caller waits).
pub(crate) async fn abandon(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    why: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE invocations SET status = 'failed', error = $2, finished_at = now(), payload = NULL
         WHERE id = $1 AND status = 'queued'",
    )
    .bind(id)
    .bind(why)
    .execute(tx)
    .await?;
    Ok(())
}

/// Dead invocations (of `namespace`, or of all), newest first.
pub(crate) async fn list_dead(
    pool: &PgPool,
    namespace: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Record>, sqlx::Error> {
    sqlx::query_as::<_, Record>(concat!(
        select!(),
        " WHERE dead_at IS NOT NULL AND status = 'dead' AND ($1::uuid IS NULL OR id < $1)
          AND ($3::text IS NULL OR namespace = $3)
          ORDER BY id DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit)
    .bind(namespace)
    .fetch_all(pool)
    .await
}

/// Discards dead invocation `id` for good: it leaves the dead letters (`dead_at` cleared) and
/// can't be retried. Returns `false` when it is missing, not dead, or discarded already.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn discard_dead(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE invocations SET discarded_at = now(), dead_at = NULL
         WHERE id = $1 AND status = 'dead' AND discarded_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Record>, sqlx::Error> {
    sqlx::query_as::<_, Record>(concat!(select!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// A function's invocations, newest first, older than `before` when given.
pub(crate) async fn list(
    pool: &PgPool,
    function: &str,
    status: Option<Status>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Record>, sqlx::Error> {
    sqlx::query_as::<_, Record>(concat!(
        select!(),
        " WHERE function = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(function)
    .bind(status.map(Status::as_str))
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

mod claims;
mod finals;
pub use claims::{NewClaim, claim_many, claim_or_create, claim_or_create_many};
pub(crate) use claims::{arrival, claim_found, claim_or_create_row, claim_row};
pub use finals::finish_many;
pub(crate) use finals::{finish, finish_run_of, restore_final};
