//! Private copies of the services, for fault tests that stop, restart or kill them.
//!
//! The shared PostgreSQL, RabbitMQ and Docker engine on this machine serve every other test (and other
//! engineers' tests) at the same time, so a fault test must never restart them. Instead it starts its
//! own copy with the helpers here and breaks that one:
//!
//! | helper | what it is | start | restart |
//! |---|---|---|---|
//! | [`TestPostgres`] | a throwaway cluster (`initdb` + `pg_ctl`) on its own port | 1.6–6.5 s (mostly `initdb`) | `stop` 0.1–0.2 s, `start_again` 0.3–0.5 s |
//! | [`TestRabbit`] | a second RabbitMQ node with its own name, ports and data | 11–22 s | `stop_app` + `start_app` 5–12 s |
//! | [`TestDocker`] | a second `dockerd` with its own socket, data root and containerd namespace | 1.6–2.3 s (images cached; 10–27 s to build them the first time) | 1.4–2.1 s idle; ~12 s with a running container that ignores SIGTERM |
//! | [`GrandaProcess`] | the real `granda` binary as a child process | < 1 s | `kill9`, `sigterm` |
//!
//! (Measured on the 2-core development machine while other builds ran: RabbitMQ is CPU-bound and
//! varies most. Dropping each takes 0.1–3 s.)
//!
//! Everything lives in a directory `/tmp/granda-fault-<kind>-<12 hex>` owned by the test process.
//! `Drop` stops the server synchronously and removes that directory, panicking test or not. A test
//! process that dies without running `Drop` (SIGKILL, Ctrl-C) leaves its directories behind; the next
//! test process that starts any helper finds those whose owner process is gone, stops whatever still
//! runs from them and removes them ([`reap_stale`]). Only such directories are ever touched.
//!
//! Ports are picked at random in 20000–31999 (below Linux's ephemeral range, so a client socket can't
//! take a port while its server is down for a restart) and checked free with a bind.
//!
//! Each helper prints how long its start and restarts took (`cargo test -- --nocapture` shows it).
//! When a test panics, the helpers print the tail of their server's log as they are dropped.

// A toolbox: each fault test uses some of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{LazyLock, Mutex, Once};
use std::time::Duration;

use uuid::Uuid;

mod engine;
mod postgres;
mod process;
mod rabbit;

pub use engine::*;
pub use postgres::*;
pub use process::*;
pub use rabbit::*;

/// Where every helper keeps its files: `/tmp/granda-fault-<kind>-<hex>`.
pub(crate) const SCRATCH_PREFIX: &str = "/tmp/granda-fault-";

/// The test images every [`TestDocker`] has (at least).
pub const REQUIRED_IMAGES: [&str; 3] = [
    "granda-test/busybox",
    "granda-test/echo",
    "granda-test/sleep",
];

/// Where [`TestDocker`] caches the test images between runs (`docker save` archives).
pub const IMAGE_CACHE_DIR: &str = "/var/tmp/granda-test-docker";

// ---------------------------------------------------------------------------------------------------
// Small tools
// ---------------------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1, never the same twice in one process. Picked at random in
/// 20000–31999, under the kernel's ephemeral range, so that outgoing connections can't take it
/// while a server that owns it is down.
pub fn free_port() -> u16 {
    static GIVEN: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Default::default);
    for _ in 0..1000 {
        let random = u16::from_le_bytes(Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
        let port = 20000 + random % 12000;
        if GIVEN.lock().unwrap().contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            GIVEN.lock().unwrap().insert(port);
            return port;
        }
    }
    panic!("no free port found in 20000-31999");
}

/// Creates this process's scratch directory for a helper of `kind`, after reaping stale ones.
pub(crate) fn scratch_dir(kind: &str) -> PathBuf {
    static REAP: Once = Once::new();
    REAP.call_once(reap_stale);
    let hex = Uuid::new_v4().simple().to_string();
    let dir = PathBuf::from(format!("{SCRATCH_PREFIX}{kind}-{}", &hex[..12]));
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let me = std::process::id();
    let owner = format!("{me} {}", start_time(me).unwrap_or(0));
    fs::write(dir.join("owner.pid"), owner).unwrap();
    dir
}

/// When process `pid` started (clock ticks since boot): with the pid, it names one process even
/// after pids wrap around.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the fields after the parenthesised command name start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The 12 hex digits that make a scratch directory unique.
pub(crate) fn dir_tag(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy();
    name[name.len() - 12..].to_string()
}

/// Stops what runs from scratch directories whose owner process has died, and removes them.
/// Called once per process, before the first helper starts.
pub fn reap_stale() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let path = dir.to_string_lossy().to_string();
        let Some(rest) = path.strip_prefix(SCRATCH_PREFIX) else {
            continue;
        };
        // A directory without an owner is being created right now.
        let Ok(owner) = fs::read_to_string(dir.join("owner.pid")) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (Some(Some(pid)), started) = (fields.next(), fields.next().flatten()) else {
            continue;
        };
        let pid = pid as u32;
        // Alive, and the same process (not a later one that got its pid).
        if alive(pid) && (started.is_none() || start_time(pid) == started) {
            continue;
        }
        eprintln!("reaping {path}, left by process {pid}");
        match rest.split('-').next() {
            Some("pg") => teardown_postgres(&dir),
            Some("rabbit") => teardown_rabbit(&dir),
            Some("docker") => teardown_docker(&dir, None),
            Some("granda") => teardown_granda(&dir),
            _ => {}
        }
        remove_dir(&dir);
    }
}

pub(crate) fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && dir.exists()
    {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}

pub(crate) fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The command line of process `pid`, its arguments joined by spaces; `None` when it is gone.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// True while process `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to `pid` with kill(1).
pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True when the command line or the environment of process `pid` contains `needle`.
pub(crate) fn mentions(pid: u32, needle: &str) -> bool {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    cmdline(pid).is_some_and(|c| c.contains(needle))
        || String::from_utf8_lossy(&environ).contains(needle)
}

/// SIGKILLs every process whose command line or environment contains `needle` (a path or name
/// unique to one scratch directory, so only processes started by that helper match).
pub(crate) fn kill_matching(needle: &str) {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid != me && mentions(pid, needle) {
            signal(pid, "-KILL");
        }
    }
}

/// Runs `cmd` to its end with stdin closed and stdout/stderr appended to `log`, so that daemons it
/// leaves behind hold no pipe of ours. Returns whether it succeeded.
pub(crate) fn run_logged(cmd: &mut Command, log: &Path) -> bool {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let _ = writeln!(&file, "$ {cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status();
    match status {
        Ok(status) => status.success(),
        Err(e) => {
            let _ = fs::OpenOptions::new()
                .append(true)
                .open(log)
                .map(|mut f| writeln!(f, "could not run: {e}"));
            false
        }
    }
}

/// Like [`run_logged`], and panics with the log's tail when the command fails.
pub(crate) fn run_or_panic(cmd: &mut Command, log: &Path, what: &str) {
    if !run_logged(cmd, log) {
        panic!("{what} failed; {}:\n{}", log.display(), tail(log, 40));
    }
}

/// Runs a blocking closure off the async runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// The last `lines` lines of a file (or a note that it is missing).
pub fn tail(file: &Path, lines: usize) -> String {
    match fs::read(file) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", file.display()),
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub(crate) fn chown_recursive(path: &Path, user: &str) {
    let ok = Command::new("chown")
        .args(["-R", &format!("{user}:{user}")])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown -R {user} {}", path.display());
}

// ---------------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------------

/// The PostgreSQL server binaries: `GRANDA_TEST_PG_BIN`, else Debian's for version 15, else the
/// newest version installed.
pub(crate) fn pg_bin(program: &str) -> String {
    let dir = std::env::var("GRANDA_TEST_PG_BIN").unwrap_or_else(|_| {
        let debian = "/usr/lib/postgresql/15/bin";
        if Path::new(debian).join("pg_ctl").exists() {
            return debian.to_string();
        }
        let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
            .collect();
        versions.sort();
        format!("/usr/lib/postgresql/{}/bin", versions.last().unwrap_or(&15))
    });
    format!("{dir}/{program}")
}

/// `pg_ctl`/`initdb` refuse to run as root: run them as the `postgres` user, from a directory it can read.
pub(crate) fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(pg_bin(program))
        .current_dir("/");
    cmd
}
