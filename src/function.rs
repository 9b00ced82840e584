//! Functions: what a user registers (an image and its limits), how it is checked, and how it is stored.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::config::Settings;
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

/// The network a function's container gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Loopback only (the default).
    #[default]
    None,
    /// The engine's default bridge: the function can reach the outside world.
    Bridge,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "bridge" {
            Network::Bridge
        } else {
            Network::None
        }
    }
}

/// Env values a function gets but the API never shows (write-only). Debug shows names only,
/// so a secret can't reach a log line through `{:?}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl Secrets {
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// How the invocation's input reaches the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// What a function's stdout (or a hot function's answer) is to the caller of its URL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseMode {
    /// The output is the body (`application/octet-stream`); the exit code (a hot function's 2xx)
    /// is the verdict.
    #[default]
    Body,
    /// CGI (RFC 3875 §6): stdout starts with header lines (`Status`, `Content-Type`, `Location`,
    /// any other) and a blank line, then the body; a hot function's own status and headers pass.
    Cgi,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Body => "body",
            ResponseMode::Cgi => "cgi",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "cgi" {
            ResponseMode::Cgi
        } else {
            ResponseMode::Body
        }
    }
}

/// Which browsers may call a function's URL from other origins (CORS): Granda answers their
/// preflight `OPTIONS` itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins (`https://app.example.org`), or `*` for any.
    pub allow_origins: Vec<String>,
    /// Methods a browser may use (`GET`, `POST`, …); default `GET, HEAD, POST`.
    #[serde(default = "cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a browser may send besides the simple ones.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// How long a browser may keep the preflight's answer, in seconds (default 600).
    #[serde(default)]
    pub max_age_s: Option<u32>,
}

fn cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// Why `cors` can't be used: `None` when it can.
fn cors_problem(cors: &Cors) -> Option<String> {
    if cors.allow_origins.is_empty() || cors.allow_origins.len() > 64 {
        return Some("allow_origins needs 1 to 64 origins".into());
    }
    for origin in &cors.allow_origins {
        let ok = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && origin.len() <= 256
                && !origin.ends_with('/')
                && origin
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
        if !ok {
            return Some(format!(
                "allow_origins: {origin:?} is not `*` or an origin like https://app.example.org"
            ));
        }
    }
    for method in &cors.allow_methods {
        if !crate::web::METHODS.contains(&method.as_str()) {
            return Some(format!(
                "allow_methods: {method:?} is not one of {}",
                crate::web::METHODS.join(", ")
            ));
        }
    }
    if cors.allow_headers.len() > 64 {
        return Some("allow_headers: at most 64".into());
    }
    for name in &cors.allow_headers {
        if !crate::web::valid_name(name) {
            return Some(format!("allow_headers: {name:?} is not a header name"));
        }
    }
    None
}

/// How invocations of a function get a container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fresh container per invocation: the strongest isolation.
    #[default]
    Cold,
    /// An exec of the image's own entrypoint in a container the worker keeps alive; `/tmp` may
    /// keep state between runs of the same function.
    Warm,
    /// The function's own process stays up and serves each invocation as an HTTP/1.1 request on
    /// the unix socket at `GRANDA_SOCKET` (see the `granda-hot` crate).
    Hot,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
            Mode::Hot => "hot",
        }
    }

    fn parse(s: &str) -> Mode {
        match s {
            "warm" => Mode::Warm,
            "hot" => Mode::Hot,
            _ => Mode::Cold,
        }
    }
}

/// The warm pool of a function, per worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolLimits {
    /// Containers kept even when idle.
    pub min_warm: i32,
    /// The most containers of the function at once (default: the worker's concurrency).
    pub max_containers: Option<i32>,
    /// An idle container beyond `min_warm` is removed after this long.
    pub idle_timeout_ms: i64,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            min_warm: 0,
            max_containers: None,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
        }
    }
}

pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 60_000;

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

/// The body of `POST /v1/functions`.
#[derive(Default, Clone, Debug, Deserialize, utoipa::ToSchema)]
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
    pub mode: Option<Mode>,
    pub min_warm: Option<i32>,
    pub max_containers: Option<i32>,
    pub idle_timeout_ms: Option<i64>,
    pub pids: Option<i64>,
    pub network: Option<Network>,
    pub user: Option<String>,
    pub container_runtime: Option<String>,
    pub tmp_mb: Option<i64>,
    pub public: Option<bool>,
    /// `body` (the default) or `cgi`.
    pub response: Option<ResponseMode>,
    pub cors: Option<Cors>,
    pub secrets: Option<BTreeMap<String, String>>,
}

/// `secrets` in an update: an object replaces them all; a list of names (what a read shows)
/// keeps those of the current ones and drops the others.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SecretsUpdate {
    Replace(BTreeMap<String, String>),
    Keep(Vec<String>),
    /// `{"set": {NAME: VALUE}, "unset": [NAME]}`: changes these, keeps the others.
    Patch(SecretsPatch),
}

/// See [`SecretsUpdate::Patch`].
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsPatch {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// The body of `PUT /v1/functions/{name}`: the fields to change; the others stay.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
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
    /// `null` clears it (the worker's own bound applies again); absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub max_concurrency: Option<Option<i32>>,
    pub callback_url: Option<String>,
    pub mode: Option<Mode>,
    pub min_warm: Option<i32>,
    /// `null` clears it (the worker's own bound applies again); absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub max_containers: Option<Option<i32>>,
    pub idle_timeout_ms: Option<i64>,
    pub pids: Option<i64>,
    pub network: Option<Network>,
    pub user: Option<String>,
    pub container_runtime: Option<String>,
    pub tmp_mb: Option<i64>,
    pub public: Option<bool>,
    pub response: Option<ResponseMode>,
    /// `null` removes it; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Cors>)]
    pub cors: Option<Option<Cors>>,
    pub secrets: Option<SecretsUpdate>,
    /// Build a new version from source (with `runtime`, or the function's current runtime).
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub source: Option<crate::build::Source>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub version: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub versions: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub created_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub updated_at: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
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
        let now = now_as_stored();
        let f = Function {
            name: self.name,
            image: self.image.unwrap_or_default(),
            description: self.description.filter(|d| !d.trim().is_empty()),
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
            mode: self.mode.unwrap_or_default(),
            pool: PoolLimits {
                min_warm: self.min_warm.unwrap_or(0),
                max_containers: self.max_containers,
                idle_timeout_ms: self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            },
            pids: self.pids.unwrap_or(DEFAULT_PIDS),
            network: self.network.unwrap_or_default(),
            user: self.user.filter(|u| !u.is_empty()),
            container_runtime: self.container_runtime.filter(|r| !r.is_empty()),
            tmp_mb: self.tmp_mb.unwrap_or(DEFAULT_TMP_MB),
            public: self.public.unwrap_or(false),
            response: self.response.unwrap_or_default(),
            cors: self.cors,
            secrets: Secrets(self.secrets.unwrap_or_default()),
            runtime: self.runtime,
            version: None,
            created_at: now,
            updated_at: now,
        };
        check(&f, settings)?;
        Ok(f)
    }
}

/// A field that is there, even as `null`, is `Some`: `Some(None)` clears, absent (`None`) keeps.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl FunctionUpdate {
    /// Applies the changes to `current` and checks the result.
    pub fn apply(self, current: Function, settings: &Settings) -> Result<Function, Invalid> {
        if let Some(name) = &self.name
            && *name != current.name
        {
            return Err(invalid("name", "a function can't be renamed"));
        }
        let secrets = match self.secrets {
            None => current.secrets.clone(),
            Some(SecretsUpdate::Replace(new)) => Secrets(new),
            Some(SecretsUpdate::Patch(patch)) => {
                let mut secrets = current.secrets.0.clone();
                for name in patch.unset {
                    secrets.remove(&name);
                }
                secrets.extend(patch.set);
                Secrets(secrets)
            }
            Some(SecretsUpdate::Keep(names)) => {
                let mut kept = BTreeMap::new();
                for name in names {
                    match current.secrets.0.get(&name) {
                        Some(v) => kept.insert(name, v.clone()),
                        None => {
                            return Err(invalid(
                                "secrets",
                                format!(
                                    "{name:?} is not a secret of this function; give secrets as an object to set them"
                                ),
                            ));
                        }
                    };
                }
                Secrets(kept)
            }
        };
        // An empty string clears `user` and `container_runtime`.
        let user = match self.user {
            Some(u) if u.is_empty() => None,
            Some(u) => Some(u),
            None => current.user.clone(),
        };
        let container_runtime = match self.container_runtime {
            Some(r) if r.is_empty() => None,
            Some(r) => Some(r),
            None => current.container_runtime.clone(),
        };
        let f = Function {
            image: self.image.unwrap_or(current.image),
            // An empty description is none, as if never given.
            description: match self.description {
                Some(d) if d.trim().is_empty() => None,
                Some(d) => Some(d),
                None => current.description,
            },
            timeout_ms: self.timeout_ms.unwrap_or(current.timeout_ms),
            memory_mb: self.memory_mb.unwrap_or(current.memory_mb),
            cpus: self.cpus.unwrap_or(current.cpus),
            env: self.env.unwrap_or(current.env),
            input: self.input.unwrap_or(current.input),
            queue: self.queue.unwrap_or(current.queue),
            max_attempts: self.max_attempts.unwrap_or(current.max_attempts),
            retry_on: self.retry_on.unwrap_or(current.retry_on),
            max_concurrency: self.max_concurrency.unwrap_or(current.max_concurrency),
            // An empty string removes the default.
            callback_url: match self.callback_url {
                Some(url) if url.is_empty() => None,
                Some(url) => Some(url),
                None => current.callback_url,
            },
            mode: self.mode.unwrap_or(current.mode),
            pool: PoolLimits {
                min_warm: self.min_warm.unwrap_or(current.pool.min_warm),
                max_containers: self.max_containers.unwrap_or(current.pool.max_containers),
                idle_timeout_ms: self.idle_timeout_ms.unwrap_or(current.pool.idle_timeout_ms),
            },
            pids: self.pids.unwrap_or(current.pids),
            network: self.network.unwrap_or(current.network),
            user,
            container_runtime,
            tmp_mb: self.tmp_mb.unwrap_or(current.tmp_mb),
            public: self.public.unwrap_or(current.public),
            response: self.response.unwrap_or(current.response),
            cors: self.cors.unwrap_or(current.cors.clone()),
            secrets,
            updated_at: now_as_stored(),
            ..current
        };
        check(&f, settings)?;
        Ok(f)
    }
}

/// Now, to the microsecond Postgres keeps: a function's times read the same in the answer that
/// wrote them as in every later read.
fn now_as_stored() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
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
    check_env("env", &f.env)?;
    check_env("secrets", &f.secrets.0)?;
    if let Some(k) = f.secrets.0.keys().find(|k| f.env.contains_key(*k)) {
        return Err(invalid(
            "secrets",
            format!("{k} is also in env; a name is either plain or secret"),
        ));
    }
    let env_bytes: usize = f
        .env
        .iter()
        .chain(f.secrets.0.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if env_bytes > MAX_ENV_BYTES {
        return Err(invalid(
            "env",
            format!(
                "env and secrets together are at most {MAX_ENV_BYTES} bytes (they travel in every message's header)"
            ),
        ));
    }
    // What must fit is the snapshot as it travels, JSON-escaped (`"` and `\` double, control
    // characters take six bytes), in a header frame below the broker's frame_max.
    let serialized = serde_json::to_vec(&f.snapshot()).map_or(usize::MAX, |v| v.len());
    let budget = crate::broker::snapshot_budget();
    if serialized > budget {
        return Err(invalid(
            "env",
            format!(
                "the function's message header (env and secrets as serialized JSON, with escaping) would take {serialized} bytes; the broker's frame ({} bytes) leaves {budget} for it",
                crate::broker::frame_max()
            ),
        ));
    }
    if !(4..=32_768).contains(&f.pids) {
        return Err(invalid("pids", "must be between 4 and 32768"));
    }
    if let Some(problem) = f.cors.as_ref().and_then(cors_problem) {
        return Err(invalid("cors", &problem));
    }
    if !(1..=65_536).contains(&f.tmp_mb) {
        return Err(invalid("tmp_mb", "must be between 1 and 65536"));
    }
    if let Some(user) = &f.user {
        check_user(user)?;
    }
    if let Some(container_runtime) = &f.container_runtime
        && (container_runtime.len() > 64
            || !container_runtime
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            "container_runtime",
            "must be a container runtime name of letters, digits, '-', '_' and '.' (at most 64)",
        ));
    }
    if !valid_name(&f.queue) {
        return Err(invalid("queue", "must match ^[a-z][a-z0-9-]{0,62}$"));
    }
    if let Some(m) = f.max_concurrency
        && !(1..=10_000).contains(&m)
    {
        return Err(invalid("max_concurrency", "must be between 1 and 10000"));
    }
    if !(0..=100).contains(&f.pool.min_warm) {
        return Err(invalid("min_warm", "must be between 0 and 100"));
    }
    if let Some(m) = f.pool.max_containers
        && !(1..=10_000).contains(&m)
    {
        return Err(invalid("max_containers", "must be between 1 and 10000"));
    }
    if !(100..=24 * 3600 * 1000).contains(&f.pool.idle_timeout_ms) {
        return Err(invalid(
            "idle_timeout_ms",
            "must be between 100 and 86400000",
        ));
    }
    if !(1..=100).contains(&f.max_attempts) {
        return Err(invalid("max_attempts", "must be between 1 and 100"));
    }
    if let Some(url) = &f.callback_url {
        crate::callback::check_url(url, &settings.callback_allow_nets)
            .map_err(|reason| invalid("callback_url", reason))?;
    }
    Ok(())
}

fn check_env(field: &'static str, env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if env.len() > 256 {
        return Err(invalid(field, "at most 256 variables"));
    }
    for (k, v) in env {
        if !valid_env_key(k) {
            return Err(invalid(
                field,
                format!("{k:?} is not a valid variable name"),
            ));
        }
        if k.starts_with("GRANDA_") {
            return Err(invalid(field, format!("{k}: GRANDA_* names are reserved")));
        }
        if v.contains('\0') || v.len() > 32 * 1024 {
            // The value itself is never echoed: it may be a secret.
            return Err(invalid(
                field,
                format!("{k}: values are at most 32 KiB, without NUL"),
            ));
        }
    }
    Ok(())
}

/// `user` is `name`, `uid`, `name:group` or `uid:gid`, and never root: the field exists to run
/// as someone else.
fn check_user(user: &str) -> Result<(), Invalid> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let (who, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if !part_ok(who) || !group.is_none_or(part_ok) {
        return Err(invalid(
            "user",
            "must be name, uid, name:group or uid:gid (letters, digits, '-', '_', '.')",
        ));
    }
    // Root in any spelling: `root`, `0`, `00`; the group as well (`65534:0`, `x:root`).
    let is_root = |p: &str| p == "root" || p.parse::<u64>().is_ok_and(|id| id == 0);
    if is_root(who) || group.is_some_and(is_root) {
        return Err(invalid(
            "user",
            "must not be root, as user or as group (leave it out to use the image's user)",
        ));
    }
    // The kernel's ids are 32 bits and 4294967295 means none: a larger number is no id.
    let out_of_range = |p: &str| p.parse::<u64>().is_ok_and(|id| id >= u64::from(u32::MAX));
    if out_of_range(who) || group.is_some_and(out_of_range) {
        return Err(invalid("user", "a uid or gid must be below 4294967295"));
    }
    Ok(())
}

/// Postgres storage of functions.
pub mod store {
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

    #[test]
    fn user_refuses_root_as_user_or_group_in_every_spelling() {
        for root in [
            "0",
            "00",
            "root",
            "0:0",
            "65534:0",
            "65534:00",
            "x:root",
            "root:65534",
            "0:65534",
            " 0",
            "0 ",
            "65534: 0",
            "65534:0 ",
            "\t0",
            "0\n",
            "",
            ":",
            "65534:",
            ":0",
            "4294967295",
            "65534:4294967296",
        ] {
            assert!(check_user(root).is_err(), "{root:?} is refused");
        }
        for fine in [
            "65534",
            "65534:65534",
            "nobody",
            "nobody:nogroup",
            "1234:5678",
        ] {
            assert!(check_user(fine).is_ok(), "{fine:?} is accepted");
        }
    }
}
