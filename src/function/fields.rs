//! The enumerated settings of a function: its network, input and response modes, CORS,
//! execution mode and warm pool limits.

use serde::{Deserialize, Serialize};

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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
        if s == "bridge" {
            Network::Bridge
        } else {
            Network::None
        }
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InputMode::Stdin => "stdin",
            InputMode::Args => "args",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Body => "body",
            ResponseMode::Cgi => "cgi",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
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
pub(crate) struct Cors {
    /// Origins (`https://app.example.org`), or `*` for any.
    pub(crate) allow_origins: Vec<String>,
    /// Methods a browser may use (`GET`, `POST`, …); default `GET, HEAD, POST`.
    #[serde(default = "cors_methods")]
    pub(crate) allow_methods: Vec<String>,
    /// Request headers a browser may send besides the simple ones.
    #[serde(default)]
    pub(crate) allow_headers: Vec<String>,
    /// How long a browser may keep the preflight's answer, in seconds (default 600).
    #[serde(default)]
    pub(crate) max_age_s: Option<u32>,
}

pub(super) fn cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// Why `cors` can't be used: `None` when it can.
pub(super) fn cors_problem(cors: &Cors) -> Option<String> {
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

/// How invocations of a function get a container (stored as its word: an invocation's `mode`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
            Mode::Hot => "hot",
        }
    }

    pub(super) fn parse(s: &str) -> Mode {
        match s {
            "warm" => Mode::Warm,
            "hot" => Mode::Hot,
            _ => Mode::Cold,
        }
    }
}

/// The warm pool of a function, per worker.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::FromRow,
)]
#[serde(default)]
pub struct PoolLimits {
    /// Containers kept even when idle.
    pub(crate) min_warm: i32,
    /// The most containers of the function at once (default: the worker's concurrency).
    pub(crate) max_containers: Option<i32>,
    /// An idle container beyond `min_warm` is removed after this long.
    pub(crate) idle_timeout_ms: i64,
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

pub(crate) const DEFAULT_IDLE_TIMEOUT_MS: i64 = 60_000;

/// What an ended invocation of a function keeps in its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreOutput {
    /// Everything: its input, output and logs (up to their caps), whatever the outcome.
    #[default]
    Always,
    /// A success keeps its record (status, times, exit code, duration, sizes) but not its
    /// input, output and logs; a failure keeps everything. The input stays until the run is
    /// final (a retry needs it).
    OnFailure,
}

impl StoreOutput {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StoreOutput::Always => "always",
            StoreOutput::OnFailure => "on_failure",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
        if s == "on_failure" {
            StoreOutput::OnFailure
        } else {
            StoreOutput::Always
        }
    }
}
