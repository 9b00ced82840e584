//! The `granda` CLI run as a user would (the real binary) against an in-process Granda: deploy from
//! source, invoke, read invocations and logs, failed builds, exit codes, redeploys.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::support::{TestApp, spawn_app_with};

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

/// The tag of a version built by `app` (its installation prefix is the queue prefix).
fn image(app: &TestApp, name: &str, version: i32) -> String {
    granda::build::tag(&app.settings.amqp_prefix, name, version)
}

/// Removes the images `app` built, then shuts it down.
async fn finish(app: TestApp) {
    let reference = format!("{}-fn/*", app.settings.amqp_prefix);
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

fn text(bytes: &[u8]) -> String {
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

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// A fresh directory holding `files`.
fn dir_with(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("granda-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in files {
        std::fs::write(dir.join(name), body).unwrap();
    }
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn deploy_from_source_invoke_and_read_the_records() {
    let app = spawn().await;
    let src = dir_with(&[(
        "handler.sh",
        "echo \"got $(wc -c) bytes\" >&2\necho 'log line' >&2\n",
    )]);
    // A single file: the handler itself. Its stdin is consumed by `wc`, so make a second function
    // that transforms the input to check the piping.
    let upper = dir_with(&[("handler.sh", "tr a-z A-Z\n")]);

    let started = Instant::now();
    let out = granda(
        &app,
        &[
            "fn",
            "deploy",
            "upper",
            "--runtime",
            "shell",
            &format!("{}/handler.sh", path(&upper)),
        ],
        b"",
    )
    .await;
    let built_in = started.elapsed();
    let said = expect(&out, 0);
    assert!(said.contains("deployed upper version 1"), "{said}");
    eprintln!("deploy from source (shell, single file) took {built_in:?}");

    // A directory, deployed as a tar.gz.
    let out = granda(
        &app,
        &["fn", "deploy", "counter", "--runtime", "shell", path(&src)],
        b"",
    )
    .await;
    expect(&out, 0);

    // invoke prints the function's stdout and nothing else: text, @file, and stdin.
    let out = granda(&app, &["invoke", "upper", "--data", "hello"], b"").await;
    assert_eq!(expect(&out, 0), "HELLO");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let input = src.join("input.txt");
    std::fs::write(&input, "from a file").unwrap();
    let out = granda(
        &app,
        &["invoke", "upper", "--data", &format!("@{}", path(&input))],
        b"",
    )
    .await;
    assert_eq!(expect(&out, 0), "FROM A FILE");
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let out = granda(&app, &["invoke", "upper", "--data", "-"], b"piped in").await;
        latencies.push(started.elapsed());
        assert_eq!(expect(&out, 0), "PIPED IN");
    }
    latencies.sort();
    eprintln!(
        "CLI invoke latency (process start to exit), median of 5: {:?}",
        latencies[2]
    );

    // --json output parses; fn get shows the version.
    let f = json(&granda(&app, &["--json", "fn", "get", "upper"], b"").await);
    assert_eq!(f["runtime"], "shell");
    assert_eq!(f["version"], 1);
    assert_eq!(f["image"], image(&app, "upper", 1));
    assert_eq!(f["versions"][0]["status"], "succeeded");
    let list = json(&granda(&app, &["fn", "ls", "--json"], b"").await);
    assert_eq!(list["functions"].as_array().unwrap().len(), 2);
    let table = expect(&granda(&app, &["fn", "ls"], b"").await, 0);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&image(&app, "counter", 1)), "{table}");

    // An async invoke prints the id; inv get/logs/ls read it.
    let out = granda(
        &app,
        &["invoke", "counter", "--async", "--data", "12345"],
        b"",
    )
    .await;
    let id = expect(&out, 0).trim().to_string();
    let id_uuid: uuid::Uuid = id.parse().expect("an invocation id");
    app.wait_final(id_uuid, Duration::from_secs(30)).await;
    let record = json(&granda(&app, &["inv", "get", &id, "--json"], b"").await);
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["trigger"], "async");
    let logs = expect(&granda(&app, &["inv", "logs", &id], b"").await, 0);
    assert_eq!(logs, "got 5 bytes\nlog line\n");
    let page = json(&granda(&app, &["inv", "ls", "counter", "--json"], b"").await);
    assert_eq!(page["invocations"][0]["id"], id.as_str());
    let table = expect(
        &granda(&app, &["inv", "ls", "upper", "--limit", "3"], b"").await,
        0,
    );
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().nth(1).unwrap().contains("succeeded"),
        "{table}"
    );

    let _ = std::fs::remove_dir_all(src);
    let _ = std::fs::remove_dir_all(upper);
    finish(app).await;
}

#[tokio::test]
async fn a_failing_build_registers_nothing_and_shows_its_log() {
    let app = spawn().await;
    let src = dir_with(&[("handler.sh", "if then fi (\n")]);
    let out = granda(
        &app,
        &["fn", "deploy", "broken", "--runtime", "shell", path(&src)],
        b"",
    )
    .await;
    expect(&out, 7);
    let err = text(&out.stderr);
    assert!(
        err.starts_with("granda: error: the build of version 1 failed"),
        "{err}"
    );
    assert!(err.contains("build log"), "{err}");
    assert!(
        err.contains("syntax error"),
        "the log tail shows the shell's complaint: {err}"
    );
    // Nothing registered.
    let out = granda(&app, &["fn", "get", "broken"], b"").await;
    expect(&out, 3);

    // Over the API without streaming: 422 with the log tail.
    let response = app
        .post_json(
            "/v1/functions",
            &serde_json::json!({"name": "broken", "runtime": "shell", "source": "case in\n"}),
        )
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "build_failed");
    assert!(
        body["error"]["log"]
            .as_str()
            .unwrap()
            .contains("syntax error"),
        "{body}"
    );

    // Bad input is refused before any build: unknown runtime, a directory without the handler.
    let out = granda(
        &app,
        &["fn", "deploy", "x", "--runtime", "cobol", path(&src)],
        b"",
    )
    .await;
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("runtime: one of shell, python3"),
        "{}",
        text(&out.stderr)
    );
    let empty = dir_with(&[("other.sh", "true\n")]);
    let out = granda(
        &app,
        &["fn", "deploy", "x", "--runtime", "shell", path(&empty)],
        b"",
    )
    .await;
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("handler.sh"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr).lines().count(), 1, "errors are one line");

    let _ = std::fs::remove_dir_all(src);
    let _ = std::fs::remove_dir_all(empty);
    finish(app).await;
}

#[tokio::test]
async fn exit_codes_mean_something() {
    let app = spawn().await;
    // Not found: 3.
    expect(&granda(&app, &["invoke", "nope"], b"").await, 3);
    expect(&granda(&app, &["fn", "rm", "nope"], b"").await, 3);
    // A webhook or schedule for a function that doesn't exist: not found too.
    expect(&granda(&app, &["hooks", "create", "nope"], b"").await, 3);
    expect(
        &granda(&app, &["schedules", "create", "nope", "* * * * *"], b"").await,
        3,
    );
    let id = uuid::Uuid::now_v7().to_string();
    let out = granda(&app, &["inv", "get", &id], b"").await;
    expect(&out, 3);
    assert_eq!(
        text(&out.stderr),
        format!("granda: error: no invocation {id}\n")
    );
    // Usage: 2 (clap's).
    expect(&granda(&app, &["invoke"], b"").await, 2);
    expect(&granda(&app, &["fn", "frobnicate"], b"").await, 2);
    // The function failed: 4; timed out: 5.
    app.register("fails", "granda-test/fail", serde_json::json!({}))
        .await;
    let out = granda(&app, &["invoke", "fails"], b"").await;
    expect(&out, 4);
    assert!(out.stdout.is_empty());
    let slow = dir_with(&[("handler.sh", "sleep 10\n")]);
    let out = granda(
        &app,
        &[
            "fn",
            "deploy",
            "slow",
            "--runtime",
            "shell",
            "--timeout-ms",
            "500",
            path(&slow),
        ],
        b"",
    )
    .await;
    expect(&out, 0);
    expect(&granda(&app, &["invoke", "slow"], b"").await, 5);
    // No server: 6.
    let out = granda(&app, &["fn", "ls", "--url", "http://127.0.0.1:1"], b"").await;
    expect(&out, 6);
    // Completions and help.
    let script = expect(&granda(&app, &["completions", "bash"], b"").await, 0);
    assert!(
        script.contains("granda") && script.contains("deploy"),
        "{script}"
    );
    let help = expect(&granda(&app, &["inv", "--help"], b"").await, 0);
    assert!(help.contains("logs"), "{help}");

    let _ = std::fs::remove_dir_all(slow);
    finish(app).await;
}

#[tokio::test]
async fn a_redeploy_builds_a_new_version_and_keeps_the_old_image() {
    let app = spawn().await;
    let v1 = dir_with(&[("handler.sh", "echo one\n")]);
    let v2 = dir_with(&[("handler.sh", "echo two\n")]);
    expect(
        &granda(
            &app,
            &["fn", "deploy", "ver", "--runtime", "shell", path(&v1)],
            b"",
        )
        .await,
        0,
    );
    assert_eq!(
        expect(&granda(&app, &["invoke", "ver"], b"").await, 0),
        "one\n"
    );
    // Calls during the redeploy all succeed, on one version or the other: no window without an image.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let calls = {
        let url = app.url("/v1/functions/ver/invoke");
        let client = app.client.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            // Until a call after the switch got the new version (or too many calls).
            while answers.len() < 200 {
                let response = client.post(&url).send().await.unwrap();
                let answer = (response.status().as_u16(), response.text().await.unwrap());
                let done = *stopped.borrow() && answer.1 == "two\n";
                answers.push(answer);
                if done {
                    break;
                }
            }
            answers
        })
    };
    let out = granda(
        &app,
        &["fn", "deploy", "ver", "--runtime", "shell", path(&v2)],
        b"",
    )
    .await;
    assert!(expect(&out, 0).contains("deployed ver version 2"));
    let _ = stop.send(true);
    let answers = calls.await.unwrap();
    assert!(!answers.is_empty());
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && (b == "one\n" || b == "two\n")),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(_, b)| b == "two\n"), "{answers:?}");
    eprintln!("{} calls during the redeploy, all answered", answers.len());
    assert_eq!(
        expect(&granda(&app, &["invoke", "ver"], b"").await, 0),
        "two\n"
    );

    let f = json(&granda(&app, &["fn", "get", "ver", "--json"], b"").await);
    assert_eq!(f["version"], 2);
    assert_eq!(f["image"], image(&app, "ver", 2));
    let versions: Vec<i64> = f["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    // The old image stays: invocations queued before the switch still name it.
    app.docker
        .inspect_image(&image(&app, "ver", 1))
        .await
        .expect("v1 is kept");
    app.docker
        .inspect_image(&image(&app, "ver", 2))
        .await
        .expect("v2 is there");
    let human = expect(&granda(&app, &["fn", "get", "ver"], b"").await, 0);
    assert!(
        human.contains("2 *"),
        "the current version is marked: {human}"
    );

    // A failed redeploy leaves the function on its last good version.
    let bad = dir_with(&[("handler.sh", "fi\n")]);
    expect(
        &granda(
            &app,
            &["fn", "deploy", "ver", "--runtime", "shell", path(&bad)],
            b"",
        )
        .await,
        7,
    );
    assert_eq!(
        expect(&granda(&app, &["invoke", "ver"], b"").await, 0),
        "two\n"
    );
    let f = json(&granda(&app, &["fn", "get", "ver", "--json"], b"").await);
    assert_eq!(f["version"], 2);
    assert_eq!(f["versions"][0]["status"], "failed");

    // The build log streams as NDJSON when asked: log lines, then the verdict.
    let response = app
        .client
        .put(app.url("/v1/functions/ver"))
        .header("accept", "application/x-ndjson")
        .json(&serde_json::json!({"source": "echo three\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 3, "{body}");
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l["log"].is_string()),
        "{body}"
    );
    assert!(body.contains("Step 1/"), "{body}");
    let last = lines.last().unwrap();
    assert_eq!(last["status"], 200, "{body}");
    assert_eq!(last["function"]["version"], 4, "v3 failed above; {body}");
    assert_eq!(
        expect(&granda(&app, &["invoke", "ver"], b"").await, 0),
        "three\n"
    );

    // An image deploy of an existing name updates it; it is no longer built from source.
    let out = granda(
        &app,
        &[
            "fn",
            "deploy",
            "ver",
            "--image",
            "granda-test/echo",
            "--json",
        ],
        b"",
    )
    .await;
    let f = json(&out);
    assert_eq!(f["image"], "granda-test/echo");
    assert_eq!(f["runtime"], Value::Null);
    assert_eq!(
        expect(&granda(&app, &["invoke", "ver", "-d", "x"], b"").await, 0),
        "x"
    );

    // fn update changes settings without a build.
    let f = json(
        &granda(
            &app,
            &[
                "fn",
                "update",
                "ver",
                "--timeout-ms",
                "1234",
                "--mode",
                "warm",
                "--min-warm",
                "1",
                "--json",
            ],
            b"",
        )
        .await,
    );
    assert_eq!(f["timeout_ms"], 1234);
    assert_eq!(f["mode"], "warm");
    assert_eq!(f["min_warm"], 1);
    assert_eq!(f["image"], "granda-test/echo");

    for d in [v1, v2, bad] {
        let _ = std::fs::remove_dir_all(d);
    }
    finish(app).await;
}

#[tokio::test]
async fn python3_functions_from_a_directory() {
    tokio::task::spawn_blocking(ensure_runtime_images)
        .await
        .unwrap();
    let app = spawn().await;
    let src = dir_with(&[
        (
            "handler.py",
            "import sys, json\nfrom words import shout\nprint(json.dumps({'handling': True}), file=sys.stderr)\nsys.stdout.write(shout(sys.stdin.read()))\n",
        ),
        ("words.py", "def shout(s):\n    return s.upper() + '!'\n"),
    ]);
    let started = Instant::now();
    let out = granda(
        &app,
        &["fn", "deploy", "py", "--runtime", "python3", path(&src)],
        b"",
    )
    .await;
    assert!(expect(&out, 0).contains("deployed py version 1"));
    eprintln!(
        "deploy from source (python3, directory) took {:?}",
        started.elapsed()
    );
    let out = granda(&app, &["invoke", "py", "--data", "-"], b"hello").await;
    assert_eq!(expect(&out, 0), "HELLO!");

    // An exception is a failed invocation (exit 4), its traceback in the logs.
    let boom = dir_with(&[("handler.py", "raise ValueError('boom')\n")]);
    expect(
        &granda(
            &app,
            &["fn", "deploy", "boom", "--runtime", "python3", path(&boom)],
            b"",
        )
        .await,
        0,
    );
    let out = granda(&app, &["invoke", "boom"], b"").await;
    expect(&out, 4);
    let last = app.invocations_of("boom").await;
    let id = last[0]["id"].as_str().unwrap();
    let logs = expect(&granda(&app, &["inv", "logs", id], b"").await, 0);
    assert!(logs.contains("ValueError: boom"), "{logs}");

    // A syntax error fails the build.
    let bad = dir_with(&[("handler.py", "def (:\n")]);
    let out = granda(
        &app,
        &["fn", "deploy", "bad", "--runtime", "python3", path(&bad)],
        b"",
    )
    .await;
    expect(&out, 7);
    assert!(
        text(&out.stderr).contains("SyntaxError"),
        "{}",
        text(&out.stderr)
    );

    for d in [src, boom, bad] {
        let _ = std::fs::remove_dir_all(d);
    }
    finish(app).await;
}

#[tokio::test]
async fn hooks_events_and_retries_from_the_cli() {
    let app = spawn().await;
    let echo = dir_with(&[("handler.sh", "cat\n")]);
    expect(
        &granda(
            &app,
            &["fn", "deploy", "sink", "--runtime", "shell", path(&echo)],
            b"",
        )
        .await,
        0,
    );

    // Webhooks: create shows the secret once; ls, rotate, rm.
    let hook = json(
        &granda(
            &app,
            &["hooks", "create", "sink", "--scheme", "github", "--json"],
            b"",
        )
        .await,
    );
    let id = hook["id"].as_str().unwrap().to_string();
    assert!(
        hook["secret"].as_str().is_some_and(|s| !s.is_empty()),
        "{hook}"
    );
    assert!(
        hook["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/hooks/{id}"))
    );
    let table = expect(&granda(&app, &["hooks", "ls"], b"").await, 0);
    assert!(table.contains(&id), "{table}");
    let rotated = json(
        &granda(
            &app,
            &["hooks", "rotate", &id, "--grace-seconds", "0", "--json"],
            b"",
        )
        .await,
    );
    assert!(
        rotated["secret"]
            .as_str()
            .is_some_and(|s| s != hook["secret"].as_str().unwrap()),
        "{rotated}"
    );
    expect(&granda(&app, &["hooks", "rm", &id], b"").await, 0);
    expect(&granda(&app, &["hooks", "rm", &id], b"").await, 3);

    // Events: a subscriber gets an invocation per event.
    let response = app
        .post_json(
            "/v1/functions/sink/subscriptions",
            &serde_json::json!({"pattern": "orders.*"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let event = json(
        &granda(
            &app,
            &[
                "events",
                "publish",
                "orders.created",
                "--data",
                "{\"n\":1}",
                "--json",
            ],
            b"",
        )
        .await,
    );
    let invocation: uuid::Uuid = event["invocations"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let record = app.wait_final(invocation, Duration::from_secs(30)).await;
    assert_eq!(record["output"], "{\"n\":1}");
    assert_eq!(record["trigger"], "event");

    // Only an unsuccessful invocation can be retried: a refusal is exit 1, in one line.
    let out = granda(&app, &["inv", "retry", &invocation.to_string()], b"").await;
    expect(&out, 1);
    assert!(
        text(&out.stderr).contains("can be retried"),
        "{}",
        text(&out.stderr)
    );
    app.register(
        "fails",
        "granda-test/fail",
        serde_json::json!({"max_attempts": 1}),
    )
    .await;
    let out = granda(&app, &["invoke", "fails", "--async"], b"").await;
    let failed: uuid::Uuid = expect(&out, 0).trim().parse().unwrap();
    let record = app.wait_final(failed, Duration::from_secs(30)).await;
    assert_ne!(record["status"], "succeeded");
    let out = granda(&app, &["inv", "retry", &failed.to_string()], b"").await;
    let again: uuid::Uuid = expect(&out, 0)
        .trim()
        .parse()
        .expect("retry prints an invocation id");
    app.wait_final(again, Duration::from_secs(30)).await;

    let _ = std::fs::remove_dir_all(echo);
    finish(app).await;
}

#[tokio::test]
async fn the_key_is_sent_as_a_bearer_token() {
    // A one-request server that records what it got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"functions": []}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&request).to_lowercase()
    });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .args(["fn", "ls", "--json"])
        .env("GRANDA_URL", &url)
        .env("GRANDA_KEY", "gk_test_123")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let request = server.await.unwrap();
    assert!(request.starts_with("get /v1/functions "), "{request}");
    assert!(
        request.contains("authorization: bearer gk_test_123"),
        "{request}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fn_update_changes_one_setting_at_a_time_and_client_commands_take_no_server_flags() {
    let app = spawn().await;
    let deploy = [
        "fn",
        "deploy",
        "knobs",
        "--image",
        "granda-test/echo",
        "--env",
        "A=1",
        "--max-concurrency",
        "2",
        "--json",
    ];
    let f = json(&granda(&app, &deploy, b"").await);
    assert_eq!(f["env"], serde_json::json!({"A": "1"}));
    assert_eq!(f["max_concurrency"], 2);

    // --env adds or replaces one variable; --unset-env removes one; the others stay.
    let update = |args: &'static [&'static str]| {
        let mut all = vec!["fn", "update", "knobs", "--json"];
        all.extend_from_slice(args);
        all
    };
    let f = json(&granda(&app, &update(&["--env", "B=2"]), b"").await);
    assert_eq!(f["env"], serde_json::json!({"A": "1", "B": "2"}));
    let f = json(&granda(&app, &update(&["--env", "A=3", "--unset-env", "B"]), b"").await);
    assert_eq!(f["env"], serde_json::json!({"A": "3"}));

    // A bound is cleared with `none`; other fields have flags of their own.
    let f = json(
        &granda(
            &app,
            &update(&[
                "--max-concurrency",
                "none",
                "--max-attempts",
                "2",
                "--retry-on",
                "error,timeout",
                "--pids",
                "32",
                "--tmp-mb",
                "8",
                "--public",
                "true",
                "--user",
                "1000:1000",
            ]),
            b"",
        )
        .await,
    );
    assert_eq!(f["max_concurrency"], Value::Null, "{f}");
    assert_eq!(f["max_attempts"], 2, "{f}");
    assert_eq!(
        f["retry_on"],
        serde_json::json!(["error", "timeout"]),
        "{f}"
    );
    assert_eq!(f["pids"], 32, "{f}");
    assert_eq!(f["tmp_mb"], 8, "{f}");
    assert_eq!(f["public"], true, "{f}");
    assert_eq!(f["user"], "1000:1000", "{f}");

    // A secret is set and removed one at a time; reads show names only.
    let f = json(
        &granda(
            &app,
            &update(&["--secret", "S1=x", "--secret", "S2=y"]),
            b"",
        )
        .await,
    );
    assert_eq!(f["secrets"], serde_json::json!(["S1", "S2"]), "{f}");
    let f = json(&granda(&app, &update(&["--unset-secret", "S1"]), b"").await);
    assert_eq!(f["secrets"], serde_json::json!(["S2"]), "{f}");

    // Server settings belong to the processes: a client command refuses them (usage, exit 2).
    let out = granda(&app, &["fn", "ls", "--database-url", "postgres://x/y"], b"").await;
    expect(&out, 2);
    let help = expect(&granda(&app, &["fn", "deploy", "--help"], b"").await, 0);
    assert!(!help.contains("--listen"), "{help}");
    assert!(!help.contains("--database-url"), "{help}");
    let help = expect(&granda(&app, &["up", "--help"], b"").await, 0);
    assert!(help.contains("--database-url"), "{help}");
    // A URL without a scheme is a usage error too.
    expect(
        &granda(&app, &["fn", "ls", "--url", "127.0.0.1:8080"], b"").await,
        2,
    );
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_shows_its_invocation_id_and_stderr_tail_and_keys_work_over_the_api() {
    let app = spawn().await;
    let src = dir_with(&[(
        "handler.sh",
        "echo 'first line of stderr' >&2\necho 'why it failed' >&2\nexit 3\n",
    )]);
    expect(
        &granda(
            &app,
            &["fn", "deploy", "sad", "--runtime", "shell", path(&src)],
            b"",
        )
        .await,
        0,
    );
    let out = granda(&app, &["invoke", "sad"], b"").await;
    expect(&out, 4);
    let err = text(&out.stderr);
    let id = app.invocations_of("sad").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains(&id), "{err}");
    assert!(err.contains("exit 3"), "{err}");
    assert!(err.contains("why it failed"), "{err}");

    // Keys over the API: create (shown once), ls, revoke.
    let out = granda(
        &app,
        &["keys", "create", "--name", "ci", "--scope", "invoke"],
        b"",
    )
    .await;
    let key = expect(&out, 0).trim().to_string();
    assert!(key.starts_with("gk_"), "{key}");
    let list = json(&granda(&app, &["keys", "ls", "--json"], b"").await);
    let made = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci")
        .expect("the new key is listed")
        .clone();
    assert!(made["revoked_at"].is_null());
    let id = made["id"].as_str().unwrap();
    expect(&granda(&app, &["keys", "revoke", id], b"").await, 0);
    let list = json(&granda(&app, &["keys", "ls", "--json"], b"").await);
    let revoked = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert!(!revoked["revoked_at"].is_null(), "{revoked}");
    // Bad enum values list the allowed ones and are usage errors.
    let out = granda(
        &app,
        &["keys", "create", "--name", "x", "--scope", "root"],
        b"",
    )
    .await;
    expect(&out, 2);
    assert!(text(&out.stderr).contains("admin"), "{}", text(&out.stderr));
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_runtime_base_image_says_which_setting_to_change() {
    tokio::task::spawn_blocking(ensure_runtime_images)
        .await
        .unwrap();
    let app = spawn_app_with(|s| {
        s.runtime_shell_image = "granda-test/no-such-base:latest".into();
    })
    .await;
    let src = dir_with(&[("handler.sh", "cat\n")]);
    let out = granda(
        &app,
        &["fn", "deploy", "nobase", "--runtime", "shell", path(&src)],
        b"",
    )
    .await;
    expect(&out, 7);
    let err = text(&out.stderr);
    assert!(err.contains("GRANDA_RUNTIME_SHELL_IMAGE"), "{err}");
    assert!(err.contains("build-runtime-images.sh"), "{err}");
    finish(app).await;
}

/// The value of `key:` in `fn get`'s human output.
fn setting<'a>(shown: &'a str, key: &str) -> &'a str {
    shown
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key}: in\n{shown}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fn_get_shows_every_setting_and_the_versions() {
    tokio::task::spawn_blocking(ensure_runtime_images)
        .await
        .unwrap();
    let app = spawn_app_with(|s| {
        s.callback_allow_nets = granda::callback::AllowNets::parse("127.0.0.0/8").unwrap();
    })
    .await;
    let src = dir_with(&[("handler.sh", "cat\n")]);
    let deploy = [
        "fn",
        "deploy",
        "shown",
        "--runtime",
        "shell",
        path(&src),
        "--env",
        "GREETING=hello there",
        "--secret",
        "TOKEN=s3cret",
        "--retry-on",
        "error,timeout",
        "--max-attempts",
        "3",
        "--mode",
        "warm",
        "--min-warm",
        "1",
        "--max-containers",
        "4",
        "--callback-url",
        "http://127.0.0.1:9/done",
        "--public",
        "true",
        "--user",
        "1000:1000",
        "--pids",
        "40",
        "--tmp-mb",
        "16",
    ];
    expect(&granda(&app, &deploy, b"").await, 0);
    let shown = expect(&granda(&app, &["fn", "get", "shown"], b"").await, 0);
    assert_eq!(setting(&shown, "mode"), "warm");
    assert_eq!(setting(&shown, "min_warm"), "1");
    assert_eq!(setting(&shown, "max_containers"), "4");
    assert_eq!(setting(&shown, "max_concurrency"), "-");
    assert_eq!(setting(&shown, "retry_on"), "error, timeout");
    assert_eq!(setting(&shown, "max_attempts"), "3");
    assert_eq!(setting(&shown, "public"), "true");
    assert_eq!(setting(&shown, "network"), "none");
    assert_eq!(setting(&shown, "user"), "1000:1000");
    assert_eq!(setting(&shown, "pids"), "40");
    assert_eq!(setting(&shown, "tmp_mb"), "16");
    assert_eq!(setting(&shown, "callback_url"), "http://127.0.0.1:9/done");
    assert_eq!(setting(&shown, "secrets"), "TOKEN");
    assert_eq!(setting(&shown, "runtime"), "shell");
    assert!(!shown.contains("s3cret"), "{shown}");
    // The env: names and values, one a line.
    assert!(shown.contains("\n  GREETING=hello there\n"), "{shown}");
    // One timestamp format: RFC 3339 in UTC, to the second.
    let created = setting(&shown, "created_at");
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created}"
    );
    // The versions: the current one marked.
    let header = shown
        .lines()
        .find(|l| l.starts_with("VERSION"))
        .unwrap_or_else(|| panic!("no versions table in\n{shown}"));
    assert!(header.contains("FINISHED_AT"), "{header}");
    let row = shown.lines().find(|l| l.starts_with("1 *")).unwrap();
    assert!(row.contains("succeeded"), "{row}");
    finish(app).await;
}

/// Spawns `granda ARGS` against `app` with stdout piped, for commands that run until killed.
fn granda_streaming(app: &TestApp, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"))
        .args(args)
        .env("GRANDA_URL", &app.address)
        .env("GRANDA_KEY", crate::support::ADMIN_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running granda")
}

/// Reads `lines` until every one of `wanted` has appeared in a line (or panics after `within`);
/// returns the lines read.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    wanted: &[&str],
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.contains(w)))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("not within {within:?}: {wanted:?}; read {seen:#?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended; read {seen:#?}"));
        seen.push(line);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv_ls_across_functions_with_filters_and_follow() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn().await;
    app.register("happy", "granda-test/echo", serde_json::json!({}))
        .await;
    app.register("grumpy", "granda-test/fail", serde_json::json!({}))
        .await;
    expect(&granda(&app, &["invoke", "happy", "-d", "x"], b"").await, 0);
    expect(
        &granda(&app, &["invoke", "grumpy", "-d", "x"], b"").await,
        4,
    );
    let queued = app.invoke_async("happy", "later").await;
    app.wait_final(queued, Duration::from_secs(30)).await;

    // Across functions, newest first.
    let all = json(&granda(&app, &["inv", "ls", "--json"], b"").await);
    let list = all["invocations"].as_array().unwrap();
    let functions: Vec<&str> = list
        .iter()
        .map(|i| i["function"].as_str().unwrap())
        .collect();
    assert_eq!(functions, ["happy", "grumpy", "happy"], "{all}");
    assert_eq!(list[0]["id"], queued.to_string());
    // Filters: function, status, trigger, since; paging by `before`.
    fn only<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["inv", "ls", "--json"];
        all.extend_from_slice(args);
        all
    }
    let page = json(&granda(&app, &only(&["grumpy"]), b"").await);
    assert_eq!(page["invocations"].as_array().unwrap().len(), 1, "{page}");
    let page = json(&granda(&app, &only(&["--status", "failed"]), b"").await);
    assert_eq!(page["invocations"][0]["function"], "grumpy", "{page}");
    assert_eq!(page["invocations"].as_array().unwrap().len(), 1, "{page}");
    let page = json(&granda(&app, &only(&["--trigger", "async"]), b"").await);
    assert_eq!(page["invocations"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["invocations"][0]["id"], queued.to_string());
    let page = json(&granda(&app, &only(&["happy", "--trigger", "sync"]), b"").await);
    assert_eq!(page["invocations"].as_array().unwrap().len(), 1, "{page}");
    let page = json(&granda(&app, &only(&["--since", "2999-01-01T00:00:00Z"]), b"").await);
    assert_eq!(page["invocations"], serde_json::json!([]), "{page}");
    let page = json(&granda(&app, &only(&["--limit", "2"]), b"").await);
    let next = page["next"].as_str().expect("a next page").to_string();
    let rest = json(&granda(&app, &only(&["--before", &next]), b"").await);
    assert_eq!(rest["invocations"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["next"], Value::Null);
    // Bad input: a usage error (exit 2) from the CLI, a 400 from the API; a missing function 3.
    expect(
        &granda(&app, &["inv", "ls", "--status", "sad"], b"").await,
        2,
    );
    let code = crate::support::error_code(app.get("/v1/invocations?trigger=cron").await, 400).await;
    assert_eq!(code, "bad_request");
    crate::support::error_code(app.get("/v1/invocations?since=yesterday").await, 400).await;
    crate::support::error_code(app.get("/v1/invocations?functon=happy").await, 400).await;
    expect(&granda(&app, &["inv", "ls", "nosuch"], b"").await, 3);
    // The human table has the function and one timestamp format.
    let table = expect(&granda(&app, &["inv", "ls"], b"").await, 0);
    assert!(table.starts_with("ID  "), "{table}");
    assert!(table.contains("FUNCTION"), "{table}");
    assert!(!table.contains('+') && table.contains('Z'), "{table}");

    // --follow prints the recent ones, then each new one as it is queued, until killed.
    let mut follow = granda_streaming(&app, &["inv", "ls", "happy", "--follow"]);
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = queued.to_string();
    read_until(&mut lines, &[&first], Duration::from_secs(30)).await;
    let a = app.invoke_async("happy", "a").await.to_string();
    let b = app.invoke_async("happy", "b").await.to_string();
    app.invoke_async("grumpy", "not this one").await;
    let seen = read_until(&mut lines, &[&a, &b], Duration::from_secs(30)).await;
    assert!(seen.iter().all(|l| !l.contains("grumpy")), "{seen:#?}");
    let at = |id: &str| seen.iter().position(|l| l.contains(id)).unwrap();
    assert!(at(&a) < at(&b), "oldest first: {seen:#?}");
    follow.kill().await.unwrap();
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_prints_finished_invocations_with_output_and_stderr_and_follows() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn().await;
    // The input is the shell script it runs.
    app.register(
        "talky",
        "granda-test/sh",
        serde_json::json!({"input": "args"}),
    )
    .await;
    let response = app
        .invoke("talky", "echo first-out; echo first-err >&2")
        .await;
    assert_eq!(response.status(), 200);
    let first = app.invocations_of("talky").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let shown = expect(&granda(&app, &["logs", "talky"], b"").await, 0);
    let header = shown.lines().next().unwrap_or_default();
    assert!(
        header.contains(&first) && header.contains("succeeded"),
        "{shown}"
    );
    assert!(shown.contains("\n  out| first-out\n"), "{shown}");
    assert!(shown.contains("\n  err| first-err\n"), "{shown}");
    expect(&granda(&app, &["logs", "nosuch"], b"").await, 3);

    // --follow: each new invocation once, when it has finished, with its output and stderr.
    let mut follow = granda_streaming(&app, &["logs", "talky", "--follow"]);
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    read_until(&mut lines, &["first-err"], Duration::from_secs(30)).await;
    let slow = app
        .invoke_async("talky", "sleep 1; echo slow-out; echo slow-err >&2")
        .await
        .to_string();
    let failed = app
        .invoke_async("talky", "echo second-out; echo second-err >&2; exit 3")
        .await
        .to_string();
    let seen = read_until(
        &mut lines,
        &[&failed, "second-out", "second-err", &slow, "slow-err"],
        Duration::from_secs(60),
    )
    .await;
    let header = seen.iter().find(|l| l.contains(&failed)).unwrap();
    assert!(
        header.contains("failed") && header.contains("exit=3"),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|l| !l.contains(&first)),
        "printed once: {seen:#?}"
    );
    follow.kill().await.unwrap();
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_subscriptions_and_build_logs_from_the_cli() {
    let app = spawn().await;
    // Builds: v1 succeeds, v2 fails its syntax check; both logs can be read back.
    let good = dir_with(&[("handler.sh", "cat\n")]);
    let bad = dir_with(&[("handler.sh", "if then fi (\n")]);
    let deploy = |dir: &PathBuf| {
        vec![
            "fn".to_string(),
            "deploy".into(),
            "built".into(),
            "--runtime".into(),
            "shell".into(),
            path(dir).into(),
        ]
    };
    let args = deploy(&good);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect(&granda(&app, &args, b"").await, 0);
    let args = deploy(&bad);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    expect(&granda(&app, &args, b"").await, 7);
    let list = expect(&granda(&app, &["fn", "builds", "built"], b"").await, 0);
    assert!(
        list.lines()
            .any(|l| l.starts_with("2 ") && l.contains("failed")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("1 *") && l.contains("succeeded")),
        "{list}"
    );
    let out = granda(&app, &["fn", "builds", "built", "2"], b"").await;
    let log = expect(&out, 0);
    assert!(log.contains("syntax error"), "{log}");
    assert!(
        text(&out.stderr).contains("failed"),
        "{}",
        text(&out.stderr)
    );
    let v1 = json(&granda(&app, &["fn", "builds", "built", "1", "--json"], b"").await);
    assert_eq!(v1["status"], "succeeded", "{v1}");
    assert_eq!(v1["current"], true, "{v1}");
    assert!(!v1["log"].as_str().unwrap().is_empty(), "{v1}");
    expect(&granda(&app, &["fn", "builds", "built", "9"], b"").await, 3);
    expect(&granda(&app, &["fn", "builds", "nosuch"], b"").await, 3);
    crate::support::error_code(app.get("/v1/functions/built/builds/latest").await, 400).await;

    // Events: subscribe, list, publish, read the event back, unsubscribe by pattern.
    let id = expect(
        &granda(&app, &["events", "subscribe", "built", "orders.*"], b"").await,
        0,
    );
    assert!(uuid::Uuid::parse_str(id.trim()).is_ok(), "{id}");
    let listed = expect(&granda(&app, &["events", "ls", "built"], b"").await, 0);
    assert!(
        listed.contains("orders.*") && listed.contains(id.trim()),
        "{listed}"
    );
    expect(
        &granda(&app, &["events", "subscribe", "built", "orders.*"], b"").await,
        1,
    );
    let published = json(
        &granda(
            &app,
            &[
                "events",
                "publish",
                "orders.created",
                "-d",
                "{\"n\":1}",
                "--json",
            ],
            b"",
        )
        .await,
    );
    let event = published["id"].as_str().unwrap();
    let shown = expect(&granda(&app, &["events", "get", event], b"").await, 0);
    assert!(shown.contains("orders.created"), "{shown}");
    assert!(shown.contains("{\"n\":1}"), "{shown}");
    assert!(shown.contains("built"), "the fan-out is listed: {shown}");
    expect(
        &granda(&app, &["events", "unsubscribe", "built", "orders.*"], b"").await,
        0,
    );
    let subscriptions = json(&granda(&app, &["events", "ls", "built", "--json"], b"").await);
    assert_eq!(subscriptions["subscriptions"], serde_json::json!([]));
    expect(
        &granda(&app, &["events", "unsubscribe", "built", "orders.*"], b"").await,
        3,
    );
    expect(
        &granda(
            &app,
            &["events", "get", &uuid::Uuid::now_v7().to_string()],
            b"",
        )
        .await,
        3,
    );
    finish(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fn_init_writes_a_function_that_deploy_f_deploys_idempotently() {
    let app = spawn().await;
    let root = dir_with(&[]);
    // Scaffolding: a handler and a manifest per runtime, which deploy and answer as written.
    for (name, runtime, handler) in [
        ("hello", "shell", "handler.sh"),
        ("hellopy", "python3", "handler.py"),
    ] {
        let out = granda(
            &app,
            &[
                "fn",
                "init",
                name,
                "--runtime",
                runtime,
                "--dir",
                path(&root),
            ],
            b"",
        )
        .await;
        expect(&out, 0);
        let dir = root.join(name);
        assert!(dir.join(handler).is_file() && dir.join("granda.yaml").is_file());
        let manifest = dir.join("granda.yaml");
        let out = granda(&app, &["deploy", "-f", path(&manifest)], b"").await;
        let said = expect(&out, 0);
        assert!(
            said.contains(&format!("created {name} version 1")),
            "{said}"
        );
        let out = granda(&app, &["invoke", name, "-d", "you"], b"").await;
        assert_eq!(expect(&out, 0).trim(), "hello, you");
        let f = json(&granda(&app, &["fn", "get", name, "--json"], b"").await);
        assert_eq!(f["env"], serde_json::json!({"GREETING": "hello"}), "{f}");
        assert_eq!(f["timeout_ms"], 10000, "{f}");
    }
    // An existing directory is refused.
    let out = granda(
        &app,
        &[
            "fn",
            "init",
            "hello",
            "--runtime",
            "shell",
            "--dir",
            path(&root),
        ],
        b"",
    )
    .await;
    expect(&out, 1);

    // A manifest of two functions from images, every field passed on.
    let manifest = root.join("granda.yaml");
    let yaml = "functions:\n  \
        up:\n    image: granda-test/echo\n    max_concurrency: 2\n    retry_on: [error]\n    \
        env:\n      A: '1'\n  \
        down:\n    image: granda-test/fail\n    public: true\n    description: fails\n";
    std::fs::write(&manifest, yaml).unwrap();
    let said = expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        0,
    );
    assert!(
        said.contains("created up") && said.contains("created down"),
        "{said}"
    );
    let up = json(&granda(&app, &["fn", "get", "up", "--json"], b"").await);
    assert_eq!(up["max_concurrency"], 2, "{up}");
    assert_eq!(up["retry_on"], serde_json::json!(["error"]), "{up}");
    let down = json(&granda(&app, &["fn", "get", "down", "--json"], b"").await);
    assert_eq!(down["public"], true, "{down}");
    // Again, unchanged: nothing is written.
    let said = expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        0,
    );
    assert!(
        said.contains("unchanged up") && said.contains("unchanged down"),
        "{said}"
    );
    let again = json(&granda(&app, &["fn", "get", "up", "--json"], b"").await);
    assert_eq!(again["updated_at"], up["updated_at"]);
    // A changed field updates that function only.
    std::fs::write(
        &manifest,
        yaml.replace("max_concurrency: 2", "max_concurrency: 3"),
    )
    .unwrap();
    let said = expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        0,
    );
    assert!(
        said.contains("updated up") && said.contains("unchanged down"),
        "{said}"
    );
    let up = json(&granda(&app, &["fn", "get", "up", "--json"], b"").await);
    assert_eq!(up["max_concurrency"], 3, "{up}");

    // Mistakes: an unknown field names the closest one; a function with neither image nor source,
    // or YAML that doesn't parse, is a usage error; nothing is deployed.
    std::fs::write(
        &manifest,
        "functions:\n  typo:\n    image: granda-test/echo\n    timeout: 5\n",
    )
    .unwrap();
    let out = granda(&app, &["deploy", "-f", path(&manifest)], b"").await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("timeout_ms"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&manifest, "functions:\n  lost:\n    memory_mb: 64\n").unwrap();
    expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        2,
    );
    std::fs::write(&manifest, "functions: [\n").unwrap();
    expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        2,
    );
    expect(&granda(&app, &["fn", "get", "typo"], b"").await, 3);
    let _ = std::fs::remove_dir_all(root);
    finish(app).await;
}
