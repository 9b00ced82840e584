//! The two waits before a run on this worker, each parking the message in a delay queue: fair
//! sharing ([`FunctionShare`]: a function that runs here already does not take the last free
//! slot) and, after the claim, its namespace's `max_concurrency` across all workers
//! ([`namespace_admits`], over [`crate::namespace::admit`]).

use super::*;
use std::collections::HashMap;
use std::time::Instant;

use lapin::message::Delivery;

use crate::function::Snapshot;
use crate::message::Work;
use crate::metrics::label;

/// A run's place in its function's share of this worker. Fair sharing: a message of a function
/// that runs here already, and that would take the worker's last free slot (of its current
/// target), is not run here now: it goes round through a delay queue
/// ([`super::FAIR_SHARE_DELAY`]), so a call of another function queued behind a burst is
/// delivered and finds that slot. A function alone on a worker thus runs on all slots but one;
/// the scheduler's target grows while messages wait. Counted while the run lasts.
///
/// A quick run is exempt ([`FunctionShare::quick`]): a call of a hot function whose process
/// runs here and whose recent runs here ended within [`QUICK_RUN`] frees its slot long before a
/// message sent round would be back, so sending it round frees nothing for anyone and only costs
/// its caller the delay (measured: 1.2 % of closed-loop hot calls waited 0.5 to 2 s this way,
/// `docs/benchmarks.md`, "Fair sharing and hot calls"). When all its processes are busy, the call
/// may start another one: a quick function's pool grows with its callers, as it should.
pub(super) struct FunctionShare<'a> {
    shared: &'a Shared,
    function: String,
}

impl<'a> FunctionShare<'a> {
    /// Whether a run of `function` would take the last free slot while it runs here already;
    /// `coming`: runs about to start that the limiter does not count yet (0 or 1).
    pub(super) fn would_wait(shared: &Shared, function: &Snapshot, coming: usize) -> bool {
        let full = {
            let running = shared.function_running.lock().expect("lock");
            Self::full(shared, &running, &function.name, coming)
        };
        // Asked only when it matters (it looks the function's pool up).
        full && !Self::quick(shared, function)
    }

    /// Whether a run of `function` here would be over within [`QUICK_RUN`]: it is hot, a process
    /// of it runs here, and its recent runs here took less.
    fn quick(shared: &Shared, function: &Snapshot) -> bool {
        shared.warm.serves_hot(function)
            && shared
                .controller
                .lock()
                .expect("lock")
                .recent_run(&function.name)
                .is_some_and(|took| took < QUICK_RUN)
    }

    fn full(
        shared: &Shared,
        running: &HashMap<String, usize>,
        function: &str,
        coming: usize,
    ) -> bool {
        let target = shared.limiter.size();
        let in_flight = shared.limiter.in_flight() + coming;
        let mine = running.get(function).copied().unwrap_or(0);
        shared.fair_share && target >= 2 && mine >= 1 && in_flight >= target
    }

    pub(super) fn take(shared: &'a Shared, function: &Snapshot) -> Option<FunctionShare<'a>> {
        let mut running = shared.function_running.lock().expect("lock");
        // This delivery's own slot is counted in already. Whether it is quick is asked only
        // when it matters, and not under this lock (it takes the pool's and the scheduler's).
        if Self::full(shared, &running, &function.name, 0) {
            drop(running);
            if !Self::quick(shared, function) {
                return None;
            }
            running = shared.function_running.lock().expect("lock");
        }
        *running.entry(function.name.clone()).or_default() += 1;
        Some(FunctionShare {
            shared,
            function: function.name.clone(),
        })
    }
}

impl Drop for FunctionShare<'_> {
    fn drop(&mut self) {
        let mut running = self.shared.function_running.lock().expect("lock");
        if let Some(n) = running.get_mut(&self.function) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.function);
            }
        }
    }
}

/// The longest recent run time that makes a hot call quick: a fifth of
/// [`super::FAIR_SHARE_DELAY`].
const QUICK_RUN: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends a message of `function` round a delay queue: its function would take the last slot.
pub(super) async fn defer(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    function: &str,
) {
    shared.metrics.inc(
        "granda_fair_share_deferred_total",
        format!("function=\"{}\"", label(function)),
    );
    {
        let mut deferred = shared.fair_deferred.lock().expect("lock");
        if deferred.len() < 100_000 {
            deferred.push_back(Instant::now());
        }
    }
    park_for(
        shared,
        channels,
        queue,
        delivery,
        ELSEWHERE_DELAY,
        super::FAIR_SHARE_DELAY,
    )
    .await;
}

/// Whether a claimed run of `work` fits its namespace's `max_concurrency` (always, without one).
/// `false`: the claim was undone. A database error holds the run back too (it comes again).
pub(super) async fn namespace_admits(shared: &Shared, work: &Work) -> bool {
    let ns = crate::namespace::split(&work.function.name).1;
    let max = match shared.namespace_quotas.get(&shared.pool, ns).await {
        Ok(quotas) => quotas.and_then(|q| q.max_concurrency),
        Err(e) => {
            tracing::warn!(error = %e, "reading the namespace's quotas");
            None
        }
    };
    let Some(max) = max else {
        return true;
    };
    match crate::namespace::admit(&shared.pool, ns, work.id, max).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::debug!(
                namespace = ns,
                max,
                "the namespace runs its max_concurrency; waiting"
            );
            shared.metrics.inc(
                "granda_namespace_held_total",
                format!("namespace=\"{}\"", label(ns)),
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "checking the namespace's max_concurrency; trying again later");
            let _ = sqlx::query(
                "UPDATE invocations SET status = 'queued', worker = NULL, started_at = NULL,
                        attempt = GREATEST(attempt - 1, 0) WHERE id = $1 AND status = 'running'",
            )
            .bind(work.id)
            .execute(&shared.pool)
            .await;
            false
        }
    }
}
