//! SDKs generated from the served `/openapi.json` work: a Python client made by
//! `openapi-python-client` runs a user's scenario (tests/sdk/scenario.py: register, sync invoke
//! with bytes, async with `Idempotency-Key` and `X-Callback-Url`, poll, a CGI 201 at the
//! function's URL, events, webhooks, schedules, errors) with `mypy --strict` clean over it and no
//! generator warning; the same document compiles with `openapi-typescript` + `tsc --strict`
//! against tests/sdk/usage.ts. scripts/setup.sh installs the tools, pinned.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{ADMIN_KEY, spawn_app_with};

/// Where scripts/setup.sh installs openapi-typescript and typescript.
const TS_DIR: &str = "/var/tmp/granda-test-ts";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (run scripts/setup.sh, which installs it)"));
    let text = said(&out);
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// A fresh directory holding the served document.
async fn served_document(dir: &Path) -> crate::support::TestApp {
    let app = spawn_app_with(|s| {
        // The scenario's callback receiver listens on loopback.
        s.callback_allow_nets = granda::callback::AllowNets::parse("127.0.0.0/8").unwrap();
    })
    .await;
    let text = reqwest::get(app.url("/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("openapi.json"), text).unwrap();
    app
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("granda-sdk-{name}-{}", uuid::Uuid::new_v4()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_scenario_typed() {
    let dir = scratch("python");
    let app = served_document(&dir).await;
    // The NDJSON build stream is a vendor type the generator does not know: read as bytes.
    std::fs::write(
        dir.join("config.yaml"),
        "content_type_overrides:\n  application/x-ndjson: application/octet-stream\n",
    )
    .unwrap();
    let generated = run(
        "openapi-python-client",
        Command::new("openapi-python-client")
            .args(["generate", "--meta", "none", "--path", "openapi.json"])
            .args(["--output-path", "granda_client", "--config", "config.yaml"])
            .current_dir(&dir),
    );
    assert!(
        !generated.to_lowercase().contains("warning"),
        "the generator warned:\n{generated}"
    );
    std::fs::copy(sdk_dir().join("scenario.py"), dir.join("scenario.py")).unwrap();
    // The scenario, typed against the generated package (whose own code is the generator's
    // business: its errors are not reported, its types are used).
    let checked = run(
        "mypy --strict",
        Command::new("python3")
            .args(["-m", "mypy", "--strict", "--follow-imports=silent"])
            .args(["--no-incremental", "scenario.py"])
            .env("MYPYPATH", &dir)
            .current_dir(&dir),
    );
    assert!(checked.contains("no issues found"), "{checked}");
    let ran = run(
        "the scenario",
        Command::new("python3")
            .arg("scenario.py")
            .env("GRANDA_URL", &app.address)
            .env("GRANDA_KEY", ADMIN_KEY)
            .env("PYTHONPATH", &dir)
            .current_dir(&dir),
    );
    assert!(ran.contains("ok sdk scenario"), "{ran}");
    let _ = std::fs::remove_dir_all(&dir);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_type_checks_as_typescript() {
    let dir = scratch("ts");
    let app = served_document(&dir).await;
    app.shutdown().await;
    let bin = Path::new(TS_DIR).join("node_modules/.bin");
    run(
        "openapi-typescript",
        Command::new(bin.join("openapi-typescript"))
            .args(["openapi.json", "-o", "api.d.ts"])
            .current_dir(&dir),
    );
    std::fs::copy(sdk_dir().join("usage.ts"), dir.join("usage.ts")).unwrap();
    run(
        "tsc --strict",
        Command::new(bin.join("tsc"))
            .args(["--strict", "--noEmit", "--target", "es2020", "usage.ts"])
            .current_dir(&dir),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
