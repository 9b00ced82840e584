//! The one way a Granda process stops, as in tokio's mini-redis (`src/shutdown.rs` and
//! `src/server.rs`): a signal that says "stop" to every task, and a channel whose closing says
//! that every task is done.
//!
//! - A [`Signal`] owns both ends. Each task gets a [`Shutdown`] handle from it
//!   ([`Signal::handle`], or [`Shutdown::handle`] for a task a task starts). A handle hears the
//!   stop ([`Shutdown::recv`], [`Shutdown::stopped_during`]) and holds a clone of the completion
//!   channel's sender; a loop that is told to stop finishes the step in hand, returns, and drops
//!   its handle. When every handle (and the signal's own sender) is gone, the receiver's `recv()`
//!   returns `None`: all work is done. This is mini-redis's `notify_shutdown` broadcast and its
//!   `shutdown_complete_tx`/`rx`, with a `watch` instead of the broadcast so that a handle made
//!   after the stop still hears it.
//! - [`Signal::finish`] says stop and waits for the completion, with a bound: past it, it logs
//!   the tasks still running (each handle is named) and returns. Nothing is aborted.
//! - A stop that must come later than the process's, in order, is a phase: [`Shutdown::phase`]
//!   makes a [`Signal`] of its own whose handles also count towards every enclosing signal's
//!   completion. The worker stops its background loops only after it has drained its runs, and
//!   its heartbeat last; a session's quorum probe stops with its session. Dropping a signal says
//!   stop too, so a phase ends with the scope that owns it, even on an early `?`.
//!
//! [`run_until`] is the root: `granda up`, `granda server`, `granda worker`, the tests and the
//! benchmark each give it the future that says when to stop (a SIGTERM, a test's teardown).
//!
//! What is not a task here: a worker's runs in flight are drained by the worker within its grace
//! period (`GRANDA_SHUTDOWN_GRACE_MS`), then given back when the connection closes; an ingress's
//! HTTP requests in flight are finished by the server before it returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// How long the root waits, once its own work has returned, for the other tasks to finish.
pub const BOUND: Duration = Duration::from_secs(5);

/// The handles alive now, by id: what a bounded wait names when it gives up.
#[derive(Default)]
struct Live {
    next: AtomicU64,
    names: Mutex<BTreeMap<u64, &'static str>>,
}

impl Live {
    fn add(&self, name: &'static str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.names.lock().expect("lock").insert(id, name);
        id
    }

    fn names(&self) -> Vec<&'static str> {
        self.names.lock().expect("lock").values().copied().collect()
    }
}

/// Says stop to its handles, and waits until they are all gone.
pub struct Signal {
    stop: watch::Sender<bool>,
    /// This signal's completion sender, then those of the signals it is a phase of.
    done: Vec<mpsc::Sender<()>>,
    finished: mpsc::Receiver<()>,
    live: Arc<Live>,
}

impl Default for Signal {
    fn default() -> Self {
        Signal::new()
    }
}

impl Signal {
    pub fn new() -> Signal {
        Signal::with(Vec::new(), Arc::default())
    }

    fn with(mut outer: Vec<mpsc::Sender<()>>, live: Arc<Live>) -> Signal {
        let (stop, _) = watch::channel(false);
        let (done, finished) = mpsc::channel(1);
        outer.insert(0, done);
        Signal {
            stop,
            done: outer,
            finished,
            live,
        }
    }

    /// A handle for a task named `name` (the name is what a bounded wait logs).
    pub fn handle(&self, name: &'static str) -> Shutdown {
        Shutdown {
            id: self.live.add(name),
            stop: self.stop.subscribe(),
            done: self.done.clone(),
            live: self.live.clone(),
        }
    }

    /// Tells every handle to stop (they may go on finishing the step in hand).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Tells every handle to stop, and waits until all are gone, at most `bound`. Returns whether
    /// they all were; if not, the ones still running are logged (and left to finish).
    pub async fn finish(self, bound: Duration) -> bool {
        self.stop();
        let Signal {
            stop,
            done,
            mut finished,
            live,
        } = self;
        drop(done);
        let all = tokio::time::timeout(bound, finished.recv()).await.is_ok();
        if !all {
            tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                running = ?live.names(),
                "tasks still running after the shutdown bound; not waiting for them"
            );
        }
        drop(stop);
        all
    }
}

/// A task's handle on the stop: it hears the stop, and while it is held the task counts as
/// running.
pub struct Shutdown {
    id: u64,
    stop: watch::Receiver<bool>,
    /// Held, never sent on: dropping it tells each enclosing signal this task is done.
    done: Vec<mpsc::Sender<()>>,
    live: Arc<Live>,
}

impl Shutdown {
    /// Whether this task was told to stop (or its signal is gone).
    pub fn is_shutdown(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Completes when this task is told to stop (at once if it was); cancel safe.
    pub async fn recv(&mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }

    /// Waits `period`, or less if told to stop meanwhile: returns whether it was.
    pub async fn stopped_during(&mut self, period: Duration) -> bool {
        tokio::select! {
            _ = self.recv() => true,
            _ = tokio::time::sleep(period) => self.is_shutdown(),
        }
    }

    /// A future that completes when this task is told to stop, for an API that takes one (axum's
    /// graceful shutdown). It does not count as a task: keep this handle while it runs.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// A handle for another task, told to stop with this one.
    pub fn handle(&self, name: &'static str) -> Shutdown {
        Shutdown {
            id: self.live.add(name),
            stop: self.stop.clone(),
            done: self.done.clone(),
            live: self.live.clone(),
        }
    }

    /// A signal for tasks that must stop later than this one, in an order its owner chooses
    /// ([`Signal::finish`]); they count towards this handle's signal's completion too.
    pub fn phase(&self) -> Signal {
        Signal::with(self.done.clone(), self.live.clone())
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.live.names.lock().expect("lock").remove(&self.id);
    }
}

/// Runs `work` with a handle named `name` until `stop` completes, then tells every task to stop,
/// waits for `work` to return, and for the rest at most [`BOUND`]. If `work` returns first, the
/// rest are told to stop then.
pub(crate) async fn run_until<T, W>(
    stop: impl Future<Output = ()>,
    name: &'static str,
    work: impl FnOnce(Shutdown) -> W,
) -> T
where
    W: Future<Output = T>,
{
    let signal = Signal::new();
    let work = work(signal.handle(name));
    tokio::pin!(work, stop);
    let out = tokio::select! {
        out = &mut work => out,
        _ = &mut stop => {
            tracing::info!("stopping");
            signal.stop();
            work.await
        }
    };
    signal.finish(BOUND).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every handle hears the stop, even one made after it, and the signal finishes when the
    /// last is dropped.
    #[tokio::test]
    async fn finishes_when_every_handle_is_gone() {
        let signal = Signal::new();
        let mut first = signal.handle("first");
        let second = first.handle("second");
        assert!(!first.is_shutdown());
        let task = tokio::spawn(async move {
            first.recv().await;
            drop(second);
        });
        signal.stop();
        let late = signal.handle("late");
        assert!(late.is_shutdown());
        drop(late);
        assert!(signal.finish(Duration::from_secs(5)).await);
        task.await.unwrap();
    }

    /// A bounded wait gives up on a task that holds its handle, and says so.
    #[tokio::test]
    async fn a_held_handle_makes_the_bounded_wait_give_up() {
        let signal = Signal::new();
        let held = signal.handle("stubborn");
        assert!(!signal.finish(Duration::from_millis(50)).await);
        assert!(held.is_shutdown());
    }

    /// A phase's handles count towards the outer signal, and hear only the phase's own stop.
    #[tokio::test]
    async fn a_phase_stops_on_its_own_and_counts_for_the_outer_signal() {
        let outer = Signal::new();
        let handle = outer.handle("worker");
        let phase = handle.phase();
        let mut inner = phase.handle("heartbeat");
        outer.stop();
        assert!(handle.is_shutdown());
        assert!(!inner.is_shutdown());
        drop(handle);
        let waiting = tokio::spawn(outer.finish(Duration::from_millis(200)));
        assert!(!waiting.await.unwrap(), "the phase's task still runs");
        assert!(!inner.stopped_during(Duration::from_millis(10)).await);
        assert!(!phase.finish(Duration::from_millis(1)).await);
        assert!(inner.is_shutdown());
        drop(inner);
    }

    /// Dropping a signal tells its handles to stop.
    #[tokio::test]
    async fn dropping_the_signal_says_stop() {
        let signal = Signal::new();
        let mut handle = signal.handle("probe");
        drop(signal);
        tokio::time::timeout(Duration::from_secs(5), handle.recv())
            .await
            .expect("told to stop");
    }

    /// `run_until` returns `work`'s output once told to stop, after the other tasks are done.
    #[tokio::test]
    async fn run_until_stops_the_work_and_waits_for_the_rest() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ended_tx, mut ended_rx) = tokio::sync::oneshot::channel();
        let stopping = tokio::spawn(async move {
            run_until(
                async {
                    let _ = rx.await;
                },
                "main",
                |mut shutdown| async move {
                    let mut side = shutdown.handle("side");
                    tokio::spawn(async move {
                        side.recv().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = ended_tx.send(());
                    });
                    shutdown.recv().await;
                    7
                },
            )
            .await
        });
        tx.send(()).unwrap();
        assert_eq!(stopping.await.unwrap(), 7);
        // The side task had ended (its handle dropped after the send) before run_until returned.
        assert!(ended_rx.try_recv().is_ok());
    }
}
