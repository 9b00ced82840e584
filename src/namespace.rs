//! Namespaces: one installation shared by teams. Every function, and so every invocation,
//! webhook, schedule, subscription and build of it, belongs to one namespace; events are
//! published in one. Names are unique per namespace.
//!
//! A function's stored name is *qualified* by its namespace ([`qualify`]): `echo` in `default`,
//! `echo.team-b` in `team-b` (function and namespace names have no dots, so [`split`] is exact).
//! That is also its URL (`/fn/echo.team-b`, OpenFaaS' convention), its container and metrics
//! name, and what work messages carry and sign: a worker needs to know nothing more. Everything
//! made before namespaces is in `default` with its name, URL and records unchanged. The API shows
//! the short name and the namespace ([`crate::producer::function_view`]).
//!
//! The `namespaces` table holds each namespace's quotas; `default` always exists.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// `^[a-z][a-z0-9-]{0,62}$`: names of functions, namespaces and queues. (A function's stored
/// name adds its namespace after a dot: [`valid_stored`].)
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

/// The namespace of everything made before namespaces, and of a global key's requests that name
/// none.
pub(crate) const DEFAULT: &str = "default";

/// A namespace's name: like a function's (a lowercase letter, then lowercase letters, digits and
/// `-`, at most 63).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub(crate) struct Namespace(String);

impl Namespace {
    pub(crate) fn parse(s: &str) -> Option<Namespace> {
        valid_name(s).then(|| Namespace(s.to_string()))
    }

    pub(crate) fn default_ns() -> Namespace {
        Namespace(DEFAULT.to_string())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn is_default(&self) -> bool {
        self.0 == DEFAULT
    }

    /// The stored name of this namespace's function `name`.
    pub(crate) fn qualify(&self, name: &str) -> String {
        qualify(self.as_str(), name)
    }

    /// Whether the stored function name `qualified` is in this namespace.
    pub(crate) fn holds(&self, qualified: &str) -> bool {
        split(qualified).1 == self.as_str()
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Namespace {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Namespace::parse(&s).ok_or_else(|| format!("not a namespace name: {s:?}"))
    }
}

impl From<Namespace> for String {
    fn from(n: Namespace) -> String {
        n.0
    }
}

/// The stored name of function `name` of namespace `namespace`. A `name` with a dot (no function
/// name has one) gives a name no function has, so `echo.team-b` asked in `default` finds nothing.
pub(crate) fn qualify(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT && !name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.{namespace}")
    }
}

/// A stored function name's short name and namespace.
pub(crate) fn split(qualified: &str) -> (&str, &str) {
    match qualified.split_once('.') {
        Some((name, namespace)) => (name, namespace),
        None => (qualified, DEFAULT),
    }
}

/// Whether `name` is a stored function name some function can have: a valid short name, or a
/// valid short name, a dot and a namespace other than `default`. Workers check a work message's
/// function by it (the name, and so the namespace, is part of the signed snapshot).
pub(crate) fn valid_stored(name: &str) -> bool {
    match name.split_once('.') {
        None => valid_name(name),
        Some((short, ns)) => valid_name(short) && valid_name(ns) && ns != DEFAULT,
    }
}

/// The short name of a stored function name (what the API shows).
pub(crate) fn short(qualified: &str) -> &str {
    split(qualified).0
}

/// A namespace and its quotas, as stored and shown.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Stored {
    pub(crate) name: String,
    /// Runs at once across all workers; the rest wait queued. None: no limit.
    pub(crate) max_concurrency: Option<i32>,
    /// Calls accepted per minute; over it, 429 with `Retry-After`. None: no limit.
    pub(crate) invocations_per_minute: Option<i32>,
    /// Bytes of invocation records (inputs and outputs) kept; over it, 429. None: no limit.
    pub(crate) max_stored_bytes: Option<i64>,
    /// How long its functions' ended invocations (and its events) are kept, in seconds, unless
    /// a function sets its own. None: the installation's (`GRANDA_RETENTION_S`).
    pub(crate) retention_s: Option<i64>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// The quotas of a namespace, as given to `POST`/`PUT /v1/namespaces`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Quotas {
    #[schema(minimum = 1)]
    pub(crate) max_concurrency: Option<i32>,
    #[schema(minimum = 1)]
    pub(crate) invocations_per_minute: Option<i32>,
    #[schema(minimum = 0)]
    pub(crate) max_stored_bytes: Option<i64>,
    /// How long ended invocations and events are kept, in seconds (null: the installation's).
    #[schema(minimum = 1)]
    pub(crate) retention_s: Option<i64>,
}

impl Quotas {
    /// Why these quotas can't be set, if they can't.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.max_concurrency.is_some_and(|n| n < 1) {
            return Err("max_concurrency: at least 1 (or null: no limit)".into());
        }
        if self.invocations_per_minute.is_some_and(|n| n < 1) {
            return Err("invocations_per_minute: at least 1 (or null: no limit)".into());
        }
        if self.max_stored_bytes.is_some_and(|n| n < 0) {
            return Err("max_stored_bytes: at least 0 (or null: no limit)".into());
        }
        if let Some(problem) = self.retention_s.and_then(crate::config::retention_problem) {
            return Err(format!("retention_s: {problem}"));
        }
        Ok(())
    }
}

macro_rules! columns {
    () => {
        "name, max_concurrency, invocations_per_minute, max_stored_bytes, retention_s, created_at,
         updated_at"
    };
}

pub(crate) async fn list(pool: &PgPool) -> Result<Vec<Stored>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM namespaces ORDER BY name"
    ))
    .fetch_all(pool)
    .await
}

pub(crate) async fn get(pool: &PgPool, name: &str) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM namespaces WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Whether namespace `name` exists.
pub(crate) async fn exists(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM namespaces WHERE name = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
}

/// Makes namespace `name`; `Ok(None)` if it exists.
pub(crate) async fn create(
    pool: &PgPool,
    name: &Namespace,
    q: &Quotas,
) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO namespaces (name, max_concurrency, invocations_per_minute, max_stored_bytes,
                                 retention_s)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING RETURNING ",
        columns!()
    ))
    .bind(name.as_str())
    .bind(q.max_concurrency)
    .bind(q.invocations_per_minute)
    .bind(q.max_stored_bytes)
    .bind(q.retention_s)
    .fetch_optional(pool)
    .await
}

/// Sets namespace `name`'s quotas; `Ok(None)` if there is no such namespace.
pub(crate) async fn update(
    pool: &PgPool,
    name: &str,
    q: &Quotas,
) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE namespaces SET max_concurrency = $2, invocations_per_minute = $3,
                max_stored_bytes = $4, retention_s = $5, updated_at = now()
         WHERE name = $1 RETURNING ",
        columns!()
    ))
    .bind(name)
    .bind(q.max_concurrency)
    .bind(q.invocations_per_minute)
    .bind(q.max_stored_bytes)
    .bind(q.retention_s)
    .fetch_optional(pool)
    .await
}

/// Why a namespace was not deleted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeleteError {
    #[error("no such namespace")]
    Missing,
    #[error("the namespace `default` can't be deleted")]
    Default,
    #[error("the namespace holds {0} functions; delete them first, or ask ?cascade=true")]
    NotEmpty(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Deletes namespace `name` and its keys; with `cascade`, its functions (and so their webhooks,
/// schedules, subscriptions), its records and events too.
pub(crate) async fn delete(pool: &PgPool, name: &str, cascade: bool) -> Result<(), DeleteError> {
    if name == DEFAULT {
        return Err(DeleteError::Default);
    }
    let mut tx = pool.begin().await?;
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM namespaces WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(DeleteError::Missing);
    }
    let functions: i64 = sqlx::query_scalar("SELECT count(*) FROM functions WHERE namespace = $1")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    if functions > 0 && !cascade {
        return Err(DeleteError::NotEmpty(functions));
    }
    for statement in [
        "DELETE FROM functions WHERE namespace = $1",
        "DELETE FROM invocations WHERE namespace = $1",
        "DELETE FROM events WHERE namespace = $1",
        "DELETE FROM ui_sessions WHERE key_id IN (SELECT id FROM api_keys WHERE namespace = $1)",
        "DELETE FROM namespaces WHERE name = $1",
    ] {
        sqlx::query(statement).bind(name).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Quotas read in the last second, per namespace: what every call and every claim looks up
/// costs Postgres one read a second per process.
#[derive(Default)]
pub(crate) struct QuotaCache(Mutex<HashMap<String, (Instant, Option<Stored>)>>);

/// How long [`QuotaCache`] trusts a read: a quota changed takes this long to apply everywhere.
pub(crate) const QUOTA_TTL: Duration = Duration::from_secs(1);

impl QuotaCache {
    /// Namespace `name`'s quotas (none: no such namespace).
    pub(crate) async fn get(
        &self,
        pool: &PgPool,
        name: &str,
    ) -> Result<Option<Stored>, sqlx::Error> {
        if let Some((at, stored)) = self.0.lock().expect("lock").get(name)
            && at.elapsed() < QUOTA_TTL
        {
            return Ok(stored.clone());
        }
        let stored = get(pool, name).await?;
        let mut map = self.0.lock().expect("lock");
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(name.to_string(), (Instant::now(), stored.clone()));
        Ok(stored)
    }
}

/// Bytes of invocation records (inputs, outputs, logs) namespace `name` holds: what
/// `max_stored_bytes` caps.
pub(crate) async fn stored_bytes(pool: &PgPool, name: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(COALESCE(octet_length(input), 0) + COALESCE(octet_length(output), 0)
                            + COALESCE(octet_length(logs), 0)), 0)::bigint
         FROM invocations WHERE namespace = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
}

/// Counts one call of namespace `name` against its `per_minute` quota, in Postgres (so every
/// ingress counts into the same minute). `Some(seconds)` when the minute's quota is spent: the
/// call must not be accepted, and may be tried again in that many seconds.
pub(crate) async fn take_call(
    pool: &PgPool,
    name: &str,
    per_minute: i32,
) -> Result<Option<u64>, sqlx::Error> {
    let calls: Option<i32> = sqlx::query_scalar(
        "INSERT INTO namespace_calls (namespace, minute, calls)
         VALUES ($1, date_trunc('minute', now()), 1)
         ON CONFLICT (namespace, minute) DO UPDATE SET calls = namespace_calls.calls + 1
            WHERE namespace_calls.calls < $2
         RETURNING calls",
    )
    .bind(name)
    .bind(per_minute)
    .fetch_optional(pool)
    .await?;
    match calls {
        Some(1) => {
            // A new minute: the old ones are done with.
            sqlx::query("DELETE FROM namespace_calls WHERE minute < now() - interval '2 minutes'")
                .execute(pool)
                .await?;
            Ok(None)
        }
        Some(_) => Ok(None),
        None => {
            let left: f64 = sqlx::query_scalar(
                "SELECT EXTRACT(EPOCH FROM (date_trunc('minute', now()) + interval '1 minute' - now()))::float8",
            )
            .fetch_one(pool)
            .await?;
            Ok(Some(left.ceil().max(1.0) as u64))
        }
    }
}

/// After a worker claimed invocation `id` of namespace `name`: whether it may run under the
/// namespace's `max_concurrency` across all workers. If not, the claim is undone (the record is
/// `queued` again, its attempt given back) and the caller leaves the message queued.
///
/// The check runs under a lock per namespace (a Postgres advisory lock), after the claim is
/// committed, so of claims that race, each later check sees every earlier claim that still
/// stands: runs never exceed the quota.
pub(crate) async fn admit(
    pool: &PgPool,
    name: &str,
    id: uuid::Uuid,
    max: i32,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('granda-namespace:' || $1, 0))")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invocations WHERE namespace = $1 AND status = 'running' AND id <> $2",
    )
    .bind(name)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let admitted = others < i64::from(max);
    if admitted {
        // It starts now, as far as the quota goes: no two admitted runs' records overlap more
        // than `max` deep.
        sqlx::query("UPDATE invocations SET started_at = clock_timestamp() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "UPDATE invocations SET status = 'queued', worker = NULL, started_at = NULL,
                    attempt = GREATEST(attempt - 1, 0)
             WHERE id = $1 AND status = 'running'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(admitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_qualify_and_split_back() {
        assert_eq!(qualify("default", "echo"), "echo");
        assert_eq!(qualify("team-b", "echo"), "echo.team-b");
        assert_eq!(split("echo"), ("echo", "default"));
        assert_eq!(split("echo.team-b"), ("echo", "team-b"));
        let b = Namespace::parse("team-b").unwrap();
        assert!(b.holds("echo.team-b"));
        assert!(!b.holds("echo"));
        assert!(Namespace::default_ns().holds("echo"));
        assert!(!Namespace::default_ns().holds("echo.team-b"));
        // Another namespace's function can't be named from this one.
        assert_ne!(qualify("default", "echo.team-b"), "echo.team-b");
        assert_ne!(qualify("team-c", "echo.team-b"), "echo.team-b");
    }

    #[test]
    fn stored_names_are_a_name_and_maybe_a_namespace() {
        for good in ["echo", "echo.team-b"] {
            assert!(valid_stored(good), "{good}");
        }
        for bad in [
            "",
            "echo.",
            ".team",
            "echo.default",
            "echo.a.b",
            "Echo.team",
            "echo.Team",
        ] {
            assert!(!valid_stored(bad), "{bad}");
        }
    }

    #[test]
    fn namespace_names_are_like_function_names() {
        for bad in ["", "Team", "a.b", "-a", "a b", &"a".repeat(64)] {
            assert!(Namespace::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Namespace::parse("team-b2").is_some());
    }
}
