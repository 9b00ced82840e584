//! Every command of README.md is run, as a new user would run it: the `sh` blocks, in order, in one
//! `bash` session, against a fresh installation (`granda up` as its own process, on a free port,
//! with a new database and no admin key), in a directory laid out like the clone `make run` built
//! in (`target/release/granda` is the binary under test; the README puts it on `PATH`), with no
//! `GRANDA_*` variable but `GRANDA_URL` (the README sets `GRANDA_KEY`).
//!
//! Two placeholders stand for what differs from the machine `make run` prepared: `gk_...` is the
//! admin key this `granda up` printed at its first start (checked against the README's picture of
//! that notice), and `127.0.0.1:8080` / `localhost:8080` its address (`GRANDA_URL` points there,
//! as `make run`'s default would).
//! A block that can't run here (`make run` serves until Ctrl-C, `make test` is the whole suite) is
//! fenced `sh not-run`; every fenced block names its language, so an untagged shell block can't be
//! skipped by accident. Any command failing fails the test, naming the README line.

use std::process::Stdio;
use std::time::Duration;

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

/// A fresh installation: `granda up`, the binary `make run` starts, as its own process on a free
/// port with a new database, queue prefix and state directory and no admin key, so it makes and
/// prints its first admin key as a new user sees it.
struct Installation {
    child: tokio::process::Child,
    port: u16,
    key: String,
    db_name: String,
    prefix: String,
    state: std::path::PathBuf,
    /// What it printed on stderr (the key notice, then its logs).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Installation {
    async fn start() -> Installation {
        granda::tls::install_provider();
        tokio::task::spawn_blocking(crate::cli::ensure_runtime_images)
            .await
            .unwrap();
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let db_name = format!("granda_test_readme_{tag}");
        let prefix = format!("granda-test-readme-{tag}");
        let state = std::env::temp_dir().join(format!("granda-readme-state-{tag}"));
        std::fs::create_dir_all(&state).unwrap();
        let port = free_port();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_granda"));
        command.arg("up");
        // Only the defaults, but for what keeps it apart from other tests' servers.
        for (name, _) in std::env::vars() {
            if name.starts_with("GRANDA_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("GRANDA_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "GRANDA_DATABASE_URL",
                format!("{}/{db_name}", crate::support::postgres_base()),
            )
            .env("GRANDA_AMQP_URL", crate::support::amqp_url())
            .env("GRANDA_AMQP_PREFIX", &prefix)
            .env("GRANDA_WORKER_ID", format!("readme-{tag}"))
            .env("GRANDA_STATE_DIR", &state)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting granda up");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (found, key) = tokio::sync::oneshot::channel::<String>();
        {
            let stderr = stderr.clone();
            let pipe = child.stderr.take().unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                let mut found = Some(found);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(key) = line.trim().strip_prefix("gk_")
                        && let Some(found) = found.take()
                    {
                        let _ = found.send(format!("gk_{key}"));
                    }
                    let mut all = stderr.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let key = match tokio::time::timeout(Duration::from_secs(60), key).await {
            Ok(Ok(key)) => key,
            _ => panic!(
                "granda up printed no admin key within a minute:\n{}",
                stderr.lock().unwrap()
            ),
        };
        let installation = Installation {
            child,
            port,
            key,
            db_name,
            prefix,
            state,
            stderr,
        };
        let ready = format!("http://127.0.0.1:{port}/readyz");
        crate::support::eventually(Duration::from_secs(60), "granda up is ready", || {
            let ready = ready.clone();
            async move {
                let answer = reqwest::get(&ready).await.ok()?;
                answer.status().is_success().then_some(())
            }
        })
        .await;
        installation
    }

    /// Stops it (SIGTERM, as Ctrl-C would) and removes its database, queues and images.
    async fn remove(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        // Polled with `try_wait` (waitpid), not awaited: `Child::wait` depends on a SIGCHLD
        // wake-up, which a test's runtime can miss when another test's runtime handled it, and
        // `kill().await` then waited forever (seen once in a full run).
        if !exited_within(&mut self.child, Duration::from_secs(20)).await {
            let _ = self.child.start_kill();
            exited_within(&mut self.child, Duration::from_secs(10)).await;
        }
        let settings = granda::config::Settings::from_env();
        if let Ok(connection) =
            granda::broker::connect(&crate::support::amqp_url(), "test-cleanup").await
        {
            let topology = granda::broker::Topology::new(&self.prefix);
            let levels = settings.backoff().levels();
            let _ = granda::broker::delete_topology(&connection, &topology, &["default"], &levels)
                .await;
            let _ = connection.close(200, "".into()).await;
        }
        if let Ok(admin) =
            sqlx::PgPool::connect(&format!("{}/postgres", crate::support::postgres_base())).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&admin)
            .await;
        }
        let docker = granda::docker::connect(None, 120).unwrap();
        let reference = format!("{}-fn/*/*", self.prefix);
        let filters = std::collections::HashMap::from([("reference", vec![reference.as_str()])]);
        let options = bollard::query_parameters::ListImagesOptionsBuilder::new()
            .filters(&filters)
            .build();
        for summary in docker.list_images(Some(options)).await.unwrap_or_default() {
            for tag in summary.repo_tags {
                let _ = docker
                    .remove_image(
                        &tag,
                        None::<bollard::query_parameters::RemoveImageOptions>,
                        None,
                    )
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
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

    let server = Installation::start().await;
    // It printed its first key as the README shows it.
    let notice = all
        .iter()
        .find(|b| b.text.contains("first admin API key"))
        .expect("the README shows the first key's notice");
    let printed = server.stderr.lock().unwrap().clone();
    assert!(
        printed.contains(&notice.text.replace("gk_...", &server.key)),
        "granda up printed:\n{printed}\nthe README shows:\n{}",
        notice.text
    );

    let host = format!("127.0.0.1:{}", server.port);
    let mut script = String::from("set -eo pipefail\nPS4='+ README.md: '\n");
    for b in &run {
        let text = b
            .text
            .replace("gk_...", &server.key)
            .replace("127.0.0.1:8080", &host)
            .replace("localhost:8080", &host);
        script.push_str(&format!(
            "echo '### README.md line {}' >&2\nset -x\n{text}set +x\n",
            b.line
        ));
    }
    let dir = std::env::temp_dir().join(format!("granda-readme-{}", uuid::Uuid::new_v4().simple()));
    // The clone `make run` built in: `target/release/granda` (here the binary under test), which the
    // README puts on PATH itself.
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_granda"), release.join("granda")).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(
        !path
            .split(':')
            .any(|d| std::path::Path::new(d).join("granda").exists()),
        "no granda on the test's own PATH"
    );
    let mut command = tokio::process::Command::new("bash");
    for (name, _) in std::env::vars() {
        if name.starts_with("GRANDA_") {
            command.env_remove(name);
        }
    }
    let child = command
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", path)
        .env("GRANDA_URL", format!("http://{host}"))
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
    let _ = std::fs::remove_dir_all(&dir);
    let failed = !out.status.success();
    if failed {
        eprintln!("granda up's stderr:\n{}", server.stderr.lock().unwrap());
    }
    server.remove().await;
    assert!(
        !failed,
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
        "unchanged: hello version 2",
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
}

/// Whether `child` has exited within `bound`, polling `try_wait` every 100 ms.
async fn exited_within(child: &mut tokio::process::Child, bound: Duration) -> bool {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
