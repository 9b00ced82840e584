//! The CLI's commands and what they say: exit codes, hooks, events and retries, the key, `fn update`
//! and `fn get`, a failed call's stderr tail.

use super::*;
use crate::support::spawn_app_with;
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

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
    assert_eq!(
        record["output"],
        "{\"n\":1}",
        "status {}, error {}, exit {}, output truncated {}, logs {}",
        record["status"],
        record["error"],
        record["exit_code"],
        record["output_truncated"],
        record["logs"]
    );
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
