//! Functions: what a user registers (an image and its limits), how it is checked, and how it is stored.
//!
//! Layout: this file holds the function as stored and as a message carries it ([`Function`],
//! [`Snapshot`]); `fields` its enumerated settings (mode, network, input, response, CORS,
//! pool); `validate` what a user sends to register or change one, and its checks; [`store`]
//! its rows in Postgres; `invocation_env` the per-invocation `GRANDA_*` values a run may be
//! given (the message carries them).

mod fields;
pub(crate) mod invocation_env;
pub(crate) mod pending;
pub mod store;
mod validate;

pub use crate::seal::Secrets;
pub(crate) use fields::*;
pub use fields::{InputMode, Mode};
pub(crate) use validate::*;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::retry::RetryOn;

pub(crate) const DEFAULT_MEMORY_MB: i64 = 256;
pub(crate) const DEFAULT_CPUS: f64 = 1.0;
pub(crate) const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub(crate) const DEFAULT_QUEUE: &str = "default";
/// Processes a container may have at once, unless the function says otherwise.
pub(crate) const DEFAULT_PIDS: i64 = 256;
/// Size of the writable `/tmp` tmpfs, unless the function says otherwise. Its pages count
/// against the memory limit.
pub(crate) const DEFAULT_TMP_MB: i64 = 64;
/// Most bytes of `env` and `secrets` (names and values) together, raw. They travel JSON-escaped
/// in the header frame of every work message, which must fit RabbitMQ's frame (128 KiB by
/// default): `check` also measures them serialized (see [`crate::frame::snapshot_budget`]).
pub(crate) const MAX_ENV_BYTES: usize = 64 * 1024;

/// A registered function. Serialized, it is what the API shows, except `secrets` (write-only:
/// the API shows their names, never their values). Read from its row as it is.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema, sqlx::FromRow)]
pub struct Function {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) queue: String,
    /// Where results of its async, webhook and event invocations are POSTed unless the call says otherwise.
    pub(crate) callback_url: Option<String>,
    pub(crate) public: bool,
    /// Which browsers may call its URL from other origins.
    #[serde(default)]
    #[sqlx(json(nullable))]
    pub(crate) cors: Option<Cors>,
    #[serde(skip)]
    #[schema(ignore)]
    #[sqlx(json)]
    pub(crate) secrets: Secrets,
    /// The runtime it was built from source with (`shell`, `python3`), or none for a given image.
    #[serde(default)]
    pub(crate) runtime: Option<String>,
    /// The version of its latest build from source (its image is `granda-fn/<installation>/<name>:v<version>`).
    #[serde(default)]
    pub(crate) version: Option<i32>,
    /// How long its ended invocations are kept, in seconds; none: its namespace's, else the
    /// installation's (`GRANDA_RETENTION_S`). See [`crate::retention`].
    #[serde(default)]
    pub(crate) retention_s: Option<i64>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    /// How it runs: the part every message carries.
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub(crate) run: RunSpec,
}

/// How a function runs: its image, limits, retry policy and mode. A [`Function`] has one; a
/// [`Snapshot`] carries one in every message, so a worker never reads Postgres first. Fields
/// added after the first release default, so older messages still decode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema, sqlx::FromRow)]
#[serde(default)]
pub struct RunSpec {
    pub image: String,
    pub timeout_ms: i64,
    pub memory_mb: i64,
    pub cpus: f64,
    #[sqlx(json)]
    pub env: BTreeMap<String, String>,
    #[sqlx(rename = "input_mode", try_from = "String")]
    pub input: InputMode,
    pub max_attempts: i32,
    /// Function failures retried besides platform failures.
    pub retry_on: Vec<RetryOn>,
    /// The most runs of this function one worker does at once.
    pub max_concurrency: Option<i32>,
    #[sqlx(try_from = "String")]
    pub mode: Mode,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub pool: PoolLimits,
    pub pids: i64,
    #[sqlx(try_from = "String")]
    pub network: Network,
    #[sqlx(rename = "run_as")]
    pub user: Option<String>,
    pub container_runtime: Option<String>,
    pub tmp_mb: i64,
    /// What its output is to the caller of its URL: `body` or `cgi`.
    #[sqlx(try_from = "String")]
    pub response: ResponseMode,
    /// What an ended invocation keeps: `always`, or `on_failure` (a success keeps no input,
    /// output or logs).
    #[sqlx(try_from = "String")]
    pub store_output: StoreOutput,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            image: String::new(),
            timeout_ms: 30_000,
            memory_mb: DEFAULT_MEMORY_MB,
            cpus: DEFAULT_CPUS,
            env: BTreeMap::new(),
            input: InputMode::default(),
            max_attempts: 1,
            retry_on: Vec::new(),
            max_concurrency: None,
            mode: Mode::default(),
            pool: PoolLimits::default(),
            pids: DEFAULT_PIDS,
            network: Network::default(),
            user: None,
            container_runtime: None,
            tmp_mb: DEFAULT_TMP_MB,
            response: ResponseMode::default(),
            store_output: StoreOutput::default(),
        }
    }
}

impl Function {
    /// What a worker needs to run this function, carried in each message.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            name: self.name.clone(),
            run: self.run.clone(),
            secrets: self.secrets.clone(),
        }
    }
}

/// A function as a message carries it: its name, how it runs, and its secrets (which the API
/// never shows, but the run needs).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(from = "WireSnapshot")]
pub struct Snapshot {
    pub name: String,
    pub run: RunSpec,
    pub secrets: Secrets,
}

/// A [`Snapshot`] on the wire. Messages written before [`RunSpec`] carried the pool limits as
/// a nested `pool` object; they still do, beside the flat fields, so that a worker of either
/// version reads a message of the other during a rolling upgrade (the nested one wins).
#[derive(Deserialize)]
struct WireSnapshot {
    name: String,
    #[serde(flatten)]
    run: RunSpec,
    #[serde(default)]
    secrets: Secrets,
    #[serde(default)]
    pool: Option<PoolLimits>,
}

impl From<WireSnapshot> for Snapshot {
    fn from(wire: WireSnapshot) -> Self {
        let mut run = wire.run;
        if let Some(pool) = wire.pool {
            run.pool = pool;
        }
        Snapshot {
            name: wire.name,
            run,
            secrets: wire.secrets,
        }
    }
}

/// Writes the `WireSnapshot` shape from borrowed fields: a message is published per
/// invocation, and this copies none of the function's maps.
impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            name: &'a str,
            #[serde(flatten)]
            run: &'a RunSpec,
            secrets: &'a Secrets,
            pool: &'a PoolLimits,
        }
        Wire {
            name: &self.name,
            run: &self.run,
            secrets: &self.secrets,
            pool: &self.run.pool,
        }
        .serialize(serializer)
    }
}

impl Snapshot {
    /// The user its containers and execs run as: `user` with a lone uid given its own number as
    /// the gid (`1234` runs as `1234:1234`; the engine would give a uid its image's passwd does not
    /// name the group root). None: the image's `USER`.
    pub(crate) fn run_as(&self) -> Option<String> {
        self.run.user.as_deref().map(|user| {
            if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
                format!("{user}:{user}")
            } else {
                user.to_string()
            }
        })
    }
}
