//! Retention and the pruner: how long ended records are kept, and the loop that removes them.
//!
//! **The policy.** An ended invocation (any status but `queued` and `running`, so `cancelled`
//! too) is kept `retention_s` seconds after it finished: the function's own `retention_s`, else
//! its namespace's, else the installation's (`GRANDA_RETENTION_S`, 7 days). A `failed`,
//! `timed_out` or `dead` one is kept the longer of that and `GRANDA_FAILED_RETENTION_S` (30
//! days): failures are what an operator comes back to. A record still needed is never pruned,
//! whatever its age: one `queued` or `running` (a retry waiting is `queued`, with `retry_at`), or
//! one whose result callback is `pending` or `delivering`. Callback attempts live on the
//! invocation's row and go with it. Events are kept their namespace's retention (else the
//! installation's); a build's log is emptied (the build's row, version and image stay, for
//! rollbacks) after its function's retention, a failed build's after the failure retention;
//! webhook rejections (at most a few per webhook anyway) after the installation's retention;
//! refused sync-call ids after the failure retention; inbound AMQP message ids after 24 hours
//! (their dedup window). Schedule claims are pruned by the schedule ticker (after a day).
//!
//! **The pruner** runs in every ingress every `GRANDA_PRUNE_INTERVAL_MS` (its loop:
//! `producer::pruner`), but only one at a
//! time prunes: a pass holds a session advisory lock ([`LOCK`]) on one connection, and a
//! server that does not get it skips the pass. It deletes in batches of `BATCH` rows, each
//! one statement (its own short transaction), so it never holds locks a write waits for and
//! autovacuum keeps up between batches. Invocation ids are UUIDv7 (their time of arrival, never
//! later than the end), so the pass walks the existing `(function, id)` and `(namespace, id)`
//! indexes up to the id of "now minus the retention", oldest first, with a cursor: no index on a
//! column the final update writes (`status`, `finished_at`), so that update stays heap-only.
//! Why batched deletes rather than partitions: docs/operations.md, "Retention".

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::metrics::Metrics;

pub(crate) use crate::config::retention_problem as problem;
/// Rows one statement deletes at most.
pub(crate) const BATCH: i64 = 1000;
/// The advisory lock a pruning pass holds (the bytes of `grandapr`).
pub const LOCK: i64 = 0x6772_616e_6461_7072;
/// The metric family of rows pruned, by table.
pub(crate) const PRUNED: &str = "granda_records_pruned_total";

/// The installation's retentions, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// `GRANDA_RETENTION_S`.
    pub(crate) retention_s: i64,
    /// `GRANDA_FAILED_RETENTION_S`.
    pub(crate) failed_retention_s: i64,
}

impl Policy {
    pub fn of(settings: &crate::config::Settings) -> Policy {
        Policy {
            retention_s: settings.retention_s,
            failed_retention_s: settings.failed_retention_s,
        }
    }
}

/// How long a record of invocation `i` is kept after it ended, in seconds, as SQL (`$install`
/// and `$failed` are the [`Policy`]'s parameters).
macro_rules! kept_s {
    ($install:literal, $failed:literal) => {
        concat!(
            "(CASE WHEN i.status IN ('failed', 'timed_out', 'dead') THEN greatest(",
            base_s!($install),
            ", ",
            $failed,
            ") ELSE ",
            base_s!($install),
            " END)"
        )
    };
}

/// The retention of invocation `i`'s function: its own, its namespace's, the installation's.
macro_rules! base_s {
    ($install:literal) => {
        concat!(
            "coalesce((SELECT f.retention_s FROM functions f WHERE f.name = i.function),
                      (SELECT n.retention_s FROM namespaces n WHERE n.name = i.namespace), ",
            $install,
            ")"
        )
    };
}

/// Whether invocation `i` may go: ended, not needed, past its time.
macro_rules! prunable {
    () => {
        concat!(
            "i.status NOT IN ('queued', 'running') AND i.retry_at IS NULL
             AND (i.callback_status IS NULL OR i.callback_status NOT IN ('pending', 'delivering'))
             AND coalesce(i.finished_at, i.dead_at, i.queued_at)
                 < now() - make_interval(secs => ",
            kept_s!("$4", "$5"),
            "::double precision)"
        )
    };
}

/// One batch of the walk: the next [`BATCH`] ids after the cursor `$2`, below `$3`, of one
/// function (or namespace), and those of them that may go deleted. Returns the last id seen.
macro_rules! walk {
    ($column:literal) => {
        concat!(
            "WITH batch AS MATERIALIZED (
                 SELECT id FROM invocations WHERE ",
            $column,
            " = $1 AND id > $2 AND id < $3 ORDER BY id LIMIT 1000
             ), gone AS (
                 DELETE FROM invocations i WHERE i.id IN (SELECT id FROM batch) AND ",
            prunable!(),
            " RETURNING 1
             )
             SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last,
                    (SELECT count(*) FROM gone) AS pruned"
        )
    };
}

/// The smallest UUIDv7 of the millisecond `at`: every id made before `at` is below it.
pub(crate) fn floor_id(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// What one pass removed, per table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub invocations: u64,
    pub events: u64,
    pub build_logs: u64,
    pub webhook_rejections: u64,
    pub refused_invocations: u64,
    pub inbound_messages: u64,
    pub namespace_throttled: u64,
}

impl Pruned {
    pub fn by_table(&self) -> [(&'static str, u64); 7] {
        [
            ("invocations", self.invocations),
            ("events", self.events),
            ("build_logs", self.build_logs),
            ("webhook_rejections", self.webhook_rejections),
            ("refused_invocations", self.refused_invocations),
            ("inbound_messages", self.inbound_messages),
            ("namespace_throttled", self.namespace_throttled),
        ]
    }
}

/// One pruning pass, if this process gets the pruner's lock (`Ok(None)`: another server holds
/// it). Counts what it removed in `metrics`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn pass(
    pool: &PgPool,
    policy: Policy,
    metrics: &Metrics,
) -> Result<Option<Pruned>, sqlx::Error> {
    let mut conn = Locked(Some(pool.acquire().await?));
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK)
        .fetch_one(conn.get())
        .await?;
    if !locked {
        // Nothing held: the connection goes back to the pool.
        conn.release();
        return Ok(None);
    }
    let mut pruned = Pruned::default();
    prune(conn.get(), policy, metrics, &mut pruned).await?;
    vacuum_unless_autovacuum(conn.get(), &pruned).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK)
        .execute(conn.get())
        .await?;
    conn.release();
    Ok(Some(pruned))
}

/// Vacuums the tables a pass deleted from when the server does not (`autovacuum = off`): without
/// it the deleted rows' space is never reused, and the disk grows under constant load however
/// much is pruned. A plain `VACUUM` (not `FULL`) takes no lock that blocks reads or writes. A
/// failure (a role that may not vacuum) is logged and the pass goes on: pruning still bounds
/// what is kept, the server's own vacuuming then bounds the disk.
async fn vacuum_unless_autovacuum(conn: &mut PgConnection, pruned: &Pruned) {
    let autovacuum: Result<String, _> = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&mut *conn)
        .await;
    if !matches!(autovacuum.as_deref(), Ok("off")) {
        return;
    }
    let mut tables: Vec<&str> = Vec::new();
    for (table, n) in pruned.by_table() {
        if n > 0 {
            tables.push(match table {
                "build_logs" => "builds",
                other => other,
            });
        }
    }
    if pruned.invocations > 0 {
        tables.push("invocation_attempts");
    }
    for table in tables {
        // `VACUUM` can't run in a transaction block: the simple protocol, one statement.
        let statement = sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}"));
        if let Err(e) = sqlx::raw_sql(statement).execute(&mut *conn).await {
            tracing::warn!(table, error = %e, "could not vacuum a pruned table (autovacuum is off)");
        }
    }
}

/// The connection a pass holds the pruner's lock on. Unless [`Locked::release`]d (the lock
/// given back, or never taken), dropping it (an error, or the pass's task dropped as the process
/// ends past the shutdown bound)
/// closes the connection rather than returning it to the pool: ending the session is what
/// surely releases a session's advisory lock.
struct Locked(Option<sqlx::pool::PoolConnection<sqlx::Postgres>>);

impl Locked {
    fn get(&mut self) -> &mut PgConnection {
        self.0.as_mut().expect("held until released")
    }

    fn release(mut self) {
        self.0.take();
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

async fn prune(
    conn: &mut PgConnection,
    policy: Policy,
    metrics: &Metrics,
    pruned: &mut Pruned,
) -> Result<(), sqlx::Error> {
    let count = |table: &'static str, n: u64| {
        if n > 0 {
            metrics.add(PRUNED, format!("table=\"{table}\""), n);
        }
        n
    };
    let now = Utc::now();
    // Invocations: per namespace (its retention), then per function that sets its own (a
    // shorter one than its namespace's would otherwise wait for the namespace's walk bound).
    let namespaces: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, coalesce(retention_s, $1) FROM namespaces ORDER BY name")
            .bind(policy.retention_s)
            .fetch_all(&mut *conn)
            .await?;
    let functions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, retention_s FROM functions WHERE retention_s IS NOT NULL ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (namespace, kept_s) in &namespaces {
        let n = walk(conn, walk!("namespace"), namespace, now, *kept_s, policy).await?;
        pruned.invocations += count("invocations", n);
    }
    for (function, kept_s) in &functions {
        let n = walk(conn, walk!("function"), function, now, *kept_s, policy).await?;
        pruned.invocations += count("invocations", n);
    }
    // Events, per namespace, by id (UUIDv7: their time of publishing).
    for (namespace, kept_s) in &namespaces {
        let below = floor_id(now - chrono::Duration::seconds(*kept_s));
        let namespace = namespace.clone();
        let n = drain(
            conn,
            "DELETE FROM events WHERE id IN (
                 SELECT id FROM events WHERE namespace = $1 AND id < $2 ORDER BY id LIMIT 1000)",
            move |q| q.bind(namespace.clone()).bind(below),
        )
        .await?;
        pruned.events += count("events", n);
    }
    let n = drain(
        conn,
        "UPDATE builds SET log = '' WHERE id IN (
             SELECT b.id FROM builds b
             LEFT JOIN functions f ON f.name = b.function
             LEFT JOIN namespaces n ON n.name = CASE WHEN strpos(b.function, '.') > 0
                 THEN split_part(b.function, '.', 2) ELSE 'default' END
             WHERE b.status <> 'building' AND b.log <> '' AND b.finished_at < now() - make_interval(
                 secs => (CASE WHEN b.status = 'failed'
                     THEN greatest(coalesce(f.retention_s, n.retention_s, $1), $2)
                     ELSE coalesce(f.retention_s, n.retention_s, $1) END)::double precision)
             ORDER BY b.id LIMIT 1000)",
        move |q| q.bind(policy.retention_s).bind(policy.failed_retention_s),
    )
    .await?;
    pruned.build_logs += count("build_logs", n);
    let n = drain(
        conn,
        "DELETE FROM webhook_rejections WHERE id IN (
             SELECT id FROM webhook_rejections
             WHERE at < now() - make_interval(secs => $1::double precision)
             ORDER BY id LIMIT 1000)",
        move |q| q.bind(policy.retention_s),
    )
    .await?;
    pruned.webhook_rejections += count("webhook_rejections", n);
    let refused_below = floor_id(now - chrono::Duration::seconds(policy.failed_retention_s));
    let n = drain(
        conn,
        "DELETE FROM refused_invocations WHERE id IN (
             SELECT id FROM refused_invocations WHERE id < $1
             AND refused_at < now() - make_interval(secs => $2::double precision)
             ORDER BY id LIMIT 1000)",
        move |q| q.bind(refused_below).bind(policy.failed_retention_s),
    )
    .await?;
    pruned.refused_invocations += count("refused_invocations", n);
    let n = drain(
        conn,
        "DELETE FROM inbound_messages WHERE message_id IN (
             SELECT message_id FROM inbound_messages
             WHERE received_at < now() - interval '24 hours' ORDER BY received_at LIMIT 1000)",
        |q| q,
    )
    .await?;
    pruned.inbound_messages += count("inbound_messages", n);
    // Refused calls counted per namespace, hour and reason (the usage report's): kept as long as
    // the installation keeps records.
    let n = drain(
        conn,
        "DELETE FROM namespace_throttled WHERE (namespace, hour, reason) IN (
             SELECT namespace, hour, reason FROM namespace_throttled
             WHERE hour < now() - make_interval(secs => $1::double precision)
             LIMIT 1000)",
        move |q| q.bind(policy.retention_s),
    )
    .await?;
    pruned.namespace_throttled += count("namespace_throttled", n);
    Ok(())
}

type PgQuery = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs the batch statement `sql` (which affects at most [`BATCH`] rows) until a run affects
/// fewer; returns the rows affected in all.
async fn drain(
    conn: &mut PgConnection,
    sql: &'static str,
    bind: impl Fn(PgQuery) -> PgQuery,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = bind(sqlx::query(sql))
            .execute(&mut *conn)
            .await?
            .rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Walks the invocations of one function or namespace (`key`) that arrived more than `kept_s`
/// ago, oldest first, a [`BATCH`] at a time, deleting those that may go; returns how many went.
async fn walk(
    conn: &mut PgConnection,
    sql: &'static str,
    key: &str,
    now: DateTime<Utc>,
    kept_s: i64,
    policy: Policy,
) -> Result<u64, sqlx::Error> {
    // A second of slack: `finished_at` is the database's clock, the id this process's.
    let below = floor_id(now - chrono::Duration::seconds(kept_s) + chrono::Duration::seconds(1));
    let mut after = Uuid::nil();
    let mut total = 0;
    loop {
        let (last, pruned): (Option<Uuid>, i64) = sqlx::query_as(sql)
            .bind(key)
            .bind(after)
            .bind(below)
            .bind(policy.retention_s)
            .bind(policy.failed_retention_s)
            .fetch_one(&mut *conn)
            .await?;
        total += pruned as u64;
        match last {
            Some(last) => after = last,
            None => return Ok(total),
        }
    }
}

/// A function's retention as it applies: how long its successes and its failures are kept,
/// and where the retention comes from.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Effective {
    /// Seconds an ended invocation is kept after it ended.
    pub(crate) kept_s: i64,
    /// Seconds a failed, timed-out or dead one is kept.
    pub(crate) failed_kept_s: i64,
    /// `function`, `namespace` or `installation`.
    pub(crate) from: String,
}

/// The retention that applies to function `name` (the stored, qualified name).
pub(crate) async fn effective(
    pool: &PgPool,
    policy: Policy,
    name: &str,
    own: Option<i64>,
) -> Result<Effective, sqlx::Error> {
    let namespace = crate::namespace::split(name).1;
    let ns: Option<i64> = sqlx::query_scalar("SELECT retention_s FROM namespaces WHERE name = $1")
        .bind(namespace)
        .fetch_optional(pool)
        .await?
        .flatten();
    let (kept_s, from) = match (own, ns) {
        (Some(s), _) => (s, "function"),
        (None, Some(s)) => (s, "namespace"),
        (None, None) => (policy.retention_s, "installation"),
    };
    Ok(Effective {
        kept_s,
        failed_kept_s: kept_s.max(policy.failed_retention_s),
        from: from.into(),
    })
}

/// Until when invocation `id` is kept, once it ended; `None` while it is queued or running,
/// or when there is no such record.
pub(crate) async fn kept_until(
    pool: &PgPool,
    policy: Policy,
    id: Uuid,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let until: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(concat!(
        "SELECT CASE WHEN i.status IN ('queued', 'running') THEN NULL
                ELSE coalesce(i.finished_at, i.dead_at, i.queued_at) + make_interval(secs => ",
        kept_s!("$2", "$3"),
        "::double precision) END
         FROM invocations i WHERE i.id = $1"
    ))
    .bind(id)
    .bind(policy.retention_s)
    .bind(policy.failed_retention_s)
    .fetch_optional(pool)
    .await?;
    Ok(until.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_RETENTION_S;
    use std::time::Duration;

    #[test]
    fn the_floor_id_is_below_every_id_made_before_it_and_above_every_older_one() {
        let before = Uuid::now_v7();
        std::thread::sleep(Duration::from_millis(2));
        let floor = floor_id(Utc::now());
        std::thread::sleep(Duration::from_millis(2));
        let after = Uuid::now_v7();
        assert!(before < floor, "{before} < {floor}");
        assert!(floor < after, "{floor} < {after}");
        assert_eq!(floor.get_version_num(), 7);
    }

    #[test]
    fn installation_retentions_that_are_no_whole_positive_seconds_are_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: crate::config::Settings,
        }
        for bad in ["-1", "0", "1.5", "a week"] {
            assert!(Only::try_parse_from(["granda", "--retention-s", bad]).is_err());
            assert!(Only::try_parse_from(["granda", "--failed-retention-s", bad]).is_err());
        }
        let ok = Only::try_parse_from(["granda", "--retention-s", "60"]).unwrap();
        assert_eq!(ok.settings.retention_s, 60);
    }

    #[test]
    fn retentions_out_of_range_are_refused() {
        assert!(problem(0).is_some());
        assert!(problem(-5).is_some());
        assert!(problem(MAX_RETENTION_S + 1).is_some());
        assert!(problem(1).is_none());
        assert!(problem(7 * 24 * 3600).is_none());
    }
}
