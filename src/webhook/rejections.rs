//! Deliveries a webhook refused, kept so an operator can see why a sender's deliveries don't run
//! (a secret set differently on each side, a clock off by minutes, a proxy that re-encodes the
//! body). Postgres keeps the newest [`KEPT`] per webhook; the [`Recorder`] writes at most
//! [`PER_WINDOW`] per webhook per [`WINDOW`], so a flood of forged deliveries costs a counter
//! bump each (and the `granda_webhook_rejections_total` metric), not a write each. The WARN line
//! a refusal logs is throttled the same way ([`Recorder::note`]): a flood can't flood the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Rejections kept per webhook.
pub(crate) const KEPT: i64 = 50;
/// Rejections written per webhook per window, at most.
pub(crate) const PER_WINDOW: u32 = 10;
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Webhooks tracked at once by the recorder (beyond it, the oldest windows are forgotten).
const TRACKED: usize = 10_000;

/// Why a delivery was refused, a stable label (also the metric's `reason`). Stored as its word
/// (`text`): a word the enum lacks is a decoding error, not a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[schema(as = WebhookRejectionReason)]
pub(crate) enum Reason {
    MissingSignature,
    MalformedSignature,
    BadSignature,
    StaleTimestamp,
    MalformedDelivery,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::MissingSignature => "missing_signature",
            Reason::MalformedSignature => "malformed_signature",
            Reason::BadSignature => "bad_signature",
            Reason::StaleTimestamp => "stale_timestamp",
            Reason::MalformedDelivery => "malformed_delivery",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One refused delivery.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Rejection {
    pub(crate) at: DateTime<Utc>,
    pub(crate) reason: Reason,
    /// What was wrong, as the sender was told.
    pub(crate) detail: String,
}

/// Decides which rejections are written: at most [`PER_WINDOW`] per webhook per [`WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    windows: Mutex<HashMap<Uuid, (Instant, u32)>>,
}

impl Recorder {
    /// Whether a rejection of `hook` at `now` is written.
    pub(crate) fn admit(&self, hook: Uuid, now: Instant) -> bool {
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

    /// A refused delivery of `hook` at `now`: logs it at WARN and says `true` (write it down)
    /// when [`Recorder::admit`] lets it; otherwise at DEBUG only, `false`.
    pub(crate) fn note(
        &self,
        hook: Uuid,
        now: Instant,
        scheme: &str,
        reason: Reason,
        detail: &str,
    ) -> bool {
        if self.admit(hook, now) {
            tracing::warn!(
                webhook = %hook, scheme, %reason,
                "{detail} (logged and written down at most {PER_WINDOW} times per webhook per {} s; \
                 granda_webhook_rejections_total counts every one)",
                WINDOW.as_secs()
            );
            true
        } else {
            tracing::debug!(webhook = %hook, scheme, %reason, "{detail}");
            false
        }
    }
}

/// Writes one rejection of `hook` and forgets all but its newest [`KEPT`].
#[tracing::instrument(level = "debug", skip(pool, detail))]
pub(crate) async fn record(
    pool: &PgPool,
    hook: Uuid,
    reason: Reason,
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
pub(crate) async fn recent(pool: &PgPool, hook: Uuid) -> Result<Vec<Rejection>, sqlx::Error> {
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

    /// A writer into a shared buffer, for a subscriber whose output a test reads.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reason_is_sent_and_counted_as_the_word_it_is_stored_as() {
        for r in [
            Reason::MissingSignature,
            Reason::MalformedSignature,
            Reason::BadSignature,
            Reason::StaleTimestamp,
            Reason::MalformedDelivery,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Reason::MalformedDelivery.to_string(), "malformed_delivery");
    }

    /// Issue 26: every forged delivery logged a WARN line; a flood logs at most PER_WINDOW per
    /// webhook per window.
    #[test]
    fn a_flood_logs_at_most_per_window_per_webhook() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let recorder = Recorder::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        let written = tracing::subscriber::with_default(subscriber, || {
            let mut written = 0;
            for i in 0..1000 {
                let hook = if i % 100 == 0 { b } else { a };
                written +=
                    recorder.note(hook, t0, "github", Reason::BadSignature, "forged") as usize;
            }
            written
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let warns = text.lines().filter(|l| l.contains("WARN")).count();
        assert_eq!(warns, 2 * PER_WINDOW as usize, "{text}");
        assert_eq!(written, warns);
        assert!(
            text.contains("bad_signature") && text.contains("forged"),
            "{text}"
        );
    }
}
