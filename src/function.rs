//! Functions: what a user registers (an image and its limits), how it is checked, and how it is stored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::config::Settings;
use crate::retry::RetryOn;

pub const DEFAULT_MEMORY_MB: i64 = 256;
pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub const DEFAULT_QUEUE: &str = "default";

/// How the invocation's input reaches the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputMode {
    /// The body on stdin, then EOF.
    #[default]
    Stdin,
    /// The body (a JSON array of strings, or one string) becomes the container's CMD.
    Args,
}

impl InputMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InputMode::Stdin => "stdin",
            InputMode::Args => "args",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "args" {
            InputMode::Args
        } else {
            InputMode::Stdin
        }
    }
}

/// A registered function, as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FunctionRow {
    pub name: String,
    pub image: String,
    pub description: Option<String>,
    pub timeout_ms: i64,
    pub memory_mb: i64,
    pub cpus: f64,
    pub env: Json<BTreeMap<String, String>>,
    pub input_mode: String,
    pub queue: String,
    pub max_attempts: i32,
    pub retry_on: Vec<String>,
    pub max_concurrency: Option<i32>,
    pub callback_url: Option<String>,
    pub runtime: Option<String>,
    pub version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A registered function, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Function {
    pub name: String,
    pub image: String,
    pub description: Option<String>,
    pub timeout_ms: i64,
    pub memory_mb: i64,
    pub cpus: f64,
    pub env: BTreeMap<String, String>,
    pub input: InputMode,
    pub queue: String,
    pub max_attempts: i32,
    /// Function failures retried besides platform failures.
    pub retry_on: Vec<RetryOn>,
    /// The most runs of this function one worker does at once.
    pub max_concurrency: Option<i32>,
    /// Where results of its async, webhook and event invocations are POSTed unless the call says otherwise.
    pub callback_url: Option<String>,
    /// The runtime it was built from source with (`shell`, `python3`), or none for a given image.
    #[serde(default)]
    pub runtime: Option<String>,
    /// The version of its latest build from source (its image is `granda-fn/<name>:v<version>`).
    #[serde(default)]
    pub version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<FunctionRow> for Function {
    fn from(r: FunctionRow) -> Self {
        Function {
            name: r.name,
            image: r.image,
            description: r.description,
            timeout_ms: r.timeout_ms,
            memory_mb: r.memory_mb,
            cpus: r.cpus,
            env: r.env.0,
            input: InputMode::parse(&r.input_mode),
            queue: r.queue,
            max_attempts: r.max_attempts,
            retry_on: r
                .retry_on
                .iter()
                .filter_map(|s| RetryOn::parse(s))
                .collect(),
            max_concurrency: r.max_concurrency,
            callback_url: r.callback_url,
            runtime: r.runtime,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Function {
    /// What a worker needs to run this function, carried in each message.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            name: self.name.clone(),
            image: self.image.clone(),
            timeout_ms: self.timeout_ms,
            memory_mb: self.memory_mb,
            cpus: self.cpus,
            env: self.env.clone(),
            input: self.input,
            max_attempts: self.max_attempts,
            retry_on: self.retry_on.clone(),
            max_concurrency: self.max_concurrency,
        }
    }
}

/// The part of a function a worker needs to start its container, so it never reads Postgres first.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub image: String,
    pub timeout_ms: i64,
    pub memory_mb: i64,
    pub cpus: f64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub input: InputMode,
    #[serde(default = "one")]
    pub max_attempts: i32,
    #[serde(default)]
    pub retry_on: Vec<RetryOn>,
    #[serde(default)]
    pub max_concurrency: Option<i32>,
}

fn one() -> i32 {
    1
}

/// The body of `POST /v1/functions`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFunction {
    pub name: String,
    /// An image; or none, with `runtime` and `source` to build one.
    #[serde(default)]
    pub image: Option<String>,
    /// Build from source: the runtime template (`runtimes/<runtime>/`).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Build from source: the handler file, or a base64 tar.gz of a directory.
    #[serde(default)]
    pub source: Option<crate::build::Source>,
    pub description: Option<String>,
    pub timeout_ms: Option<i64>,
    pub memory_mb: Option<i64>,
    pub cpus: Option<f64>,
    pub env: Option<BTreeMap<String, String>>,
    pub input: Option<InputMode>,
    pub queue: Option<String>,
    pub max_attempts: Option<i32>,
    pub retry_on: Option<Vec<RetryOn>>,
    pub max_concurrency: Option<i32>,
    pub callback_url: Option<String>,
}

/// The body of `PUT /v1/functions/{name}`: the fields to change; the others stay.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionUpdate {
    /// Accepted so a client can send back what it read, but must match the path.
    pub name: Option<String>,
    pub image: Option<String>,
    pub description: Option<String>,
    pub timeout_ms: Option<i64>,
    pub memory_mb: Option<i64>,
    pub cpus: Option<f64>,
    pub env: Option<BTreeMap<String, String>>,
    pub input: Option<InputMode>,
    pub queue: Option<String>,
    pub max_attempts: Option<i32>,
    pub retry_on: Option<Vec<RetryOn>>,
    pub max_concurrency: Option<i32>,
    pub callback_url: Option<String>,
    /// Build a new version from source (with `runtime`, or the function's current runtime).
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub source: Option<crate::build::Source>,
    #[serde(default)]
    pub version: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub versions: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub updated_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub invoke_url: Option<serde::de::IgnoredAny>,
}

/// Why a function definition was refused.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// `^[a-z][a-z0-9-]{0,62}$`: names of functions and queues.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl NewFunction {
    /// Checks every field and fills in defaults.
    pub fn validate(self, settings: &Settings) -> Result<Function, Invalid> {
        if !valid_name(&self.name) {
            return Err(invalid(
                "name",
                "must match ^[a-z][a-z0-9-]{0,62}$ (lowercase letters, digits, '-')",
            ));
        }
        let now = Utc::now();
        let f = Function {
            name: self.name,
            image: self.image.unwrap_or_default(),
            description: self.description,
            timeout_ms: self
                .timeout_ms
                .unwrap_or(settings.default_timeout_ms as i64),
            memory_mb: self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            cpus: self.cpus.unwrap_or(DEFAULT_CPUS),
            env: self.env.unwrap_or_default(),
            input: self.input.unwrap_or_default(),
            queue: self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string()),
            max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_on: self.retry_on.unwrap_or_default(),
            max_concurrency: self.max_concurrency,
            callback_url: self.callback_url,
            runtime: self.runtime,
            version: None,
            created_at: now,
            updated_at: now,
        };
        check(&f, settings)?;
        Ok(f)
    }
}

impl FunctionUpdate {
    /// Applies the changes to `current` and checks the result.
    pub fn apply(self, current: Function, settings: &Settings) -> Result<Function, Invalid> {
        if let Some(name) = &self.name
            && *name != current.name
        {
            return Err(invalid("name", "a function can't be renamed"));
        }
        let f = Function {
            image: self.image.unwrap_or(current.image),
            description: self.description.or(current.description),
            timeout_ms: self.timeout_ms.unwrap_or(current.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(current.memory_mb),
            cpus: self.cpus.unwrap_or(current.cpus),
            env: self.env.unwrap_or(current.env),
            input: self.input.unwrap_or(current.input),
            queue: self.queue.unwrap_or(current.queue),
            max_attempts: self.max_attempts.unwrap_or(current.max_attempts),
            retry_on: self.retry_on.unwrap_or(current.retry_on),
            max_concurrency: self.max_concurrency.or(current.max_concurrency),
            // An empty string removes the default.
            callback_url: match self.callback_url {
                Some(url) if url.is_empty() => None,
                Some(url) => Some(url),
                None => current.callback_url,
            },
            updated_at: Utc::now(),
            ..current
        };
        check(&f, settings)?;
        Ok(f)
    }
}

fn check(f: &Function, settings: &Settings) -> Result<(), Invalid> {
    if f.image.is_empty() || f.image.len() > 255 || f.image.chars().any(char::is_whitespace) {
        return Err(invalid(
            "image",
            "must be an image reference without spaces, at most 255 characters",
        ));
    }
    if let Some(d) = &f.description
        && d.len() > 4096
    {
        return Err(invalid("description", "at most 4096 characters"));
    }
    let max_timeout = settings.max_timeout_ms as i64;
    if !(1..=max_timeout).contains(&f.timeout_ms) {
        return Err(invalid(
            "timeout_ms",
            format!("must be between 1 and {max_timeout}"),
        ));
    }
    if !(6..=1024 * 1024).contains(&f.memory_mb) {
        return Err(invalid("memory_mb", "must be between 6 and 1048576"));
    }
    if !(f.cpus.is_finite() && f.cpus >= 0.01 && f.cpus <= 1024.0) {
        return Err(invalid("cpus", "must be between 0.01 and 1024"));
    }
    if f.env.len() > 256 {
        return Err(invalid("env", "at most 256 variables"));
    }
    for (k, v) in &f.env {
        if !valid_env_key(k) {
            return Err(invalid(
                "env",
                format!("{k:?} is not a valid variable name"),
            ));
        }
        if k.starts_with("GRANDA_") {
            return Err(invalid("env", format!("{k}: GRANDA_* names are reserved")));
        }
        if v.contains('\0') || v.len() > 32 * 1024 {
            return Err(invalid(
                "env",
                format!("{k}: values are at most 32 KiB, without NUL"),
            ));
        }
    }
    if !valid_name(&f.queue) {
        return Err(invalid("queue", "must match ^[a-z][a-z0-9-]{0,62}$"));
    }
    if let Some(m) = f.max_concurrency
        && !(1..=10_000).contains(&m)
    {
        return Err(invalid("max_concurrency", "must be between 1 and 10000"));
    }
    if !(1..=100).contains(&f.max_attempts) {
        return Err(invalid("max_attempts", "must be between 1 and 100"));
    }
    if let Some(url) = &f.callback_url {
        crate::callback::check_url(url).map_err(|reason| invalid("callback_url", reason))?;
    }
    Ok(())
}

/// Postgres storage of functions.
pub mod store {
    use super::*;

    /// Inserts `f`; `Ok(false)` if the name is taken.
    pub async fn insert(pool: &PgPool, f: &Function) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO functions (name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts, created_at, updated_at, retry_on, max_concurrency, callback_url, runtime, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
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
        .bind(f.created_at)
        .bind(f.updated_at)
        .bind(retry_on_strings(&f.retry_on))
        .bind(f.max_concurrency)
        .bind(&f.callback_url)
        .bind(&f.runtime)
        .bind(f.version)
        .execute(pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn get(pool: &PgPool, name: &str) -> Result<Option<Function>, sqlx::Error> {
        let row = sqlx::query_as::<_, FunctionRow>(
            "SELECT name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts, retry_on, max_concurrency, callback_url, runtime, version, created_at, updated_at
             FROM functions WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(Function::from))
    }

    pub async fn list(pool: &PgPool) -> Result<Vec<Function>, sqlx::Error> {
        let rows = sqlx::query_as::<_, FunctionRow>(
            "SELECT name, image, description, timeout_ms, memory_mb, cpus, env, input_mode, queue, max_attempts, retry_on, max_concurrency, callback_url, runtime, version, created_at, updated_at
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
                    max_concurrency = $13, callback_url = $14, runtime = $15, version = $16
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
        .bind(&f.runtime)
        .bind(f.version)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for good in ["a", "echo", "my-fn-2", &"a".repeat(63)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Echo", "1abc", "-a", "a_b", "a.b", "ä", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
