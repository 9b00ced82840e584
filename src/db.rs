//! Postgres: connect (creating the database if it is missing) and apply `migrations/`.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Connects to `url`, creating the database first if it does not exist, and migrates it.
#[tracing::instrument(skip_all)]
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    if !sqlx::Postgres::database_exists(url)
        .await
        .context("reaching Postgres")?
    {
        tracing::info!("creating database");
        if let Err(e) = sqlx::Postgres::create_database(url).await {
            // Another process may have created it between the check and now.
            if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(e).context("creating the database");
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to Postgres")?;
    migrate(&pool).await?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("applying migrations")
}
