//! The final record: what a run's end writes (one record, or many in one statement for the
//! worker's recorder), a dead worker's run collected from its engine, and a sync call's record
//! restored whole when the claim that created it was lost.

use super::*;

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

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

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
            arrival(&NewClaim::new(inv, queued_at_ms), worker)?,
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
