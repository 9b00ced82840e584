//! `GET /v1/usage?from=&to=&namespace=&function=`: what each namespace and function used, summed
//! from the invocation records queued in `[from, to)`: invocations by status, total
//! `duration_ms`, `gb_seconds` (the function's memory limit × duration, as Lambda bills) and cold
//! starts. A key bound to a namespace sees its own; a global key every namespace, or the one it
//! names. CPU seconds are not summed: records carry no measured CPU time (the columns were
//! dropped as unmeasured; the engine's per-container cgroup figures are not collected yet).

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
pub struct FunctionUsage {
    pub namespace: String,
    pub function: String,
    pub invocations: i64,
    /// Invocations by status (`succeeded`, `failed`, `timed_out`, `dead`, `queued`, `running`).
    pub by_status: BTreeMap<String, i64>,
    pub duration_ms: i64,
    /// Memory limit (GB, of the function as it is now) × duration (s).
    pub gb_seconds: f64,
    pub cold_starts: i64,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub usage: Vec<FunctionUsage>,
}

#[derive(sqlx::FromRow)]
struct Row {
    namespace: String,
    function: String,
    status: String,
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
    params(("from" = Option<String>, Query), ("to" = Option<String>, Query), ("namespace" = Option<String>, Query), ("function" = Option<String>, Query)),
    responses((status = 200, body = Usage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub async fn get(
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
    .bind(ns.as_ref().map(Namespace::as_str))
    .bind(function.as_deref())
    .fetch_all(&app.pool)
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
        u.by_status.insert(r.status, r.n);
        u.duration_ms += r.duration_ms;
        u.gb_seconds += r.gb_seconds;
        u.cold_starts += r.cold;
    }
    Ok(Json(Usage { from, to, usage }))
}
