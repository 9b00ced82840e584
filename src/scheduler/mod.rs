//! The scheduler: how many invocations a worker runs at once, between `GRANDA_MIN_CONCURRENCY`
//! and `GRANDA_MAX_CONCURRENCY`.
//!
//! Every `GRANDA_SCHEDULER_INTERVAL_MS` the worker reads the depth of each queue it serves (a
//! passive declare on a side channel) and its in-flight count, and after each run it reports the
//! run's time; [`Controller::observe`] turns that into a target. Two numbers decide it:
//!
//! - **demand**: what callers ask for now: the invocations in flight plus those waiting, and never
//!   less than Little's law gives (completions per second × mean run time); with some headroom
//!   (√demand) while messages wait. Closed-loop callers (sync clients waiting on their answer)
//!   show up as in-flight + waiting; a backlog shows up as waiting.
//! - **capacity**: how much concurrency the host takes before runs slow down. Each run is compared
//!   with the unloaded run time of its class (function, and whether it started a container): a
//!   slowly rising minimum of its recent runs. While the mean ratio of a round (a tick, or a run
//!   time if longer) stays within `GRANDA_SCHEDULER_LATENCY_TOLERANCE` and demand presses on the
//!   capacity, the capacity grows (doubling at first, like TCP's slow start, then by √capacity);
//!   when runs inflate past the tolerance it shrinks in proportion, by a quarter at most per
//!   round (Vegas and Gradient2 of Netflix's concurrency-limits), unless the round's useful
//!   parallelism (mean in flight ÷ inflation, which throughput follows by Little's law) rose by
//!   a fifth with a fifth more in flight: then the host is busier, not saturated (cold starts
//!   slow down as more start at once while the runs' waiting part does not), and the capacity
//!   keeps growing. It starts at twice the CPUs and stays within the bounds; at the start of a
//!   busy stretch, before any run has been judged, a round in which messages waited and no run
//!   ended doubles it (long runs would otherwise hold a backlog at the start for a whole run time
//!   per doubling).
//!
//! The target is demand capped by capacity: **up at once** (the tick demand exceeds it), **down
//! at once** when the capacity shrinks, and otherwise **down slowly**: only after a cool-down
//! (`GRANDA_SCHEDULER_COOLDOWN_MS`) in which no message waited and a slot was free, halfway toward
//! the demand per tick, never below `min`.
//!
//! The target is enforced twice: the [`Limiter`] bounds the runs (sync calls first, and async work
//! never takes the top `max/8` slots of the hard bound while sync calls come, so one finds a
//! slot free), and the
//! consumers' prefetch follows the target (shared between the served queues by their backlog),
//! so a worker never holds many more unacked messages than it is about to start and an idle
//! worker elsewhere gets the rest of a burst.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::function::DEFAULT_MEMORY_MB;

mod limiter;
pub(crate) use limiter::{Lane, Limiter, sync_reserve};

/// Invocations per CPU a worker runs at most, by default: most functions wait (on an API, a
/// database, a sleep) rather than compute, and the controller holds back where runs inflate.
const PER_CPU: usize = 16;

/// The capacity a worker starts from, per CPU, before it has seen how runs behave.
const START_PER_CPU: usize = 2;

/// The default bound: `PER_CPU` per CPU, but no more than the host's memory holds at the default
/// function memory limit, and at least 1.
pub(crate) fn default_max_concurrency() -> usize {
    let by_memory = total_memory_bytes()
        .map(|m| (m / (DEFAULT_MEMORY_MB as u64 * 1024 * 1024)) as usize)
        .unwrap_or(usize::MAX);
    (cpus() * PER_CPU).min(by_memory).max(1)
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The upper bound this worker keeps to.
pub(crate) fn max_concurrency(settings: &Settings) -> usize {
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
pub(crate) struct Config {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) interval: Duration,
    pub(crate) cooldown: Duration,
    /// How much slower than unloaded a run may get before concurrency stops growing.
    pub(crate) tolerance: f64,
    /// The capacity before any run was seen.
    pub(crate) start: usize,
}

impl Config {
    pub(crate) fn from_settings(settings: &Settings) -> Config {
        let max = max_concurrency(settings);
        let min = settings.min_concurrency.clamp(1, max);
        Config {
            min,
            max,
            interval: Duration::from_millis(settings.scheduler_interval_ms.max(10)),
            cooldown: Duration::from_millis(settings.scheduler_cooldown_ms),
            tolerance: if settings.scheduler_latency_tolerance.is_finite() {
                settings.scheduler_latency_tolerance.max(1.05)
            } else {
                1.5
            },
            start: (cpus() * START_PER_CPU).clamp(min, max),
        }
    }
}

/// What the worker sees at one tick.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Observation {
    /// Messages waiting in the served queues.
    pub(crate) depth: u64,
    /// Invocations this worker handles now.
    pub(crate) in_flight: usize,
}

/// Run times of one class of runs (a function, cold or not).
#[derive(Clone, Copy, Debug)]
struct Class {
    /// The unloaded run time: a minimum of the recent mean that rises slowly.
    baseline: f64,
    /// Recent mean run time.
    recent: f64,
    runs: u64,
}

/// Weight of the newest run in a class's recent mean.
const RECENT_WEIGHT: f64 = 0.3;
/// How far the baseline moves toward a higher recent mean per run (so it follows a function
/// that really became slower, over several hundred runs).
const BASELINE_DRIFT: f64 = 0.002;
/// Weight of the newest run in the overall mean run time.
const EWMA_WEIGHT: f64 = 0.2;
/// The time constant of the completion rate.
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// How much a round's useful parallelism must exceed the last round's for inflated runs to count
/// as a busier host rather than a saturated one.
const RISING: f64 = 1.2;
/// Classes kept at most (the least used are forgotten).
const MAX_CLASSES: usize = 1024;

/// Decides the target concurrency from what the worker observes.
#[derive(Debug)]
pub(crate) struct Controller {
    config: Config,
    target: usize,
    capacity: f64,
    /// Still doubling: no round has inflated yet.
    slow_start: bool,
    mean_run: Duration,
    classes: HashMap<String, Class>,
    /// Ratios (run time / its class's baseline) of the runs of this round.
    ratio_sum: f64,
    ratio_runs: u32,
    /// Runs ended since the last tick, for the completion rate.
    completions: u32,
    /// The in-flight counts seen at this round's ticks, and the useful parallelism of the last
    /// judged round (mean in flight ÷ inflation, which throughput follows by Little's law):
    /// inflated runs while it still rises are not saturation (the added runs still get work done).
    in_flight_sum: u64,
    in_flight_ticks: u32,
    last_useful: f64,
    last_in_flight: f64,
    /// Slow start with nothing judged yet in this busy stretch.
    blind: bool,
    /// Runs ended in this round.
    round_ended: u32,
    /// Completions per second (exponentially weighted per tick).
    rate: f64,
    last_tick: Instant,
    round_start: Instant,
    /// Demand pressed on the capacity during this round.
    pressed: bool,
    /// The last tick with messages waiting or every slot taken.
    last_busy: Instant,
    /// The last inflation seen (mean ratio of a round), for metrics and tests.
    inflation: f64,
}

/// The mean run time assumed before any run was seen.
pub(crate) const PRIOR_RUN: Duration = Duration::from_secs(1);

impl Controller {
    pub(crate) fn new(config: Config, now: Instant) -> Controller {
        Controller {
            config,
            target: config.min,
            capacity: config.start.clamp(config.min, config.max) as f64,
            slow_start: true,
            mean_run: PRIOR_RUN,
            classes: HashMap::new(),
            ratio_sum: 0.0,
            ratio_runs: 0,
            completions: 0,
            in_flight_sum: 0,
            in_flight_ticks: 0,
            last_useful: 0.0,
            last_in_flight: 0.0,
            blind: true,
            round_ended: 0,
            rate: 0.0,
            last_tick: now,
            round_start: now,
            pressed: false,
            last_busy: now,
            inflation: 1.0,
        }
    }

    #[cfg(test)]
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// The most the worker would run now, given how runs behaved.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity.round() as usize
    }

    /// The mean ratio of run time to unloaded run time in the last round that had runs.
    #[cfg(test)]
    pub(crate) fn inflation(&self) -> f64 {
        self.inflation
    }

    /// Folds one finished run of `class` (e.g. the function's name, and whether the run started a
    /// container) into the means.
    pub(crate) fn record_run(&mut self, class: &str, took: Duration) {
        self.mean_run = if self.classes.is_empty() {
            took
        } else {
            self.mean_run
                .mul_f64(1.0 - EWMA_WEIGHT)
                .saturating_add(took.mul_f64(EWMA_WEIGHT))
        };
        self.completions = self.completions.saturating_add(1);
        self.round_ended = self.round_ended.saturating_add(1);
        let took = took.as_secs_f64().max(1e-4);
        if !self.classes.contains_key(class) && self.classes.len() >= MAX_CLASSES {
            let rarest = self
                .classes
                .iter()
                .min_by_key(|(_, c)| c.runs)
                .map(|(k, _)| k.clone());
            if let Some(k) = rarest {
                self.classes.remove(&k);
            }
        }
        match self.classes.get_mut(class) {
            None => {
                self.classes.insert(
                    class.to_string(),
                    Class {
                        baseline: took,
                        recent: took,
                        runs: 1,
                    },
                );
            }
            Some(c) => {
                // Compared with what was known before this run.
                self.ratio_sum += took / c.baseline;
                self.ratio_runs += 1;
                c.recent = c.recent * (1.0 - RECENT_WEIGHT) + took * RECENT_WEIGHT;
                c.baseline =
                    (c.baseline + (c.recent - c.baseline).max(0.0) * BASELINE_DRIFT).min(c.recent);
                c.runs += 1;
            }
        }
    }

    /// The recent mean run time of `class` (as [`Controller::record_run`] names it), once one
    /// ran.
    pub(crate) fn recent_run(&self, class: &str) -> Option<Duration> {
        self.classes
            .get(class)
            .map(|c| Duration::from_secs_f64(c.recent))
    }

    /// What callers ask for now, with headroom while messages wait.
    pub(crate) fn demand(&self, obs: Observation) -> usize {
        let seen = obs.in_flight as u64 + obs.depth;
        let by_little = (self.rate * self.mean_run.as_secs_f64()).round() as u64;
        let mut demand = seen.max(by_little);
        if obs.depth > 0 {
            demand += (demand as f64).sqrt().ceil() as u64;
        }
        demand.min(usize::MAX as u64) as usize
    }

    /// The capacity after a round whose runs took `inflation` times their unloaded time, with
    /// `useful` parallelism (mean in flight ÷ inflation). Runs inflated past the tolerance shrink
    /// it, unless the useful parallelism still rose by a good margin over the last round (the
    /// host is busier, not saturated: a cold start slows down as more start at once, while the
    /// runs' waiting part does not); runs within it, or rising throughput, let demand that
    /// pressed grow it.
    fn judge(&mut self, inflation: f64, in_flight: f64) {
        let (min, max) = (self.config.min as f64, self.config.max as f64);
        let tolerance = self.config.tolerance;
        let useful = in_flight / inflation;
        let rising = in_flight > self.last_in_flight * RISING
            && useful > self.last_useful * RISING
            && self.last_useful > 0.0;
        self.blind = false;
        (self.last_in_flight, self.last_useful) = (in_flight, useful);
        if inflation > tolerance && !rising {
            self.slow_start = false;
            self.capacity = (self.capacity * (tolerance / inflation).max(0.75)).max(min);
        } else if self.pressed {
            let easy = inflation <= 1.0 + (tolerance - 1.0) / 2.0;
            let step = if self.slow_start && easy {
                self.capacity
            } else {
                self.capacity.sqrt().max(1.0)
            };
            self.capacity = (self.capacity + step).min(max);
        }
        self.pressed = false;
    }

    /// One tick: returns the new target.
    pub(crate) fn observe(&mut self, obs: Observation, now: Instant) -> usize {
        let elapsed = now.duration_since(self.last_tick).as_secs_f64();
        if elapsed > 0.0 {
            let rate = f64::from(self.completions) / elapsed;
            let w = (elapsed / RATE_WINDOW.as_secs_f64()).min(1.0);
            self.rate = self.rate * (1.0 - w) + rate * w;
            self.completions = 0;
            self.last_tick = now;
        }
        let demand = self.demand(obs);
        if demand > self.capacity() {
            self.pressed = true;
        }

        // The capacity: once a round, by how the round's runs compare with unloaded ones.
        // Slow start judges every tick that saw runs; after it, a round lasts a run.
        let round = if self.slow_start {
            self.config.interval
        } else {
            self.mean_run.max(self.config.interval)
        };
        self.in_flight_sum += obs.in_flight as u64;
        self.in_flight_ticks += 1;
        if now.duration_since(self.round_start) >= round {
            if self.ratio_runs > 0 {
                let inflation = self.ratio_sum / f64::from(self.ratio_runs);
                self.inflation = inflation;
                let in_flight = self.in_flight_sum as f64 / f64::from(self.in_flight_ticks);
                self.judge(inflation, in_flight);
            }
            // A round with no runs to judge by (none ended, or only first runs of their class)
            // keeps what pressed in it; in slow start, messages that wait through a round in
            // which no run ended double the capacity anyway (long runs would otherwise hold a
            // backlog at the start capacity for a whole run time per doubling).
            else if self.blind && self.pressed && obs.depth > 0 && self.round_ended == 0 {
                self.capacity = (self.capacity * 2.0).min(self.config.max as f64);
                self.pressed = false;
            }
            self.ratio_sum = 0.0;
            self.ratio_runs = 0;
            self.in_flight_sum = 0;
            self.in_flight_ticks = 0;
            self.round_ended = 0;
            self.round_start = now;
        }
        let capacity = self.capacity().clamp(self.config.min, self.config.max);

        if obs.depth > 0 || obs.in_flight >= self.target {
            self.last_busy = now;
        }
        let needed = demand.clamp(self.config.min, capacity);
        if needed > self.target || capacity < self.target {
            self.target = needed.min(capacity);
        } else if needed < self.target && now.duration_since(self.last_busy) >= self.config.cooldown
        {
            self.target -= (self.target - needed).div_ceil(2);
            // A quiet worker starts the next busy stretch from its own start again.
            if self.target <= self.config.start {
                self.slow_start = true;
                self.blind = true;
            }
        }
        self.target = self.target.clamp(self.config.min, self.config.max);
        self.target
    }
}

/// Splits a prefetch of `target` between queues by their backlog, at least one each.
pub(crate) fn share_prefetch(target: usize, backlogs: &[u64]) -> Vec<usize> {
    let total: u64 = backlogs.iter().map(|b| b + 1).sum();
    backlogs
        .iter()
        .map(|b| ((target as u64 * (b + 1)).div_ceil(total.max(1)) as usize).max(1))
        .collect()
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            min: 1,
            max: 8,
            interval: Duration::from_millis(100),
            cooldown: Duration::from_secs(10),
            tolerance: 1.5,
            start: 4,
        }
    }

    fn obs(depth: u64, in_flight: usize) -> Observation {
        Observation { depth, in_flight }
    }

    #[test]
    fn a_backlog_raises_the_target_at_once_up_to_the_capacity() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        assert_eq!(c.target(), 1);
        assert_eq!(c.observe(obs(2, 0), t0), 4, "2 waiting + √2 headroom");
        assert_eq!(
            c.observe(obs(100, 4), t0),
            4,
            "capped at the start capacity"
        );
        assert_eq!(c.capacity(), 4);
    }

    #[test]
    fn one_call_at_a_time_keeps_the_target_at_one() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        let mut t = t0;
        for i in 0..60 {
            t += Duration::from_millis(100);
            if i % 3 == 0 {
                c.record_run("echo#cold", Duration::from_millis(300));
            }
            assert_eq!(c.observe(obs(0, 1), t), 1);
        }
    }

    #[test]
    fn the_target_comes_down_only_after_the_cooldown_and_gradually() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        c.observe(obs(100, 0), t0);
        assert_eq!(c.target(), 4);
        let idle = obs(0, 0);
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(5)), 4, "cooling");
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(10)), 2);
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(11)), 1);
        assert_eq!(c.observe(idle, t0 + Duration::from_secs(12)), 1, "min");
    }

    #[test]
    fn runs_that_hold_their_time_let_the_capacity_grow_and_inflated_ones_shrink_it() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        let mut t = t0;
        for _ in 0..20 {
            t += Duration::from_millis(100);
            for _ in 0..4 {
                c.record_run("f", Duration::from_millis(50));
            }
            c.observe(obs(50, c.target()), t);
        }
        assert_eq!(c.capacity(), 8, "grew to max while runs held");
        assert_eq!(c.target(), 8);
        for _ in 0..3 {
            t += Duration::from_millis(100);
            for _ in 0..4 {
                c.record_run("f", Duration::from_millis(150));
            }
            c.observe(obs(50, c.target()), t);
        }
        assert!(c.inflation() > 2.0, "{}", c.inflation());
        assert!(c.capacity() < 8, "shrank: {}", c.capacity());
        assert_eq!(c.target(), c.capacity(), "the target follows down at once");
    }

    #[test]
    fn classes_are_judged_against_their_own_unloaded_time() {
        let t0 = Instant::now();
        let mut c = Controller::new(config(), t0);
        let mut t = t0;
        // A slow and a fast function side by side: neither looks inflated.
        for _ in 0..20 {
            t += Duration::from_millis(100);
            c.record_run("slow", Duration::from_secs(1));
            c.record_run("fast", Duration::from_millis(20));
            c.observe(obs(50, c.target()), t);
        }
        assert!((c.inflation() - 1.0).abs() < 0.01, "{}", c.inflation());
    }

    #[test]
    fn prefetch_is_shared_by_backlog() {
        assert_eq!(share_prefetch(8, &[0]), vec![8]);
        assert_eq!(share_prefetch(8, &[9, 0]), vec![8, 1]);
        assert_eq!(share_prefetch(4, &[3, 3]), vec![2, 2]);
    }

    #[test]
    fn the_default_bound_is_positive_and_follows_the_cpus() {
        let n = default_max_concurrency();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(n >= 1 && n <= cpus * PER_CPU);
    }
}
