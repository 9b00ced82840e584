//! Postgres storage of functions.

use sqlx::Postgres;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::types::Json;

use super::*;

/// The enumerated settings, read from their text columns (an unknown word reads as the default).
macro_rules! from_text {
    ($($t:ty),*) => {$(
        impl From<String> for $t {
            fn from(s: String) -> Self {
                <$t>::parse(&s)
            }
        }
    )*};
}
from_text!(InputMode, Mode, Network, ResponseMode, StoreOutput);

/// A `retry_on` element, read from the `text[]` column.
impl sqlx::Type<Postgres> for RetryOn {
    fn type_info() -> PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for RetryOn {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }

    fn array_compatible(ty: &PgTypeInfo) -> bool {
        <&str as PgHasArrayType>::array_compatible(ty)
    }
}

impl sqlx::Decode<'_, Postgres> for RetryOn {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        let word = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        RetryOn::parse(word).ok_or_else(|| format!("unknown retry_on {word:?}").into())
    }
}

/// The columns of a function, in the order [`bind`] writes them.
macro_rules! columns {
    () => {
        "name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts,
         retry_on, max_concurrency, callback_url, mode, min_warm, max_containers, idle_timeout_ms,
         pids, network, run_as, container_runtime, tmp_mb, public, secrets, runtime, version,
         response, cors, created_at, updated_at, retention_s, store_output"
    };
}

/// `$1` to `$32`, one for each of [`columns!`].
macro_rules! values {
    () => {
        "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
         $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32"
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds every stored field of `f`, in the order of [`columns!`]; its secrets as `sealed`.
fn bind<'q>(query: PgQuery<'q>, f: &'q Function, sealed: &'q Secrets) -> PgQuery<'q> {
    query
        .bind(&f.name)
        .bind(&f.run.image)
        .bind(&f.description)
        .bind(f.run.timeout_ms)
        .bind(f.run.memory_mb)
        .bind(f.run.cpus)
        .bind(Json(&f.run.env))
        .bind(f.run.input.as_str())
        .bind(&f.queue)
        .bind(f.run.max_attempts)
        .bind(retry_on_strings(&f.run.retry_on))
        .bind(f.run.max_concurrency)
        .bind(&f.callback_url)
        .bind(f.run.mode.as_str())
        .bind(f.run.pool.min_warm)
        .bind(f.run.pool.max_containers)
        .bind(f.run.pool.idle_timeout_ms)
        .bind(f.run.pids)
        .bind(f.run.network.as_str())
        .bind(&f.run.user)
        .bind(&f.run.container_runtime)
        .bind(f.run.tmp_mb)
        .bind(f.public)
        .bind(Json(sealed))
        .bind(&f.runtime)
        .bind(f.version)
        .bind(f.run.response.as_str())
        .bind(f.cors.as_ref().map(Json))
        .bind(f.created_at)
        .bind(f.updated_at)
        .bind(f.retention_s)
        .bind(f.run.store_output.as_str())
}

/// Inserts `f`, its secrets sealed under `keys`; `Ok(false)` if the name is taken.
pub(crate) async fn insert(
    pool: &PgPool,
    keys: &crate::seal::Keys,
    f: &Function,
) -> Result<bool, sqlx::Error> {
    let sealed = keys.seal_all(&f.secrets);
    let query = sqlx::query(concat!(
        "INSERT INTO functions (",
        columns!(),
        ") VALUES (",
        values!(),
        ") ON CONFLICT (name) DO NOTHING"
    ));
    let done = bind(query, f, &sealed).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Function>, sqlx::Error> {
    let row = sqlx::query_as::<_, Function>(concat!(
        "SELECT ",
        columns!(),
        " FROM functions WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row)
}

/// The functions of `namespace`, or of every namespace.
pub(crate) async fn list(
    pool: &PgPool,
    namespace: Option<&str>,
) -> Result<Vec<Function>, sqlx::Error> {
    let rows = sqlx::query_as::<_, Function>(concat!(
        "SELECT ",
        columns!(),
        " FROM functions WHERE $1::text IS NULL OR namespace = $1 ORDER BY name"
    ))
    .bind(namespace)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Replaces the stored fields of `f` (all but its name; `created_at` is written back as read);
/// `Ok(false)` if it no longer exists. Its secrets are sealed under `keys`.
pub(crate) async fn update(
    pool: &PgPool,
    keys: &crate::seal::Keys,
    f: &Function,
) -> Result<bool, sqlx::Error> {
    let sealed = keys.seal_all(&f.secrets);
    let query = sqlx::query(concat!(
        "UPDATE functions SET (",
        columns!(),
        ") = (",
        values!(),
        ") WHERE name = $1"
    ));
    let done = bind(query, f, &sealed).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

fn retry_on_strings(r: &[RetryOn]) -> Vec<&'static str> {
    r.iter().map(|r| r.as_str()).collect()
}

pub(crate) async fn delete(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM functions WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
