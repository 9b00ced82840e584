//! Postgres storage of builds.
use super::*;

/// Records a new build of `function` with the next version number, its image tagged as
/// [`tag`] says (with this installation's id). `Ok(None)` when another build took that number at
/// the same moment.
pub(crate) async fn start(
    pool: &PgPool,
    prefix: &str,
    function: &str,
    runtime: &str,
    source_digest: &str,
) -> Result<Option<BuildRecord>, sqlx::Error> {
    let row = sqlx::query_as::<_, BuildRecord>(
        "INSERT INTO builds (id, function, version, runtime, image, status, source_digest)
         SELECT $1, $2, v, $3,
                $4 || '-fn/' || (SELECT value FROM installation WHERE key = 'installation_id')
                   || '/' || $2 || ':v' || v,
                'building', $5
         FROM (SELECT coalesce(max(version), 0) + 1 AS v FROM builds WHERE function = $2) next
         ON CONFLICT (function, version) DO NOTHING
         RETURNING id, function, version, runtime, image, status, log, source_digest, created_at, finished_at",
    )
    .bind(Uuid::now_v7())
    .bind(function)
    .bind(runtime)
    .bind(prefix)
    .bind(source_digest)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// Records the image a build produced (under `GRANDA_REGISTRY` when the builder had one).
pub(crate) async fn set_image(pool: &PgPool, id: Uuid, image: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE builds SET image = $2 WHERE id = $1")
        .bind(id)
        .bind(image)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records how a build ended, with its log.
pub(crate) async fn finish(
    pool: &PgPool,
    id: Uuid,
    ok: bool,
    log: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE builds SET status = $2, log = $3, finished_at = now() WHERE id = $1")
        .bind(id)
        .bind(if ok {
            BuildStatus::Succeeded
        } else {
            BuildStatus::Failed
        })
        .bind(log)
        .execute(pool)
        .await?;
    Ok(())
}

/// The builds of `function` since `since` (its registration), newest first.
pub(crate) async fn list(
    pool: &PgPool,
    function: &str,
    since: DateTime<Utc>,
) -> Result<Vec<BuildRecord>, sqlx::Error> {
    sqlx::query_as::<_, BuildRecord>(
        "SELECT id, function, version, runtime, image, status, log, source_digest, created_at, finished_at
         FROM builds WHERE function = $1 AND created_at >= $2 ORDER BY version DESC",
    )
    .bind(function)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Build `version` of `function`, of the function registered at `since` (not of an earlier
/// function of the same name).
pub(crate) async fn version(
    pool: &PgPool,
    function: &str,
    version: i32,
    since: DateTime<Utc>,
) -> Result<Option<BuildRecord>, sqlx::Error> {
    sqlx::query_as::<_, BuildRecord>(
        "SELECT id, function, version, runtime, image, status, log, source_digest, created_at, finished_at
         FROM builds WHERE function = $1 AND version = $2 AND created_at >= $3",
    )
    .bind(function)
    .bind(version)
    .bind(since)
    .fetch_optional(pool)
    .await
}

/// The build version `version` of `function` came from, if it succeeded since `since` (the
/// function's registration).
pub(crate) async fn succeeded(
    pool: &PgPool,
    function: &str,
    version: i32,
    since: DateTime<Utc>,
) -> Result<Option<BuildRecord>, sqlx::Error> {
    Ok(self::version(pool, function, version, since)
        .await?
        .filter(|b| b.status == BuildStatus::Succeeded))
}
