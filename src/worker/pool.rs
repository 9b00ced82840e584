//! The pool of kept containers: what a worker keeps alive per function, so an invocation is an
//! exec of a few tens of milliseconds (`mode: "warm"`) or one HTTP request of well under one
//! (`mode: "hot"`) instead of a container start.
//!
//! - A warm container is started with the worker's idle binary as its only process (a static
//!   program of a few KiB that pauses forever, mounted read-only; each warm run is an exec of its
//!   `run`, which keeps the run's journal for a takeover, [`super::dead_run`]) and the
//!   function's own limits and
//!   isolation. A hot one runs the image's own command, which listens on `GRANDA_SOCKET` in a
//!   directory of its own under `<state_dir>/hot/` ([`super::hot`]), with a journal directory
//!   (`GRANDA_JOURNAL`) where it may keep its answers for a takeover; it is lent out once it
//!   accepts a connection.
//! - Each run takes an idle container (the most recently used first, so the rest can expire),
//!   whose health the exec itself checks (the engine refuses an exec into a container that no
//!   longer runs; a hot container's closed connection says the same; the run then discards it and
//!   takes another), or starts a new one while the function has fewer than
//!   `max_containers` (default: the worker's max concurrency), or waits for one.
//! - A container whose run failed, timed out or ran out of memory is discarded, never reused.
//! - Idle containers beyond `min_warm` are removed after `idle_timeout_ms`. Under memory pressure
//!   (less than 10 % of the host's memory available) idle containers go first, least recently used
//!   first, `min_warm` included: an idle container is the cheapest thing to give back, and the one
//!   idle longest is the least likely to be needed soon.
//! - On shutdown every pool container is removed; after a crash the worker's restarted self
//!   removes them by their `granda.worker` label like any other.
//!
//! It is not deadpool's managed pool: the keys come and go with function versions, the eviction
//! under memory pressure spans every key, and a container that failed must never go back, which
//! deadpool's one-pool-per-type model with return-on-drop does not fit (docs/development.md,
//! "Crates, and where there is none").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::container::{PlatformError, Runner, remove};
use super::hot;
use crate::function::{Mode, Snapshot};

/// The idle entrypoint: a static x86-64 Linux program that loops on `pause(2)`.
/// With `run`, it runs a warm call's command and keeps its journal instead (source and how it
/// is built: `idle/idle.c`).
const IDLE_ELF: &[u8] = include_bytes!("idle/granda-idle");

/// A kept container as started: its id, a hot one's connection and socket directory, a warm
/// one's journal directory.
type Started = (String, Option<(hot::Connection, PathBuf)>, Option<PathBuf>);

/// Room in a journal directory beyond the output caps: the run's id and its end.
const JOURNAL_SLACK: u64 = 64 * 1024;

/// A kept container, lent to one run at a time.
#[derive(Debug)]
pub(crate) struct Warm {
    pub(crate) id: String,
    key: String,
    last_used: Instant,
    /// Runs it served before this one.
    pub(crate) uses: u32,
    /// A hot container's connection and socket directory.
    pub(crate) hot: Option<(hot::Connection, PathBuf)>,
    /// A warm or hot container's journal directory ([`super::container::JOURNAL_DIR`] in it).
    pub(crate) journal: Option<PathBuf>,
}

#[derive(Default)]
struct Entry {
    idle: Vec<Warm>,
    /// Idle plus lent out.
    live: usize,
    /// Its containers are a hot function's processes.
    hot: bool,
}

/// The warm containers of one worker.
pub(crate) struct Pool {
    runner: Runner,
    idle_binary: PathBuf,
    /// Where hot containers' socket directories are made: this worker's own.
    sockets: PathBuf,
    default_max: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// Limits by key, as last seen in a message.
    limits: Mutex<HashMap<String, crate::function::PoolLimits>>,
    returned: Notify,
    /// The engine does not answer (the worker's health): no container is started, and a run
    /// waits for one of the function's running processes instead ([`Pool::serves_hot`]).
    engine_away: std::sync::atomic::AtomicBool,
}

/// What identifies interchangeable containers: the function and everything its container is
/// made from, so an updated function never gets a container of its old definition. The
/// per-invocation variables (`GRANDA_*`: a webhook's event, an event's topic) are not part of a
/// kept container; they travel with each run.
fn key(f: &Snapshot) -> String {
    let own: Vec<_> = f
        .run
        .env
        .iter()
        .filter(|(k, _)| !k.starts_with("GRANDA_"))
        .collect();
    let env = serde_json::to_string(&own).unwrap_or_default();
    let isolation = serde_json::json!([
        f.run.pids,
        f.run.network,
        f.run.user,
        f.run.container_runtime,
        f.run.tmp_mb
    ]);
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{isolation}",
        f.name,
        f.run.mode.as_str(),
        f.run.image,
        f.run.memory_mb,
        f.run.cpus,
        env,
        serde_json::to_string(&f.secrets.0).unwrap_or_default()
    )
}

impl Pool {
    /// Writes the idle binary under `state_dir`, clears the socket directories an earlier self
    /// of `worker_id` in `installation` left, and makes an empty pool.
    pub(crate) fn new(
        runner: Runner,
        state_dir: &std::path::Path,
        installation: &str,
        worker_id: &str,
        default_max: usize,
    ) -> std::io::Result<Pool> {
        let idle_binary = install_idle_binary(state_dir)?;
        let sockets = socket_root(state_dir, installation, worker_id);
        hot::clear_socket_dirs(&sockets);
        std::fs::create_dir_all(&sockets)?;
        Ok(Pool {
            runner,
            idle_binary,
            sockets,
            default_max: default_max.max(1),
            entries: Mutex::default(),
            limits: Mutex::default(),
            returned: Notify::new(),
            engine_away: Default::default(),
        })
    }

    /// A container for one run of `function`, and whether it was started for it (a cold start).
    /// Give it back with [`Pool::release`]; dropped without that (a panicking run), it is removed.
    pub(crate) async fn acquire(
        &self,
        function: &Snapshot,
    ) -> Result<(Lent<'_>, bool), PlatformError> {
        let (warm, cold) = self.take(function).await?;
        Ok((
            Lent {
                pool: self,
                warm: Some(warm),
            },
            cold,
        ))
    }

    async fn take(&self, function: &Snapshot) -> Result<(Warm, bool), PlatformError> {
        let key = key(function);
        self.limits
            .lock()
            .expect("lock")
            .insert(key.clone(), function.run.pool);
        let max = function
            .run
            .pool
            .max_containers
            .map(|m| m.max(1) as usize)
            .unwrap_or(self.default_max);
        loop {
            let notified = self.returned.notified();
            let taken = {
                let mut entries = self.entries.lock().expect("lock");
                let entry = entries.entry(key.clone()).or_default();
                entry.hot = function.run.mode == Mode::Hot;
                let engine_away = self.engine_away.load(Ordering::Relaxed);
                match entry.idle.pop() {
                    Some(warm) => Some(Some(warm)),
                    // While the engine is away, a run waits for a process already running (a
                    // start would only wait for the engine); with none, it tries and fails.
                    None if entry.live < max && !(engine_away && entry.live > 0) => {
                        entry.live += 1;
                        Some(None)
                    }
                    None => None,
                }
            };
            match taken {
                // Its health is checked by the exec itself: the engine refuses an exec into a
                // container that no longer runs, and the caller then discards it and asks again.
                Some(Some(warm)) => return Ok((warm, false)),
                Some(None) => {
                    // Counted as live from here: a start that fails (or panics) uncounts it.
                    let reserved = Reserved {
                        pool: self,
                        key: Some(key.clone()),
                    };
                    // Boxed: starting a container is a large future, and every run that
                    // finds a kept one would otherwise carry its size.
                    let started = Box::pin(self.start(function)).await;
                    return match started {
                        Ok((id, hot, journal)) => Ok((
                            Warm {
                                id,
                                key,
                                last_used: Instant::now(),
                                uses: 0,
                                hot,
                                journal,
                            },
                            true,
                        )),
                        Err(e) => Err(e),
                    }
                    .inspect(|_| reserved.keep());
                }
                None => notified.await,
            }
        }
    }

    /// Starts a container for `function`'s mode; a hot one is ready when it accepts a connection.
    /// A warm one gets a journal directory (a tmpfs of the output caps, owned by its user) when
    /// its user is a number; else its runs are not journaled.
    async fn start(&self, function: &Snapshot) -> Result<Started, PlatformError> {
        if function.run.mode != Mode::Hot {
            let path = self.idle_binary.to_string_lossy().into_owned();
            let caps = self.runner.caps();
            let bytes = (caps.stdout + caps.stderr) as u64 + JOURNAL_SLACK;
            let journal = match self.runner.hot_owner(function).await {
                Ok(owner) => hot::owned_dir(&self.sockets, owner, bytes)
                    .inspect_err(|e| tracing::warn!(error = %e, "can't make a warm container's journal directory; its runs are not journaled"))
                    .ok(),
                Err(_) => None,
            };
            let started = self
                .runner
                .start_warm(function, &path, journal.as_deref())
                .await;
            return match started {
                Ok(id) => Ok((id, None, journal)),
                Err(e) => {
                    if let Some(journal) = &journal {
                        hot::remove_socket_dir(journal);
                    }
                    Err(e)
                }
            };
        }
        let owner = self.runner.hot_owner(function).await?;
        let dir = hot::socket_dir(&self.sockets, owner).map_err(PlatformError::SocketDir)?;
        // Room for the answers granda_hot keeps (its last few, [`hot::JOURNAL_KEPT`] and the
        // one being written), each within the output cap.
        let bytes = (self.runner.caps().stdout as u64 + JOURNAL_SLACK) * (hot::JOURNAL_KEPT + 1);
        let journal = hot::owned_dir(&self.sockets, owner, bytes)
            .inspect_err(|e| tracing::warn!(error = %e, "can't make a hot container's journal directory; its calls are not journaled"))
            .ok();
        let id = match self
            .runner
            .start_hot(function, &dir, journal.as_deref())
            .await
        {
            Ok(id) => id,
            Err(e) => {
                hot::remove_socket_dir(&dir);
                if let Some(journal) = &journal {
                    hot::remove_socket_dir(journal);
                }
                return Err(e);
            }
        };
        let within = Duration::from_millis(function.run.timeout_ms.max(hot::MIN_STARTUP_MS) as u64);
        match hot::wait_ready(self.runner.docker(), &id, &dir, owner, within).await {
            Ok(connection) => Ok((id, Some((connection, dir)), journal)),
            Err(e) => {
                let docker = self.runner.docker().clone();
                tokio::spawn(async move {
                    remove(&docker, &id).await;
                    hot::remove_socket_dir(&dir);
                    if let Some(journal) = &journal {
                        hot::remove_socket_dir(journal);
                    }
                });
                Err(PlatformError::NotReady(e))
            }
        }
    }

    /// Gives a container back after a run: kept when the run went well, else removed.
    pub(crate) fn release(&self, mut lent: Lent<'_>, healthy: bool) {
        if let Some(warm) = lent.warm.take() {
            self.give_back(warm, healthy);
        }
    }

    fn give_back(&self, mut warm: Warm, healthy: bool) {
        if !healthy {
            self.discard(warm);
            return;
        }
        warm.last_used = Instant::now();
        warm.uses += 1;
        let mut entries = self.entries.lock().expect("lock");
        let entry = entries.entry(warm.key.clone()).or_default();
        entry.hot |= warm.hot.is_some();
        entry.idle.push(warm);
        drop(entries);
        self.returned.notify_waiters();
    }

    fn discard(&self, warm: Warm) {
        self.forget_one(&warm.key);
        let docker = self.runner.docker().clone();
        tokio::spawn(async move {
            remove(&docker, &warm.id).await;
            if let Some((_, dir)) = warm.hot {
                hot::remove_socket_dir(&dir);
            }
            if let Some(dir) = warm.journal {
                hot::remove_socket_dir(&dir);
            }
        });
    }

    fn forget_one(&self, key: &str) {
        if let Some(entry) = self.entries.lock().expect("lock").get_mut(key) {
            entry.live = entry.live.saturating_sub(1);
        }
        self.returned.notify_waiters();
    }

    /// Says whether the engine answers ([`Pool`]'s `engine_away`); waiting runs look again.
    pub(super) fn set_engine_away(&self, away: bool) {
        if self.engine_away.swap(away, Ordering::Relaxed) != away {
            self.returned.notify_waiters();
        }
    }

    /// Whether `function` is hot with a process of its current definition running here: its
    /// calls need no engine (a request over the process's socket).
    pub(super) fn serves_hot(&self, function: &Snapshot) -> bool {
        function.run.mode == Mode::Hot
            && self
                .entries
                .lock()
                .expect("lock")
                .get(&key(function))
                .is_some_and(|e| e.live > 0)
    }

    /// Whether any hot process runs here.
    pub(super) fn any_hot(&self) -> bool {
        self.entries
            .lock()
            .expect("lock")
            .values()
            .any(|e| e.live > 0 && e.hot)
    }

    /// Removes idle containers past their idle timeout (beyond `min_warm`), and under memory
    /// pressure idle ones least recently used first.
    pub(crate) fn expire(&self, pressure: bool) {
        // Nothing can be removed while the engine is away, and a hot process kept is what
        // still serves calls then.
        if self.engine_away.load(Ordering::Relaxed) {
            return;
        }
        let limits = self.limits.lock().expect("lock").clone();
        let mut doomed = Vec::new();
        {
            let mut entries = self.entries.lock().expect("lock");
            for (key, entry) in entries.iter_mut() {
                let l = limits.get(key).copied().unwrap_or_default();
                let timeout = Duration::from_millis(l.idle_timeout_ms.max(0) as u64);
                // Most recently used last: the expired ones are at the front.
                entry.idle.sort_by_key(|w| w.last_used);
                let keep = if pressure {
                    0
                } else {
                    l.min_warm.max(0) as usize
                };
                while entry.idle.len() > keep
                    && (pressure || entry.idle[0].last_used.elapsed() >= timeout)
                {
                    doomed.push(entry.idle.remove(0));
                    if pressure {
                        break;
                    }
                }
            }
        }
        for warm in doomed {
            tracing::debug!(container = %warm.id, pressure, "removing an idle warm container");
            self.discard(warm);
        }
    }

    /// Removes every idle container (shutdown).
    pub(crate) async fn clear(&self) {
        let idle: Vec<Warm> = {
            let mut entries = self.entries.lock().expect("lock");
            entries
                .values_mut()
                .flat_map(|e| e.idle.drain(..))
                .collect()
        };
        for warm in idle {
            remove(self.runner.docker(), &warm.id).await;
            if let Some(dir) = &warm.journal {
                hot::remove_socket_dir(dir);
            }
        }
        hot::clear_socket_dirs(&self.sockets);
    }
}

/// A kept container lent to one run. Dropped without [`Pool::release`] (the run panicked), it is
/// discarded: removed from the engine and uncounted, so the function's slot is not lost.
pub(crate) struct Lent<'a> {
    pool: &'a Pool,
    warm: Option<Warm>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Warm;
    fn deref(&self) -> &Warm {
        self.warm.as_ref().expect("a lent container until released")
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Warm {
        self.warm.as_mut().expect("a lent container until released")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(warm) = self.warm.take() {
            tracing::warn!(container = %warm.id, "a kept container was not given back; removing it");
            self.pool.discard(warm);
        }
    }
}

/// A container being started, counted as live: uncounted when dropped unless kept.
struct Reserved<'a> {
    pool: &'a Pool,
    key: Option<String>,
}

impl Reserved<'_> {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.pool.forget_one(&key);
        }
    }
}

/// This worker's directory of hot sockets, of its installation and worker id (two installations
/// may share a state directory and a worker id: neither clears the other's sockets). Short, since
/// a socket's path must fit in 108 bytes.
pub fn socket_root(state_dir: &std::path::Path, installation: &str, worker_id: &str) -> PathBuf {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(installation.as_bytes());
    hash.update([0]);
    hash.update(worker_id.as_bytes());
    let digest = hex::encode(hash.finalize());
    state_dir.join("hot").join(&digest[..12])
}

/// Writes the idle binary to `state_dir/granda-idle` (atomically) and returns its path.
pub fn install_idle_binary(state_dir: &std::path::Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(state_dir)?;
    let idle_binary = state_dir.join("granda-idle");
    // Several workers (of one process or several) may install it at once: each writes its own
    // temporary file and renames it into place.
    let tmp = state_dir.join(format!("granda-idle.{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, IDLE_ELF)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &idle_binary)?;
    Ok(idle_binary)
}

/// Whether the host is short of memory: less than 10 % available.
pub(crate) fn memory_pressure() -> bool {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(available)) => available * 10 < total,
        _ => false,
    }
}
