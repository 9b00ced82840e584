//! Series of deleted functions: a function deleted through one process (an ingress) has series
//! on every other that ran it (standalone workers, other ingresses). Each `/metrics` asks
//! Postgres which of the functions this registry has series of still exist, and drops the rest
//! first, so a scrape never shows a deleted function.

use super::Metrics;

impl Metrics {
    /// The functions this registry holds series of.
    pub(crate) fn functions(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("lock");
        inner.functions.iter().cloned().collect()
    }

    /// Removes the series of every function that no longer exists; returns how many. One query,
    /// and none when no function has series here.
    #[tracing::instrument(level = "debug", skip_all)]
    pub(crate) async fn forget_deleted(&self, pool: &sqlx::PgPool) -> Result<usize, sqlx::Error> {
        let known = self.functions();
        if known.is_empty() {
            return Ok(0);
        }
        let gone: Vec<(String,)> = sqlx::query_as(
            "SELECT k.name FROM unnest($1::text[]) AS k(name)
             WHERE NOT EXISTS (SELECT 1 FROM functions f WHERE f.name = k.name)",
        )
        .bind(&known)
        .fetch_all(pool)
        .await?;
        for (name,) in &gone {
            self.forget_function(name);
        }
        Ok(gone.len())
    }
}
