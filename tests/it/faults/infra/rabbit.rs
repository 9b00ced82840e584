//! A private RabbitMQ node ([`TestRabbit`]).

#![allow(dead_code)]

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

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
pub(crate) fn teardown_rabbit(dir: &Path) {
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
