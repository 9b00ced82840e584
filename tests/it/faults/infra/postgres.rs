//! A private PostgreSQL cluster ([`TestPostgres`]).

#![allow(dead_code)]

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
pub(crate) fn teardown_postgres(dir: &Path) {
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
