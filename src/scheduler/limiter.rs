//! The limiter: a worker's slots, resized to the scheduler's target, sync calls first (a
//! reserve async work can't take while sync calls come; a freed slot goes to a waiting sync call
//! before waiting async work).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Which kind of delivery asks for a slot: sync calls have a caller waiting on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    Sync,
    Async,
}

/// The slots of the hard bound that async work never takes, so that a sync call finds one even
/// behind a backlog: one in eight (at least one when the bound is 2 or more).
pub(crate) fn sync_reserve(max: usize) -> usize {
    if max >= 2 { max.div_ceil(8) } else { 0 }
}

/// How long after the last sync call the reserve is kept.
pub(crate) const SYNC_RESERVE_HOLD: Duration = Duration::from_secs(60);

/// Bounds the runs of a worker to its target, sync calls first. A sync call may run while fewer
/// than `min(target + reserve, max)` run; async work while fewer than `min(target, max - reserve)`
/// run, the reserve being kept only within a minute of the last sync call (so async work alone
/// gets every slot). Waiting sync calls get a freed slot before waiting async work.
#[derive(Clone)]
pub(crate) struct Limiter {
    gate: Arc<Mutex<Gate>>,
}

struct Gate {
    size: usize,
    max: usize,
    /// When a sync call last asked for a slot: the reserve is kept only while they come.
    last_sync: Option<Instant>,
    running: usize,
    sync_waiting: VecDeque<oneshot::Sender<Slot>>,
    async_waiting: VecDeque<oneshot::Sender<Slot>>,
}

impl Gate {
    fn room(&self, lane: Lane) -> bool {
        let recent = self
            .last_sync
            .is_some_and(|t| t.elapsed() < SYNC_RESERVE_HOLD);
        let reserve = if recent { sync_reserve(self.max) } else { 0 };
        let limit = match lane {
            Lane::Sync => (self.size + reserve).min(self.max),
            Lane::Async => self.size.min(self.max - reserve),
        };
        self.running < limit.max(1)
    }

    /// Admits waiters while there is room; returns the slots to hand over once unlocked.
    fn admit(&mut self, gate: &Arc<Mutex<Gate>>) -> Vec<(oneshot::Sender<Slot>, Slot)> {
        let mut out = Vec::new();
        for lane in [Lane::Sync, Lane::Async] {
            loop {
                if !self.room(lane) {
                    break;
                }
                let queue = match lane {
                    Lane::Sync => &mut self.sync_waiting,
                    Lane::Async => &mut self.async_waiting,
                };
                let Some(tx) = queue.pop_front() else { break };
                if tx.is_closed() {
                    continue;
                }
                self.running += 1;
                out.push((tx, Slot { gate: gate.clone() }));
            }
        }
        out
    }
}

/// A run's place; dropping it frees the slot.
pub(crate) struct Slot {
    gate: Arc<Mutex<Gate>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let handed = {
            let mut gate = self.gate.lock().expect("lock");
            gate.running -= 1;
            gate.admit(&self.gate)
        };
        hand_over(handed);
    }
}

fn hand_over(handed: Vec<(oneshot::Sender<Slot>, Slot)>) {
    for (tx, slot) in handed {
        // A waiter that went away drops the slot, which frees it again.
        let _ = tx.send(slot);
    }
}

impl Limiter {
    /// A limiter of `size` slots within the hard bound `max`.
    pub(crate) fn new(size: usize, max: usize) -> Limiter {
        Limiter {
            gate: Arc::new(Mutex::new(Gate {
                size,
                max: max.max(size).max(1),
                last_sync: None,
                running: 0,
                sync_waiting: VecDeque::new(),
                async_waiting: VecDeque::new(),
            })),
        }
    }

    /// Waits for a slot of `lane`; `None` only if the limiter is gone.
    pub(crate) async fn acquire(&self, lane: Lane) -> Option<Slot> {
        let rx = {
            let mut gate = self.gate.lock().expect("lock");
            if lane == Lane::Sync {
                gate.last_sync = Some(Instant::now());
            }
            let queued_ahead = match lane {
                Lane::Sync => !gate.sync_waiting.is_empty(),
                Lane::Async => !gate.sync_waiting.is_empty() || !gate.async_waiting.is_empty(),
            };
            if !queued_ahead && gate.room(lane) {
                gate.running += 1;
                return Some(Slot {
                    gate: self.gate.clone(),
                });
            }
            let (tx, rx) = oneshot::channel();
            match lane {
                Lane::Sync => gate.sync_waiting.push_back(tx),
                Lane::Async => gate.async_waiting.push_back(tx),
            }
            rx
        };
        rx.await.ok()
    }

    /// The target it enforces.
    pub(crate) fn size(&self) -> usize {
        self.gate.lock().expect("lock").size
    }

    /// Runs going on now.
    pub(crate) fn in_flight(&self) -> usize {
        self.gate.lock().expect("lock").running
    }

    /// Sets the target; runs above a lower one go on, and no new one starts until they end.
    pub(crate) fn resize(&self, target: usize) {
        let handed = {
            let mut gate = self.gate.lock().expect("lock");
            gate.size = target;
            gate.admit(&self.gate)
        };
        hand_over(handed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limiter_grows_and_shrinks() {
        let l = Limiter::new(2, 8);
        let a = l.acquire(Lane::Async).await.unwrap();
        assert_eq!(l.in_flight(), 1);
        l.resize(4);
        let more: Vec<Slot> =
            futures_util::future::join_all((0..3).map(|_| l.acquire(Lane::Async)))
                .await
                .into_iter()
                .map(Option::unwrap)
                .collect();
        assert_eq!(l.in_flight(), 4);
        l.resize(1);
        drop(a);
        drop(more);
        assert_eq!(l.in_flight(), 0);
        let _one = l.acquire(Lane::Async).await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(20), l.acquire(Lane::Async)).await;
        assert!(second.is_err(), "the target is 1");
        assert_eq!(l.size(), 1);
    }

    #[tokio::test]
    async fn sync_calls_get_a_slot_that_async_work_cannot_take() {
        let l = Limiter::new(4, 4);
        // Async work alone gets every slot.
        let all: Vec<Slot> = futures_util::future::join_all((0..4).map(|_| l.acquire(Lane::Async)))
            .await
            .into_iter()
            .map(Option::unwrap)
            .collect();
        drop(all);
        // Once sync calls come, one slot is kept for them.
        drop(l.acquire(Lane::Sync).await.unwrap());
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(l.acquire(Lane::Async).await.unwrap());
        }
        let fourth = tokio::time::timeout(Duration::from_millis(20), l.acquire(Lane::Async)).await;
        assert!(fourth.is_err(), "async never takes the reserved slot");
        let sync = tokio::time::timeout(Duration::from_millis(20), l.acquire(Lane::Sync)).await;
        assert!(matches!(sync, Ok(Some(_))), "a sync call finds it");
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_a_waiting_sync_call_first() {
        let l = Limiter::new(1, 1);
        let first = l.acquire(Lane::Async).await.unwrap();
        let waiting_async = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Lane::Async).await.map(|_| Instant::now()) }
        });
        tokio::task::yield_now().await;
        let waiting_sync = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(Lane::Sync).await.map(|_| Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        let sync_at = waiting_sync.await.unwrap().unwrap();
        let async_at = waiting_async.await.unwrap().unwrap();
        assert!(sync_at <= async_at);
    }
}
