//! Sending a function to the server, for `granda fn deploy` and `granda deploy -f`: its source
//! packed (a file's text, or a directory as a base64 tar.gz), created or, when it exists,
//! updated, with a build's log streamed back (NDJSON) while a person watches.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::{CliError, Client, segment};
use crate::build::NDJSON;

/// The source of `path`: the file's text, or the directory as a base64 tar.gz. A manifest
/// (`leave_out`, the `granda.yaml` that names this source) inside the directory is left out of
/// it: its secrets never reach the image, and editing it builds nothing (a `source: .` written
/// before `fn init` scaffolded `src/`).
pub(super) fn source(path: &Path, leave_out: Option<&Path>) -> Result<Value, CliError> {
    let meta =
        std::fs::metadata(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    if meta.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
        return Ok(Value::String(text));
    }
    let leave_out = leave_out.and_then(|p| std::fs::canonicalize(p).ok());
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    pack(&mut tar, path, Path::new("."), leave_out.as_deref())
        .map_err(|e| CliError::Other(format!("packing {}: {e}", path.display())))?;
    let bytes = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| CliError::Other(format!("packing {}: {e}", path.display())))?;
    Ok(json!({"tar_gz": base64::engine::general_purpose::STANDARD.encode(bytes)}))
}

/// Appends directory `dir` as `name` and everything under it, in name order, but `leave_out`.
fn pack<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    leave_out: Option<&Path>,
) -> std::io::Result<()> {
    tar.append_dir(name, dir)?;
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if leave_out.is_some_and(|l| std::fs::canonicalize(&path).is_ok_and(|p| p == l)) {
            continue;
        }
        let inner = name.join(entry.file_name());
        if std::fs::metadata(&path)?.is_dir() {
            pack(tar, &path, &inner, leave_out)?;
        } else {
            tar.append_path_with_name(&path, &inner)?;
        }
    }
    Ok(())
}

/// What a deploy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Registered a new function.
    Created,
    /// Built and switched to a new version.
    Built,
    /// Changed settings only (from source: the source was that of the current version).
    Updated,
    /// Nothing: the same source and settings were deployed already.
    Unchanged,
}

impl Outcome {
    pub(super) fn word(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Built | Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Registers `name` with `body`, or, when it exists, sends `body` as an update. The server builds
/// nothing when the source is the current version's and writes nothing when no setting changed;
/// the version and `updated_at` before and after tell which happened.
pub(super) async fn create_or_update(
    client: &Client,
    name: &str,
    body: &Map<String, Value>,
    from_source: bool,
) -> Result<(Outcome, Value), CliError> {
    let err = match submit(client, Method::POST, "/v1/functions", body, from_source).await {
        Ok(f) => return Ok((Outcome::Created, f)),
        Err(e) => e,
    };
    let path = format!("/v1/functions/{}", segment(name));
    let current = match err {
        CliError::Conflict(_) => match client.get(&path).await {
            Ok(current) => current,
            Err(_) => return Err(err),
        },
        _ => return Err(err),
    };
    // A redeploy: the same body as an update (the name may stay in it).
    let f = submit(client, Method::PUT, &path, body, from_source).await?;
    let outcome = if f["version"] != current["version"] {
        Outcome::Built
    } else if f["updated_at"] != current["updated_at"] {
        Outcome::Updated
    } else {
        Outcome::Unchanged
    };
    Ok((outcome, f))
}

/// Sends a deploy. From source, the answer is streamed (NDJSON): the build log goes to stderr when
/// a person watches, and the last line is the verdict.
pub(super) async fn submit(
    client: &Client,
    method: Method,
    path: &str,
    body: &Map<String, Value>,
    streamed: bool,
) -> Result<Value, CliError> {
    let mut request = client.request(method, path).json(body);
    if streamed {
        request = request.header(reqwest::header::ACCEPT, NDJSON);
    }
    let mut response = client.send(request).await?;
    if !response.status().is_success() {
        return Err(super::api_error(response).await);
    }
    let ndjson = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(NDJSON.as_bytes()));
    if !ndjson {
        return response
            .json()
            .await
            .map_err(|e| CliError::Server(format!("a bad answer from the server: {e}")));
    }
    let show_log = super::interactive() && !client.json;
    let mut pending: Vec<u8> = Vec::new();
    let mut last: Option<Value> = None;
    let lost = |e: reqwest::Error| CliError::Server(format!("the build's answer broke off: {e}"));
    while let Some(chunk) = response.chunk().await.map_err(lost)? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(text) = v["log"].as_str() {
                if show_log {
                    let _ = std::io::stderr().write_all(text.as_bytes());
                }
            } else {
                last = Some(v);
            }
        }
    }
    let last = last.ok_or_else(|| CliError::Server("the build's answer ended early".into()))?;
    let status = last["status"].as_u64().unwrap_or(500) as u16;
    let status =
        reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_success() {
        Ok(last["function"].clone())
    } else {
        Err(super::error_from(status, &last, ""))
    }
}
