//! Postgres storage of functions.

use super::*;

/// Inserts `f`; `Ok(false)` if the name is taken.
pub async fn insert(pool: &PgPool, f: &Function) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO functions (name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts,
                pids, network, run_as, container_runtime, tmp_mb, public, secrets, created_at, updated_at,
                retry_on, max_concurrency, callback_url, mode, min_warm, max_containers, idle_timeout_ms,
                runtime, version, response, cors)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
                 $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&f.name)
    .bind(&f.image)
    .bind(&f.description)
    .bind(f.timeout_ms)
    .bind(f.memory_mb)
    .bind(f.cpus)
    .bind(Json(&f.env))
    .bind(f.input.as_str())
    .bind(&f.queue)
    .bind(f.max_attempts)
    .bind(f.pids)
    .bind(f.network.as_str())
    .bind(&f.user)
    .bind(&f.container_runtime)
    .bind(f.tmp_mb)
    .bind(f.public)
    .bind(Json(&f.secrets))
    .bind(f.created_at)
    .bind(f.updated_at)
    .bind(retry_on_strings(&f.retry_on))
    .bind(f.max_concurrency)
    .bind(&f.callback_url)
    .bind(f.mode.as_str())
    .bind(f.pool.min_warm)
    .bind(f.pool.max_containers)
    .bind(f.pool.idle_timeout_ms)
    .bind(&f.runtime)
    .bind(f.version)
    .bind(f.response.as_str())
    .bind(f.cors.as_ref().map(Json))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Function>, sqlx::Error> {
    let row = sqlx::query_as::<_, FunctionRow>(
        "SELECT name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts, retry_on, max_concurrency, callback_url, mode, min_warm, max_containers, idle_timeout_ms, pids, network, run_as, container_runtime, tmp_mb, public, secrets, runtime, version, response, cors, created_at, updated_at
         FROM functions WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Function::from))
}

pub async fn list(pool: &PgPool) -> Result<Vec<Function>, sqlx::Error> {
    let rows = sqlx::query_as::<_, FunctionRow>(
        "SELECT name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts, retry_on, max_concurrency, callback_url, mode, min_warm, max_containers, idle_timeout_ms, pids, network, run_as, container_runtime, tmp_mb, public, secrets, runtime, version, response, cors, created_at, updated_at
         FROM functions ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Function::from).collect())
}

/// Replaces the stored fields of `f`; `Ok(false)` if it no longer exists.
pub async fn update(pool: &PgPool, f: &Function) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE functions SET image = $2, description = $3, timeout_ms = $4, memory_mb = $5, cpus = $6,
                env = $7, input_mode = $8, queue = $9, max_attempts = $10, updated_at = $11, retry_on = $12,
                max_concurrency = $13, callback_url = $14, mode = $15, min_warm = $16,
                max_containers = $17, idle_timeout_ms = $18,
                pids = $19, network = $20, run_as = $21, container_runtime = $22, tmp_mb = $23, public = $24, secrets = $25,
                runtime = $26, version = $27, response = $28, cors = $29
         WHERE name = $1",
    )
    .bind(&f.name)
    .bind(&f.image)
    .bind(&f.description)
    .bind(f.timeout_ms)
    .bind(f.memory_mb)
    .bind(f.cpus)
    .bind(Json(&f.env))
    .bind(f.input.as_str())
    .bind(&f.queue)
    .bind(f.max_attempts)
    .bind(f.updated_at)
    .bind(retry_on_strings(&f.retry_on))
    .bind(f.max_concurrency)
    .bind(&f.callback_url)
    .bind(f.mode.as_str())
    .bind(f.pool.min_warm)
    .bind(f.pool.max_containers)
    .bind(f.pool.idle_timeout_ms)
    .bind(f.pids)
    .bind(f.network.as_str())
    .bind(&f.user)
    .bind(&f.container_runtime)
    .bind(f.tmp_mb)
    .bind(f.public)
    .bind(Json(&f.secrets))
    .bind(&f.runtime)
    .bind(f.version)
    .bind(f.response.as_str())
    .bind(f.cors.as_ref().map(Json))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn retry_on_strings(r: &[RetryOn]) -> Vec<&'static str> {
    r.iter().map(|r| r.as_str()).collect()
}

pub async fn delete(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM functions WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
