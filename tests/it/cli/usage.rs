//! The CLI as a new user meets it: `invoke` succeeds by the run's verdict (`X-Granda-Status`),
//! not the HTTP status a CGI function chose; `fn ls -q`; a missing key names `--key` and
//! `GRANDA_KEY`; a process's `--help` shows its own flags and no secret values.

use super::*;

/// `granda ARGS` with `env` set and `GRANDA_KEY` unset (async: the server runs on this runtime).
async fn granda_with(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"));
    command
        .args(args)
        .env("GRANDA_URL", &app.address)
        .env_remove("GRANDA_KEY");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.expect("running granda")
}

#[tokio::test]
async fn invoke_follows_the_run_and_the_cli_says_what_it_wants() {
    let app = spawn().await;
    // A CGI function that answers 201 with its own body.
    let made = dir_with(&[(
        "handler.sh",
        "cat >/dev/null\nprintf 'Status: 201 Created\\r\\nContent-Type: text/plain\\r\\n\\r\\nmade it'\n",
    )]);
    let deploy = [
        "fn",
        "deploy",
        "made",
        "--runtime",
        "shell",
        "--response",
        "cgi",
    ];
    expect(
        &granda(&app, &[&deploy[..], &[path(&made)]].concat(), b"").await,
        0,
    );
    let out = granda(&app, &["invoke", "made"], b"").await;
    assert_eq!(expect(&out, 0), "made it", "{}", text(&out.stderr));

    // Names only, for scripts.
    app.register("other", "granda-test/echo", serde_json::json!({}))
        .await;
    let names = expect(&granda(&app, &["fn", "ls", "-q"], b"").await, 0);
    assert_eq!(names, "made\nother\n");

    // No key: say how the CLI takes one.
    let out = granda_with(&app, &["fn", "ls"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.contains("--key") && said.contains("GRANDA_KEY") && !said.contains("Bearer"),
        "{said}"
    );

    // A process's help: its own flags, never a secret's value, no client flags.
    let secret = "amqp://user:s3cr3t-pass@rabbit:5672/%2f";
    let out = granda_with(&app, &["worker", "--help"], &[("GRANDA_AMQP_URL", secret)]).await;
    let help = expect(&out, 0);
    assert!(help.contains("--amqp-url"), "{help}");
    for hidden in ["s3cr3t", "guest:guest", "--url ", "--key", "--json"] {
        assert!(!help.contains(hidden), "{hidden} in:\n{help}");
    }

    let _ = std::fs::remove_dir_all(made);
    finish(app).await;
}
