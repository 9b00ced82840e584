//! A function whose image no worker has checked yet: registered or changed with
//! `?defer_check=true` while no worker of its queue answered. It is `pending` from then
//! (`functions.unchecked_since`) until a run of it queued since then leaves the queue (a worker
//! took it: it pulled the image, or recorded the engine's reason), or a later registration check
//! passes.

use std::collections::HashSet;

use sqlx::PgPool;

/// Marks function `name` unchecked from now.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn mark(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE functions SET unchecked_since = now() WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Function `name`'s image was checked: no longer pending.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn clear(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE functions SET unchecked_since = NULL WHERE name = $1 AND unchecked_since IS NOT NULL",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

/// The names of the functions still pending (few: a partial look-up per unchecked function).
pub(crate) async fn names(pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT f.name FROM functions f
         WHERE f.unchecked_since IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM invocations i
                           WHERE i.function = f.name AND i.queued_at >= f.unchecked_since
                             AND i.status <> 'queued')",
    )
    .fetch_all(pool)
    .await?;
    Ok(names.into_iter().collect())
}
