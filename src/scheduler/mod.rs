//! The scheduler: how many invocations a worker runs at once, between `GRANDA_MIN_CONCURRENCY`
//! and `GRANDA_MAX_CONCURRENCY`.
//!
//! Every `GRANDA_SCHEDULER_INTERVAL_MS` the worker reads the depth of each queue it serves (a
//! passive declare on a side channel), its in-flight count and the recent mean run time, and
//! asks [`Controller::observe`] for a target. The rule is Little's law turned around: a backlog
//! of `B` invocations (waiting + running) that each take `S` on average drains within `T` with
//! `c = ⌈B·S/T⌉` of them at once. So:
//!
//! - **up at once**: when `c` is above the current target, the target jumps to `c` (capped at
//!   `max`) in the same tick;
//! - **down slowly**: only after a cool-down (`GRANDA_SCHEDULER_COOLDOWN_MS`) in which no message
//!   waited and the worker was never saturated (in flight below the target) does the target come
//!   down, halfway toward `c` per tick, never below `min`.
//!
//! `T` is `GRANDA_SCHEDULER_DRAIN_TARGET_MS`. `S` is an exponentially weighted mean of the
//! worker's own run times (container create to result), starting from a prior of one second so
//! that a first burst scales up rather than trickles.
//!
//! The target is enforced twice: a semaphore bounds the runs, and the consumers' prefetch
//! follows the target (shared between the served queues by their backlog), so a worker never
//! holds many more unacked messages than it is about to start and an idle worker elsewhere gets
//! the rest of a burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::function::DEFAULT_MEMORY_MB;

/// Containers per CPU a worker runs at most, by default: cold starts spend much of their time
/// waiting on the engine, not on the CPU.
const PER_CPU: usize = 4;

/// The default bound: `PER_CPU` per CPU, but no more than the host's memory holds at the default
/// function memory limit, and at least 1.
pub fn default_max_concurrency() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let by_memory = total_memory_bytes()
        .map(|m| (m / (DEFAULT_MEMORY_MB as u64 * 1024 * 1024)) as usize)
        .unwrap_or(usize::MAX);
    (cpus * PER_CPU).min(by_memory).max(1)
}

/// The upper bound this worker keeps to.
pub fn max_concurrency(settings: &Settings) -> usize {
    settings
        .max_concurrency
        .unwrap_or_else(default_max_concurrency)
        .max(settings.min_concurrency)
        .max(1)
}

fn total_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The knobs of the rule.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub min: usize,
    pub max: usize,
    pub interval: Duration,
    pub drain_target: Duration,
    pub cooldown: Duration,
}

impl Config {
    pub fn from_settings(settings: &Settings) -> Config {
        let max = max_concurrency(settings);
        Config {
            min: settings.min_concurrency.clamp(1, max),
            max,
            interval: Duration::from_millis(settings.scheduler_interval_ms.max(10)),
            drain_target: Duration::from_millis(settings.scheduler_drain_target_ms.max(1)),
            cooldown: Duration::from_millis(settings.scheduler_cooldown_ms),
        }
    }
}

/// What the worker sees at one tick.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observation {
    /// Messages waiting in the served queues.
    pub depth: u64,
    /// Invocations this worker runs now.
    pub in_flight: usize,
}

/// Decides the target concurrency from what the worker observes.
#[derive(Debug)]
pub struct Controller {
    config: Config,
    target: usize,
    mean_run: Duration,
    /// The last tick with messages waiting or every slot taken.
    last_busy: Instant,
}

/// The mean run time assumed before any run was seen.
pub const PRIOR_RUN: Duration = Duration::from_secs(1);
/// Weight of the newest run in the mean.
const EWMA_WEIGHT: f64 = 0.2;

impl Controller {
    pub fn new(config: Config, now: Instant) -> Controller {
        Controller {
            config,
            target: config.min,
            mean_run: PRIOR_RUN,
            last_busy: now,
        }
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn mean_run(&self) -> Duration {
        self.mean_run
    }

    /// Folds one finished run's time into the mean.
    pub fn record_run(&mut self, took: Duration) {
        self.mean_run = self
            .mean_run
            .mul_f64(1.0 - EWMA_WEIGHT)
            .saturating_add(took.mul_f64(EWMA_WEIGHT));
    }

    /// The concurrency that drains `backlog` within the drain target.
    pub fn needed(&self, backlog: u64) -> usize {
        let work = self.mean_run.as_secs_f64() * backlog as f64;
        let c = (work / self.config.drain_target.as_secs_f64()).ceil() as usize;
        c.clamp(self.config.min, self.config.max)
    }

    /// One tick: returns the new target.
    pub fn observe(&mut self, obs: Observation, now: Instant) -> usize {
        let needed = self.needed(obs.depth + obs.in_flight as u64);
        if obs.depth > 0 || obs.in_flight >= self.target {
            self.last_busy = now;
        }
        if needed > self.target {
            self.target = needed;
        } else if needed < self.target && now.duration_since(self.last_busy) >= self.config.cooldown
        {
            self.target -= (self.target - needed).div_ceil(2);
        }
        self.target
    }
}

/// A semaphore whose size follows the target; shrinking waits for runs to end.
#[derive(Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    size: Arc<AtomicUsize>,
}

impl Limiter {
    pub fn new(size: usize) -> Limiter {
        Limiter {
            slots: Arc::new(Semaphore::new(size)),
            size: Arc::new(AtomicUsize::new(size)),
        }
    }

    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Runs going on now.
    pub fn in_flight(&self) -> usize {
        self.size().saturating_sub(self.slots.available_permits())
    }

    pub fn resize(&self, target: usize) {
        let current = self.size.swap(target, Ordering::Relaxed);
        if target > current {
            self.slots.add_permits(target - current);
        } else if target < current {
            let slots = self.slots.clone();
            let surplus = (current - target) as u32;
            // Take the surplus slots out as runs give them back.
            tokio::spawn(async move {
                if let Ok(permits) = slots.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            });
        }
    }
}

/// Splits a prefetch of `target` between queues by their backlog, at least one each.
pub fn share_prefetch(target: usize, backlogs: &[u64]) -> Vec<usize> {
    let total: u64 = backlogs.iter().map(|b| b + 1).sum();
    backlogs
        .iter()
        .map(|b| ((target as u64 * (b + 1)).div_ceil(total.max(1)) as usize).max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            min: 1,
            max: 8,
            interval: Duration::from_millis(100),
            drain_target: Duration::from_secs(2),
            cooldown: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_backlog_raises_the_target_at_once() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        assert_eq!(c.target(), 1);
        // 6 waiting × 1 s / 2 s = 3
        assert_eq!(
            c.observe(
                Observation {
                    depth: 6,
                    in_flight: 0
                },
                t0
            ),
            3
        );
        // a burst beyond max is capped
        assert_eq!(
            c.observe(
                Observation {
                    depth: 100,
                    in_flight: 3
                },
                t0
            ),
            8
        );
    }

    #[test]
    fn the_target_comes_down_only_after_the_cooldown_and_gradually() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        c.observe(
            Observation {
                depth: 100,
                in_flight: 0,
            },
            t0,
        );
        assert_eq!(c.target(), 8);
        let idle = Observation {
            depth: 0,
            in_flight: 0,
        };
        assert_eq!(
            c.observe(idle, t0 + Duration::from_secs(5)),
            8,
            "still cooling down"
        );
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(10)), 4);
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(11)), 2);
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(12)), 1);
        assert_eq!(
            c.observe(idle, t0 + Duration::from_secs(13)),
            1,
            "never below min"
        );
    }

    #[test]
    fn fast_runs_need_less_concurrency() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        for _ in 0..50 {
            c.record_run(Duration::from_millis(100));
        }
        assert!(c.mean_run() < Duration::from_millis(150));
        assert_eq!(c.needed(20), 2, "20 × 0.1 s / 2 s");
    }

    #[test]
    fn prefetch_is_shared_by_backlog() {
        assert_eq!(share_prefetch(8, &[0]), vec![8]);
        assert_eq!(share_prefetch(8, &[9, 0]), vec![8, 1]);
        let shares = share_prefetch(4, &[3, 3]);
        assert_eq!(shares, vec![2, 2]);
    }

    #[tokio::test]
    async fn the_limiter_grows_and_shrinks() {
        let l = Limiter::new(2);
        let a = l.slots().acquire_owned().await.unwrap();
        assert_eq!(l.in_flight(), 1);
        l.resize(4);
        assert_eq!(l.slots().available_permits(), 3);
        l.resize(1);
        tokio::task::yield_now().await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(l.slots().available_permits(), 1);
        assert_eq!(l.size(), 1);
    }

    #[test]
    fn the_default_bound_is_positive_and_follows_the_cpus() {
        let n = default_max_concurrency();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(n >= 1 && n <= cpus * PER_CPU);
    }
}
