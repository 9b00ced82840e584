//! Scaffolding and manifests: `granda fn init NAME --runtime shell|python3` writes a handler in
//! `NAME/src/` and `NAME/granda.yaml` beside it, so that the manifest (and the secrets it may
//! hold) is never part of the source that is built, and editing it builds nothing;
//! `granda deploy -f granda.yaml` deploys every function the file lists.
//!
//! A manifest is YAML (JSON is YAML too), parsed with `serde-saphyr`: pure Rust, no unsafe, kept
//! up to date, and light with only its `deserialize` feature (`serde_yaml` is archived and
//! `serde_yml` deprecated; `serde_norway` still wraps a C-to-Rust libyaml port).
//!
//! ```yaml
//! functions:
//!   hello:
//!     runtime: shell        # with `source`: build from source
//!     source: .             # the handler file or its directory, relative to this file
//!     timeout_ms: 10000     # any field of `POST /v1/functions`
//!     env: {GREETING: hello}
//!   resize:
//!     image: my/resize:1.2  # or an image
//! ```
//!
//! Every field but `source` goes to the API as it is, so the API checks it (an unknown field
//! names the closest one). A function that exists is updated: the fields the manifest gives are
//! set (its `env` is the whole env), the others stay as they are. Deploying is idempotent: the
//! server builds no new version when the source and base image are those of the current version
//! (it keeps a digest of each build's context), and writes nothing when no setting changed; such a
//! function is reported `unchanged`. A changed source builds a new version; a changed setting
//! alone is applied without a build (`updated`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::{Map, Value, json};

use super::deploy::{create_or_update, source};
use super::{CliError, Client, cell};

/// A manifest: functions by name, each the body of a registration plus `source`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) functions: BTreeMap<String, Map<String, Value>>,
}

/// A manifest read with every field typed: each function as the body of an update (every field
/// optional, unknown ones refused).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Checked {
    functions: BTreeMap<String, crate::function::FunctionUpdate>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct DeployFileArgs {
    /// The manifest (YAML or JSON).
    #[arg(long, short = 'f', default_value = "granda.yaml")]
    pub(crate) file: PathBuf,
    /// Deploy only these functions of the manifest (repeatable).
    #[arg(long = "only", value_name = "NAME")]
    pub(crate) only: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Runtime {
    Shell,
    Python3,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct InitArgs {
    /// The function's name; a directory of that name is made.
    pub(crate) name: String,
    /// The handler's language.
    #[arg(long, value_enum)]
    pub(crate) runtime: Runtime,
    /// Where to make the directory.
    #[arg(long, default_value = ".")]
    pub(crate) dir: PathBuf,
}

const SHELL_HANDLER: &str = r#"#!/bin/sh
# A Granda function. The request body arrives on stdin; what this prints on stdout is the answer;
# stderr is kept as the invocation's logs. A non-zero exit fails the invocation.
name=$(cat)
echo "handling a request of ${#name} bytes" >&2
echo "hello, ${name:-world}"
"#;

const PYTHON_HANDLER: &str = r#"# A Granda function. The request body arrives on stdin; what this prints on stdout is the answer;
# stderr is kept as the invocation's logs. An uncaught exception fails the invocation.
import json
import sys

name = sys.stdin.read()
print(json.dumps({"handling": len(name)}), file=sys.stderr)
print(f"hello, {name or 'world'}")
"#;

fn manifest_text(name: &str, runtime: &str) -> String {
    format!(
        "# Deploy with `granda deploy -f granda.yaml`; paths are relative to this file.\n\
         # Each function takes the fields of `granda fn deploy --help` (timeout_ms, memory_mb,\n\
         # env, secrets, mode, max_concurrency, retry_on, public, ...), or `image:` instead of\n\
         # `runtime` and `source`.\n\
         functions:\n  {name}:\n    runtime: {runtime}\n    source: src           # only this directory is built: keep secrets here, not in it\n    timeout_ms: 10000\n    memory_mb: 128\n    env:\n      GREETING: hello\n"
    )
}

/// `granda fn init`: writes NAME/src/handler.{sh,py} and NAME/granda.yaml; refuses a directory
/// that exists.
pub(crate) fn init(client: &Client, args: InitArgs) -> Result<(), CliError> {
    let dir = args.dir.join(&args.name);
    if dir.exists() {
        return Err(CliError::Conflict(format!(
            "{} exists; choose another name or --dir",
            dir.display()
        )));
    }
    let (runtime, handler, text) = match args.runtime {
        Runtime::Shell => ("shell", "handler.sh", SHELL_HANDLER),
        Runtime::Python3 => ("python3", "handler.py", PYTHON_HANDLER),
    };
    let io = |e: std::io::Error| CliError::Other(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir.join("src")).map_err(io)?;
    std::fs::write(dir.join("src").join(handler), text).map_err(io)?;
    std::fs::write(dir.join("granda.yaml"), manifest_text(&args.name, runtime)).map_err(io)?;
    if client.json {
        client.print_json(&json!({
            "directory": dir,
            "files": [format!("src/{handler}"), "granda.yaml".to_string()],
        }));
    } else {
        println!("wrote {0}/src/{handler} and {0}/granda.yaml", dir.display());
        println!(
            "next: granda deploy -f {}/granda.yaml && granda invoke {} -d you",
            dir.display(),
            args.name
        );
    }
    Ok(())
}

/// Reads and checks a manifest.
pub(crate) fn read(file: &Path) -> Result<Manifest, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Other(format!("reading {}: {e}", file.display())))?;
    let manifest: Manifest = serde_saphyr::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    // Each function's fields, checked here against the API's own types, so that an unknown or
    // mistyped field is reported at its line in this file, not in the JSON the server gets.
    serde_saphyr::from_str::<Checked>(&text)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    for (name, spec) in &manifest.functions {
        let from_source = spec.contains_key("source");
        if from_source == spec.contains_key("image") {
            return Err(CliError::Usage(format!(
                "{}: function {name:?} needs either `image` or `runtime` and `source`",
                file.display()
            )));
        }
        if from_source && !spec.contains_key("runtime") {
            return Err(CliError::Usage(format!(
                "{}: function {name:?} has a `source` but no `runtime` (shell, python3)",
                file.display()
            )));
        }
        if spec.contains_key("name") {
            return Err(CliError::Usage(format!(
                "{}: function {name:?}: the name is its key under `functions`",
                file.display()
            )));
        }
    }
    Ok(manifest)
}

/// `granda deploy -f FILE`: each function of the manifest in turn; stops at the first failure.
pub(crate) async fn deploy(client: &Client, args: DeployFileArgs) -> Result<(), CliError> {
    let manifest = read(&args.file)?;
    if let Some(missing) = args
        .only
        .iter()
        .find(|n| !manifest.functions.contains_key(*n))
    {
        return Err(CliError::Usage(format!(
            "{} has no function {missing:?}",
            args.file.display()
        )));
    }
    let base = args
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut results = Vec::new();
    for (name, spec) in manifest.functions {
        if !args.only.is_empty() && !args.only.contains(&name) {
            continue;
        }
        let mut body = spec;
        let from_source = match body.remove("source") {
            Some(Value::String(p)) => {
                body.insert("source".into(), source(&base.join(p), Some(&args.file))?);
                true
            }
            Some(other) => {
                return Err(CliError::Usage(format!(
                    "function {name:?}: `source` must be a path, not {other}"
                )));
            }
            None => false,
        };
        body.insert("name".into(), name.clone().into());
        let (outcome, f) = create_or_update(client, &name, &body, from_source)
            .await
            .map_err(|e| prefix(&name, e))?;
        let outcome = outcome.word();
        if !client.json {
            match f["version"].as_i64() {
                Some(v) => println!("{outcome} {name} version {v} ({})", cell(&f["image"])),
                None => println!("{outcome} {name} ({})", cell(&f["image"])),
            }
        }
        results.push(json!({"name": name, "outcome": outcome, "function": f}));
    }
    if client.json {
        client.print_json(&json!({ "functions": results }));
    }
    Ok(())
}

/// Names the function an error is about.
fn prefix(name: &str, e: CliError) -> CliError {
    match e {
        CliError::Other(m) => CliError::Other(format!("{name}: {m}")),
        CliError::Usage(m) => CliError::Usage(format!("{name}: {m}")),
        CliError::BuildFailed { message, log } => CliError::BuildFailed {
            message: format!("{name}: {message}"),
            log,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(yaml: &str) -> String {
        let file =
            std::env::temp_dir().join(format!("granda-manifest-{}.yaml", uuid::Uuid::new_v4()));
        std::fs::write(&file, yaml).unwrap();
        let err = read(&file).expect_err("refused").to_string();
        let _ = std::fs::remove_file(&file);
        assert!(err.contains(&file.display().to_string()), "{err}");
        err
    }

    /// A bad field is reported at its line of the YAML file, not in the JSON the server gets.
    #[test]
    fn field_errors_point_at_the_file_and_line() {
        let unknown = refused("functions:\n  hello:\n    image: a/b\n    timout_ms: 5\n");
        assert!(
            unknown.contains("timout_ms") && unknown.contains("line 4"),
            "{unknown}"
        );
        let mistyped = refused("functions:\n  hello:\n    image: a/b\n\n    memory_mb: lots\n");
        assert!(mistyped.contains("line 5"), "{mistyped}");
        assert!(!mistyped.contains("JSON"), "{mistyped}");
    }
}
