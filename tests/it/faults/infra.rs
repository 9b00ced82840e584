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
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, Once};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Where every helper keeps its files: `/tmp/granda-fault-<kind>-<hex>`.
const SCRATCH_PREFIX: &str = "/tmp/granda-fault-";

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
fn scratch_dir(kind: &str) -> PathBuf {
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
fn start_time(pid: u32) -> Option<u64> {
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
fn dir_tag(dir: &Path) -> String {
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

fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && dir.exists()
    {
        eprintln!("could not remove {}: {e}", dir.display());
    }
}

fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The command line of process `pid`, its arguments joined by spaces; `None` when it is gone.
fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True when the command line or the environment of process `pid` contains `needle`.
fn mentions(pid: u32, needle: &str) -> bool {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    cmdline(pid).is_some_and(|c| c.contains(needle))
        || String::from_utf8_lossy(&environ).contains(needle)
}

/// SIGKILLs every process whose command line or environment contains `needle` (a path or name
/// unique to one scratch directory, so only processes started by that helper match).
fn kill_matching(needle: &str) {
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
fn run_logged(cmd: &mut Command, log: &Path) -> bool {
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
fn run_or_panic(cmd: &mut Command, log: &Path, what: &str) {
    if !run_logged(cmd, log) {
        panic!("{what} failed; {}:\n{}", log.display(), tail(log, 40));
    }
}

/// Runs a blocking closure off the async runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
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

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn chown_recursive(path: &Path, user: &str) {
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
fn pg_bin(program: &str) -> String {
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
fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(pg_bin(program))
        .current_dir("/");
    cmd
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 and a port of its own, superuser `root` with trust
/// auth, for tests that stop and start Postgres under a running Granda.
///
/// Its files are in `/tmp/granda-fault-pg-<hex>` (data in `data/`, server log in `postgres.log`,
/// Unix socket in the directory itself). It runs with `fsync=off`: a crash of the *server process*
/// loses nothing (the page cache survives), only a crash of the machine would.
/// `Drop` stops it (`pg_ctl stop -m immediate`) and removes the directory.
pub struct TestPostgres {
    dir: PathBuf,
    port: u16,
    up: AtomicBool,
    started_once: AtomicBool,
}

impl TestPostgres {
    /// `initdb`, then start the server; returns once it accepts connections over TCP.
    pub async fn start() -> TestPostgres {
        let began = Instant::now();
        let dir = scratch_dir("pg");
        chown_recursive(&dir, "postgres");
        let pg = TestPostgres {
            port: free_port(),
            dir,
            up: AtomicBool::new(false),
            started_once: AtomicBool::new(false),
        };
        let (data, log) = (pg.data_dir(), pg.commands_log());
        blocking(move || {
            run_or_panic(
                as_postgres("initdb")
                    .arg("-D")
                    .arg(&data)
                    .args(["-U", "root", "--auth=trust", "--no-sync", "-E", "UTF8"])
                    .args(["--locale=C"]),
                &log,
                "initdb",
            )
        })
        .await;
        pg.start_again().await;
        eprintln!(
            "TestPostgres on port {} started in {}",
            pg.port,
            secs(began.elapsed())
        );
        pg
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://root@127.0.0.1:PORT/{db}` (Granda creates `db` if missing).
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.base_url())
    }

    /// `postgres://root@127.0.0.1:PORT`, the form of `GRANDA_TEST_POSTGRES`.
    pub fn base_url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}", self.port)
    }

    /// True between a successful start and a stop.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server with `pg_ctl stop -m fast` (clients are disconnected, a checkpoint is
    /// written) and returns once it is down.
    pub async fn stop(&self) {
        let began = Instant::now();
        let (data, log) = (self.data_dir(), self.commands_log());
        blocking(move || {
            run_or_panic(
                as_postgres("pg_ctl")
                    .arg("stop")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "fast", "-w", "-t", "60"]),
                &log,
                "pg_ctl stop",
            )
        })
        .await;
        self.up.store(false, Ordering::SeqCst);
        eprintln!("TestPostgres stopped in {}", secs(began.elapsed()));
    }

    /// Starts the server again on the same data and port; returns once it accepts TCP connections.
    /// Does nothing when it is up.
    pub async fn start_again(&self) {
        if self.is_up() {
            return;
        }
        let began = Instant::now();
        let (data, log) = (self.data_dir(), self.commands_log());
        let server_log = self.dir.join("postgres.log");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        blocking(move || {
            run_or_panic(
                as_postgres("pg_ctl")
                    .arg("start")
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&server_log)
                    .args(["-w", "-t", "60", "-o", &options]),
                &log,
                "pg_ctl start",
            )
        })
        .await;
        // pg_ctl -w has seen the socket; make sure TCP answers too.
        let url = self.url("postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            use sqlx::Connection;
            match sqlx::PgConnection::connect(&url).await {
                Ok(c) => {
                    let _ = c.close().await;
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("TestPostgres does not answer on {url}: {e}\n{}", self.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.up.store(true, Ordering::SeqCst);
        if self.started_once.swap(true, Ordering::SeqCst) {
            eprintln!("TestPostgres started again in {}", secs(began.elapsed()));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn commands_log(&self) -> PathBuf {
        self.dir.join("commands.log")
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- TestPostgres log (tail) ---\n{}",
                tail(&self.dir.join("postgres.log"), 30)
            );
        }
        teardown_postgres(&self.dir);
        remove_dir(&self.dir);
    }
}

/// Stops the cluster in `dir`, if it runs (synchronously), without removing anything.
fn teardown_postgres(dir: &Path) {
    let data = dir.join("data");
    let pid_file = data.join("postmaster.pid");
    if !pid_file.exists() {
        return;
    }
    run_logged(
        as_postgres("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30"]),
        &dir.join("commands.log"),
    );
    if let Some(pid) = read_pid(&pid_file)
        && alive(pid)
        && cmdline(pid).is_some_and(|c| c.contains(&data.to_string_lossy().to_string()))
    {
        signal(pid, "-KILL");
    }
}

// ---------------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------------

/// A second RabbitMQ node, `granda-fault-<hex>@localhost`, with its own AMQP and distribution ports,
/// config, data and logs in `/tmp/granda-fault-rabbit-<hex>`, no plugins (so no management
/// listener), sharing the machine's epmd and Erlang cookie (so `rabbitmqctl -n NODE` reaches it).
/// User guest/guest, vhost `/`.
///
/// [`restart`](Self::restart) (`stop_app` + `start_app`) drops every client connection and keeps
/// the data: durable queues and their persistent messages survive. `Drop` stops the node
/// (SIGTERM to the Erlang VM, waiting for it to exit; SIGKILL after 30 s) and removes the directory.
pub struct TestRabbit {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
}

impl TestRabbit {
    /// Starts the node (`rabbitmq-server -detached`); returns once an AMQP connection succeeds.
    pub async fn start() -> TestRabbit {
        let began = Instant::now();
        let dir = scratch_dir("rabbit");
        let rabbit = TestRabbit {
            node: format!("granda-fault-{}@localhost", dir_tag(&dir)),
            port: free_port(),
            dist_port: free_port(),
            dir,
        };
        let d = rabbit.dir.display();
        fs::create_dir_all(rabbit.dir.join("mnesia")).unwrap();
        fs::create_dir_all(rabbit.dir.join("log")).unwrap();
        fs::write(rabbit.dir.join("node"), &rabbit.node).unwrap();
        fs::write(
            rabbit.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n",
                rabbit.port
            ),
        )
        .unwrap();
        fs::write(rabbit.dir.join("enabled_plugins"), "[].\n").unwrap();
        // Our own env file instead of /etc/rabbitmq/rabbitmq-env.conf (which names the shared node);
        // the same settings are passed as RABBITMQ_* variables below, which take precedence anyway.
        fs::write(
            rabbit.dir.join("rabbitmq-env.conf"),
            format!(
                "NODENAME={node}\nNODE_PORT={port}\nDIST_PORT={dist}\nCONFIG_FILE={d}/rabbitmq.conf\n\
                 MNESIA_BASE={d}/mnesia\nLOG_BASE={d}/log\nENABLED_PLUGINS_FILE={d}/enabled_plugins\n\
                 PID_FILE={d}/rabbit.pid\nERL_EPMD_ADDRESS=127.0.0.1\n\
                 export ERL_FLAGS=\"-kernel inet_dist_use_interface {{127,0,0,1}}\"\n",
                node = rabbit.node,
                port = rabbit.port,
                dist = rabbit.dist_port,
            ),
        )
        .unwrap();
        // Debian's wrapper runs the node as the rabbitmq user.
        chown_recursive(&rabbit.dir, "rabbitmq");

        let mut cmd = Command::new("rabbitmq-server");
        cmd.arg("-detached").current_dir("/");
        for (name, value) in rabbit.env() {
            cmd.env(name, value);
        }
        let log = rabbit.commands_log();
        blocking(move || run_or_panic(&mut cmd, &log, "rabbitmq-server -detached")).await;
        rabbit.wait_amqp(Duration::from_secs(180)).await;
        eprintln!(
            "TestRabbit {} on port {} started in {}",
            rabbit.node,
            rabbit.port,
            secs(began.elapsed())
        );
        rabbit
    }

    /// The environment that makes `rabbitmq-server` start this node rather than the shared one.
    fn env(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.display();
        vec![
            ("RABBITMQ_CONF_ENV_FILE", format!("{d}/rabbitmq-env.conf")),
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq.conf")),
            ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{d}/log")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{d}/enabled_plugins"),
            ),
            ("RABBITMQ_PID_FILE", format!("{d}/rabbit.pid")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            (
                "ERL_FLAGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
        ]
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.node_log()).unwrap_or_default()
    }

    /// Runs `rabbitmqctl -q -n NODE <args>` and returns its stdout; panics when it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        // Output to files, not pipes: should the CLI have to start epmd, that daemon must not
        // hold a pipe of ours open.
        let out = self
            .dir
            .join(format!("ctl-{}.out", Uuid::new_v4().simple()));
        let err = out.with_extension("err");
        let mut cmd = Command::new("rabbitmqctl");
        cmd.args(["-q", "-n", &self.node])
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap());
        let what = format!("rabbitmqctl -n {} {}", self.node, args.join(" "));
        let status = blocking(move || cmd.status()).await.expect("rabbitmqctl");
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        let _ = (fs::remove_file(&out), fs::remove_file(&err));
        assert!(status.success(), "{what} failed: {stdout}{stderr}");
        stdout
    }

    /// Stops the RabbitMQ application (the Erlang node stays): every client connection is
    /// dropped and nothing listens on the port until [`start_app`](Self::start_app).
    pub async fn stop_app(&self) {
        let began = Instant::now();
        self.ctl(&["stop_app"]).await;
        eprintln!("TestRabbit stop_app took {}", secs(began.elapsed()));
    }

    /// Starts the application again; returns once an AMQP connection succeeds.
    pub async fn start_app(&self) {
        let began = Instant::now();
        self.ctl(&["start_app"]).await;
        self.wait_amqp(Duration::from_secs(120)).await;
        eprintln!("TestRabbit start_app took {}", secs(began.elapsed()));
    }

    /// [`stop_app`](Self::stop_app) then [`start_app`](Self::start_app): clients are cut off,
    /// durable queues and persistent messages stay.
    pub async fn restart(&self) {
        let began = Instant::now();
        self.stop_app().await;
        self.start_app().await;
        eprintln!("TestRabbit restarted in {}", secs(began.elapsed()));
    }

    /// Waits until an AMQP connection with guest/guest succeeds; panics with the log after `within`.
    pub async fn wait_amqp(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let url = self.url();
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                granda::broker::connect(&url, "probe"),
            )
            .await;
            match attempt {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "".into()).await;
                    return;
                }
                _ if Instant::now() > deadline => panic!(
                    "TestRabbit {} does not answer on {url} after {within:?}\n{}\n--- node log ---\n{}",
                    self.node,
                    tail(&self.commands_log(), 20),
                    tail(&self.node_log(), 40)
                ),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    fn node_log(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.node))
    }

    fn commands_log(&self) -> PathBuf {
        self.dir.join("commands.log")
    }
}

impl Drop for TestRabbit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- TestRabbit {} log (tail) ---\n{}",
                self.node,
                tail(&self.node_log(), 30)
            );
        }
        let began = Instant::now();
        teardown_rabbit(&self.dir);
        remove_dir(&self.dir);
        eprintln!("TestRabbit stopped in {}", secs(began.elapsed()));
    }
}

/// Stops the node of `dir`, if it runs (synchronously), without removing anything.
fn teardown_rabbit(dir: &Path) {
    let Ok(node) = fs::read_to_string(dir.join("node")) else {
        return;
    };
    // The data goes away with the directory, so no orderly `rabbitmqctl stop` (which takes
    // seconds just to start the CLI): the Erlang VM shuts down on SIGTERM.
    if let Some(pid) = read_pid(&dir.join("rabbit.pid"))
        && alive(pid)
        // The VM's command line doesn't name the node; its environment does.
        && mentions(pid, &node)
    {
        signal(pid, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Whatever is left (a node that never wrote its pid file, a hung stop): only processes
    // carrying this node's unique name.
    kill_matching(&node);
}

// ---------------------------------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------------------------------

/// A second Docker engine: its own `dockerd` (and the containerd it starts) with its own socket,
/// data root, exec root, pid file, containerd namespaces and cgroup parent, all in
/// `/tmp/granda-fault-docker-<hex>`; `--bridge=none --iptables=false --ip-masq=false`, so it
/// touches no network setting of the machine (containers get `--network none`, as Granda's do).
///
/// It has the test images `granda-test/*` (at least [`REQUIRED_IMAGES`]). Building them takes about
/// 10 s, so the first start saves them to `/var/tmp/granda-test-docker/images-<key>.tar`, where
/// `key` hashes `tests/images/`, the build script and the busybox binary; later starts
/// `docker load` that archive (< 1 s). A stale archive is never used (the key changes), and
/// `GRANDA_TEST_DOCKER_IMAGE_CACHE=off` builds every time. The data root itself is never shared.
///
/// [`restart`](Self::restart) stops the daemon with SIGTERM, as a service manager would: without
/// live-restore, running containers are stopped too (each gets its stop timeout, 10 s by default,
/// before SIGKILL). `Drop` removes all containers, stops the daemon, unmounts what is left under
/// the directory and removes it.
pub struct TestDocker {
    dir: PathBuf,
    daemon: Mutex<Option<Child>>,
}

impl TestDocker {
    /// Starts the engine, waits for it to answer, and loads (or builds) the test images.
    pub async fn start() -> TestDocker {
        let began = Instant::now();
        let dir = scratch_dir("docker");
        fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let docker = TestDocker {
            dir,
            daemon: Mutex::new(None),
        };
        docker.spawn_daemon();
        docker.wait_ready(Duration::from_secs(60)).await;
        let daemon_up = began.elapsed();
        let images = Instant::now();
        docker.load_images().await;
        eprintln!(
            "TestDocker {} started in {} (daemon {}, images {})",
            docker.host(),
            secs(began.elapsed()),
            secs(daemon_up),
            secs(images.elapsed())
        );
        docker
    }

    /// `unix:///tmp/granda-fault-docker-<hex>/docker.sock`: Granda's `docker_host` setting, or
    /// `DOCKER_HOST` for a `granda` process or the docker CLI.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A bollard client for this engine (120 s timeout per call).
    pub fn client(&self) -> bollard::Docker {
        granda::docker::connect(Some(&self.host()), 120).expect("bollard client")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.daemon_log()).unwrap_or_default()
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut daemon = self.daemon.lock().unwrap();
        let child = daemon.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// SIGTERMs the daemon and waits for it to exit (it stops running containers first); then
    /// starts it again with the same arguments and waits until it answers.
    pub async fn restart(&self) {
        let began = Instant::now();
        self.stop().await;
        self.start_again().await;
        eprintln!("TestDocker restarted in {}", secs(began.elapsed()));
    }

    /// SIGTERMs the daemon and returns once it has exited (SIGKILL after 60 s).
    pub async fn stop(&self) {
        let began = Instant::now();
        let Some(mut child) = self.daemon.lock().unwrap().take() else {
            return;
        };
        let status = blocking(move || stop_child(&mut child, Duration::from_secs(60))).await;
        eprintln!(
            "TestDocker stopped in {} ({status:?})",
            secs(began.elapsed())
        );
    }

    /// Starts the daemon again on the same data; returns once it answers. Does nothing when it runs.
    pub async fn start_again(&self) {
        if self.pid().is_some() {
            return;
        }
        let began = Instant::now();
        self.spawn_daemon();
        self.wait_ready(Duration::from_secs(60)).await;
        eprintln!("TestDocker started again in {}", secs(began.elapsed()));
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn daemon_log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn spawn_daemon(&self) {
        let d = &self.dir;
        let tag = dir_tag(d);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())
            .unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg(format!("--containerd-namespace=granda-fault-{tag}"))
            .arg(format!(
                "--containerd-plugins-namespace=granda-fault-{tag}-plugins"
            ))
            .arg(format!("--cgroup-parent=/granda-fault-docker-{tag}"))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .args(["--log-level=warn"])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the test is not what stops it.
            .process_group(0)
            .spawn()
            .expect("starting dockerd (apt-get install docker.io)");
        *self.daemon.lock().unwrap() = Some(child);
    }

    /// Waits until `docker info` answers; panics with the daemon's log if it exits or after `within`.
    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // bollard wants the socket to exist before it makes a client.
            if let Ok(client) = granda::docker::connect(Some(&self.host()), 5)
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), client.info()).await
            {
                return;
            }
            let exited = self
                .daemon
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| c.try_wait().ok().flatten());
            if let Some(Some(status)) = exited {
                panic!(
                    "dockerd exited ({status}):\n{}",
                    tail(&self.daemon_log(), 40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd at {} does not answer after {within:?}:\n{}",
                    self.host(),
                    tail(&self.daemon_log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads the test images from the cache, or builds them (and fills the cache).
    async fn load_images(&self) {
        let host = self.host();
        let log = self.dir.join("commands.log");
        let use_cache = std::env::var("GRANDA_TEST_DOCKER_IMAGE_CACHE").as_deref() != Ok("off");
        let archive = Path::new(IMAGE_CACHE_DIR).join(format!("images-{}.tar", image_cache_key()));
        if use_cache && archive.exists() {
            let (h, l, a) = (host.clone(), log.clone(), archive.clone());
            let loaded = blocking(move || {
                run_logged(
                    Command::new("docker")
                        .env("DOCKER_HOST", &h)
                        .args(["load", "-q", "-i"])
                        .arg(&a),
                    &l,
                )
            })
            .await;
            if loaded && self.missing_images().await.is_empty() {
                return;
            }
            eprintln!(
                "TestDocker: the image cache {} is unusable",
                archive.display()
            );
            let _ = fs::remove_file(&archive);
        }
        let (h, l) = (host.clone(), log.clone());
        blocking(move || {
            run_or_panic(
                Command::new("bash")
                    .arg("scripts/build-test-images.sh")
                    .arg("--quiet")
                    .env("DOCKER_HOST", &h)
                    .current_dir(env!("CARGO_MANIFEST_DIR")),
                &l,
                "scripts/build-test-images.sh",
            )
        })
        .await;
        let missing = self.missing_images().await;
        assert!(
            missing.is_empty(),
            "images missing after the build: {missing:?}"
        );
        if use_cache {
            let names = self.test_images().await;
            blocking(move || {
                let _ = fs::create_dir_all(IMAGE_CACHE_DIR);
                // Written aside, then renamed: a concurrent start never reads half an archive.
                let partial = archive.with_extension(format!("{}.partial", std::process::id()));
                let saved = run_logged(
                    Command::new("docker")
                        .env("DOCKER_HOST", &host)
                        .args(["save", "-o"])
                        .arg(&partial)
                        .args(&names),
                    &log,
                );
                if !(saved && fs::rename(&partial, &archive).is_ok()) {
                    let _ = fs::remove_file(&partial);
                }
            })
            .await;
        }
    }

    /// Tags `granda-test/*:latest` on this engine.
    pub async fn test_images(&self) -> Vec<String> {
        let images = self
            .client()
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .expect("listing images");
        let mut names: Vec<String> = images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t.starts_with("granda-test/") && t.ends_with(":latest"))
            .collect();
        names.sort();
        names
    }

    /// Which of [`REQUIRED_IMAGES`] this engine lacks.
    pub async fn missing_images(&self) -> Vec<&'static str> {
        let have = self.test_images().await;
        REQUIRED_IMAGES
            .into_iter()
            .filter(|name| !have.contains(&format!("{name}:latest")))
            .collect()
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- TestDocker log (tail) ---\n{}",
                tail(&self.daemon_log(), 30)
            );
        }
        let child = self.daemon.lock().map(|mut d| d.take()).unwrap_or(None);
        teardown_docker(&self.dir, child);
        remove_dir(&self.dir);
    }
}

/// SIGTERMs `child`, waits up to `within` for it to exit, then SIGKILLs it; reaps it.
fn stop_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child.id(), "-TERM");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Stops the engine of `dir` and everything it started, and unmounts what is left under `dir`
/// (synchronously), without removing the directory.
fn teardown_docker(dir: &Path, child: Option<Child>) {
    let tag = dir_tag(dir);
    let host = format!("unix://{}", dir.join("docker.sock").display());
    let log = dir.join("commands.log");
    let dockerd = read_pid(&dir.join("docker.pid"))
        .filter(|&pid| alive(pid) && cmdline(pid).is_some_and(|c| c.contains(&host)));
    if dockerd.is_some() {
        // Removing the containers first spares the daemon's stop its per-container grace time.
        let ids = Command::new("timeout")
            .args(["20", "docker", "--host", &host, "ps", "-aq"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            run_logged(
                Command::new("timeout")
                    .args(["30", "docker", "--host", &host, "rm", "-f"])
                    .args(&ids),
                &log,
            );
        }
    }
    match child {
        Some(mut child) => {
            stop_child(&mut child, Duration::from_secs(30));
        }
        None => {
            if let Some(pid) = dockerd {
                signal(pid, "-TERM");
                let deadline = Instant::now() + Duration::from_secs(30);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if alive(pid) {
                    signal(pid, "-KILL");
                }
            }
        }
    }
    // A daemon that was killed leaves its containerd and shims: their command lines name this
    // directory or this engine's containerd namespace.
    kill_matching(&dir.to_string_lossy());
    kill_matching(&format!("-namespace granda-fault-{tag}"));
    // Processes of containers that outlived their shims, then the cgroups themselves.
    let parent = format!("granda-fault-docker-{tag}");
    let controllers: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
        .map(|c| c.join(&parent))
        .filter(|p| p.is_dir())
        .collect();
    for group in &controllers {
        for sub in fs::read_dir(group).into_iter().flatten().flatten() {
            let procs = fs::read_to_string(sub.path().join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
                signal(pid, "-KILL");
            }
        }
    }
    for group in &controllers {
        for sub in fs::read_dir(group).into_iter().flatten().flatten() {
            let _ = fs::remove_dir(sub.path());
        }
        let _ = fs::remove_dir(group);
    }
    // The daemon unmounts its data root and overlays when it stops cleanly; after a kill they
    // stay. Innermost first, and only mount points inside this directory.
    let prefix = format!("{}/", dir.display());
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    for mount in mounts {
        run_logged(Command::new("umount").args(["-l", &mount]), &log);
    }
}

/// A stable hash of what the test images are made of: `tests/images/`, the build script, and
/// the busybox binary's size and modification time.
fn image_cache_key() -> String {
    fn fnv(hash: &mut u64, bytes: &[u8]) {
        for b in bytes {
            *hash ^= u64::from(*b);
            *hash = hash.wrapping_mul(0x100_0000_01b3);
        }
    }
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("scripts/build-test-images.sh")];
    files(&root.join("tests/images"), &mut paths);
    paths.sort();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for path in &paths {
        fnv(
            &mut hash,
            path.strip_prefix(root)
                .unwrap_or(path)
                .as_os_str()
                .as_encoded_bytes(),
        );
        fnv(&mut hash, &fs::read(path).unwrap_or_default());
    }
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    if let Ok(meta) = fs::metadata(&busybox) {
        use std::os::unix::fs::MetadataExt;
        fnv(
            &mut hash,
            format!("{busybox} {} {}", meta.len(), meta.mtime()).as_bytes(),
        );
    }
    format!("{hash:016x}")
}

// ---------------------------------------------------------------------------------------------------
// The granda binary
// ---------------------------------------------------------------------------------------------------

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
fn teardown_granda(dir: &Path) {
    if let Some(pid) = read_pid(&dir.join("granda.pid"))
        && alive(pid)
        && fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|exe| exe.to_string_lossy().contains("granda"))
    {
        signal(pid, "-KILL");
    }
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
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
