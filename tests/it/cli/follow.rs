//! The CLI's listings that follow what happens: `inv ls --follow`, `logs --follow`, events and
//! build logs.

use super::*;
use crate::support::TestApp;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

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
    follow.start_kill().unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), follow.wait()).await;
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
    follow.start_kill().unwrap();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), follow.wait()).await;
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
