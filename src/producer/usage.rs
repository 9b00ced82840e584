//! `GET /v1/usage?from=&to=&namespace=&function=`: what each namespace and function used, summed
//! from the invocation records queued in `[from, to)`: invocations by status, total
//! `duration_ms`, `gb_seconds` (the function's memory limit × duration, as Lambda bills) and cold
//! starts. A key bound to a namespace sees its own; a global key every namespace, or the one it
//! names. Per namespace, the calls its quotas refused (429, counted per hour in
//! `namespace_throttled`: a refused call leaves no record) and the record bytes it holds.
//!
//! CPU seconds are not summed: records carry no measured CPU time. `cpu_ms` was dropped as
//! never measured (migration 0022): a cold container's cgroup is gone once it exits, and a warm
//! or hot container's counters cover every run it served, so a per-run figure needs a reading
//! before and after each run from the engine's stats, which the worker does not take yet.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::AppState;
use super::auth::Acting;
use super::extract::Query;
use crate::error::{ApiError, Denied, ErrorBody};
use crate::namespace::{self, Namespace};

/// What one function used.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct FunctionUsage {
    pub(crate) namespace: String,
    pub(crate) function: String,
    pub(crate) invocations: i64,
    /// Invocations by status (`succeeded`, `failed`, `timed_out`, `dead`, `queued`, `running`).
    pub(crate) by_status: BTreeMap<String, i64>,
    pub(crate) duration_ms: i64,
    /// Memory limit (GB, of the function as it is now) × duration (s).
    pub(crate) gb_seconds: f64,
    pub(crate) cold_starts: i64,
}

/// What one namespace was refused and holds.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub(crate) struct NamespaceUsage {
    pub(crate) namespace: String,
    /// Calls its quotas refused (429) in the period, by reason (`rate`, `stored`). Refused calls
    /// leave no invocation record; they are counted per hour, so the period is rounded to hours.
    pub(crate) throttled: BTreeMap<String, i64>,
    /// Bytes of invocation records (inputs, outputs, logs) it holds now: what `max_stored_bytes`
    /// caps.
    pub(crate) stored_bytes: i64,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Usage {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    pub(crate) usage: Vec<FunctionUsage>,
    /// Per namespace asked for (with calls or throttled in the period, or the one named).
    pub(crate) namespaces: Vec<NamespaceUsage>,
}

#[derive(sqlx::FromRow)]
struct Row {
    namespace: String,
    function: String,
    status: crate::invocation::Status,
    n: i64,
    duration_ms: i64,
    gb_seconds: f64,
    cold: i64,
}

fn time(query: &HashMap<String, String>, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| ApiError::BadRequest(format!("{key}: an RFC 3339 time, not {t:?}"))),
    }
}

#[utoipa::path(get, path = "/v1/usage", operation_id = "usage", tag = "namespaces", summary = "What each namespace and function used",
    description = "Sums of the invocation records queued in `[from, to)` (RFC 3339; default the last 30 days), per namespace and function: invocations by status, `duration_ms`, `gb_seconds` (memory limit × duration) and cold starts. A key bound to a namespace sees its own (naming another is 404); a global key sees every namespace, or the one `namespace` names.",
    params(("from" = Option<DateTime<Utc>>, Query), ("to" = Option<DateTime<Utc>>, Query), ("namespace" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("function" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    responses((status = 200, body = Usage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Usage>, ApiError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !["from", "to", "namespace", "function"].contains(&k.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {unknown:?}; the filters are from, to, namespace, function"
        )));
    }
    let to = time(&query, "to")?.unwrap_or_else(Utc::now);
    let from = time(&query, "from")?.unwrap_or(to - Duration::days(30));
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    let named = query.get("namespace").filter(|n| !n.is_empty());
    let ns: Option<Namespace> = match (named, acting.bound) {
        (None, false) => None,
        (None, true) => Some(acting.namespace.clone()),
        (Some(n), bound) => {
            let missing = || ApiError::NotFound(format!("no namespace named {n:?}"));
            let ns = Namespace::parse(n).ok_or_else(missing)?;
            if bound && ns != acting.namespace {
                return Err(missing());
            }
            Some(ns)
        }
    };
    // A function is named in the namespace asked for (or the caller's).
    let function = query
        .get("function")
        .filter(|f| !f.is_empty())
        .map(|f| ns.as_ref().unwrap_or(&acting.namespace).qualify(f));
    let usage = sum(&app.pool, from, to, ns.as_ref(), function.as_deref()).await?;
    let namespaces = namespaces(&app.pool, from, to, ns.as_ref(), &usage).await?;
    Ok(Json(Usage {
        from,
        to,
        usage,
        namespaces,
    }))
}

/// What each function (of `ns`, or every namespace; only `function` when given, a stored name)
/// used, from the records queued in `[from, to)`.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn sum(
    pool: &sqlx::PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    ns: Option<&Namespace>,
    function: Option<&str>,
) -> Result<Vec<FunctionUsage>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.namespace, i.function, i.status, count(*)::bigint AS n,
                COALESCE(sum(i.duration_ms), 0)::bigint AS duration_ms,
                COALESCE(sum(i.duration_ms::float8 * f.memory_mb::float8), 0)::float8
                    / 1024.0 / 1000.0 AS gb_seconds,
                count(*) FILTER (WHERE i.cold)::bigint AS cold
         FROM invocations i LEFT JOIN functions f ON f.name = i.function
         WHERE i.queued_at >= $1 AND i.queued_at < $2
           AND ($3::text IS NULL OR i.namespace = $3)
           AND ($4::text IS NULL OR i.function = $4)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(from)
    .bind(to)
    .bind(ns.map(Namespace::as_str))
    .bind(function)
    .fetch_all(pool)
    .await?;
    let mut usage: Vec<FunctionUsage> = Vec::new();
    for r in rows {
        let short = namespace::short(&r.function).to_string();
        if usage
            .last()
            .is_none_or(|u| u.namespace != r.namespace || u.function != short)
        {
            usage.push(FunctionUsage {
                namespace: r.namespace.clone(),
                function: short,
                ..FunctionUsage::default()
            });
        }
        let u = usage.last_mut().expect("pushed");
        u.invocations += r.n;
        u.by_status.insert(r.status.as_str().to_string(), r.n);
        u.duration_ms += r.duration_ms;
        u.gb_seconds += r.gb_seconds;
        u.cold_starts += r.cold;
    }
    Ok(usage)
}

/// Per namespace (`ns`, else those in `usage` or throttled in the period): calls refused in
/// `[from, to)` (by the hour) and bytes held now.
#[tracing::instrument(level = "debug", skip(pool, usage))]
pub(crate) async fn namespaces(
    pool: &sqlx::PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    ns: Option<&Namespace>,
    usage: &[FunctionUsage],
) -> Result<Vec<NamespaceUsage>, sqlx::Error> {
    let throttled: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT namespace, reason, sum(calls)::bigint FROM namespace_throttled
         WHERE hour >= date_trunc('hour', $1::timestamptz) AND hour < $2
           AND ($3::text IS NULL OR namespace = $3)
         GROUP BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .bind(ns.map(Namespace::as_str))
    .fetch_all(pool)
    .await?;
    fn entry<'a>(
        by_ns: &'a mut BTreeMap<String, NamespaceUsage>,
        name: &str,
    ) -> &'a mut NamespaceUsage {
        by_ns
            .entry(name.to_string())
            .or_insert_with(|| NamespaceUsage {
                namespace: name.to_string(),
                ..NamespaceUsage::default()
            })
    }
    let mut by_ns: BTreeMap<String, NamespaceUsage> = BTreeMap::new();
    if let Some(ns) = ns {
        entry(&mut by_ns, ns.as_str());
    }
    for u in usage {
        entry(&mut by_ns, &u.namespace);
    }
    for (name, reason, n) in throttled {
        entry(&mut by_ns, &name).throttled.insert(reason, n);
    }
    let mut out: Vec<NamespaceUsage> = by_ns.into_values().collect();
    for n in &mut out {
        n.stored_bytes = namespace::stored_bytes(pool, &n.namespace).await?;
    }
    Ok(out)
}
