//! The worker's heartbeat in Postgres (`workers`): a `running` invocation whose worker's lease
//! ran out (`lease_until`, `GRANDA_WORKER_LEASE_MS` after its last beat) may be claimed by
//! another worker; the row also shows each worker's load, its engine (address and ID, so a
//! taker-over can stop a dead worker's containers) and its health.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

/// How often a worker beats: a third of its lease, so that two beats may be missed.
pub(super) fn every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}

/// What a worker reports with each beat.
#[derive(Clone, Debug)]
pub(super) struct Beat<'a> {
    pub(crate) worker: &'a str,
    pub(crate) concurrency: i32,
    pub(crate) in_flight: i32,
    pub(crate) queues: &'a [String],
    pub(crate) engine: &'a str,
    pub(crate) engine_id: Option<&'a str>,
    /// `None` when healthy; otherwise what is wrong.
    pub(crate) unhealthy: Option<&'a str>,
    pub(crate) lease: Duration,
}

/// Which of `queues` another live, healthy worker (not `worker`) serves too.
pub(super) async fn served_by_others(
    pool: &PgPool,
    worker: &str,
    queues: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT q FROM workers, unnest(queues) AS q
         WHERE id <> $1 AND healthy AND lease_until > now() AND q = ANY($2)",
    )
    .bind(worker)
    .bind(queues)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(q,)| q).collect())
}

pub(super) async fn beat(pool: &PgPool, beat: &Beat<'_>) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    // The lease ends by Postgres's clock, the one every "is it alive" question reads: a worker
    // whose own clock is behind must not count as dead (its containers would be stopped).
    sqlx::query(
        "INSERT INTO workers (id, started_at, heartbeat_at, concurrency, in_flight, queues,
                              engine, engine_id, healthy, health, lease_until)
         VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = $2, concurrency = $3, in_flight = $4,
             queues = $5, engine = $6, engine_id = $7, healthy = $8, health = $9,
             lease_until = EXCLUDED.lease_until",
    )
    .bind(beat.worker)
    .bind(now)
    .bind(beat.concurrency)
    .bind(beat.in_flight)
    .bind(beat.queues)
    .bind(beat.engine)
    .bind(beat.engine_id)
    .bind(beat.unhealthy.is_none())
    .bind(beat.unhealthy)
    .bind(beat.lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes the worker's row when it stops cleanly: nothing of it runs any more.
pub(super) async fn forget(pool: &PgPool, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM workers WHERE id = $1")
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// A worker whose lease ran out, with its engine's address and ID: what [`dead_run`] and
/// [`expired`] find.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct DeadWorker {
    pub(crate) worker: String,
    pub(crate) engine: Option<String>,
    pub(crate) engine_id: Option<String>,
}

/// The worker an invocation is `running` on, when that is another worker whose lease ran out.
pub(super) async fn dead_run(
    pool: &PgPool,
    id: uuid::Uuid,
    me: &str,
) -> Result<Option<DeadWorker>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.worker AS worker, w.engine, w.engine_id FROM invocations i
         LEFT JOIN workers w ON w.id = i.worker
         WHERE i.id = $1 AND i.status = 'running' AND i.worker IS NOT NULL AND i.worker <> $2
           AND NOT COALESCE(COALESCE(w.lease_until, w.heartbeat_at + interval '15 seconds') > now(), false)",
    )
    .bind(id)
    .bind(me)
    .fetch_optional(pool)
    .await
}

/// How long until the lease of the worker that `id` is `running` on (when that is not `me`) runs
/// out, by Postgres's clock as [`dead_run`] reads it; zero when it has run out. `None` when `id`
/// runs on no other worker with a heartbeat row.
pub(super) async fn lease_left(
    pool: &PgPool,
    id: uuid::Uuid,
    me: &str,
) -> Result<Option<Duration>, sqlx::Error> {
    let row: Option<(Option<f64>,)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (w.lease_until - now()))::float8 FROM invocations i
         JOIN workers w ON w.id = i.worker
         WHERE i.id = $1 AND i.status = 'running' AND i.worker <> $2",
    )
    .bind(id)
    .bind(me)
    .fetch_optional(pool)
    .await?;
    Ok(row
        .and_then(|(secs,)| secs)
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0))))
}

/// The workers other than `me` whose lease ran out within the last `window`, by Postgres's clock:
/// their containers are swept by [`super::takeover`].
pub(super) async fn expired(
    pool: &PgPool,
    me: &str,
    window: Duration,
) -> Result<Vec<DeadWorker>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id AS worker, engine, engine_id FROM workers
         WHERE id <> $1 AND lease_until <= now()
           AND lease_until > now() - make_interval(secs => $2)",
    )
    .bind(me)
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await
}
