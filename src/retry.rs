//! Retry policy, decided in one place: which failures are retried, after how long, and when an
//! invocation is dead.
//!
//! - Platform failures (the engine failed, the container could not start, the worker was lost)
//!   are always retried.
//! - Function failures (non-zero exit, timeout) are retried only when the function lists them in
//!   `retry_on` (`"error"`, `"timeout"`).
//! - Sync calls are never retried: their caller is waiting and gets the first verdict.
//! - Between attempts: exponential backoff with jitter, `base × 2^(attempt-1)` capped at `max`,
//!   each delay drawn from 80–100 % of its level. The wait happens in RabbitMQ (delay queues), never
//!   in a worker holding a message.
//! - When a retryable failure has used the last of `max_attempts`, the invocation is `dead` and its
//!   message goes to the dead-letter queue.
//! - A worker that can't run a message at all (its engine can't have the image, its engine is
//!   away, or its circuit breaker for the queue is open) gives the message back unclaimed for
//!   another worker, using no attempt; on the message's last delivery before the quorum queue's
//!   delivery limit it runs the normal path instead (claim, fail as a platform failure, the rules
//!   above), so the record ends `failed` or `dead` with the engine's reason, never stuck `queued`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::trigger::Trigger;

/// A function failure a function may ask to have retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    Error,
    Timeout,
}

impl RetryOn {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryOn::Error => "error",
            RetryOn::Timeout => "timeout",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<RetryOn> {
        match s {
            "error" => Some(RetryOn::Error),
            "timeout" => Some(RetryOn::Timeout),
            _ => None,
        }
    }
}

/// Why an attempt did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Granda or the engine failed; the function never had a fair run.
    Platform,
    /// The function exited non-zero.
    Error,
    /// The function ran past its timeout.
    Timeout,
}

/// What happens after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The attempt's result is the invocation's result.
    Final,
    /// Run it again after this long.
    RetryAfter(Duration),
    /// Retries are spent: record it `dead` and dead-letter the message.
    Dead,
}

/// The delays between attempts: `base × 2^k`, up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay level (the delay queue) after attempt `attempt` (counting from 1).
    pub(crate) fn level(&self, attempt: i32) -> Duration {
        let exp = attempt.clamp(1, 31) as u32 - 1;
        self.base
            .checked_mul(1u32 << exp.min(20))
            .unwrap_or(self.max)
            .min(self.max)
            .max(Duration::from_millis(1))
    }

    /// Every level there is, smallest first.
    pub fn levels(&self) -> Vec<Duration> {
        let mut levels = vec![];
        let mut attempt = 1;
        loop {
            let level = self.level(attempt);
            if levels.last() == Some(&level) {
                return levels;
            }
            levels.push(level);
            attempt += 1;
        }
    }
}

/// What a worker does with a message it can't run here ([`on_unavailable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Give it back unclaimed (reject with requeue) for another worker.
    Release,
    /// Its last delivery: claim it and let the run fail as a platform failure.
    Attempt,
}

/// A message this worker can't run, delivered `delivery_count` times before (the quorum queue's
/// `x-delivery-count`), with the queue's delivery limit `limit`.
pub(crate) fn on_unavailable(delivery_count: i64, limit: i64) -> Unavailable {
    // The queue dead-letters a message returned more than `limit` times: keep a margin of two
    // deliveries so that the last one is ours to record.
    if delivery_count + 2 >= limit {
        Unavailable::Attempt
    } else {
        Unavailable::Release
    }
}

/// Jitter: a delay drawn from 80–100 % of `level`, from `random` in `0..=u16::MAX`.
pub(crate) fn jittered(level: Duration, random: u16) -> Duration {
    let fraction = 0.8 + 0.2 * (f64::from(random) / f64::from(u16::MAX));
    level.mul_f64(fraction).max(Duration::from_millis(1))
}

/// Decides what follows attempt number `attempt` (from 1) that ended with `failure`.
pub(crate) fn decide(
    trigger: Trigger,
    max_attempts: i32,
    retry_on: &[RetryOn],
    attempt: i32,
    failure: Option<Failure>,
    backoff: &Backoff,
) -> Verdict {
    let Some(failure) = failure else {
        return Verdict::Final;
    };
    if trigger == Trigger::Sync {
        return Verdict::Final;
    }
    let retryable = match failure {
        Failure::Platform => true,
        Failure::Error => retry_on.contains(&RetryOn::Error),
        Failure::Timeout => retry_on.contains(&RetryOn::Timeout),
    };
    if !retryable {
        Verdict::Final
    } else if attempt < max_attempts {
        Verdict::RetryAfter(backoff.level(attempt))
    } else {
        Verdict::Dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn platform_failures_are_retried_until_attempts_are_spent() {
        let d = |attempt| decide(Trigger::Async, 3, &[], attempt, Some(Failure::Platform), &B);
        assert_eq!(d(1), Verdict::RetryAfter(Duration::from_secs(1)));
        assert_eq!(d(2), Verdict::RetryAfter(Duration::from_secs(2)));
        assert_eq!(d(3), Verdict::Dead);
    }

    #[test]
    fn function_failures_are_retried_only_when_asked() {
        let none = decide(Trigger::Webhook, 3, &[], 1, Some(Failure::Error), &B);
        assert_eq!(none, Verdict::Final);
        let errors = decide(
            Trigger::Event,
            3,
            &[RetryOn::Error],
            1,
            Some(Failure::Error),
            &B,
        );
        assert_eq!(errors, Verdict::RetryAfter(Duration::from_secs(1)));
        let timeout = decide(
            Trigger::Async,
            3,
            &[RetryOn::Error],
            1,
            Some(Failure::Timeout),
            &B,
        );
        assert_eq!(timeout, Verdict::Final);
        let timeout = decide(
            Trigger::Async,
            2,
            &[RetryOn::Timeout],
            2,
            Some(Failure::Timeout),
            &B,
        );
        assert_eq!(timeout, Verdict::Dead);
    }

    #[test]
    fn success_and_sync_calls_are_final() {
        assert_eq!(decide(Trigger::Async, 3, &[], 1, None, &B), Verdict::Final);
        let sync = decide(
            Trigger::Sync,
            3,
            &[RetryOn::Error],
            1,
            Some(Failure::Platform),
            &B,
        );
        assert_eq!(sync, Verdict::Final);
    }

    #[test]
    fn unrunnable_messages_are_given_back_until_their_last_delivery() {
        assert_eq!(on_unavailable(0, 20), Unavailable::Release);
        assert_eq!(on_unavailable(17, 20), Unavailable::Release);
        assert_eq!(on_unavailable(18, 20), Unavailable::Attempt);
        assert_eq!(on_unavailable(25, 20), Unavailable::Attempt);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_the_level() {
        assert_eq!(B.level(7), Duration::from_secs(60));
        assert_eq!(B.level(100), Duration::from_secs(60));
        assert_eq!(B.levels().len(), 7);
        let level = Duration::from_secs(10);
        assert_eq!(jittered(level, u16::MAX), level);
        assert_eq!(jittered(level, 0), Duration::from_secs(8));
    }
}
