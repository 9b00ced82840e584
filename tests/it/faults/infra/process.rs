//! Granda as its own process ([`GrandaProcess`]), and waiting for its HTTP to answer.

#![allow(dead_code)]

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The real `granda` binary (`CARGO_BIN_EXE_granda`) as a child process, for tests that kill
/// an ingress or worker. stdout and stderr go to `granda.log` in `/tmp/granda-fault-granda-<hex>`.
///
/// The child's environment is the test's, without `GRANDA_*` and `DOCKER_HOST` (so a developer's
/// shell settings can't leak in), with `RUST_LOG=info`, then `env`. `Drop` SIGKILLs it if it
/// still runs, prints its log's tail if the test is panicking, and removes the directory.
pub struct GrandaProcess {
    dir: PathBuf,
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
}

impl GrandaProcess {
    /// Starts `granda <args>` with `env` added to its environment.
    pub fn spawn(args: &[&str], env: &[(&str, String)]) -> GrandaProcess {
        let dir = scratch_dir("granda");
        let log_path = dir.join("granda.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_granda"));
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("GRANDA_") || n == "DOCKER_HOST" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting granda {args:?}: {e}"));
        let pid = child.id();
        fs::write(dir.join("granda.pid"), pid.to_string()).unwrap();
        GrandaProcess {
            dir,
            pid,
            child: Mutex::new(child),
            status: Mutex::new(None),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once it has exited (reaping it), `None` while it runs.
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap();
        if status.is_none() {
            *status = self.child.lock().unwrap().try_wait().ok().flatten();
        }
        *status
    }

    /// SIGKILL: a crash, no cleanup. Does nothing once it has exited.
    pub fn kill9(&self) {
        if self.try_status().is_none() {
            // std's kill is SIGKILL, and never signals a process already reaped.
            let _ = self.child.lock().unwrap().kill();
        }
    }

    /// SIGTERM: a graceful shutdown. Does nothing once it has exited.
    pub fn sigterm(&self) {
        // Not yet reaped, so the pid can't have been reused.
        if self.try_status().is_none() {
            signal(self.pid, "-TERM");
        }
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `GET {base_url}/healthz` answers 200; panics with the log if the process exits
    /// first or `timeout` passes.
    pub async fn wait_healthy(&self, base_url: &str, timeout: Duration) {
        let url = format!("{}/healthz", base_url.trim_end_matches('/'));
        granda::tls::install_provider();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                panic!(
                    "granda exited ({status}) before {url} answered:\n{}",
                    self.log()
                );
            }
            if http_ok(&client, &url).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{url} did not answer 200 within {timeout:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("granda.log")
    }
}

impl Drop for GrandaProcess {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- granda (pid {}) log (tail) ---\n{}",
                self.pid,
                tail(&self.log_path(), 40)
            );
        }
        remove_dir(&self.dir);
    }
}

/// Kills the `granda` left running from a stale directory (only if the pid is still a granda).
pub(crate) fn teardown_granda(dir: &Path) {
    if let Some(pid) = read_pid(&dir.join("granda.pid"))
        && alive(pid)
        && fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.to_string_lossy().contains("granda"))
    {
        signal(pid, "-KILL");
    }
}

pub(crate) async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}

/// Waits until `GET url` answers 200 (e.g. `http://127.0.0.1:PORT/healthz`); panics after `timeout`.
pub async fn wait_http_ok(url: &str, timeout: Duration) {
    granda::tls::install_provider();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    while !http_ok(&client, url).await {
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 200 within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
