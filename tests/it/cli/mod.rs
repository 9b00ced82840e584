//! The `granda` CLI run as a user would (the real binary) against an in-process Granda: deploy from
//! source, invoke, read invocations and logs, failed builds, exit codes, redeploys.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::{TestApp, spawn_app_with};

mod commands;
mod follow;
mod source;
mod usage;

mod redeploy;

/// Builds the runtime base images once per test binary (on a new machine setup has done it;
/// without it, debootstrap takes minutes; nothing when the images are there).
pub(crate) fn ensure_runtime_images() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let built = std::process::Command::new("bash")
            .args(["scripts/build-runtime-images.sh", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running scripts/build-runtime-images.sh");
        assert!(built.success(), "building the runtime base images failed");
    });
}

/// A Granda with the default runtime bases, which setup builds locally (no registry): build from
/// source works with the default settings.
pub(crate) async fn spawn() -> TestApp {
    tokio::task::spawn_blocking(ensure_runtime_images)
        .await
        .unwrap();
    spawn_app_with(|_| {}).await
}

/// Runs `granda ARGS` against `app`, with `stdin` as its input.
pub(crate) async fn granda(app: &TestApp, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .args(args)
        .env("GRANDA_URL", &app.address)
        .env("GRANDA_KEY", crate::support::ADMIN_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running granda");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("granda finishes within 2 minutes")
        .unwrap()
}

/// The tag of a version built by `app` (its prefix is the queue prefix, with its installation).
pub(crate) async fn image(app: &TestApp, name: &str, version: i32) -> String {
    let installation = granda::docker::installation(&app.pool).await.unwrap();
    granda::build::tag(&app.settings.amqp_prefix, &installation, name, version)
}

/// Removes the images `app` built, then shuts it down.
pub(crate) async fn finish(app: TestApp) {
    // `*` stops at a `/`: the tags of builds are `<prefix>-fn/<installation>/<name>:v<N>`.
    let reference = format!("{}-fn/*/*", app.settings.amqp_prefix);
    let filters = std::collections::HashMap::from([("reference", vec![reference.as_str()])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::new()
        .filters(&filters)
        .build();
    for summary in app
        .docker
        .list_images(Some(options))
        .await
        .unwrap_or_default()
    {
        for tag in summary.repo_tags {
            let _ = app
                .docker
                .remove_image(
                    &tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
    }
    app.shutdown().await;
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit code `code` and returns stdout.
pub(crate) fn expect(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub(crate) fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// A fresh directory holding `files`.
pub(crate) fn dir_with(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("granda-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in files {
        std::fs::write(dir.join(name), body).unwrap();
    }
    dir
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
