//! `granda fn deploy|ls|get|update|rm`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::deploy::{Outcome, create_or_update, source};
use super::{CliError, Client, cell, list_cell, segment, table, time_cell};

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum FnCommand {
    /// Deploy a function from source (`--runtime` and a file or directory) or an image; a name
    /// that exists gets a new version when its source changed (the same source again builds
    /// nothing and says `unchanged`).
    Deploy(DeployArgs),
    /// List the functions.
    Ls {
        /// Print only the names, one a line (for scripts).
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Show a function and its versions.
    Get { name: String },
    /// Change a function's settings (or its image).
    Update(UpdateArgs),
    /// Delete a function.
    Rm { name: String },
    /// Write a new function to start from: NAME/handler.sh or handler.py, and NAME/granda.yaml
    /// for `granda deploy -f`.
    Init(super::manifest::InitArgs),
    /// A function's builds from source; with VERSION, that build's stored log.
    Builds {
        name: String,
        /// A version (as `fn get` lists them): print its build log.
        version: Option<u32>,
    },
}

/// Settings a deploy or update may change.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct FunctionFlags {
    /// Timeout of one run, in ms.
    #[arg(long)]
    pub(crate) timeout_ms: Option<i64>,
    /// Memory limit, in MiB.
    #[arg(long)]
    pub(crate) memory_mb: Option<i64>,
    /// CPUs (e.g. 0.5).
    #[arg(long)]
    pub(crate) cpus: Option<f64>,
    /// Sets one environment variable, NAME=VALUE (repeatable); the others stay.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub(crate) env: Vec<String>,
    /// Removes one environment variable (repeatable).
    #[arg(long = "unset-env", value_name = "NAME")]
    pub(crate) unset_env: Vec<String>,
    /// Sets one secret, NAME=VALUE (repeatable; never shown again); the others stay.
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub(crate) secret: Vec<String>,
    /// Removes one secret (repeatable).
    #[arg(long = "unset-secret", value_name = "NAME")]
    pub(crate) unset_secret: Vec<String>,
    /// How the input reaches the function.
    #[arg(long, value_parser = ["stdin", "args"])]
    pub(crate) input: Option<String>,
    /// A description.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// The queue its invocations go to.
    #[arg(long)]
    pub(crate) queue: Option<String>,
    /// How runs get a container.
    #[arg(long, value_parser = ["cold", "warm", "hot"])]
    pub(crate) mode: Option<String>,
    /// Warm and hot: containers kept even when idle, per worker.
    #[arg(long)]
    pub(crate) min_warm: Option<i64>,
    /// Warm and hot: the most containers per worker (`none` clears it).
    #[arg(long, value_name = "N|none", value_parser = bound)]
    pub(crate) max_containers: Option<Bound>,
    /// Warm and hot: how long an idle container is kept, in ms.
    #[arg(long)]
    pub(crate) idle_timeout_ms: Option<i64>,
    /// The most runs of this function at once, per worker (`none` clears it).
    #[arg(long, value_name = "N|none", value_parser = bound)]
    pub(crate) max_concurrency: Option<Bound>,
    /// Runs in all before an invocation is dead.
    #[arg(long)]
    pub(crate) max_attempts: Option<i64>,
    /// Which failures are retried, comma-separated: error, timeout, platform.
    #[arg(long, value_name = "CLASSES", value_delimiter = ',')]
    pub(crate) retry_on: Option<Vec<String>>,
    /// Where results are POSTed when done (empty removes it).
    #[arg(long)]
    pub(crate) callback_url: Option<String>,
    /// Anyone may call /fn/NAME without a key.
    #[arg(long, value_name = "true|false")]
    pub(crate) public: Option<bool>,
    /// What its output is to callers of its URL: the body, or a CGI response (headers first).
    #[arg(long, value_parser = ["body", "cgi"])]
    pub(crate) response: Option<String>,
    /// What an ended invocation keeps: everything, or input, output and logs only on failure.
    #[arg(long, value_parser = ["always", "on_failure"])]
    pub(crate) store_output: Option<String>,
    /// The container's network.
    #[arg(long, value_parser = ["none", "bridge"])]
    pub(crate) network: Option<String>,
    /// The user the function runs as, UID[:GID] (never root).
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// The OCI runtime the engine runs the container with, e.g. runsc (gVisor); empty clears it.
    #[arg(long, value_name = "RUNTIME")]
    pub(crate) container_runtime: Option<String>,
    /// The most processes in the container.
    #[arg(long)]
    pub(crate) pids: Option<i64>,
    /// Size of the writable /tmp, in MiB.
    #[arg(long)]
    pub(crate) tmp_mb: Option<i64>,
}

/// A per-function bound that `none` clears.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Bound {
    At(i64),
    Cleared,
}

fn bound(s: &str) -> Result<Bound, String> {
    match s {
        "none" | "null" => Ok(Bound::Cleared),
        n => n
            .parse()
            .map(Bound::At)
            .map_err(|_| format!("{n:?} is neither a number nor `none`")),
    }
}

/// `NAME=VALUE` pairs of a repeatable flag.
fn pairs(flag: &str, given: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for pair in given {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| CliError::Usage(format!("--{flag} {pair:?} is not NAME=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl FunctionFlags {
    /// The JSON fields these flags set. `env` is the function's env after `--env` and
    /// `--unset-env` are applied to `current_env` (the stored env on an update, none on a deploy).
    fn into_json(
        self,
        current_env: Option<&Map<String, Value>>,
    ) -> Result<Map<String, Value>, CliError> {
        let mut m = Map::new();
        let numbers = [
            ("timeout_ms", self.timeout_ms),
            ("memory_mb", self.memory_mb),
            ("min_warm", self.min_warm),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("max_attempts", self.max_attempts),
            ("pids", self.pids),
            ("tmp_mb", self.tmp_mb),
        ];
        for (k, v) in numbers {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        if let Some(v) = self.cpus {
            m.insert("cpus".into(), v.into());
        }
        for (k, v) in [
            ("max_concurrency", self.max_concurrency),
            ("max_containers", self.max_containers),
        ] {
            match v {
                Some(Bound::At(n)) => {
                    m.insert(k.into(), n.into());
                }
                Some(Bound::Cleared) => {
                    m.insert(k.into(), Value::Null);
                }
                None => {}
            }
        }
        if !self.env.is_empty() || !self.unset_env.is_empty() {
            let mut env = current_env.cloned().unwrap_or_default();
            for name in &self.unset_env {
                env.remove(name);
            }
            for (k, v) in pairs("env", &self.env)? {
                env.insert(k, v.into());
            }
            m.insert("env".into(), Value::Object(env));
        }
        if !self.secret.is_empty() || !self.unset_secret.is_empty() {
            let set = pairs("secret", &self.secret)?;
            m.insert(
                "secrets".into(),
                if current_env.is_some() {
                    json!({"set": set, "unset": self.unset_secret})
                } else {
                    json!(set)
                },
            );
        }
        if let Some(classes) = self.retry_on {
            m.insert("retry_on".into(), json!(classes));
        }
        if let Some(response) = &self.response {
            m.insert("response".into(), response.clone().into());
        }
        if let Some(store_output) = &self.store_output {
            m.insert("store_output".into(), store_output.clone().into());
        }
        if let Some(public) = self.public {
            m.insert("public".into(), public.into());
        }
        for (k, v) in [
            ("input", self.input),
            ("description", self.description),
            ("queue", self.queue),
            ("mode", self.mode),
            ("callback_url", self.callback_url),
            ("network", self.network),
            ("user", self.user),
            ("container_runtime", self.container_runtime),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        Ok(m)
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct DeployArgs {
    /// The function's name.
    pub(crate) name: String,
    /// The handler file (e.g. handler.py) or a directory holding it.
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    pub(crate) path: Option<PathBuf>,
    /// The runtime to build the source with: shell or python3.
    #[arg(long, requires = "path")]
    pub(crate) runtime: Option<String>,
    /// Deploy this image instead of building from source.
    #[arg(long)]
    pub(crate) image: Option<String>,
    #[command(flatten)]
    pub(crate) flags: FunctionFlags,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct UpdateArgs {
    pub(crate) name: String,
    /// A new image.
    #[arg(long)]
    pub(crate) image: Option<String>,
    #[command(flatten)]
    pub(crate) flags: FunctionFlags,
}

pub(crate) async fn run(client: &Client, command: FnCommand) -> Result<(), CliError> {
    match command {
        FnCommand::Ls { quiet } => {
            let body = client.get("/v1/functions").await?;
            if quiet && !client.json {
                for f in body["functions"].as_array().into_iter().flatten() {
                    println!("{}", cell(&f["name"]));
                }
                return Ok(());
            }
            super::print_list(
                client,
                &body,
                "functions",
                &[
                    "NAME",
                    "IMAGE",
                    "RUNTIME",
                    "VERSION",
                    "TIMEOUT_MS",
                    "MEMORY_MB",
                ],
                |f| {
                    vec![
                        cell(&f["name"]),
                        cell(&f["image"]),
                        cell(&f["runtime"]),
                        cell(&f["version"]),
                        cell(&f["timeout_ms"]),
                        cell(&f["memory_mb"]),
                    ]
                },
            );
            Ok(())
        }
        FnCommand::Get { name } => {
            let body = client
                .get(&format!("/v1/functions/{}", segment(&name)))
                .await?;
            show(client, &body);
            Ok(())
        }
        FnCommand::Rm { name } => {
            let request =
                client.request(Method::DELETE, &format!("/v1/functions/{}", segment(&name)));
            client.call(request).await?;
            if client.json {
                client.print_json(&json!({"deleted": name}));
            } else {
                println!("deleted {name}");
            }
            Ok(())
        }
        FnCommand::Update(args) => {
            let path = format!("/v1/functions/{}", segment(&args.name));
            // `--env` changes one variable: start from what is stored.
            let current = if args.flags.env.is_empty() && args.flags.unset_env.is_empty() {
                Map::new()
            } else {
                client.get(&path).await?["env"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            };
            let mut body = args.flags.into_json(Some(&current))?;
            if let Some(image) = args.image {
                body.insert("image".into(), image.into());
            }
            let request = client
                .request(
                    Method::PUT,
                    &format!("/v1/functions/{}", segment(&args.name)),
                )
                .json(&body);
            let f = client.call(request).await?;
            show(client, &f);
            Ok(())
        }
        FnCommand::Deploy(args) => deploy(client, args).await,
        FnCommand::Init(args) => super::manifest::init(client, args),
        FnCommand::Builds {
            name,
            version: None,
        } => {
            let f = client
                .get(&format!("/v1/functions/{}", segment(&name)))
                .await?;
            let versions = f["versions"].as_array().cloned().unwrap_or_default();
            if client.json {
                client.print_json(&json!({ "builds": versions }));
            } else if versions.is_empty() {
                eprintln!("{name} was deployed from an image: it has no builds");
            } else {
                versions_table(&f, &versions);
            }
            Ok(())
        }
        FnCommand::Builds {
            name,
            version: Some(version),
        } => {
            let build = client
                .get(&format!(
                    "/v1/functions/{}/builds/{version}",
                    segment(&name)
                ))
                .await?;
            if client.json {
                client.print_json(&build);
                return Ok(());
            }
            // The log to stdout, so it pipes; what it is to stderr.
            eprintln!(
                "build {} of {}: {} ({}), {} to {}",
                cell(&build["version"]),
                cell(&build["function"]),
                cell(&build["status"]),
                cell(&build["image"]),
                time_cell(&build["created_at"]),
                time_cell(&build["finished_at"]),
            );
            print!("{}", build["log"].as_str().unwrap_or(""));
            Ok(())
        }
    }
}

/// Shows one function: JSON, or every setting and its versions.
/// How long a function's ended invocations are kept: `7d (installation), failures 30d`.
fn retention_cell(r: &Value) -> String {
    let span = |v: &Value| match v.as_i64() {
        Some(s) if s % 86_400 == 0 => format!("{}d", s / 86_400),
        Some(s) if s % 3600 == 0 => format!("{}h", s / 3600),
        Some(s) => format!("{s}s"),
        None => "-".into(),
    };
    if r.is_null() {
        return "-".into();
    }
    format!(
        "{} ({}), failures {}",
        span(&r["kept_s"]),
        r["from"].as_str().unwrap_or("?"),
        span(&r["failed_kept_s"])
    )
}

fn show(client: &Client, f: &Value) {
    if client.json {
        client.print_json(f);
        return;
    }
    let mut rows: Vec<(&str, String)> = Vec::new();
    let plain = |rows: &mut Vec<(&str, String)>, keys: &[&'static str]| {
        for k in keys {
            rows.push((k, cell(&f[*k])));
        }
    };
    plain(
        &mut rows,
        &[
            "name",
            "description",
            "image",
            "runtime",
            "version",
            "invoke_url",
            "public",
            "response",
            "store_output",
            "queue",
            "input",
            "mode",
            "min_warm",
            "max_containers",
            "idle_timeout_ms",
            "max_concurrency",
            "timeout_ms",
            "memory_mb",
            "cpus",
            "pids",
            "tmp_mb",
            "network",
            "user",
            "container_runtime",
            "max_attempts",
        ],
    );
    rows.push(("retry_on", list_cell(&f["retry_on"])));
    rows.push(("callback_url", cell(&f["callback_url"])));
    rows.push(("secrets", list_cell(&f["secrets"])));
    rows.push(("retention", retention_cell(&f["retention"])));
    rows.push(("created_at", time_cell(&f["created_at"])));
    rows.push(("updated_at", time_cell(&f["updated_at"])));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in &rows {
        println!("{:<width$} {v}", format!("{k}:"));
    }
    // The env last: one `NAME=VALUE` a line (an admin key reads the values).
    match f["env"].as_object().filter(|e| !e.is_empty()) {
        None => println!("{:<width$} -", "env:"),
        Some(env) => {
            println!("env:");
            for (k, v) in env {
                println!("  {k}={}", v.as_str().unwrap_or(""));
            }
        }
    }
    let versions = f["versions"].as_array().cloned().unwrap_or_default();
    if !versions.is_empty() {
        println!();
        versions_table(f, &versions);
    }
}

/// A function's builds as a table; the current one is marked `*`.
fn versions_table(f: &Value, versions: &[Value]) {
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let current = v["image"] == f["image"];
            vec![
                format!("{}{}", cell(&v["version"]), if current { " *" } else { "" }),
                cell(&v["status"]),
                cell(&v["runtime"]),
                cell(&v["image"]),
                time_cell(&v["created_at"]),
                time_cell(&v["finished_at"]),
            ]
        })
        .collect();
    table(
        &[
            "VERSION",
            "STATUS",
            "RUNTIME",
            "IMAGE",
            "STARTED_AT",
            "FINISHED_AT",
        ],
        &rows,
    );
}

async fn deploy(client: &Client, args: DeployArgs) -> Result<(), CliError> {
    let mut body = args.flags.into_json(None)?;
    body.insert("name".into(), args.name.clone().into());
    let from_source = args.path.is_some();
    if let Some(path) = &args.path {
        let runtime = args.runtime.clone().ok_or_else(|| {
            CliError::Other("--runtime is needed to build from source (shell, python3)".into())
        })?;
        body.insert("runtime".into(), runtime.into());
        body.insert("source".into(), source(path, None)?);
    }
    if let Some(image) = &args.image {
        body.insert("image".into(), image.clone().into());
    }
    let (outcome, f) = create_or_update(client, &args.name, &body, from_source).await?;
    if client.json {
        client.print_json(&f);
    } else {
        let verb = match outcome {
            Outcome::Created | Outcome::Built => "deployed",
            Outcome::Updated => "updated the settings of",
            Outcome::Unchanged => "unchanged:",
        };
        match f["version"].as_i64() {
            Some(v) => println!(
                "{verb} {} version {v} ({})",
                cell(&f["name"]),
                cell(&f["image"])
            ),
            None => println!("{verb} {} ({})", cell(&f["name"]), cell(&f["image"])),
        }
    }
    Ok(())
}
