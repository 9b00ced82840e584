//! Postgres storage of invocations.

use super::*;
use sqlx::Arguments as _;
use sqlx::postgres::PgArguments;

/// The columns of [`Record`], as a literal so queries stay `&'static str`.
macro_rules! select {
    () => {
        "SELECT id, function, status, trigger, attempt, input, input_size, output, output_truncated, logs, logs_truncated, exit_code, error, queued_at, started_at, finished_at, duration_ms, queue_ms, cold, worker, http_method, http_path, http_status, key_id, (SELECT k.name FROM api_keys k WHERE k.id = invocations.key_id) AS key_name, cancelled_by, mode, discarded_at FROM invocations"
    };
}

/// What a claim by worker `$w` writes into row `i`: a new `running` attempt, published (a
/// worker has its message, so the outbox must leave it alone).
macro_rules! claim_set {
    ($w:literal) => {
        concat!(
            "status = 'running', attempt = i.attempt + 1, started_at = now(), worker = ",
            $w,
            ", retry_at = NULL, published_at = COALESCE(i.published_at, now()), payload = NULL,
             queue_ms = CASE WHEN i.attempt = 0
                 THEN GREATEST(0, (EXTRACT(EPOCH FROM (now() - i.queued_at)) * 1000)::bigint)
                 ELSE i.queue_ms END"
        )
    };
}

/// When worker `$w` may claim row `i`: it is `queued`, or `running` on this worker's earlier
/// self, or on a worker whose lease ran out (`workers.lease_until`, GRANDA_WORKER_LEASE_MS
/// after its last beat; 15 s for a row of a worker from before leases).
macro_rules! claimable {
    ($w:literal) => {
        concat!(
            "i.status = 'queued' OR (i.status = 'running' AND (i.worker = ",
            $w,
            " OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = i.worker
                             AND COALESCE(w.lease_until, w.heartbeat_at + interval '15 seconds') > now())))"
        )
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

/// Marks an invocation `running` on `worker` as a new attempt (and published: a worker has its
/// message, so the outbox must leave it alone): when it is `queued`, or
/// `running` on this same worker's earlier self (the caller knows it is not running here now),
/// or `running` on a worker whose heartbeat stopped.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn claim(pool: &PgPool, id: Uuid, worker: &str) -> Result<Claim, sqlx::Error> {
    let row: Option<(i32, DateTime<Utc>)> = sqlx::query_as(concat!(
        "UPDATE invocations i SET ",
        claim_set!("$2"),
        " WHERE i.id = $1 AND (",
        claimable!("$2"),
        ") RETURNING attempt, queued_at"
    ))
    .bind(id)
    .bind(worker)
    .fetch_optional(pool)
    .await?;
    claimed_or_why(pool, id, row).await
}

/// What a claim that wrote nothing found instead.
async fn claimed_or_why(
    pool: &PgPool,
    id: Uuid,
    row: Option<(i32, DateTime<Utc>)>,
) -> Result<Claim, sqlx::Error> {
    if let Some((attempt, queued_at)) = row {
        return Ok(Claim::Claimed { attempt, queued_at });
    }
    Ok(match get(pool, id).await? {
        Some(record) if record.status().is_final() => Claim::AlreadyFinal(Box::new(record)),
        Some(_) => Claim::RunningElsewhere,
        None => Claim::Missing,
    })
}

/// `claim` for a sync call, whose record the ingress does not write first (its confirmed
/// message is the acceptance): creates the record as `running` here, or claims the one that
/// exists (the ingress wrote it when the caller stopped waiting, or this is a redelivery).
#[tracing::instrument(level = "debug", skip(pool, inv))]
pub async fn claim_or_create(
    pool: &PgPool,
    inv: &NewInvocation<'_>,
    queued_at_ms: i64,
    worker: &str,
) -> Result<Claim, sqlx::Error> {
    let row: Option<(i32, DateTime<Utc>)> = sqlx::query_as_with(
        concat!(
        "INSERT INTO invocations AS i (id, function, status, trigger, input, input_size, queued_at, attempt,
                                      started_at, worker, published_at, queue_ms, key_id)
         SELECT $1, $2, 'running', $3, $4, $5, to_timestamp($6::float8 / 1000.0), 1, now(), $7, now(),
                 GREATEST(0, (EXTRACT(EPOCH FROM now()) * 1000)::bigint - $6), $8
         WHERE NOT EXISTS (SELECT 1 FROM refused_invocations r WHERE r.id = $1)
         ON CONFLICT (id) DO UPDATE SET ",
        claim_set!("$7"),
        " WHERE ",
        claimable!("$7"),
        " RETURNING attempt, queued_at"
        ),
        arrival(inv, queued_at_ms, worker)?,
    )
    .bind(inv.key_id)
    .fetch_optional(pool)
    .await?;
    claimed_or_why(pool, inv.id, row).await
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

/// The final record's `UPDATE` of invocation `$1`: the outcome as [`bind_outcome`] binds it
/// (`$2` to `$16`), the input dropped when `$17` ([`Outcome::unstored`]), where `$cond` holds.
macro_rules! final_update {
    ($cond:literal) => {
        concat!(
            "UPDATE invocations SET status = $2, output = $3, output_truncated = $4, logs = $5, logs_truncated = $6,
                    exit_code = $7, error = $8, started_at = COALESCE($9, started_at), finished_at = COALESCE($10, now()),
                    duration_ms = $11, retry_at = NULL, payload = NULL,
                    cold = $12,
                    http_method = $13, http_path = $14, http_status = $15, mode = $16,
                    dead_at = CASE WHEN $2 = 'dead' THEN now() END,
                    input = CASE WHEN $17 THEN NULL ELSE input END
             WHERE id = $1 AND ",
            $cond
        )
    };
}

/// Writes the final record. Returns `false` if it was already final or is missing (nothing is
/// changed then; see [`restore_final`] for a sync call's).
#[tracing::instrument(level = "debug", skip(pool, outcome), fields(status = outcome.status().as_str()))]
pub(crate) async fn finish(
    pool: &PgPool,
    id: Uuid,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let done = bind_outcome(
        sqlx::query(final_update!("status IN ('queued', 'running')")).bind(id),
        outcome,
    )
    .bind(outcome.unstored)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// [`finish`] for many invocations in one statement and one commit (the worker's
/// [`crate::worker`] recorder batches the final records of runs that end together): each
/// `(id, outcome)` is written as [`finish`] writes it, where the record is still `queued` or
/// `running`. Returns the ids it wrote; an id missing from them was already final or has no
/// record (the caller then does what it does when [`finish`] returns `false`).
#[tracing::instrument(level = "debug", skip_all, fields(records = finals.len()))]
pub async fn finish_many(
    pool: &PgPool,
    finals: &[(Uuid, &Outcome)],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let n = finals.len();
    let mut ids = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut output = Vec::with_capacity(n);
    let mut output_truncated = Vec::with_capacity(n);
    let mut logs = Vec::with_capacity(n);
    let mut logs_truncated = Vec::with_capacity(n);
    let mut exit_code = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut finished_at = Vec::with_capacity(n);
    let mut duration_ms = Vec::with_capacity(n);
    let mut cold = Vec::with_capacity(n);
    let mut http_method = Vec::with_capacity(n);
    let mut http_path = Vec::with_capacity(n);
    let mut http_status = Vec::with_capacity(n);
    let mut mode = Vec::with_capacity(n);
    let mut unstored = Vec::with_capacity(n);
    for (id, o) in finals {
        let kept = !o.unstored;
        ids.push(*id);
        status.push(o.status().as_str());
        output.push(kept.then_some(o.output.as_slice()));
        output_truncated.push(o.output_truncated);
        logs.push(kept.then_some(o.logs.as_str()));
        logs_truncated.push(o.logs_truncated);
        exit_code.push(o.exit_code);
        error.push(o.error.as_deref());
        started_at.push(o.started_at);
        finished_at.push(o.finished_at);
        duration_ms.push(o.duration_ms);
        cold.push(o.cold);
        http_method.push(o.http_method.as_deref());
        http_path.push(o.http_path.as_deref());
        http_status.push(o.http_status());
        mode.push(o.mode.map(crate::function::Mode::as_str));
        unstored.push(o.unstored);
    }
    let written: Vec<(Uuid,)> = sqlx::query_as(
        "UPDATE invocations i SET status = v.status, output = v.output,
                output_truncated = v.output_truncated, logs = v.logs,
                logs_truncated = v.logs_truncated, exit_code = v.exit_code, error = v.error,
                started_at = COALESCE(v.started_at, i.started_at),
                finished_at = COALESCE(v.finished_at, now()), duration_ms = v.duration_ms,
                retry_at = NULL, payload = NULL, cold = v.cold, http_method = v.http_method,
                http_path = v.http_path, http_status = v.http_status, mode = v.mode,
                dead_at = CASE WHEN v.status = 'dead' THEN now() END,
                input = CASE WHEN v.unstored THEN NULL ELSE i.input END
         FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bool[], $5::text[], $6::bool[],
                     $7::int4[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::int8[],
                     $12::bool[], $13::text[], $14::text[], $15::int4[], $16::text[], $17::bool[])
              AS v(id, status, output, output_truncated, logs, logs_truncated, exit_code, error,
                   started_at, finished_at, duration_ms, cold, http_method, http_path,
                   http_status, mode, unstored)
         WHERE i.id = ANY($1) AND i.id = v.id AND i.status IN ('queued', 'running')
         RETURNING i.id",
    )
    .bind(ids)
    .bind(status)
    .bind(output)
    .bind(output_truncated)
    .bind(logs)
    .bind(logs_truncated)
    .bind(exit_code)
    .bind(error)
    .bind(started_at)
    .bind(finished_at)
    .bind(duration_ms)
    .bind(cold)
    .bind(http_method)
    .bind(http_path)
    .bind(http_status)
    .bind(mode)
    .bind(unstored)
    .fetch_all(pool)
    .await?;
    Ok(written.into_iter().map(|(id,)| id).collect())
}

/// [`finish`] of a run of worker `worker`, a dead one (`crate::worker`'s `dead_run`): written only
/// while the record is `running` on that worker, so a result collected from its container can't
/// overwrite a record that another worker has claimed since, or that another collector wrote.
/// Returns whether it wrote it.
#[tracing::instrument(level = "debug", skip(db, outcome), fields(status = outcome.status().as_str()))]
pub(crate) async fn finish_run_of<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
    worker: &str,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let done = bind_outcome(
        sqlx::query(final_update!("status = 'running' AND worker = $18")).bind(id),
        outcome,
    )
    .bind(outcome.unstored)
    .bind(worker)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// Binds `o` as the next 15 parameters (`$2` to `$16` in [`finish`], `$9` to `$23` in
/// [`restore_final`]): status, output, output_truncated, logs, logs_truncated, exit_code, error,
/// started_at, finished_at, duration_ms, cold, http_method, http_path, http_status, mode. Output
/// and logs are NULL when [`Outcome::unstored`] (the caller NULLs the input).
fn bind_outcome<'q>(query: PgQuery<'q>, o: &'q Outcome) -> PgQuery<'q> {
    let kept = !o.unstored;
    query
        .bind(o.status().as_str())
        .bind(kept.then_some(&o.output))
        .bind(o.output_truncated)
        .bind(kept.then_some(&o.logs))
        .bind(o.logs_truncated)
        .bind(o.exit_code)
        .bind(&o.error)
        .bind(o.started_at)
        .bind(o.finished_at)
        .bind(o.duration_ms)
        .bind(o.cold)
        .bind(&o.http_method)
        .bind(&o.http_path)
        .bind(o.http_status())
        .bind(o.mode.map(crate::function::Mode::as_str))
}

/// An arriving invocation as parameters `$1` to `$7`, in the order [`claim_or_create`] and
/// [`restore_final`] use them: id, function, trigger, the input kept (up to the cap), the
/// input's size, when it was queued (ms since the epoch) and the worker that runs it.
fn arrival(
    inv: &NewInvocation<'_>,
    queued_at_ms: i64,
    worker: &str,
) -> Result<PgArguments, sqlx::Error> {
    let mut args = PgArguments::default();
    let stored = &inv.input[..inv.input.len().min(inv.stored_input_cap)];
    (|| {
        args.add(inv.id)?;
        args.add(inv.function)?;
        args.add(inv.trigger.as_str())?;
        args.add(stored)?;
        args.add(inv.input.len() as i64)?;
        args.add(queued_at_ms)?;
        args.add(worker)
    })()
    .map_err(sqlx::Error::Encode)?;
    Ok(args)
}

/// Writes a sync call's final record whole when [`finish`] found no record: the claim that
/// created it is an asynchronous commit, which a Postgres crash during the run may have lost.
/// Writes nothing when a record exists. Returns whether it wrote one.
#[tracing::instrument(level = "debug", skip(pool, inv, outcome), fields(id = %inv.id))]
pub(crate) async fn restore_final(
    pool: &PgPool,
    inv: &NewInvocation<'_>,
    queued_at_ms: i64,
    worker: &str,
    attempt: i32,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let done = bind_outcome(
        sqlx::query_with(
            "INSERT INTO invocations (id, function, trigger, input, input_size, queued_at, worker, attempt,
                                      status, published_at, queue_ms, output, output_truncated, logs,
                                      logs_truncated, exit_code, error, started_at, finished_at,
                                      duration_ms, cold, http_method, http_path, http_status, mode, key_id)
             SELECT $1, $2, $3, CASE WHEN $25 THEN NULL ELSE $4 END, $5, to_timestamp($6::float8 / 1000.0), $7, $8, $9, now(),
                    GREATEST(0, (EXTRACT(EPOCH FROM COALESCE($16, now())) * 1000)::bigint - $6),
                    $10, $11, $12, $13, $14, $15, COALESCE($16, now()), COALESCE($17, now()),
                    $18, $19, $20, $21, $22, $23, $24
             WHERE NOT EXISTS (SELECT 1 FROM refused_invocations r WHERE r.id = $1)
             ON CONFLICT (id) DO NOTHING",
            arrival(inv, queued_at_ms, worker)?,
        )
        .bind(attempt),
        outcome,
    )
    .bind(inv.key_id)
    .bind(outcome.unstored)
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
