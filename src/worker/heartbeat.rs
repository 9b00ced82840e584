//! The worker's heartbeat in Postgres (`workers`): a `running` invocation whose worker stopped
//! beating may be claimed by another worker; the row also shows each worker's load.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

/// How often a worker beats.
pub const EVERY: Duration = Duration::from_secs(5);

/// What a worker reports with each beat.
#[derive(Clone, Debug)]
pub struct Beat<'a> {
    pub worker: &'a str,
    pub concurrency: i32,
    pub in_flight: i32,
    pub queues: &'a [String],
}

pub async fn beat(pool: &PgPool, beat: &Beat<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (id, started_at, heartbeat_at, concurrency, in_flight, queues)
         VALUES ($1, $2, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = $2, concurrency = $3, in_flight = $4, queues = $5",
    )
    .bind(beat.worker)
    .bind(Utc::now())
    .bind(beat.concurrency)
    .bind(beat.in_flight)
    .bind(beat.queues)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes the worker's row when it stops cleanly: nothing of it runs any more.
pub async fn forget(pool: &PgPool, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM workers WHERE id = $1")
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}
