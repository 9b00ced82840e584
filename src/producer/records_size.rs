//! The size of what Granda stores, made visible: the database's size on disk and the bytes of
//! invocation records (inputs, outputs and logs, what a namespace's `max_stored_bytes` caps) per
//! namespace. Each ingress samples them every `GRANDA_SIZE_SAMPLE_MS` (not per scrape: the
//! per-namespace sum reads the whole invocations table) into the gauges
//! `granda_database_bytes` and `granda_records_stored_bytes{namespace}`; the dashboard's
//! namespaces page reads a fresh [`sample`].

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;

use super::ingress::Ingress;
use crate::metrics::label;

/// One namespace's records.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub(crate) struct NamespaceRecords {
    pub(crate) namespace: String,
    /// Invocation records it holds.
    pub(crate) records: i64,
    /// Bytes of their inputs, outputs and logs (as `max_stored_bytes` counts them).
    pub(crate) stored_bytes: i64,
}

/// What a sample found.
#[derive(Clone, Debug)]
pub(crate) struct Sizes {
    /// `pg_database_size` of the current database: tables, indexes, TOAST, free space in them.
    pub(crate) database_bytes: i64,
    /// Namespaces with at least one record, by name.
    pub(crate) namespaces: Vec<NamespaceRecords>,
}

/// Measures the database and the records of every namespace now.
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn sample(pool: &PgPool) -> Result<Sizes, sqlx::Error> {
    let database_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(pool)
        .await?;
    let namespaces = sqlx::query_as::<_, NamespaceRecords>(
        "SELECT namespace, count(*)::bigint AS records,
                COALESCE(sum(COALESCE(octet_length(input), 0) + COALESCE(octet_length(output), 0)
                             + COALESCE(octet_length(logs), 0)), 0)::bigint AS stored_bytes
         FROM invocations GROUP BY namespace ORDER BY namespace",
    )
    .fetch_all(pool)
    .await?;
    Ok(Sizes {
        database_bytes,
        namespaces,
    })
}

/// Samples every `every` (the first at once) into the gauges, until told to stop. A namespace
/// whose records are all gone reads 0 until this process ends.
pub(crate) async fn run(app: Ingress, every: Duration, mut shutdown: crate::shutdown::Shutdown) {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    loop {
        match sample(&app.pool).await {
            Ok(sizes) => {
                app.metrics.set(
                    "granda_database_bytes",
                    String::new(),
                    sizes.database_bytes as f64,
                );
                let mut now = BTreeSet::new();
                for ns in &sizes.namespaces {
                    app.metrics.set(
                        "granda_records_stored_bytes",
                        format!("namespace=\"{}\"", label(&ns.namespace)),
                        ns.stored_bytes as f64,
                    );
                    now.insert(ns.namespace.clone());
                }
                for gone in seen.difference(&now) {
                    app.metrics.set(
                        "granda_records_stored_bytes",
                        format!("namespace=\"{}\"", label(gone)),
                        0.0,
                    );
                }
                seen.extend(now);
            }
            Err(e) => tracing::warn!(error = %e, "sampling the database's size failed"),
        }
        if shutdown.stopped_during(every).await {
            return;
        }
    }
}
