//! API keys: made at random, shown once, stored only as their SHA-256. A key has a scope:
//! `admin` (everything), `invoke` (call functions and read invocations) or `read` (records and
//! settings, no calls, no changes), and may be bound to one namespace (`crate::namespace`):
//! it then acts only there, and everything else is 404 to it. What each scope may do
//! is decided in one place, `producer::auth::permits`, for the API and the dashboard alike.
//!
//! A dashboard session (`ui_sessions`) is bound to the key that made it (`key_id`): `revoke`
//! deletes the key's sessions in the same transaction, and every session lookup checks the key is
//! still live. `GRANDA_ADMIN_KEY` is stored here like any other key (named `GRANDA_ADMIN_KEY`), so
//! its sessions are bound to its row and end when it is revoked.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Every key starts with this, so a leaked one is easy to recognise (and to scan for).
pub(crate) const KEY_PREFIX: &str = "gk_";
/// The cookie of a dashboard session, made by logging in with a key and bound to it.
pub(crate) const SESSION_COOKIE: &str = "granda_session";
/// How much of a key is kept in the clear to tell keys apart: the prefix and 6 characters.
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 6;

/// What a key may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    /// Everything, including managing functions and keys.
    Admin,
    /// Invoke functions and read invocation records.
    Invoke,
    /// Read records and settings: no calls, no changes.
    Read,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "invoke" => Some(Scope::Invoke),
            "read" => Some(Scope::Read),
            _ => None,
        }
    }
}

/// A key as stored and listed: never the key itself.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct ApiKey {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    #[schema(value_type = Scope)]
    pub(crate) scope: String,
    pub(crate) prefix: String,
    /// The namespace the key is bound to; none for a global key.
    pub(crate) namespace: Option<String>,
    /// The functions (short names, in the key's namespace) an `invoke` key is bound to: it
    /// invokes those only. None: every function.
    pub(crate) functions: Option<Vec<String>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

pub use crate::config::Secret;

/// A new random key: `gk_` and 32 random bytes, base64url.
pub(crate) fn generate() -> Secret {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    Secret(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares in time that depends only on the length, not on where the bytes differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn shown_part(key: &str) -> String {
    key.chars().take(SHOWN_CHARS).collect()
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("name: 1 to 100 characters, no control characters")]
    BadName,
    #[error("functions: only an invoke key can be bound to functions")]
    FunctionsNeedInvoke,
    #[error("functions: 1 to 100 function names (short names, in the key's namespace)")]
    BadFunctions,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The most functions one key may be bound to.
pub(crate) const MAX_KEY_FUNCTIONS: usize = 100;

pub(crate) fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= 100 && !name.chars().any(char::is_control)
}

/// Stores `key` (its hash) under `name`; `Ok(None)` when that key is stored already.
async fn insert(
    pool: &PgPool,
    name: &str,
    scope: Scope,
    namespace: Option<&str>,
    functions: Option<&[String]>,
    key: &Secret,
) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as::<_, ApiKey>(
        "INSERT INTO api_keys (id, name, scope, hash, prefix, namespace, functions)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (hash) DO NOTHING
         RETURNING id, name, scope, prefix, namespace, functions, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(scope.as_str())
    .bind(hash(&key.0).as_slice())
    .bind(shown_part(&key.0))
    .bind(namespace)
    .bind(functions)
    .fetch_optional(pool)
    .await
}

/// Makes a new key named `name`, bound to `namespace` if given (which must exist) and to
/// `functions` if given (an `invoke` key only); the secret is returned once and never stored.
#[tracing::instrument(skip(pool))]
pub(crate) async fn create(
    pool: &PgPool,
    name: &str,
    scope: Scope,
    namespace: Option<&str>,
    functions: Option<&[String]>,
) -> Result<(ApiKey, Secret), KeyError> {
    if !valid_key_name(name) {
        return Err(KeyError::BadName);
    }
    if let Some(functions) = functions {
        if scope != Scope::Invoke {
            return Err(KeyError::FunctionsNeedInvoke);
        }
        if functions.is_empty()
            || functions.len() > MAX_KEY_FUNCTIONS
            || !functions.iter().all(|f| crate::namespace::valid_name(f))
        {
            return Err(KeyError::BadFunctions);
        }
    }
    let key = generate();
    let stored = insert(pool, name, scope, namespace, functions, &key)
        .await?
        .ok_or_else(|| KeyError::Db(sqlx::Error::Protocol("random key collided".into())))?;
    Ok((stored, key))
}

/// Every key, or those bound to `namespace`.
pub(crate) async fn list(
    pool: &PgPool,
    namespace: Option<&str>,
) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as::<_, ApiKey>(
        "SELECT id, name, scope, prefix, namespace, functions, created_at, revoked_at FROM api_keys
         WHERE $1::text IS NULL OR namespace = $1 ORDER BY id",
    )
    .bind(namespace)
    .fetch_all(pool)
    .await
}

/// Key `id`'s name and namespace, revoked or not.
pub(crate) async fn name_of(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT name, namespace FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Revokes key `id` and ends the dashboard sessions it made, in one transaction; `Ok(false)` if
/// there is no such key that is not revoked already.
pub(crate) async fn revoke(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    sqlx::query("DELETE FROM ui_sessions WHERE key_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// A presented key that is live: its id, scope, namespace (none: a global key) and the
/// functions it is bound to (none: every function).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LiveKey {
    pub(crate) id: Uuid,
    pub(crate) scope: Scope,
    pub(crate) namespace: Option<String>,
    pub(crate) functions: Option<Vec<String>>,
}

impl LiveKey {
    /// Whether this key may call the function stored as `qualified`: one of its functions, in
    /// its namespace (`default` for a global key), or any when it is bound to none.
    pub(crate) fn allows(&self, qualified: &str) -> bool {
        let ns = self
            .namespace
            .as_deref()
            .unwrap_or(crate::namespace::DEFAULT);
        self.functions.as_ref().is_none_or(|fs| {
            fs.iter()
                .any(|f| crate::namespace::qualify(ns, f) == qualified)
        })
    }
}

/// The scope of a presented key, if it is a live one.
pub(crate) async fn verify(pool: &PgPool, key: &str) -> Result<Option<Scope>, sqlx::Error> {
    Ok(lookup(pool, key).await?.map(|k| k.scope))
}

/// The id and scope of a presented key, if it is a live one.
pub(crate) async fn lookup(pool: &PgPool, key: &str) -> Result<Option<LiveKey>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        hash: Vec<u8>,
        scope: String,
        namespace: Option<String>,
        functions: Option<Vec<String>>,
    }
    let presented = hash(key);
    // Looked up by the SHA-256 of the key, so the time taken says nothing about the key's bytes.
    let row = sqlx::query_as::<_, Row>(
        "SELECT id, hash, scope, namespace, functions FROM api_keys
         WHERE hash = $1 AND revoked_at IS NULL",
    )
    .bind(presented.as_slice())
    .fetch_optional(pool)
    .await?;
    Ok(row
        .filter(|r| constant_time_eq(&r.hash, &presented))
        .and_then(|r| {
            Scope::parse(&r.scope).map(|scope| LiveKey {
                id: r.id,
                scope,
                namespace: r.namespace,
                functions: r.functions,
            })
        }))
}

/// Makes sure there is an admin key at start. With `GRANDA_ADMIN_KEY`, that key is stored (once;
/// if it was revoked it stays revoked). Without it, when no key exists at all, one is made and
/// returned, for the caller to print once.
pub async fn bootstrap(
    pool: &PgPool,
    admin_key: Option<&Secret>,
) -> anyhow::Result<Option<Secret>> {
    if let Some(key) = admin_key {
        anyhow::ensure!(
            key.0.len() >= 16,
            "GRANDA_ADMIN_KEY must be at least 16 characters"
        );
        insert(pool, "GRANDA_ADMIN_KEY", Scope::Admin, None, None, key).await?;
        return Ok(None);
    }
    let mut tx = pool.begin().await?;
    // One server makes the first key, even when several start at once.
    sqlx::query("SELECT pg_advisory_xact_lock(7261746)")
        .execute(&mut *tx)
        .await?;
    let (any,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM api_keys)")
        .fetch_one(&mut *tx)
        .await?;
    if any {
        return Ok(None);
    }
    let key = generate();
    sqlx::query(
        "INSERT INTO api_keys (id, name, scope, hash, prefix) VALUES ($1, $2, 'admin', $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind("first admin key")
    .bind(hash(&key.0).as_slice())
    .bind(shown_part(&key.0))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_long() {
        let (a, b) = (generate(), generate());
        assert_ne!(a.0, b.0);
        assert!(a.0.starts_with(KEY_PREFIX));
        assert_eq!(a.0.len(), KEY_PREFIX.len() + 43);
        assert!(!format!("{a:?}").contains(&a.0));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
