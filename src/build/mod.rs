//! Functions built from source: runtime templates (`runtimes/<name>/`) and the build context (a tar
//! of the rendered Dockerfile and the user's files under `fn/`) here; the build on an engine in
//! `engine` (a worker's business); the `builds` records (one per version, with its log) in
//! `store`. With `GRANDA_REGISTRY`, a built image is
//! tagged `<registry>/<prefix>-fn/<installation>/<name>:v<N>` ([`tag`]) and pushed there, so workers on other hosts pull it.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;

pub(crate) mod image;
pub(crate) mod store;

/// Largest unpacked source a build accepts (files of a tar.gz added up), in bytes.
pub(crate) const MAX_SOURCE_BYTES: u64 = 32 * 1024 * 1024;
/// Lines of the build log an error shows.
pub(crate) const LOG_TAIL_LINES: usize = 30;
/// The content type of a deploy's streamed answer: the build's log lines, then the verdict.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// A function's source in `POST /v1/functions` and `PUT /v1/functions/{name}`: a JSON string is the
/// handler file itself; `{"tar_gz": "<base64>"}` is a gzipped tar of a directory holding it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum Source {
    File(String),
    Archive { tar_gz: String },
}

/// A runtime: its Dockerfile template and the file its handler must be in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Runtime {
    pub(crate) name: &'static str,
    /// The handler's file name, at the top of the source.
    pub(crate) handler: &'static str,
    template: &'static str,
}

pub(crate) const RUNTIMES: [Runtime; 2] = [
    Runtime {
        name: "shell",
        handler: "handler.sh",
        template: include_str!("../../runtimes/shell/Dockerfile.template"),
    },
    Runtime {
        name: "python3",
        handler: "handler.py",
        template: include_str!("../../runtimes/python3/Dockerfile.template"),
    },
];

impl Runtime {
    pub(crate) fn named(name: &str) -> Option<Runtime> {
        RUNTIMES.iter().copied().find(|r| r.name == name)
    }

    /// The base image the settings give this runtime.
    pub(crate) fn base_image(&self, settings: &Settings) -> String {
        match self.name {
            "python3" => settings.runtime_python3_image.clone(),
            _ => settings.runtime_shell_image.clone(),
        }
    }

    /// The Dockerfile for `base_image`.
    pub(crate) fn dockerfile(&self, base_image: &str) -> String {
        self.template.replace("{{BASE_IMAGE}}", base_image)
    }
}

/// What a build is made from, as stored with it: the SHA-256 (hex) of the runtime's name and the
/// build context (the Dockerfile naming the base image, and the source's files with fixed times),
/// so a redeploy of the same source on the same base can be told from a change.
pub(crate) fn digest(runtime: Runtime, context: &[u8]) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(runtime.name.as_bytes());
    hash.update([0]);
    hash.update(context);
    hex::encode(hash.finalize())
}

/// Why a source can't be built: the client's fault (422).
#[derive(Debug, thiserror::Error)]
#[error("source: {0}")]
pub(crate) struct BadSource(pub(crate) String);

fn bad(reason: impl Into<String>) -> BadSource {
    BadSource(reason.into())
}

/// The build context: `Dockerfile` plus the source's files under `fn/`, as an uncompressed tar.
pub(crate) fn context(
    runtime: Runtime,
    base_image: &str,
    source: &Source,
) -> Result<Vec<u8>, BadSource> {
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    match source {
        Source::File(text) => {
            if text.is_empty() {
                return Err(bad("the handler file is empty"));
            }
            files.push((runtime.handler.into(), text.clone().into_bytes(), 0o755));
        }
        Source::Archive { tar_gz } => {
            let packed = base64::engine::general_purpose::STANDARD
                .decode(tar_gz.trim())
                .map_err(|e| bad(format!("tar_gz is not base64: {e}")))?;
            let gz = flate2::read::GzDecoder::new(&packed[..]);
            let mut archive = tar::Archive::new(gz.take(MAX_SOURCE_BYTES * 2));
            let mut total = 0u64;
            let entries = archive
                .entries()
                .map_err(|e| bad(format!("tar_gz is not a gzipped tar: {e}")))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| bad(format!("reading tar_gz: {e}")))?;
                if !entry.header().entry_type().is_file() {
                    continue; // directories come with their files; links are not followed
                }
                let path = clean_path(&entry.path().map_err(|e| bad(e.to_string()))?)
                    .ok_or_else(|| bad("tar_gz holds a path outside its directory"))?;
                total += entry.size();
                if total > MAX_SOURCE_BYTES {
                    return Err(bad(format!(
                        "unpacked, the source is over {MAX_SOURCE_BYTES} bytes"
                    )));
                }
                let mode = entry.header().mode().unwrap_or(0o644) & 0o755 | 0o444;
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("reading tar_gz: {e}")))?;
                files.push((path, data, mode));
            }
            if !files
                .iter()
                .any(|(p, _, _)| p == Path::new(runtime.handler))
            {
                return Err(bad(format!(
                    "the {} runtime needs a {} at the top of the directory",
                    runtime.name, runtime.handler
                )));
            }
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = runtime.dockerfile(base_image);
    append(
        &mut tar,
        Path::new("Dockerfile"),
        dockerfile.as_bytes(),
        0o644,
    )?;
    for (path, data, mode) in &files {
        append(&mut tar, &Path::new("fn").join(path), data, *mode)?;
    }
    tar.into_inner()
        .map_err(|e| bad(format!("writing the build context: {e}")))
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &Path,
    data: &[u8],
    mode: u32,
) -> Result<(), BadSource> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
        .map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// `path` without `.` parts; `None` if it is absolute or climbs out with `..`.
fn clean_path(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// What a build that could not get its runtime's base image tells the user to change.
pub(crate) const BASE_IMAGE_HINT: &str = "The runtime's base image is not on the engine and could not \
be pulled: run scripts/build-runtime-images.sh (setup does) to build granda/runtime-shell and \
granda/runtime-python3 locally, or set GRANDA_RUNTIME_SHELL_IMAGE / GRANDA_RUNTIME_PYTHON3_IMAGE \
to an image the engine has or can pull";

/// A build the engine refused or failed, with the whole log.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct BuildFailed {
    pub(crate) message: String,
    pub(crate) log: String,
}

/// The last `LOG_TAIL_LINES` lines of `log`.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// The image tag of a function's version:
/// `<GRANDA_AMQP_PREFIX>-fn/<installation>/<name>:v<N>` (`granda-fn/…` by default), with the
/// installation's id ([`crate::docker::installation`]), so installations sharing an engine never
/// overwrite each other's images, even with the same prefix (issue 26). `store::start` makes the
/// same in SQL. Functions built before keep the `<prefix>-fn/<name>:v<N>` they were built as.
pub fn tag(prefix: &str, installation: &str, function: &str, version: i32) -> String {
    format!("{prefix}-fn/{installation}/{function}:v{version}")
}

/// How far a build got. Stored as its word (`text`): a word the enum lacks is a decoding error,
/// not a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub(crate) enum BuildStatus {
    Building,
    Succeeded,
    Failed,
}

impl BuildStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Building => "building",
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One build of a function, as stored and shown.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub(crate) struct BuildRecord {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) version: i32,
    pub(crate) runtime: String,
    pub(crate) image: String,
    pub(crate) status: BuildStatus,
    #[serde(skip)]
    pub(crate) log: String,
    /// [`digest`] of what it was built from (none for builds before it was recorded).
    pub(crate) source_digest: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert_eq!(clean_path(Path::new("./a/b.py")), Some("a/b.py".into()));
        assert_eq!(clean_path(Path::new("../x")), None);
        assert_eq!(clean_path(Path::new("/etc/passwd")), None);
        assert_eq!(clean_path(Path::new(".")), None);
    }

    #[test]
    fn a_single_file_becomes_the_handler() {
        let shell = Runtime::named("shell").unwrap();
        let tar = context(shell, "base:1", &Source::File("cat\n".into())).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            if name == "Dockerfile" {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                assert!(text.contains("FROM base:1\n"), "{text}");
            }
            names.push(name);
        }
        assert_eq!(names, ["Dockerfile", "fn/handler.sh"]);
    }

    #[test]
    fn an_archive_needs_the_handler() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        tar.append_data(&mut header, "lib.py", &b"x\n"[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        let tar_gz = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let python = Runtime::named("python3").unwrap();
        let err = context(python, "py", &Source::Archive { tar_gz }).unwrap_err();
        assert!(err.to_string().contains("handler.py"), "{err}");
    }
}
