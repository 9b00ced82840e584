//! What every delivery of a worker shares ([`Shared`]): the heartbeat loop, the circuit breakers'
//! view of the queue, and the checks before a message is claimed here.

use super::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::message::Work;

/// Beats every third of the lease, checking the engine and the broker first. An engine that does
/// not answer a ping at two beats in a row ([`EngineWatch`]) makes the worker unhealthy: its
/// consumers are cancelled until the engine answers again. A worker without a broker connection at two beats in a row (not one passing failover)
/// is unhealthy too: its consumers went with the connection, and it takes messages again as
/// soon as a session connects.
/// Stops when told to (the worker tells it last, after its drain).
pub(super) async fn beat_forever(shared: Arc<Shared>, queues: Vec<String>, mut shutdown: Shutdown) {
    let every = heartbeat::every(shared.lease);
    let mut broker = BrokerWatch::default();
    let mut engine_watch = EngineWatch::default();
    let mut was_cut_off = false;
    loop {
        let engine = tokio::time::timeout(every, shared.runner.docker().ping()).await;
        let missed = match engine {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("docker engine unreachable: {e}")),
            Err(_) => Some(format!(
                "docker engine did not answer a ping within {} ms",
                every.as_millis()
            )),
        };
        let problem = engine_watch.problem(missed);
        let cut_off = broker.problem(shared.connected.load(Ordering::Relaxed), Instant::now());
        if cut_off.is_some() != was_cut_off {
            was_cut_off = cut_off.is_some();
            match &cut_off {
                Some(p) => tracing::warn!(problem = %p, "worker unhealthy: no broker"),
                None => tracing::info!("worker connected to RabbitMQ again"),
            }
        }
        shared.warm.set_engine_away(problem.is_some());
        let changed = {
            let mut health = shared.health.lock().expect("lock");
            let changed = health.is_some() != problem.is_some();
            health.clone_from(&problem);
            changed
        };
        if changed {
            match &problem {
                Some(p) => tracing::warn!(problem = %p, "worker unhealthy; not taking messages"),
                None => tracing::info!("worker healthy again; taking messages"),
            }
            shared.reschedule.notify_one();
        }
        // What the beat reports: the engine first, else the broker.
        let reported = problem.clone().or(cut_off);
        let beat = heartbeat::Beat {
            worker: &shared.worker_id,
            concurrency: shared.limiter.size() as i32,
            in_flight: shared.busy.load(Ordering::Relaxed) as i32,
            queues: &queues,
            engine: &shared.engine,
            engine_id: shared.engine_id.as_deref(),
            unhealthy: reported.as_deref(),
            lease: shared.lease,
        };
        let beaten = heartbeat::beat(&shared.pool, &beat).await;
        if let Err(e) = &beaten {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        let readiness = shared.readiness(&queues, beaten.is_ok(), problem.is_none());
        shared.export_readiness(&queues, &readiness);
        match heartbeat::served_by_others(&shared.pool, &shared.worker_id, &queues).await {
            Ok(served) => {
                let served: HashSet<String> = served.into_iter().collect();
                let mut shared_queues = shared.shared_queues.lock().expect("lock");
                if shared_queues.as_ref() != Some(&served) {
                    *shared_queues = Some(served);
                    shared.reschedule.notify_one();
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the other workers' queues"),
        }
        if shutdown.stopped_during(every).await {
            return;
        }
    }
}

/// Whether a worker counts as cut off from the broker: disconnected at two beats in a row, since
/// the first of them.
#[derive(Debug, Default)]
pub(super) struct BrokerWatch {
    /// When a beat first saw no connection, in the current run of beats that saw none.
    down_since: Option<Instant>,
}

impl BrokerWatch {
    /// What is wrong, seen at `now` with the session `connected` or not.
    pub(super) fn problem(&mut self, connected: bool, now: Instant) -> Option<String> {
        if connected {
            self.down_since = None;
            return None;
        }
        let since = *self.down_since.get_or_insert(now);
        (now > since).then(|| {
            format!(
                "not connected to RabbitMQ (for {} ms)",
                now.duration_since(since).as_millis()
            )
        })
    }
}

/// Whether the engine counts as down: a ping missed at two beats in a row. One slow answer on a
/// busy host (a ping past a third of the lease while the CPU is saturated) is no outage, and
/// must not stop the worker taking messages, hot calls to processes already running included.
#[derive(Debug, Default)]
pub(super) struct EngineWatch {
    missed: u32,
}

impl EngineWatch {
    /// What is wrong, given this beat's ping: `missed` is why it failed, `None` if it answered.
    pub(super) fn problem(&mut self, missed: Option<String>) -> Option<String> {
        match missed {
            None => {
                self.missed = 0;
                None
            }
            Some(why) => {
                self.missed += 1;
                if self.missed == 1 {
                    tracing::info!(problem = %why, "the engine missed one ping; unhealthy at the next miss");
                }
                (self.missed >= 2).then(|| format!("{why} (at {} beats in a row)", self.missed))
            }
        }
    }
}

/// Marks the session connected until dropped.
pub(super) struct Connected<'a>(pub(super) &'a AtomicBool);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Shared {
    /// The prefetch `queue` may have now: none while the worker is unhealthy, unless hot
    /// processes run here (their calls need no engine: the others are parked, see
    /// [`Shared::engine_away_for`]); else what its breaker allows of `wanted`.
    pub(super) fn allowed(&self, queue: &str, wanted: usize) -> usize {
        if self.health.lock().expect("lock").is_some() && !self.warm.any_hot() {
            return 0;
        }
        if !self.others_serve(queue) {
            return wanted;
        }
        self.breakers.allow(queue, wanted, Instant::now())
    }

    /// Whether another live, healthy worker serves `queue` (as of the last heartbeat).
    pub(super) fn others_serve(&self, queue: &str) -> bool {
        self.shared_queues
            .lock()
            .expect("lock")
            .as_ref()
            .is_none_or(|served| served.contains(queue))
    }

    /// A platform failure (or not) on `queue`, for its breaker; wakes the session when the
    /// breaker opens or closes.
    pub(super) fn ran(&self, queue: &str, platform_failure: bool) {
        let changed = if platform_failure {
            self.breakers.failure(queue, Instant::now())
        } else {
            self.breakers.success(queue)
        };
        if changed {
            if platform_failure {
                tracing::warn!(
                    queue,
                    "circuit breaker open: not taking this queue's messages for a while"
                );
            } else {
                tracing::info!(queue, "circuit breaker closed");
            }
            self.reschedule.notify_one();
        }
    }

    /// A registration check from an ingress without an engine ([`control`]): this engine knows
    /// the runtime and has the image (present, or pulled as the policy allows).
    pub(super) async fn check(&self, check: control::Check) -> control::Answer {
        use crate::docker::ImageError;
        if let Some(runtime) = check.container_runtime.as_deref() {
            let info = match self.runner.docker().info().await {
                Ok(info) => info,
                Err(e) => {
                    return control::Answer::Unavailable(format!("docker engine unavailable: {e}"));
                }
            };
            let known = info.runtimes.unwrap_or_default();
            if !known.contains_key(runtime) {
                let mut names: Vec<&String> = known.keys().collect();
                names.sort();
                return control::Answer::Unprocessable(format!(
                    "container_runtime: the engine has no runtime {runtime:?} (it has {names:?})"
                ));
            }
        }
        if let Some(image) = check.image.as_deref() {
            match self.images.ensure(image).await {
                Ok(_) => match crate::docker::check_volumes(self.runner.docker(), image).await {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => return control::Answer::Unprocessable(reason),
                    Err(e) => {
                        return control::Answer::Unavailable(format!(
                            "docker engine unavailable: {e}"
                        ));
                    }
                },
                Err(e @ ImageError::Unavailable { .. }) => {
                    return control::Answer::Unprocessable(e.to_string());
                }
                Err(e @ ImageError::Engine(_)) => {
                    return control::Answer::Unavailable(e.to_string());
                }
            }
        }
        control::Answer::Ok
    }

    /// Whether this worker can run `work` now: its breaker lets it, and its engine has the image
    /// (pulled if need be). `Err` says why not.
    /// Whether `work` waits for the engine that does not answer now: everything but a call of
    /// a hot function whose process runs here ([`pool::Pool::serves_hot`]).
    pub(super) fn engine_away_for(&self, work: &Work) -> bool {
        self.health.lock().expect("lock").is_some() && !self.warm.serves_hot(&work.function)
    }

    pub(super) async fn runnable_here(&self, queue: &str, work: &Work) -> Result<(), String> {
        if self.health.lock().expect("lock").is_some() {
            if self.warm.serves_hot(&work.function) {
                // Its process runs here: neither the engine nor the image is needed.
                return Ok(());
            }
            return Err("this worker is unhealthy".into());
        }
        // Alone on the queue, a worker runs what it can't run: the failure is recorded and the
        // retry policy decides (there is nobody to give it to).
        let alone = !self.others_serve(queue);
        if !alone && self.breakers.state(queue, Instant::now()) == breaker::State::Open {
            return Err("this worker's circuit breaker for the queue is open".into());
        }
        match self.images.ensure(&work.function.run.image).await {
            Ok(_) => Ok(()),
            Err(_) if alone => Ok(()),
            Err(e) => {
                self.ran(queue, true);
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_slow_engine_ping_is_no_outage_two_in_a_row_are() {
        let mut watch = EngineWatch::default();
        assert_eq!(watch.problem(None), None);
        assert_eq!(watch.problem(Some("slow".into())), None, "one miss");
        assert_eq!(watch.problem(None), None, "answered again");
        assert_eq!(watch.problem(Some("slow".into())), None, "counts afresh");
        let down = watch.problem(Some("slow".into())).expect("two in a row");
        assert!(down.contains("slow") && down.contains("2 beats"), "{down}");
        assert_eq!(watch.problem(None), None);
    }

    #[test]
    fn a_worker_is_cut_off_from_the_broker_at_the_second_beat_without_a_connection() {
        let mut watch = BrokerWatch::default();
        let t0 = Instant::now();
        assert_eq!(watch.problem(true, t0), None);
        // One beat in a failover (or before the first session connects) is no problem.
        assert_eq!(watch.problem(false, t0), None);
        let later = t0 + Duration::from_millis(2_000);
        let problem = watch.problem(false, later).expect("cut off");
        assert!(
            problem.contains("RabbitMQ") && problem.contains("2000 ms"),
            "{problem}"
        );
        // Connected again: healthy at once, and a new outage starts counting afresh.
        assert_eq!(watch.problem(true, later), None);
        assert_eq!(watch.problem(false, later + Duration::from_secs(1)), None);
    }
}
