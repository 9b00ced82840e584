//! The `granda` CLI's client side: commands that talk to a Granda server's HTTP API
//! (`GRANDA_URL`, `GRANDA_KEY`), print human tables or `--json`, and exit with codes that mean
//! something (see [`CliError::exit_code`]).

mod deploy;
pub(crate) mod events;
pub(crate) mod functions;
pub(crate) mod hooks;
pub(crate) mod invocations;
pub(crate) mod invoke;
pub(crate) mod keys;
pub(crate) mod logs;
pub(crate) mod manifest;
pub(crate) mod schedules;
pub(crate) mod usage;

use std::io::IsTerminal;

use clap::Args;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// Exit codes: 0 ok, 1 refused or other error, 2 usage (clap's), 3 not found, 4 the function failed,
/// 5 timed out, 6 server or connection error, 7 the build failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Other(String),
    /// A command line that can't be right, found after clap parsed it (exit 2, as clap's own).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FunctionFailed(String),
    #[error("{0}")]
    TimedOut(String),
    #[error("{0}")]
    Server(String),
    #[error("{message}")]
    BuildFailed { message: String, log: String },
    /// A run that failed or timed out, with the tail of its stderr.
    #[error("{message}")]
    RunFailed {
        message: String,
        logs: String,
        timed_out: bool,
    },
}

impl CliError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::Other(_) | CliError::Conflict(_) => 1,
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::FunctionFailed(_) => 4,
            CliError::TimedOut(_) => 5,
            CliError::Server(_) => 6,
            CliError::BuildFailed { .. } => 7,
            CliError::RunFailed {
                timed_out: false, ..
            } => 4,
            CliError::RunFailed {
                timed_out: true, ..
            } => 5,
        }
    }
}

/// Flags every client command takes.
#[derive(Args, Clone, Debug)]
pub(crate) struct ClientArgs {
    /// Granda server to talk to (client commands).
    #[arg(long, env = "GRANDA_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub(crate) url: String,

    /// API key sent as `Authorization: Bearer <key>` (client commands).
    #[arg(long, env = "GRANDA_KEY", hide_env_values = true, global = true)]
    pub(crate) key: Option<String>,

    /// Print JSON instead of tables (client commands).
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Act in this namespace (sent as `Granda-Namespace`; a global key's choice, a namespaced
    /// key's own). Default: the key's namespace, or `default` (client commands).
    #[arg(long, env = "GRANDA_NAMESPACE", global = true)]
    pub(crate) namespace: Option<String>,
}

/// `error`, or "not found" (exit 3) when what failed names a `function` that doesn't exist (a
/// webhook or schedule for a missing function is refused with 422 by the API).
pub(crate) async fn unless_missing(client: &Client, function: &str, error: CliError) -> CliError {
    if let CliError::Other(_) = error
        && let Err(missing @ CliError::NotFound(_)) = client
            .get(&format!("/v1/functions/{}", segment(function)))
            .await
    {
        return missing;
    }
    error
}

/// An HTTP client for one Granda server.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    namespace: Option<String>,
    pub(crate) json: bool,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs) -> Client {
        crate::tls::install_provider();
        Client {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            base: args.url.trim_end_matches('/').to_string(),
            key: args.key.clone().filter(|k| !k.is_empty()),
            namespace: args.namespace.clone().filter(|n| !n.is_empty()),
            json: args.json,
        }
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(ns) = &self.namespace {
            request = request.header("granda-namespace", ns);
        }
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends `request`; a connection failure is a server error, any answer is returned as it is.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        request
            .send()
            .await
            .map_err(|e| CliError::Server(format!("can't reach {}: {}", self.base, root(&e))))
    }

    /// Sends `request` and returns its JSON body if 2xx, else the API's error.
    pub(crate) async fn call(&self, request: RequestBuilder) -> Result<Value, CliError> {
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .map_err(|e| CliError::Server(format!("a bad answer from the server: {e}")))
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(self.request(Method::GET, path)).await
    }

    /// Prints `value` as pretty JSON.
    pub(crate) fn print_json(&self, value: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON prints")
        );
    }
}

/// The innermost cause of a reqwest error, which says what went wrong in words.
fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// The API's `{"error": {"code", "message"}}` answer as a [`CliError`].
pub(crate) async fn api_error(response: Response) -> CliError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    error_from(status, &body, &text)
}

pub(crate) fn error_from(status: StatusCode, body: &Value, text: &str) -> CliError {
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or("");
    let message = error["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{status}: {}", text.trim()));
    match (status.as_u16(), code) {
        (_, "build_failed") => CliError::BuildFailed {
            message,
            log: error["log"].as_str().unwrap_or("").to_string(),
        },
        // The server words it for HTTP; the CLI takes the key as `--key` or `GRANDA_KEY`.
        (401, _) if message.contains("Authorization: Bearer <key>") => CliError::Other(
            "an API key is needed: pass --key KEY or set GRANDA_KEY (granda keys create makes one)"
                .into(),
        ),
        (401, _) => CliError::Other(format!(
            "{message} (the CLI sends the key given with --key or GRANDA_KEY)"
        )),
        (404, _) => CliError::NotFound(message),
        (409, _) => CliError::Conflict(message),
        (502, "function_failed") => CliError::FunctionFailed(message),
        (504, _) => CliError::TimedOut(message),
        (s, _) if s >= 500 => CliError::Server(format!("server error ({status}): {message}")),
        _ => CliError::Other(message),
    }
}

/// Whether to show progress: only to a person watching a terminal.
pub(crate) fn interactive() -> bool {
    std::io::stdout().is_terminal()
}

/// Prints rows under headers, each column as wide as its widest cell.
/// Prints `list` as JSON (`--json`), or its array `key` as a table under `headers`, one `row` per
/// item: what every `ls` command prints.
pub(crate) fn print_list(
    client: &Client,
    list: &serde_json::Value,
    key: &str,
    headers: &[&str],
    row: impl Fn(&serde_json::Value) -> Vec<String>,
) {
    if client.json {
        client.print_json(list);
        return;
    }
    let rows: Vec<Vec<String>> = list[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    table(headers, &rows);
}

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let print = |cells: Vec<String>| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    };
    print(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        print(row.clone());
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A timestamp as every human table shows it: RFC 3339 in UTC, to the second
/// (`2026-11-29T08:58:47Z`); anything else as [`cell`] shows it.
pub(crate) fn time_cell(v: &Value) -> String {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| cell(v))
}

/// A JSON array as a comma-separated cell (`-` when empty or absent).
pub(crate) fn list_cell(v: &Value) -> String {
    match v.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Some(_) | None if v.is_null() || v.is_array() => "-".into(),
        _ => cell(v),
    }
}

/// Prints `fields` of `value` as `key: value` lines (timestamps, keys ending `_at`, as
/// [`time_cell`] shows them).
pub(crate) fn fields(value: &Value, fields: &[&str]) {
    let width = fields.iter().map(|f| f.len()).max().unwrap_or(0) + 1;
    for f in fields {
        if let Some(v) = value.get(*f) {
            let shown = if f.ends_with("_at") {
                time_cell(v)
            } else {
                cell(v)
            };
            println!("{:<width$} {}", format!("{f}:"), shown);
        }
    }
}

/// Reads `--data`: `@file`, `-` for stdin, or the text itself; nothing when absent.
pub(crate) fn read_data(data: Option<&str>) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    match data {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::Other(format!("reading stdin: {e}")))?;
            Ok(buf)
        }
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).map_err(|e| CliError::Other(format!("reading {}: {e}", &d[1..])))
        }
        Some(d) => Ok(d.as_bytes().to_vec()),
    }
}

/// `NAME:VALUE` (or `NAME=VALUE`) into a pair.
pub(crate) fn parse_header(h: &str) -> Result<(String, String), String> {
    h.split_once(':')
        .or_else(|| h.split_once('='))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("{h:?} is not NAME:VALUE"))
}

/// Percent-encodes a path segment given on the command line.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
