//! Invocations of every function with filters, newest first, paged by id (ids are UUIDv7, so id
//! order is queue order): what `GET /v1/invocations` and the dashboard's `/ui/invocations` list.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Record, Status, Trigger};

/// What to keep; `None` keeps everything.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filters {
    /// Only this namespace's invocations ([`crate::namespace`]).
    pub(crate) namespace: Option<String>,
    /// The function's stored (namespace-qualified) name.
    pub(crate) function: Option<String>,
    pub(crate) status: Option<Status>,
    pub(crate) trigger: Option<Trigger>,
    /// Queued at or after this.
    pub(crate) since: Option<DateTime<Utc>>,
    /// Older than this invocation.
    pub(crate) before: Option<Uuid>,
    /// Newer than this invocation.
    pub(crate) after: Option<Uuid>,
    /// Made with this API key (`Record::key_id`).
    pub(crate) key_id: Option<Uuid>,
}

/// Up to `limit` invocations that pass `filters`, newest first.
pub(crate) async fn list(
    pool: &PgPool,
    filters: &Filters,
    limit: i64,
) -> Result<Vec<Record>, sqlx::Error> {
    // The columns of `Record`, as `super::store` reads them; every value bound.
    sqlx::query_as::<_, Record>(
        "SELECT id, function, status, trigger, attempt, input, input_size, output, output_truncated,
                logs, logs_truncated, exit_code, error, queued_at, started_at, finished_at,
                duration_ms, queue_ms, cold, worker,
                http_method, http_path, http_status, key_id,
                (SELECT k.name FROM api_keys k WHERE k.id = invocations.key_id) AS key_name, cancelled_by,
                mode, discarded_at
         FROM invocations WHERE ($1::text IS NULL OR function = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR trigger = $3)
           AND ($4::timestamptz IS NULL OR queued_at >= $4)
           AND ($5::uuid IS NULL OR id < $5)
           AND ($6::uuid IS NULL OR id > $6)
           AND ($8::text IS NULL OR namespace = $8)
           AND ($9::uuid IS NULL OR key_id = $9)
         ORDER BY id DESC LIMIT $7",
    )
    .bind(filters.function.as_deref())
    .bind(filters.status.map(Status::as_str))
    .bind(filters.trigger.map(Trigger::as_str))
    .bind(filters.since)
    .bind(filters.before)
    .bind(filters.after)
    .bind(limit)
    .bind(filters.namespace.as_deref())
    .bind(filters.key_id)
    .fetch_all(pool)
    .await
}
