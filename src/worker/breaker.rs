//! A circuit breaker per queue: a worker whose engine can't have an image, or that fails
//! platform-wise again and again, stops taking that queue's messages for a while instead of
//! black-holing them (a fast failure leaves its slots free, so it would take most of them).
//!
//! - Closed: messages flow. [`TRIP_AFTER`] platform failures in a row open it.
//! - Open: the worker cancels the queue's consumers (its share goes to other workers) and gives
//!   back at once any message it still holds. After the open period it is half-open.
//! - Half-open: one consumer with a prefetch of one; a run that is not a platform failure closes
//!   the breaker, a failure opens it again for twice as long (from [`FIRST_OPEN`] up to
//!   [`LONGEST_OPEN`]).
//!
//! Only where another live worker serves the queue (the heartbeats say): a worker alone on its
//! queue runs what it can't run, so the failure is recorded and the retry policy decides,
//! instead of the whole queue standing still on one machine.
//!
//! Messages given back keep their delivery count, so the quorum queue's delivery limit still
//! bounds them (see [`crate::retry::on_unavailable`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Platform failures in a row that open a closed breaker.
pub(crate) const TRIP_AFTER: u32 = 3;
/// The first open period.
pub(crate) const FIRST_OPEN: Duration = Duration::from_secs(5);
/// The longest open period.
pub(crate) const LONGEST_OPEN: Duration = Duration::from_secs(60);

/// Where a queue's breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Copy, Debug)]
struct Queue {
    failures: u32,
    open_until: Option<Instant>,
    open_for: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            failures: 0,
            open_until: None,
            open_for: FIRST_OPEN,
        }
    }
}

/// The breakers of one worker, by queue.
#[derive(Default)]
pub(crate) struct Breakers {
    queues: Mutex<HashMap<String, Queue>>,
}

impl Breakers {
    pub(crate) fn state(&self, queue: &str, now: Instant) -> State {
        let queues = self.queues.lock().expect("lock");
        match queues.get(queue).and_then(|q| q.open_until) {
            None => State::Closed,
            Some(until) if now < until => State::Open,
            Some(_) => State::HalfOpen,
        }
    }

    /// The prefetch a queue may have, given what the scheduler wants for it.
    pub(crate) fn allow(&self, queue: &str, wanted: usize, now: Instant) -> usize {
        match self.state(queue, now) {
            State::Closed => wanted,
            State::Open => 0,
            State::HalfOpen => wanted.min(1),
        }
    }

    /// A run on `queue` that the platform did not fail. Returns true if that closed the breaker.
    pub(crate) fn success(&self, queue: &str) -> bool {
        let mut queues = self.queues.lock().expect("lock");
        match queues.remove(queue) {
            Some(q) => q.open_until.is_some(),
            None => false,
        }
    }

    /// A platform failure on `queue`. Returns true if that opened the breaker (the caller should
    /// make the consumers follow at once).
    pub(crate) fn failure(&self, queue: &str, now: Instant) -> bool {
        let mut queues = self.queues.lock().expect("lock");
        let q = queues.entry(queue.to_string()).or_default();
        match q.open_until {
            // Already open: a message it still held failed; no change.
            Some(until) if now < until => false,
            // Half-open: the probe failed.
            Some(_) => {
                q.open_for = (q.open_for * 2).min(LONGEST_OPEN);
                q.open_until = Some(now + q.open_for);
                true
            }
            None => {
                q.failures += 1;
                if q.failures >= TRIP_AFTER {
                    q.open_until = Some(now + q.open_for);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Queues whose breaker is not closed, for `/readyz` and the heartbeat.
    pub(crate) fn open_queues(&self, now: Instant) -> Vec<String> {
        let queues = self.queues.lock().expect("lock");
        let mut open: Vec<String> = queues
            .iter()
            .filter(|(_, q)| q.open_until.is_some_and(|u| now < u))
            .map(|(name, _)| name.clone())
            .collect();
        open.sort();
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_failures_in_a_row_and_half_opens_after_the_period() {
        let b = Breakers::default();
        let t = Instant::now();
        assert!(!b.failure("q", t));
        assert!(!b.failure("q", t));
        assert_eq!(b.allow("q", 8, t), 8);
        assert!(b.failure("q", t));
        assert_eq!(b.state("q", t), State::Open);
        assert_eq!(b.allow("q", 8, t), 0);
        assert_eq!(b.allow("other", 8, t), 8);
        let later = t + FIRST_OPEN;
        assert_eq!(b.state("q", later), State::HalfOpen);
        assert_eq!(b.allow("q", 8, later), 1);
        // The probe fails: open for twice as long.
        assert!(b.failure("q", later));
        assert_eq!(b.state("q", later + FIRST_OPEN), State::Open);
        assert_eq!(b.state("q", later + FIRST_OPEN * 2), State::HalfOpen);
        // The probe succeeds: closed, and the count starts again.
        assert!(b.success("q"));
        assert_eq!(b.state("q", later), State::Closed);
        assert!(!b.failure("q", later));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breakers::default();
        let t = Instant::now();
        b.failure("q", t);
        b.failure("q", t);
        assert!(!b.success("q"));
        assert!(!b.failure("q", t));
        assert_eq!(b.state("q", t), State::Closed);
    }

    #[test]
    fn the_open_period_is_capped() {
        let b = Breakers::default();
        let mut t = Instant::now();
        for _ in 0..TRIP_AFTER {
            b.failure("q", t);
        }
        for _ in 0..10 {
            t += LONGEST_OPEN;
            b.failure("q", t);
        }
        assert_eq!(b.state("q", t + LONGEST_OPEN), State::HalfOpen);
    }
}
