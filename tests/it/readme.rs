//! Every command of README.md is run, as a new user would run it: the `sh` blocks, in order, in one
//! `bash` session, on a fresh Granda (its own database and queues, on a free port) with the built
//! `granda` binary on `PATH`, in an empty directory, without `GRANDA_KEY` (the README sets it).
//!
//! Two placeholders stand for what differs from the machine `make run` prepared: `gk_...` (the
//! admin key printed at first start) is this Granda's admin key, and `127.0.0.1:8080` /
//! `localhost:8080` its address (`GRANDA_URL` is set to it, as `make run`'s default would be).
//! A block that can't run here (`make run` serves until Ctrl-C, `make test` is the whole suite) is
//! fenced `sh not-run`; every fenced block names its language, so an untagged shell block can't be
//! skipped by accident. Any command failing fails the test, naming the README line.

use std::process::Stdio;
use std::time::Duration;

use crate::cli::{finish, spawn};

/// A fenced block of the README: its info string, first line number, and text.
struct Block {
    info: String,
    line: usize,
    text: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    line: i + 2,
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => found.push(open.take().unwrap()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md has an unclosed code fence");
    found
}

/// The blocks to run; panics on a block without a language or with a shell dialect not run.
fn runnable(blocks: &[Block]) -> Vec<&Block> {
    let mut run = Vec::new();
    for b in blocks {
        let mut words = b.info.split_whitespace();
        let language = words.next().unwrap_or_else(|| {
            panic!(
                "README.md line {}: a fenced block names its language (sh, text, yaml, …)",
                b.line - 1
            )
        });
        let tags: Vec<&str> = words.collect();
        match language {
            "sh" if tags.contains(&"not-run") => {}
            "sh" => run.push(b),
            "bash" | "shell" | "console" | "zsh" => panic!(
                "README.md line {}: shell blocks are `sh` (run by this test) or `sh not-run`",
                b.line - 1
            ),
            _ => {}
        }
    }
    run
}

#[test]
fn blocks_are_found_and_a_bare_fence_is_refused() {
    let text = "a\n```sh\necho 1\n```\n```sh not-run\nmake run\n```\n```text\nout\n```\n";
    let found = blocks(text);
    assert_eq!(found.len(), 3);
    let run = runnable(&found);
    assert_eq!(run.len(), 1);
    assert_eq!((run[0].line, run[0].text.as_str()), (3, "echo 1\n"));
    let bare = std::panic::catch_unwind(|| runnable(&blocks("```\nx\n```\n")).len());
    assert!(bare.is_err());
    let bash = std::panic::catch_unwind(|| runnable(&blocks("```bash\nx\n```\n")).len());
    assert!(bash.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_the_readme_runs_on_a_fresh_installation() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let all = blocks(&readme);
    let run = runnable(&all);
    assert!(
        run.len() >= 3,
        "the walkthrough's blocks are run: {} found",
        run.len()
    );

    let app = spawn().await;
    let host = app.address.trim_start_matches("http://").to_string();
    let mut script = String::from("set -eo pipefail\nPS4='+ README.md: '\n");
    for b in &run {
        let text = b
            .text
            .replace("gk_...", crate::support::ADMIN_KEY)
            .replace("127.0.0.1:8080", &host)
            .replace("localhost:8080", &host);
        script.push_str(&format!(
            "echo '### README.md line {}' >&2\nset -x\n{text}set +x\n",
            b.line
        ));
    }
    let dir = std::env::temp_dir().join(format!("granda-readme-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_granda"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", path)
        .env("GRANDA_URL", &app.address)
        .env_remove("GRANDA_KEY")
        .env_remove("GRANDA_ADMIN_KEY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running bash");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the README's commands finish within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a README command failed ({}); the last `### README.md line` marker names its block\n\
         stdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // What the walkthrough says the commands print.
    for said in [
        "hello, Ada",
        "hello, Bob",
        "exit 4",
        "no name given",
        "hello, world",
    ] {
        assert!(
            stdout.contains(said),
            "{said:?} not printed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("failed (exit 3)"),
        "the failed call's error\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    finish(app).await;
}
