//! The scheduler: how many invocations a worker runs at once.
//!
//! Today the bound is fixed per worker, between `GRANDA_MIN_CONCURRENCY` and
//! `GRANDA_MAX_CONCURRENCY`; the default maximum comes from the host (see
//! [`default_max_concurrency`]). The worker's prefetch equals its bound, so it never holds
//! more unacked messages than it will start at once.

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

/// The bound this worker keeps to.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_is_positive_and_follows_the_cpus() {
        let n = default_max_concurrency();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(n >= 1 && n <= cpus * PER_CPU);
    }
}
