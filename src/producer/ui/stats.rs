//! What the dashboard counts, all in SQL: per-function numbers for the last hour, invocations per
//! interval for the charts, and the workers' heartbeats.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

/// One function's last hour.
#[derive(Clone, Debug, Default, FromRow)]
pub(crate) struct FunctionStats {
    pub(crate) function: String,
    /// Invocations queued in the last hour.
    pub(crate) invocations: i64,
    /// Of those, the ones that are final, and the ones that succeeded.
    pub(crate) finished: i64,
    pub(crate) succeeded: i64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    /// Share of the runs that started a container cold.
    pub(crate) cold_share: Option<f64>,
}

impl FunctionStats {
    /// Succeeded over finished, `None` before anything finished.
    pub(crate) fn success_rate(&self) -> Option<f64> {
        (self.finished > 0).then(|| self.succeeded as f64 / self.finished as f64)
    }
}

const LAST_HOUR: &str = "
    SELECT function,
           count(*) AS invocations,
           count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'timed_out', 'dead')) AS finished,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
           (avg(CASE WHEN cold THEN 1.0 ELSE 0.0 END) FILTER (WHERE cold IS NOT NULL))::float8 AS cold_share
    FROM invocations
    WHERE queued_at > now() - interval '1 hour'
      AND ($1::text IS NULL OR function = $1)
    GROUP BY function";

/// Last-hour numbers of every function that had invocations (or of `function` only).
pub(crate) async fn last_hour(
    pool: &PgPool,
    function: Option<&str>,
) -> Result<Vec<FunctionStats>, sqlx::Error> {
    sqlx::query_as::<_, FunctionStats>(LAST_HOUR)
        .bind(function)
        .fetch_all(pool)
        .await
}

/// How many invocations were queued in one interval.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct Bucket {
    /// Intervals ago: 0 is the current one.
    pub(crate) ago: i64,
    pub(crate) invocations: i64,
    pub(crate) failed: i64,
}

const BUCKETS_SQL: &str = "
    SELECT floor(extract(epoch FROM now() - queued_at) / $2)::int8 AS ago,
           count(*) AS invocations,
           count(*) FILTER (WHERE status IN ('failed', 'timed_out', 'dead')) AS failed
    FROM invocations
    WHERE function = $1 AND queued_at > now() - make_interval(secs => $2 * $3)
    GROUP BY 1";

/// Invocations of `function` per `secs` over the last `count` intervals, oldest first.
pub(crate) async fn buckets_over(
    pool: &PgPool,
    function: &str,
    count: i64,
    secs: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, Bucket>(BUCKETS_SQL)
        .bind(function)
        .bind(secs as f64)
        .bind(count as f64)
        .fetch_all(pool)
        .await?;
    let mut out = vec![(0, 0); count as usize];
    for b in rows {
        if (0..count).contains(&b.ago) {
            out[(count - 1 - b.ago) as usize] = (b.invocations, b.failed);
        }
    }
    Ok(out)
}

/// A worker as its heartbeat shows it.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct WorkerRow {
    pub(crate) id: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) concurrency: i32,
    pub(crate) in_flight: i32,
    pub(crate) queues: Vec<String>,
    /// Seconds since its last heartbeat.
    pub(crate) silent_secs: f64,
}

const WORKERS: &str = "
    SELECT id, started_at, concurrency, in_flight, queues,
           extract(epoch FROM now() - heartbeat_at)::float8 AS silent_secs
    FROM workers
    WHERE heartbeat_at > now() - interval '1 hour'
    ORDER BY id";

/// Workers heard from in the last hour.
pub(crate) async fn workers(pool: &PgPool) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as::<_, WorkerRow>(WORKERS)
        .fetch_all(pool)
        .await
}

const QUEUES: &str = "
    SELECT q FROM (
        SELECT queue AS q FROM functions
        UNION SELECT unnest(queues) FROM workers WHERE heartbeat_at > now() - interval '1 hour'
        UNION SELECT 'default'
    ) AS all_queues ORDER BY q";

/// Every named queue a function uses or a worker consumes.
pub(crate) async fn queue_names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar::<_, String>(QUEUES)
        .fetch_all(pool)
        .await
}
