//! What a user sends to register a function (`NewFunction`) or change one (`FunctionUpdate`),
//! and the checks both go through; a worker checks each message's function by the same rules
//! ([`check_snapshot`]).

use super::*;
use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;

use crate::config::Settings;
use crate::retry::RetryOn;

/// Declares a request body about a function: its own fields, then the fields that
/// `POST /v1/functions` and `PUT /v1/functions/{name}` both take, written once here.
macro_rules! function_body {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        $vis struct $name {
            $($own)*
            /// The image to run. On registration, none with `runtime` and `source` builds one.
            #[serde(default)]
            pub(crate) image: Option<String>,
            /// Build from source: the runtime template (`runtimes/<runtime>/`); in an update,
            /// the function's current runtime when absent.
            #[serde(default)]
            pub(crate) runtime: Option<String>,
            /// Build from source: the handler file, or a base64 tar.gz of a directory.
            #[serde(default)]
            pub(crate) source: Option<crate::build::Source>,
            pub(crate) description: Option<String>,
            pub(crate) timeout_ms: Option<i64>,
            pub(crate) memory_mb: Option<i64>,
            pub(crate) cpus: Option<f64>,
            pub(crate) env: Option<BTreeMap<String, String>>,
            pub(crate) input: Option<InputMode>,
            pub(crate) queue: Option<String>,
            pub(crate) max_attempts: Option<i32>,
            pub(crate) retry_on: Option<Vec<RetryOn>>,
            pub(crate) callback_url: Option<String>,
            pub(crate) mode: Option<Mode>,
            pub(crate) min_warm: Option<i32>,
            pub(crate) idle_timeout_ms: Option<i64>,
            pub(crate) pids: Option<i64>,
            pub(crate) network: Option<Network>,
            pub(crate) user: Option<String>,
            pub(crate) container_runtime: Option<String>,
            pub(crate) tmp_mb: Option<i64>,
            pub(crate) public: Option<bool>,
            /// `body` (the default) or `cgi`.
            pub(crate) response: Option<ResponseMode>,
            /// `always` (the default) or `on_failure`: what an ended invocation keeps.
            pub(crate) store_output: Option<StoreOutput>,
        }
    };
}

function_body! {
    /// The body of `POST /v1/functions`.
    #[derive(Default, Clone, Debug, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct NewFunction {
        #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
        pub(crate) name: String,
        pub(crate) max_concurrency: Option<i32>,
        pub(crate) max_containers: Option<i32>,
        pub(crate) cors: Option<Cors>,
        pub(crate) secrets: Option<BTreeMap<String, String>>,
        /// How long its ended invocations are kept, in seconds (none: its namespace's, else the
        /// installation's).
        #[schema(minimum = 1)]
        pub(crate) retention_s: Option<i64>,
    }
}

/// `secrets` in an update: an object replaces them all; a list of names (what a read shows)
/// keeps those of the current ones and drops the others.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum SecretsUpdate {
    Replace(BTreeMap<String, String>),
    Keep(Vec<String>),
    /// `{"set": {NAME: VALUE}, "unset": [NAME]}`: changes these, keeps the others.
    Patch(SecretsPatch),
}

/// See [`SecretsUpdate::Patch`].
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretsPatch {
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) unset: Vec<String>,
}

function_body! {
    /// The body of `PUT /v1/functions/{name}`: the fields to change; the others stay.
    #[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "read-only fields are accepted and ignored")]
    pub(crate) struct FunctionUpdate {
        /// Accepted so a client can send back what it read, but must match the path.
        pub(crate) name: Option<String>,
        /// `null` clears it (the worker's own bound applies again); absent keeps it.
        #[serde(default, deserialize_with = "present")]
        #[schema(value_type = Option<i32>)]
        pub(crate) max_concurrency: Option<Option<i32>>,
        /// `null` clears it (the worker's own bound applies again); absent keeps it.
        #[serde(default, deserialize_with = "present")]
        #[schema(value_type = Option<i32>)]
        pub(crate) max_containers: Option<Option<i32>>,
        /// `null` removes it; absent keeps it.
        #[serde(default, deserialize_with = "present")]
        #[schema(value_type = Option<Cors>)]
        pub(crate) cors: Option<Option<Cors>>,
        pub(crate) secrets: Option<SecretsUpdate>,
        /// How long its ended invocations are kept, in seconds; `null` clears it (its
        /// namespace's, else the installation's, applies); absent keeps it.
        #[serde(default, deserialize_with = "present")]
        #[schema(value_type = Option<i64>, minimum = 1)]
        pub(crate) retention_s: Option<Option<i64>>,
        /// What a read shows besides the settings, accepted (and ignored) so a client can send
        /// back what it read.
        #[schema(value_type = Option<i32>, read_only)]
        pub(crate) version: Option<serde::de::IgnoredAny>,
        #[schema(value_type = Option<Vec<Value>>, read_only)]
        pub(crate) versions: Option<serde::de::IgnoredAny>,
        #[schema(value_type = Option<crate::retention::Effective>, read_only)]
        pub(crate) retention: Option<serde::de::IgnoredAny>,
        #[schema(value_type = Option<String>, format = DateTime, read_only)]
        pub(crate) created_at: Option<serde::de::IgnoredAny>,
        #[schema(value_type = Option<String>, format = DateTime, read_only)]
        pub(crate) updated_at: Option<serde::de::IgnoredAny>,
        #[schema(value_type = Option<String>, read_only)]
        pub(crate) invoke_url: Option<serde::de::IgnoredAny>,
        /// The namespace a read names; a function stays in the one it was made in (the
        /// caller's).
        #[schema(value_type = Option<String>, read_only)]
        pub(crate) namespace: Option<serde::de::IgnoredAny>,
    }
}

/// Why a function definition was refused.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub(crate) struct Invalid {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

pub(crate) use crate::namespace::valid_name;

pub(super) fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl NewFunction {
    /// Checks every field and fills in defaults.
    pub(crate) fn validate(self, settings: &Settings) -> Result<Function, Invalid> {
        if !valid_name(&self.name) {
            return Err(invalid(
                "name",
                "must match ^[a-z][a-z0-9-]{0,62}$ (lowercase letters, digits, '-')",
            ));
        }
        let now = now_as_stored();
        let f = Function {
            name: self.name,
            description: self.description.filter(|d| !d.trim().is_empty()),
            queue: self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string()),
            callback_url: self.callback_url,
            public: self.public.unwrap_or(false),
            cors: self.cors,
            secrets: Secrets::clear(self.secrets.unwrap_or_default()),
            runtime: self.runtime,
            version: None,
            retention_s: self.retention_s,
            created_at: now,
            updated_at: now,
            run: RunSpec {
                image: self.image.unwrap_or_default(),
                timeout_ms: self
                    .timeout_ms
                    .unwrap_or(settings.default_timeout_ms as i64),
                memory_mb: self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
                cpus: self.cpus.unwrap_or(DEFAULT_CPUS),
                env: self.env.unwrap_or_default(),
                input: self.input.unwrap_or_default(),
                max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
                retry_on: self.retry_on.unwrap_or_default(),
                max_concurrency: self.max_concurrency,
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
                response: self.response.unwrap_or_default(),
                store_output: self.store_output.unwrap_or_default(),
            },
        };
        check(&f, settings)?;
        Ok(f)
    }
}

/// A field that is there, even as `null`, is `Some`: `Some(None)` clears, absent (`None`) keeps.
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl FunctionUpdate {
    /// Applies the changes to `current` and checks the result.
    pub(crate) fn apply(self, current: Function, settings: &Settings) -> Result<Function, Invalid> {
        if let Some(name) = &self.name
            && *name != current.name
        {
            return Err(invalid("name", "a function can't be renamed"));
        }
        let secrets = match self.secrets {
            None => current.secrets.clone(),
            Some(SecretsUpdate::Replace(new)) => Secrets::clear(new),
            Some(SecretsUpdate::Patch(patch)) => {
                let mut secrets = current.secrets.0.clone();
                for name in patch.unset {
                    secrets.remove(&name);
                }
                secrets.extend(Secrets::clear(patch.set).0);
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
            None => current.run.user.clone(),
        };
        let container_runtime = match self.container_runtime {
            Some(r) if r.is_empty() => None,
            Some(r) => Some(r),
            None => current.run.container_runtime.clone(),
        };
        let f = Function {
            // An empty description is none, as if never given.
            description: match self.description {
                Some(d) if d.trim().is_empty() => None,
                Some(d) => Some(d),
                None => current.description,
            },
            queue: self.queue.unwrap_or(current.queue),
            // An empty string removes the default.
            callback_url: match self.callback_url {
                Some(url) if url.is_empty() => None,
                Some(url) => Some(url),
                None => current.callback_url,
            },
            public: self.public.unwrap_or(current.public),
            cors: self.cors.unwrap_or(current.cors.clone()),
            secrets,
            retention_s: self.retention_s.unwrap_or(current.retention_s),
            updated_at: now_as_stored(),
            run: RunSpec {
                image: self.image.unwrap_or(current.run.image),
                timeout_ms: self.timeout_ms.unwrap_or(current.run.timeout_ms),
                memory_mb: self.memory_mb.unwrap_or(current.run.memory_mb),
                cpus: self.cpus.unwrap_or(current.run.cpus),
                env: self.env.unwrap_or(current.run.env),
                input: self.input.unwrap_or(current.run.input),
                max_attempts: self.max_attempts.unwrap_or(current.run.max_attempts),
                retry_on: self.retry_on.unwrap_or(current.run.retry_on),
                max_concurrency: self.max_concurrency.unwrap_or(current.run.max_concurrency),
                mode: self.mode.unwrap_or(current.run.mode),
                pool: PoolLimits {
                    min_warm: self.min_warm.unwrap_or(current.run.pool.min_warm),
                    max_containers: self
                        .max_containers
                        .unwrap_or(current.run.pool.max_containers),
                    idle_timeout_ms: self
                        .idle_timeout_ms
                        .unwrap_or(current.run.pool.idle_timeout_ms),
                },
                pids: self.pids.unwrap_or(current.run.pids),
                network: self.network.unwrap_or(current.run.network),
                user,
                container_runtime,
                tmp_mb: self.tmp_mb.unwrap_or(current.run.tmp_mb),
                response: self.response.unwrap_or(current.run.response),
                store_output: self.store_output.unwrap_or(current.run.store_output),
            },
            ..current
        };
        check(&f, settings)?;
        Ok(f)
    }
}

/// Now, to the microsecond Postgres keeps: a function's times read the same in the answer that
/// wrote them as in every later read.
pub(super) fn now_as_stored() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(super) fn check(f: &Function, settings: &Settings) -> Result<(), Invalid> {
    if let Some(d) = &f.description
        && d.len() > 4096
    {
        return Err(invalid("description", "at most 4096 characters"));
    }
    check_run(&f.run, &f.secrets, settings.max_timeout_ms, false)?;
    if let Some(problem) = f.retention_s.and_then(crate::retention::problem) {
        return Err(invalid("retention_s", problem));
    }
    // What must fit is the snapshot as it travels, JSON-escaped (`"` and `\` double, control
    // characters take six bytes), its secrets sealed, in a header frame below the broker's
    // frame_max.
    let mut snapshot = f.snapshot();
    snapshot.secrets = crate::seal::Keys::ephemeral().seal_all(&snapshot.secrets);
    let serialized = serde_json::to_vec(&snapshot).map_or(usize::MAX, |v| v.len());
    let budget = crate::frame::snapshot_budget();
    if serialized > budget {
        return Err(invalid(
            "env",
            format!(
                "the function's message header (env and secrets as serialized JSON, with escaping and sealing) would take {serialized} bytes; the broker's frame ({} bytes) leaves {budget} for it",
                crate::frame::frame_max()
            ),
        ));
    }
    if let Some(problem) = f.cors.as_ref().and_then(cors_problem) {
        return Err(invalid("cors", &problem));
    }
    if !valid_name(&f.queue) {
        return Err(invalid("queue", "must match ^[a-z][a-z0-9-]{0,62}$"));
    }
    if let Some(url) = &f.callback_url {
        crate::callback::check_url(url, &settings.callback_allow_nets)
            .map_err(|reason| invalid("callback_url", reason))?;
    }
    Ok(())
}

/// What a worker checks of a message's function before it runs or records anything: the limits
/// registration would refuse, by the same rules ([`check_run`]), with `max_timeout_ms` the
/// worker's own. Per-invocation `GRANDA_*` env ([`super::invocation_env::invocation_env_problem`]) is
/// allowed. Its secrets must be opened first.
pub(crate) fn check_snapshot(s: &Snapshot, max_timeout_ms: u64) -> Result<(), Invalid> {
    // Its stored name: `name` or `name.namespace` (see `crate::namespace`).
    if !crate::namespace::valid_stored(&s.name) {
        return Err(invalid(
            "name",
            "must match ^[a-z][a-z0-9-]{0,62}$, then maybe a dot and a namespace",
        ));
    }
    if s.secrets.0.values().any(|v| v.clear().is_none()) {
        return Err(invalid("secrets", "not all secrets could be opened"));
    }
    check_run(&s.run, &s.secrets, max_timeout_ms, true)
}

/// The checks of how a function runs, written once for registration ([`check`]) and for a
/// worker ([`check_snapshot`]). `at_worker`: the env may hold per-invocation `GRANDA_*`
/// variables; sealed secret values are not checked (they were when set).
fn check_run(
    run: &RunSpec,
    secrets: &Secrets,
    max_timeout_ms: u64,
    at_worker: bool,
) -> Result<(), Invalid> {
    if run.image.is_empty()
        || run.image.len() > 255
        || !run.image.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(invalid(
            "image",
            "must be an image reference of printable ASCII without spaces, at most 255 characters",
        ));
    }
    let max_timeout = max_timeout_ms as i64;
    if !(1..=max_timeout).contains(&run.timeout_ms) {
        return Err(invalid(
            "timeout_ms",
            format!("must be between 1 and {max_timeout}"),
        ));
    }
    if !(6..=1024 * 1024).contains(&run.memory_mb) {
        return Err(invalid("memory_mb", "must be between 6 and 1048576"));
    }
    if !(run.cpus.is_finite() && run.cpus >= 0.01 && run.cpus <= 1024.0) {
        return Err(invalid("cpus", "must be between 0.01 and 1024"));
    }
    let env = run.env.iter().map(|(k, v)| (k.as_str(), Some(v.as_str())));
    check_vars("env", env, at_worker)?;
    let secret_vars = secrets.0.iter().map(|(k, v)| (k.as_str(), v.clear()));
    check_vars("secrets", secret_vars, false)?;
    if let Some(k) = secrets.0.keys().find(|k| run.env.contains_key(*k)) {
        return Err(invalid(
            "secrets",
            format!("{k} is also in env; a name is either plain or secret"),
        ));
    }
    let env_bytes: usize = run
        .env
        .iter()
        .filter(|(k, _)| !(at_worker && k.starts_with("GRANDA_")))
        .map(|(k, v)| k.len() + v.len())
        .chain(secrets.clear_iter().map(|(k, v)| k.len() + v.len()))
        .sum();
    if env_bytes > MAX_ENV_BYTES {
        return Err(invalid(
            "env",
            format!(
                "env and secrets together are at most {MAX_ENV_BYTES} bytes (they travel in every message's header)"
            ),
        ));
    }
    if !(4..=32_768).contains(&run.pids) {
        return Err(invalid("pids", "must be between 4 and 32768"));
    }
    if !(1..=65_536).contains(&run.tmp_mb) {
        return Err(invalid("tmp_mb", "must be between 1 and 65536"));
    }
    if let Some(user) = &run.user {
        check_user(user)?;
    }
    if let Some(container_runtime) = &run.container_runtime
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
    if let Some(m) = run.max_concurrency
        && !(1..=10_000).contains(&m)
    {
        return Err(invalid("max_concurrency", "must be between 1 and 10000"));
    }
    if !(0..=100).contains(&run.pool.min_warm) {
        return Err(invalid("min_warm", "must be between 0 and 100"));
    }
    if let Some(m) = run.pool.max_containers
        && !(1..=10_000).contains(&m)
    {
        return Err(invalid("max_containers", "must be between 1 and 10000"));
    }
    if !(100..=24 * 3600 * 1000).contains(&run.pool.idle_timeout_ms) {
        return Err(invalid(
            "idle_timeout_ms",
            "must be between 100 and 86400000",
        ));
    }
    if !(1..=100).contains(&run.max_attempts) {
        return Err(invalid("max_attempts", "must be between 1 and 100"));
    }
    Ok(())
}

/// Names and values (`None`: sealed, checked when set) of `field`. `invocation_vars`: names of
/// per-invocation `GRANDA_*` variables are allowed (and not counted).
fn check_vars<'a>(
    field: &'static str,
    vars: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    invocation_vars: bool,
) -> Result<(), Invalid> {
    let mut count = 0;
    for (k, v) in vars {
        if invocation_vars
            && k.starts_with("GRANDA_")
            // Its value is checked where it is used: a bad one fails the run, recorded.
            && super::invocation_env::invocation_env_problem(k, "").is_none()
        {
            continue;
        }
        count += 1;
        if count > 256 {
            return Err(invalid(field, "at most 256 variables"));
        }
        if !valid_env_key(k) {
            return Err(invalid(
                field,
                format!("{k:?} is not a valid variable name"),
            ));
        }
        if k.starts_with("GRANDA_") {
            return Err(invalid(field, format!("{k}: GRANDA_* names are reserved")));
        }
        if let Some(v) = v
            && (v.contains('\0') || v.len() > 32 * 1024)
        {
            // The value itself is never echoed: it may be a secret.
            return Err(invalid(
                field,
                format!("{k}: values are at most 32 KiB, without NUL"),
            ));
        }
    }
    Ok(())
}

/// `user` is `uid` or `uid:gid`, numbers, and never root: the field exists to run as someone
/// else. A lone `uid` runs as `uid:uid` ([`super::Snapshot::run_as`]). Names are refused: the
/// engine resolves them in the image's own `/etc/passwd` and `/etc/group`, which a hostile image
/// writes (a name can stand for group 0 there).
pub(super) fn check_user(user: &str) -> Result<(), Invalid> {
    let id_ok = |p: &str| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit());
    let (who, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if !id_ok(who) || !group.is_none_or(id_ok) {
        return Err(invalid(
            "user",
            "must be uid or uid:gid, in numbers (names are resolved in the image, which may make them root's group); a lone uid runs as uid:uid",
        ));
    }
    // Root in any spelling: `0`, `00`; the group as well (`65534:0`).
    let is_root = |p: &str| p.parse::<u64>().is_ok_and(|id| id == 0);
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
            "nobody",
            "nobody:nogroup",
            "1234:users",
            "daemon:65534",
        ] {
            assert!(check_user(root).is_err(), "{root:?} is refused");
        }
        for fine in ["65534", "65534:65534", "1234:5678"] {
            assert!(check_user(fine).is_ok(), "{fine:?} is accepted");
        }
    }
}
