//! CPU time by process, from `/proc`: this process (Granda in-process, and its load clients),
//! RabbitMQ (`beam.smp`) and Postgres (every `postgres` process), so the hot rows can say what a
//! recorded call costs each of them. `scripts/bench-cpu.sh` measures the same with `granda up`
//! and wrk, where Granda's own process holds no client.

use std::time::Duration;

/// CPU time spent so far by each group of processes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cpu {
    pub(crate) granda: Duration,
    pub(crate) rabbitmq: Duration,
    pub(crate) postgres: Duration,
}

impl Cpu {
    /// Reads every process's user and system time now.
    pub(crate) fn now() -> Cpu {
        let mut cpu = Cpu {
            granda: stat("/proc/self/stat").map_or(Duration::ZERO, |(_, t)| t),
            ..Cpu::default()
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Some((comm, time)) = stat(&format!("/proc/{}/stat", name.to_string_lossy())) else {
                continue;
            };
            match comm.as_str() {
                "beam.smp" => cpu.rabbitmq += time,
                "postgres" => cpu.postgres += time,
                _ => {}
            }
        }
        cpu
    }

    /// What was spent from `before` to `self`, per call of `calls`, in ms: Granda, RabbitMQ,
    /// Postgres. (A Postgres backend that exited in between is missed: the pools keep theirs.)
    pub(crate) fn per_call_ms(&self, before: &Cpu, calls: u64) -> [f64; 3] {
        let ms = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e3 / calls as f64;
        [
            ms(self.granda, before.granda),
            ms(self.rabbitmq, before.rabbitmq),
            ms(self.postgres, before.postgres),
        ]
    }
}

/// A process's name and user plus system time, from its `stat` file.
fn stat(path: &str) -> Option<(String, Duration)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // After the name: state is field 3, utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((comm, Duration::from_secs_f64(ticks as f64 / clock_ticks())))
}

/// `sysconf(_SC_CLK_TCK)`: 100 on Linux for every architecture Granda builds on.
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_and_time_only_grows() {
        let before = Cpu::now();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let after = Cpu::now();
        assert!(after.granda >= before.granda);
        assert!(stat("/proc/self/stat").is_some_and(|(comm, _)| !comm.is_empty()));
    }
}
