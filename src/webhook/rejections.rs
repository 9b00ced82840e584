//! Deliveries a webhook refused, kept so an operator can see why a sender's deliveries don't run
//! (a secret set differently on each side, a clock off by minutes, a proxy that re-encodes the
//! body). Postgres keeps the newest [`KEPT`] per webhook; the [`Recorder`] writes at most
//! [`PER_WINDOW`] per webhook per [`WINDOW`], so a flood of forged deliveries costs a counter
//! bump each (and the `granda_webhook_rejections_total` metric), not a write each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Rejections kept per webhook.
pub const KEPT: i64 = 50;
/// Rejections written per webhook per window, at most.
pub const PER_WINDOW: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(10);
/// Webhooks tracked at once by the recorder (beyond it, the oldest windows are forgotten).
const TRACKED: usize = 10_000;

/// One refused delivery.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Rejection {
    pub at: DateTime<Utc>,
    /// A stable label: `missing_signature`, `malformed_signature`, `bad_signature`,
    /// `stale_timestamp` or `malformed_delivery`.
    pub reason: String,
    /// What was wrong, as the sender was told.
    pub detail: String,
}

/// Decides which rejections are written: at most [`PER_WINDOW`] per webhook per [`WINDOW`].
#[derive(Debug, Default)]
pub struct Recorder {
    windows: Mutex<HashMap<Uuid, (Instant, u32)>>,
}

impl Recorder {
    /// Whether a rejection of `hook` at `now` is written.
    pub fn admit(&self, hook: Uuid, now: Instant) -> bool {
        let mut windows = self.windows.lock().expect("the recorder's lock");
        if windows.len() >= TRACKED && !windows.contains_key(&hook) {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= TRACKED {
                return false;
            }
        }
        let (start, count) = windows.entry(hook).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= PER_WINDOW
    }
}

/// Writes one rejection of `hook` and forgets all but its newest [`KEPT`].
#[tracing::instrument(level = "debug", skip(pool, detail))]
pub async fn record(
    pool: &PgPool,
    hook: Uuid,
    reason: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO webhook_rejections (webhook_id, reason, detail) VALUES ($1, $2, $3)")
        .bind(hook)
        .bind(reason)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM webhook_rejections WHERE webhook_id = $1 AND id <= (
             SELECT id FROM webhook_rejections WHERE webhook_id = $1
             ORDER BY id DESC OFFSET $2 LIMIT 1)",
    )
    .bind(hook)
    .bind(KEPT)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The newest rejections of `hook`, newest first.
pub async fn recent(pool: &PgPool, hook: Uuid) -> Result<Vec<Rejection>, sqlx::Error> {
    sqlx::query_as::<_, Rejection>(
        "SELECT at, reason, detail FROM webhook_rejections WHERE webhook_id = $1
         ORDER BY id DESC LIMIT $2",
    )
    .bind(hook)
    .bind(KEPT)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_written_at_most_per_window_per_webhook() {
        let recorder = Recorder::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let written = (0..100).filter(|_| recorder.admit(a, t0)).count();
        assert_eq!(written, PER_WINDOW as usize);
        assert!(recorder.admit(b, t0), "another webhook has its own window");
        assert!(recorder.admit(a, t0 + WINDOW), "a new window writes again");
    }
}
