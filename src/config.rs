//! Settings: every knob of Granda, from a `GRANDA_*` env var or a flag, with defaults that work on one machine.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

/// Everything a Granda process can be told. `granda --help` lists it.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Address the HTTP ingress listens on.
    #[arg(long, env = "GRANDA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Postgres URL; the database is created if missing and migrated at start. (Help never prints
    /// the value set: a URL may hold a password.)
    #[arg(
        long,
        env = "GRANDA_DATABASE_URL",
        default_value = "postgres://localhost/granda",
        hide_env_values = true
    )]
    pub database_url: String,

    /// RabbitMQ URL, or the URLs of a cluster's nodes, comma-separated (each a full `amqp://` or
    /// `amqps://` URL). A process connects to one that answers, starting at a node picked at
    /// random per process, and fails over to the next when its connection is lost. Default: the
    /// local RabbitMQ (127.0.0.1:5672, vhost `/`) as its default `guest` user. (Help prints
    /// neither the value set nor the default: URLs hold passwords.)
    #[arg(
        long,
        env = "GRANDA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,

    /// The longest wait for the broker to confirm a publish (reconnecting and retrying included),
    /// in ms. Past it the caller gets 503 and the invocation never runs.
    #[arg(long, env = "GRANDA_PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// A PEM file of CA certificates to trust, besides the system's, for `amqps://` and for
    /// Postgres with `sslmode=verify-ca|verify-full` (a Postgres URL's own `sslrootcert=` wins).
    #[arg(long, env = "GRANDA_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Docker engine to run containers on (unix:///var/run/docker.sock when unset).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Prefix of every RabbitMQ queue and exchange Granda declares; lets several installations share a broker.
    #[arg(long, env = "GRANDA_AMQP_PREFIX", default_value = "granda")]
    pub amqp_prefix: String,

    /// The most invocations one worker runs at once (default: from the host's CPUs and memory).
    #[arg(long, env = "GRANDA_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,

    /// The fewest invocations one worker is ready to run at once.
    #[arg(long, env = "GRANDA_MIN_CONCURRENCY", default_value_t = 1)]
    pub min_concurrency: usize,

    /// How often the scheduler looks at the queues and sets the concurrency, in ms.
    #[arg(long, env = "GRANDA_SCHEDULER_INTERVAL_MS", default_value_t = 250)]
    pub scheduler_interval_ms: u64,

    /// How much slower than its unloaded run time a run may get before the scheduler stops adding
    /// concurrency (1.5: up to 50 % slower). Where the engine or the host saturates, runs slow down
    /// as more run at once; past this the worker holds or lowers its concurrency instead.
    #[arg(long, env = "GRANDA_SCHEDULER_LATENCY_TOLERANCE", default_value_t = 1.5)]
    pub scheduler_latency_tolerance: f64,

    /// How long a worker must be idle (no waiting message, a slot free) before the scheduler lowers
    /// concurrency, in ms.
    #[arg(long, env = "GRANDA_SCHEDULER_COOLDOWN_MS", default_value_t = 30_000)]
    pub scheduler_cooldown_ms: u64,

    /// Fair sharing: a function that runs on a worker already never takes its last free slot;
    /// its message goes round a delay queue so calls of other functions behind it are delivered
    /// (docs/scheduler.md). `false`: first come, first served.
    #[arg(
        long,
        env = "GRANDA_FAIR_SHARE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub fair_share: bool,

    /// Queues this worker serves, comma-separated.
    #[arg(long, env = "GRANDA_QUEUES", default_value = "default", value_delimiter = ',')]
    pub queues: Vec<String>,

    /// Name of this worker, put on its containers and records (default: the host name and the
    /// installation's first 8 characters).
    #[arg(long, env = "GRANDA_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "GRANDA_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a sync invoke waits for its result before answering 202 with the invocation id, in ms.
    #[arg(long, env = "GRANDA_SYNC_WAIT_MS", default_value_t = 30_000)]
    pub sync_wait_ms: u64,

    /// Largest stdout kept from a run, in bytes; the rest is dropped and the record marked truncated.
    #[arg(long, env = "GRANDA_MAX_OUTPUT_BYTES", default_value_t = 6 * 1024 * 1024)]
    pub max_output_bytes: usize,

    /// Largest stderr kept from a run, in bytes.
    #[arg(long, env = "GRANDA_MAX_LOG_BYTES", default_value_t = 1024 * 1024)]
    pub max_log_bytes: usize,

    /// Largest input kept in the invocation record, in bytes (the function still gets all of it).
    #[arg(long, env = "GRANDA_MAX_STORED_INPUT_BYTES", default_value_t = 64 * 1024)]
    pub(crate) max_stored_input_bytes: usize,

    /// Timeout given to functions that don't set one, in ms.
    #[arg(long, env = "GRANDA_DEFAULT_TIMEOUT_MS", default_value_t = 30_000)]
    pub(crate) default_timeout_ms: u64,

    /// The longest timeout a function may ask for, in ms.
    #[arg(long, env = "GRANDA_MAX_TIMEOUT_MS", default_value_t = 15 * 60 * 1000)]
    pub(crate) max_timeout_ms: u64,

    /// How long a stopping worker lets in-flight runs finish before it gives their messages back, in ms.
    #[arg(long, env = "GRANDA_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,

    /// First delay before retrying a failed attempt, in ms; it doubles with each attempt.
    #[arg(long, env = "GRANDA_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,

    /// The longest delay between attempts, in ms.
    #[arg(long, env = "GRANDA_RETRY_MAX_MS", default_value_t = 60_000)]
    pub retry_max_ms: u64,

    /// How long an accepted invocation may stay unconfirmed by the broker before the outbox
    /// publishes it again (a crash between "recorded" and "confirmed"), in ms.
    #[arg(long, env = "GRANDA_OUTBOX_GRACE_MS", default_value_t = 60_000)]
    pub outbox_grace_ms: u64,

    /// How often each ingress samples the database's size and the records' stored bytes per
    /// namespace (the gauges `granda_database_bytes`, `granda_records_stored_bytes`), in ms.
    #[arg(long, env = "GRANDA_SIZE_SAMPLE_MS", default_value_t = 30_000)]
    pub size_sample_ms: u64,

    /// Where a worker keeps its files (the idle binary of warm containers); must be on the
    /// Docker engine's host, which mounts it into warm containers.
    #[arg(long, env = "GRANDA_STATE_DIR", default_value = "/var/lib/granda")]
    pub state_dir: std::path::PathBuf,
    /// API keys: `on` (the default) or `off` (anyone may do anything; logged as a warning at start).
    #[arg(long, env = "GRANDA_AUTH", default_value = "on")]
    pub auth: AuthMode,

    /// An admin API key to accept (at least 16 characters). Without it, a first admin key is made
    /// and printed once when the database has no key.
    #[arg(long, env = "GRANDA_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,

    /// Whether a worker may pull an image its engine lacks: `missing` (pull when the engine
    /// lacks it), `always` (pull again before a run when this worker last pulled it over a
    /// minute ago) or `never` (only images already on the engine; nothing is fetched).
    #[arg(long, env = "GRANDA_IMAGE_PULL", default_value = "missing")]
    pub image_pull: ImagePull,

    /// How long one image pull may take before the run (or registration check) gives up, in ms.
    #[arg(long, env = "GRANDA_IMAGE_PULL_TIMEOUT_MS", default_value_t = 300_000)]
    pub image_pull_timeout_ms: u64,

    /// A registry (`host:port`, e.g. `127.0.0.1:5000`) for images built from source: a build is
    /// tagged `<registry>/<GRANDA_AMQP_PREFIX>-fn/<installation>/<name>:v<N>` and pushed there, so workers on
    /// other hosts pull it. Unset: the image stays on the engine that built it, so builds need
    /// one engine shared by the queue's workers.
    #[arg(long, env = "GRANDA_REGISTRY")]
    pub registry: Option<String>,

    /// Where a standalone worker serves `/healthz`, `/readyz` and `/metrics` (`off`: nowhere;
    /// `auto`: the first free port of 127.0.0.1:9090-9109). `granda worker` defaults to `auto`,
    /// so several start on one host; `granda up` serves them on the ingress.
    #[arg(long, env = "GRANDA_WORKER_LISTEN")]
    pub(crate) worker_listen: Option<String>,

    /// How long a worker counts as alive after its last heartbeat, in ms: past it, another worker
    /// takes over its running invocations and its pool containers are anyone's to remove.
    /// Heartbeats go out every third of it.
    #[arg(long, env = "GRANDA_WORKER_LEASE_MS", default_value_t = 6_000)]
    pub worker_lease_ms: u64,

    /// Base URL of the API and the dashboard, as callers reach it (status URLs, webhook URLs, the
    /// dashboard's own origin); also the functions' URLs unless `GRANDA_FUNCTIONS_URL` is given
    /// (default: http://<listen address>).
    #[arg(long, env = "GRANDA_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,

    /// Base URL the functions' own URLs (`/fn/{name}`) are handed out under, on an origin of their
    /// own (e.g. https://fn.example-usercontent.com): requests for that host serve only `/fn/*`,
    /// and every other host refuses `/fn/*`, so a function's page can't act on the dashboard.
    /// Unset (the default): one origin, and every function answer is sandboxed by CSP.
    #[arg(long, env = "GRANDA_FUNCTIONS_URL")]
    pub functions_url: Option<String>,

    /// How far a signed webhook's timestamp (Stripe, Standard Webhooks) may be from now, in seconds.
    #[arg(long, env = "GRANDA_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub(crate) webhook_tolerance_secs: i64,

    /// How long a webhook's previous secret keeps verifying after a rotation, in seconds (default 24 h).
    #[arg(long, env = "GRANDA_WEBHOOK_ROTATION_GRACE_SECS", default_value_t = 86_400)]
    pub webhook_rotation_grace_secs: i64,

    /// First wait before a failed result callback is retried, in ms; it doubles on each retry.
    #[arg(long, env = "GRANDA_CALLBACK_BACKOFF_MS", default_value_t = 500)]
    pub callback_backoff_ms: u64,

    /// Most tries of one result callback (5xx, 408, 429 and network errors are retried).
    #[arg(long, env = "GRANDA_CALLBACK_MAX_ATTEMPTS", default_value_t = 6)]
    pub callback_max_attempts: u32,

    /// How long one callback request may take, in ms.
    #[arg(long, env = "GRANDA_CALLBACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub callback_timeout_ms: u64,

    /// Address ranges callbacks may reach although they are loopback, private, link-local and
    /// so on (comma-separated CIDRs, e.g. `10.0.0.0/8,fd00::/8`); default none.
    #[arg(
        long,
        env = "GRANDA_CALLBACK_ALLOW_NETS",
        default_value = "",
        value_parser = crate::callback::AllowNets::parse)]
    pub callback_allow_nets: crate::callback::AllowNets,

    /// A PEM file of extra root certificates https callbacks trust, besides the system's.
    #[arg(long, env = "GRANDA_CALLBACK_CA_FILE")]
    pub callback_ca_file: Option<std::path::PathBuf>,

    /// Most callbacks one worker holds for delivery at once; past it they wait in Postgres.
    #[arg(long, env = "GRANDA_CALLBACK_MAX_INFLIGHT", default_value_t = 32)]
    pub callback_max_inflight: u32,

    /// Most output bytes one worker holds for callback delivery at once (default 64 MiB).
    #[arg(
        long,
        env = "GRANDA_CALLBACK_MAX_INFLIGHT_BYTES",
        default_value_t = 64 << 20)]
    pub callback_max_inflight_bytes: u32,

    /// Base image of the `shell` runtime for functions built from source (needs `/bin/sh`);
    /// setup builds the default locally (scripts/build-runtime-images.sh).
    #[arg(
        long,
        env = "GRANDA_RUNTIME_SHELL_IMAGE",
        default_value = "granda/runtime-shell:latest"
    )]
    pub runtime_shell_image: String,

    /// Base image of the `python3` runtime for functions built from source (needs `python3`);
    /// setup builds the default locally (scripts/build-runtime-images.sh).
    #[arg(
        long,
        env = "GRANDA_RUNTIME_PYTHON3_IMAGE",
        default_value = "granda/runtime-python3:latest"
    )]
    pub(crate) runtime_python3_image: String,

    /// Most bytes of unauthenticated request bodies (webhook deliveries, public functions) held
    /// at once; past it such requests wait briefly, then get 503 with `Retry-After`.
    #[arg(
        long,
        env = "GRANDA_UNAUTHENTICATED_BODY_BUDGET_BYTES",
        default_value_t = 64 * 1024 * 1024)]
    pub unauthenticated_body_budget_bytes: usize,

    /// How long a request body read within the unauthenticated budget (webhook deliveries,
    /// keyless calls of public functions, the login form) may take to arrive, in ms; past it the
    /// request gets 408 and its connection is closed.
    #[arg(long, env = "GRANDA_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// How long a new connection may take to send its first request's headers, and a kept-alive
    /// one its next request's once it has begun, in ms; then the ingress closes it.
    #[arg(long, env = "GRANDA_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// How long a kept-alive connection may wait, with no request in flight, for its next
    /// request to begin, in ms; then the ingress closes it.
    #[arg(long, env = "GRANDA_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Most connections the ingress holds at once. At the cap a new one makes the connection
    /// waiting longest for a request close; when every connection has a request in flight, new
    /// ones wait in the listen backlog.
    #[arg(long, env = "GRANDA_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// For Granda's own tests only: a function named `panic-in-execute…` or `panic-in-handle…`
    /// makes the worker panic there (`worker::faults`). Never set it in production.
    #[arg(
        long,
        env = "GRANDA_TEST_FAULTS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub test_faults: bool,

    /// Most event subscriptions one function may have (422 past it).
    #[arg(long, env = "GRANDA_MAX_SUBSCRIPTIONS_PER_FUNCTION", default_value_t = 100)]
    pub max_subscriptions_per_function: i64,

    /// The key function secrets are sealed with (ChaCha20-Poly1305), in Postgres and in work
    /// messages: 32 bytes as 64 hex digits or base64. Unset: a key made once and kept in
    /// Postgres (protects secrets from broker readers, not from database readers). Every
    /// process of an installation needs the same one.
    #[arg(long, env = "GRANDA_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// Earlier secrets keys, comma-separated, still read after a rotation: at start the ingress
    /// re-seals stored secrets under `GRANDA_SECRETS_KEY`; drop an old key after that.
    #[arg(
        long,
        env = "GRANDA_SECRETS_OLD_KEYS",
        default_value = "",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secrets_old_keys: Vec<String>,

    /// How log lines are written to stderr: `text`, or `json` (one object a line, with the
    /// trace and span ids, for Loki or Elasticsearch).
    #[arg(long, env = "GRANDA_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: crate::telemetry::LogFormat,

    /// Who may read `/metrics`, on the ingress and on a standalone worker alike: `key` (an admin
    /// key, when the API asks for keys) or `none` (anyone who reaches the port).
    #[arg(long, env = "GRANDA_METRICS_AUTH", value_enum, default_value = "key")]
    pub(crate) metrics_auth: MetricsAuth,

    /// How long an ended invocation (and an event, a build's log, a webhook rejection) is kept,
    /// in seconds (default 7 days), unless its namespace or function sets `retention_s`.
    #[arg(long, env = "GRANDA_RETENTION_S", default_value_t = 7 * 24 * 3600,
        value_parser = clap::value_parser!(i64).range(1..=MAX_RETENTION_S))]
    pub retention_s: i64,

    /// The least time a failed, timed-out or dead invocation is kept, in seconds (default 30
    /// days): such a record is kept the longer of its retention and this.
    #[arg(long, env = "GRANDA_FAILED_RETENTION_S", default_value_t = 30 * 24 * 3600,
        value_parser = clap::value_parser!(i64).range(1..=MAX_RETENTION_S))]
    pub failed_retention_s: i64,

    /// How often the ingress prunes records past their retention, in ms (one server at a time).
    #[arg(long, env = "GRANDA_PRUNE_INTERVAL_MS", default_value_t = 60_000)]
    pub prune_interval_ms: u64,
}

/// Who may read `/metrics` (`GRANDA_METRICS_AUTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MetricsAuth {
    /// An admin key, as any other admin route (nothing is asked when `GRANDA_AUTH=off`).
    Key,
    /// Anyone who reaches the port.
    None,
}

/// When registration may pull an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImagePull {
    Missing,
    Always,
    Never,
}

/// Whether the API asks for keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    On,
    Off,
}

/// The longest retention one may set (`GRANDA_RETENTION_S`, a namespace's or function's
/// `retention_s`): ten years, in seconds.
pub(crate) const MAX_RETENTION_S: i64 = 10 * 365 * 24 * 3600;

/// Why a namespace's or function's `retention_s` can't be set, if it can't.
pub(crate) fn retention_problem(retention_s: i64) -> Option<String> {
    (!(1..=MAX_RETENTION_S).contains(&retention_s))
        .then(|| format!("must be between 1 and {MAX_RETENTION_S} seconds (or null)"))
}

/// The largest message Granda publishes: well below RabbitMQ's `max_message_size` (128 MiB by
/// default), so the body cap can't be set to something the broker would refuse.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl Settings {
    /// Refuses settings that can't work together.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_body_bytes <= MAX_MESSAGE_BYTES,
            "GRANDA_MAX_BODY_BYTES is {} but a message to RabbitMQ may be at most {MAX_MESSAGE_BYTES} bytes",
            self.max_body_bytes
        );
        amqp_nodes(&self.amqp_url).map_err(anyhow::Error::msg)?;
        if let Some(url) = &self.functions_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("GRANDA_FUNCTIONS_URL {url:?} is no URL: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some(),
                "GRANDA_FUNCTIONS_URL {url:?} must be an http(s) URL with a host"
            );
            anyhow::ensure!(
                parsed.path() == "/" && parsed.query().is_none(),
                "GRANDA_FUNCTIONS_URL {url:?} must be an origin (scheme, host, port), with no path"
            );
        }
        Ok(())
    }

    /// Settings from the environment alone, as a process with no flags would get them.
    pub fn from_env() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        Only::parse_from(["granda"]).settings
    }

    /// This worker's id: `GRANDA_WORKER_ID`, or else the host name and the first 8 characters of
    /// the `installation` ([`crate::docker::installation`]): unique per host and installation,
    /// and the same across restarts (a restarted worker removes what its earlier self left).
    pub(crate) fn worker_id(&self, installation: &str) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_string());
            let short: String = installation.chars().take(8).collect();
            format!("{host}-{short}")
        })
    }

    pub(crate) fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms.max(1))
    }

    pub(crate) fn sync_wait(&self) -> Duration {
        Duration::from_millis(self.sync_wait_ms)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff {
            base: Duration::from_millis(self.retry_base_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_base_ms).max(1)),
        }
    }

    /// What the worker's callback deliveries are made from.
    pub(crate) fn callbacks(&self) -> crate::callback::Options {
        crate::callback::Options {
            allow_nets: self.callback_allow_nets.clone(),
            timeout: Duration::from_millis(self.callback_timeout_ms),
            ca_file: self.callback_ca_file.clone(),
            backoff: Duration::from_millis(self.callback_backoff_ms),
            max_attempts: self.callback_max_attempts,
            max_inflight: self.callback_max_inflight,
            max_inflight_bytes: self.callback_max_inflight_bytes,
        }
    }

    pub(crate) fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// The base of the functions' own URLs: `GRANDA_FUNCTIONS_URL`, else the public URL.
    pub(crate) fn functions_url(&self) -> String {
        match &self.functions_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => self.public_url(),
        }
    }
}

/// The nodes `GRANDA_AMQP_URL` names (one AMQP URL or a comma-separated list), each with a
/// heartbeat (10 s unless the URL sets one), or why the list is no list of AMQP URLs.
pub(crate) fn amqp_nodes(list: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(with_heartbeat)
        .collect();
    if urls.is_empty() {
        return Err("GRANDA_AMQP_URL names no node".into());
    }
    for url in &urls {
        if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
            return Err(format!(
                "GRANDA_AMQP_URL: {} is not an AMQP URL: {e}",
                amqp_node_name(url)
            ));
        }
    }
    Ok(urls)
}

fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    }
}

/// `host:port` of an AMQP URL, without credentials.
pub(crate) fn amqp_node_name(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "(unparsable URL)".into(),
    }
}

/// A key in the clear (an API key as made, `GRANDA_ADMIN_KEY`): shown once and then forgotten.
/// Debug does not show it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}
