//! Functions: what a user registers (an image and its limits), how it is checked, and how it is stored.
//!
//! Layout: this file holds the function as stored and as a message carries it ([`Function`],
//! [`Snapshot`]); `fields` its enumerated settings (mode, network, input, response, CORS,
//! pool); `validate` what a user sends to register or change one, and its checks; [`store`]
//! its rows in Postgres.

mod fields;
pub mod store;
mod validate;

pub use fields::*;
pub use validate::*;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::retry::RetryOn;

pub const DEFAULT_MEMORY_MB: i64 = 256;
pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
pub const DEFAULT_QUEUE: &str = "default";
/// Processes a container may have at once, unless the function says otherwise.
pub const DEFAULT_PIDS: i64 = 256;
/// Size of the writable `/tmp` tmpfs, unless the function says otherwise. Its pages count
/// against the memory limit.
pub const DEFAULT_TMP_MB: i64 = 64;
/// Most bytes of `env` and `secrets` (names and values) together, raw. They travel JSON-escaped
/// in the header frame of every work message, which must fit RabbitMQ's frame (128 KiB by
/// default): `check` also measures them serialized (see [`crate::broker::snapshot_budget`]).
pub const MAX_ENV_BYTES: usize = 64 * 1024;

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
    pub mode: String,
    pub min_warm: i32,
    pub max_containers: Option<i32>,
    pub idle_timeout_ms: i64,
    pub pids: i64,
    pub network: String,
    pub run_as: Option<String>,
    pub container_runtime: Option<String>,
    pub tmp_mb: i64,
    pub public: bool,
    pub secrets: Json<Secrets>,
    pub response: String,
    pub cors: Option<Json<Cors>>,
    pub runtime: Option<String>,
    pub version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A registered function. Serialized, it is what the API shows, except `secrets` (write-only:
/// the API shows their names, never their values).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
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
    pub mode: Mode,
    #[serde(flatten)]
    pub pool: PoolLimits,
    pub pids: i64,
    pub network: Network,
    pub user: Option<String>,
    pub container_runtime: Option<String>,
    pub tmp_mb: i64,
    pub public: bool,
    /// What its output is to the caller of its URL: `body` or `cgi`.
    #[serde(default)]
    pub response: ResponseMode,
    /// Which browsers may call its URL from other origins.
    #[serde(default)]
    pub cors: Option<Cors>,
    #[serde(skip)]
    #[schema(ignore)]
    pub secrets: Secrets,
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
            mode: Mode::parse(&r.mode),
            pool: PoolLimits {
                min_warm: r.min_warm,
                max_containers: r.max_containers,
                idle_timeout_ms: r.idle_timeout_ms,
            },
            pids: r.pids,
            network: Network::parse(&r.network),
            user: r.run_as,
            container_runtime: r.container_runtime,
            tmp_mb: r.tmp_mb,
            public: r.public,
            response: ResponseMode::parse(&r.response),
            cors: r.cors.map(|c| c.0),
            secrets: r.secrets.0,
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
            mode: self.mode,
            pool: self.pool,
            pids: self.pids,
            network: self.network,
            user: self.user.clone(),
            container_runtime: self.container_runtime.clone(),
            tmp_mb: self.tmp_mb,
            secrets: self.secrets.clone(),
            response: self.response,
        }
    }
}

/// The part of a function a worker needs to start its container, so it never reads Postgres first.
/// Fields added after the first release default, so that older messages still decode.
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
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub pool: PoolLimits,
    #[serde(default = "default_pids")]
    pub pids: i64,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub container_runtime: Option<String>,
    #[serde(default = "default_tmp_mb")]
    pub tmp_mb: i64,
    #[serde(default)]
    pub secrets: Secrets,
    #[serde(default)]
    pub response: ResponseMode,
}

impl Snapshot {
    /// The user its containers and execs run as: `user` with a lone uid given its own number as
    /// the gid (`1234` runs as `1234:1234`; the engine would give a uid its image's passwd does not
    /// name the group root). None: the image's `USER`.
    pub fn run_as(&self) -> Option<String> {
        self.user.as_deref().map(|user| {
            if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) {
                format!("{user}:{user}")
            } else {
                user.to_string()
            }
        })
    }
}

fn one() -> i32 {
    1
}

fn default_pids() -> i64 {
    DEFAULT_PIDS
}

fn default_tmp_mb() -> i64 {
    DEFAULT_TMP_MB
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            name: String::new(),
            image: String::new(),
            timeout_ms: 30_000,
            memory_mb: DEFAULT_MEMORY_MB,
            cpus: DEFAULT_CPUS,
            env: BTreeMap::new(),
            input: InputMode::default(),
            pids: DEFAULT_PIDS,
            network: Network::default(),
            user: None,
            container_runtime: None,
            tmp_mb: DEFAULT_TMP_MB,
            secrets: Secrets::default(),
            max_attempts: 1,
            retry_on: Vec::new(),
            max_concurrency: None,
            mode: Mode::default(),
            pool: PoolLimits::default(),
            response: ResponseMode::default(),
        }
    }
}
