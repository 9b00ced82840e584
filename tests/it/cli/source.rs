//! The CLI building functions from source: deploy, failed builds, redeploys and versions,
//! python3, a missing runtime base, `fn init` and `deploy -f`.

use super::*;
use crate::support::spawn_app_with;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};

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
    assert_eq!(f["image"], image(&app, "upper", 1).await);
    assert_eq!(f["versions"][0]["status"], "succeeded");
    let list = json(&granda(&app, &["fn", "ls", "--json"], b"").await);
    assert_eq!(list["functions"].as_array().unwrap().len(), 2);
    let table = expect(&granda(&app, &["fn", "ls"], b"").await, 0);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&image(&app, "counter", 1).await), "{table}");

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
    assert_eq!(f["image"], image(&app, "ver", 2).await);
    let versions: Vec<i64> = f["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1]);
    // The old image stays: invocations queued before the switch still name it.
    app.docker
        .inspect_image(&image(&app, "ver", 1).await)
        .await
        .expect("v1 is kept");
    app.docker
        .inspect_image(&image(&app, "ver", 2).await)
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
        assert!(dir.join("src").join(handler).is_file() && dir.join("granda.yaml").is_file());
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
        // The manifest is not in the built source: a comment and a secret build nothing, and
        // the image does not hold the manifest.
        let mut text = std::fs::read_to_string(&manifest).unwrap();
        text.push_str("    # a comment\n    secrets:\n      TOKEN: s3cr3t-value\n");
        std::fs::write(&manifest, text).unwrap();
        let said = expect(
            &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
            0,
        );
        assert!(said.contains(&format!("updated {name}")), "{said}");
        let f = json(&granda(&app, &["fn", "get", name, "--json"], b"").await);
        assert_eq!(
            f["version"], 1,
            "a settings-only change built a version: {f}"
        );
        let listing = app
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                bollard::models::ContainerCreateBody {
                    image: f["image"].as_str().map(String::from),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let archive = app
            .docker
            .download_from_container(
                &listing.id,
                Some(
                    bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
                        .path("/fn")
                        .build(),
                ),
            )
            .map(|chunk| chunk.unwrap())
            .collect::<Vec<_>>()
            .await
            .concat();
        let _ = app
            .docker
            .remove_container(
                &listing.id,
                None::<bollard::query_parameters::RemoveContainerOptions>,
            )
            .await;
        let mut files = tar::Archive::new(archive.as_slice());
        let names: Vec<String> = files
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.iter().any(|n| n.ends_with(handler)), "{names:?}");
        assert!(
            !names.iter().any(|n| n.contains("granda.yaml")),
            "{names:?}"
        );
    }
    // A manifest written before `fn init` scaffolded src/: `source: .`, the manifest inside the
    // directory it builds. It is left out of the source all the same: a secret added to it
    // builds nothing.
    let old = root.join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(
        old.join("handler.sh"),
        "#!/bin/sh\nread -r who\necho \"old, $who\"\n",
    )
    .unwrap();
    let manifest = old.join("granda.yaml");
    std::fs::write(
        &manifest,
        "functions:\n  oldstyle:\n    runtime: shell\n    source: .\n",
    )
    .unwrap();
    expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        0,
    );
    let out = granda(&app, &["invoke", "oldstyle", "-d", "you"], b"").await;
    assert_eq!(expect(&out, 0).trim(), "old, you");
    let mut edited = std::fs::read_to_string(&manifest).unwrap();
    edited.push_str("    secrets:\n      TOKEN: s3cr3t-value\n");
    std::fs::write(&manifest, edited).unwrap();
    expect(
        &granda(&app, &["deploy", "-f", path(&manifest)], b"").await,
        0,
    );
    let f = json(&granda(&app, &["fn", "get", "oldstyle", "--json"], b"").await);
    assert_eq!(
        f["version"], 1,
        "the manifest inside `source: .` was built into a new version: {f}"
    );

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
