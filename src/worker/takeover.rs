//! Stopping a dead worker's containers as soon as its lease runs out, whatever this worker's load.
//!
//! Every live worker sweeps, in a loop of its own (independent of its consumers and their free
//! slots), the workers whose lease (`GRANDA_WORKER_LEASE_MS` after their last heartbeat) ran out
//! within the last [`WINDOW`]. For each one whose engine it can reach ([`reach`]: its own engine
//! when the dead worker recorded the same engine ID and address, else the dead worker's address
//! when the engine there answers with the recorded ID), it kills and removes every container of
//! this installation labelled with the dead worker's id, once each run's container has been
//! looked at: a run that ended after its worker died is recorded from its container rather than
//! run again ([`dead_run`], whose module doc holds the invariant). It sweeps again every [`period`] for the
//! whole window, so a container the engine created or started after the worker's last beat (a
//! request in flight when it died) is stopped too. The dead worker's messages are run again by
//! whichever worker gets them, as any message, when it has a slot: [`super::delivery`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;

use super::container::remove;
use super::{Shared, dead_run, heartbeat, reaper};
use crate::docker::{LABEL_INSTALLATION, LABEL_WORKER};

/// How long after a worker's lease ran out its engine is still swept for its containers: a
/// request it made just before dying may reach the engine late (a busy engine, a slow create).
pub(super) const WINDOW: Duration = Duration::from_secs(120);

/// How long to wait before trying again an engine that could not be reached.
const RETRY_UNREACHABLE: Duration = Duration::from_secs(5);

/// How often a worker sweeps: a twelfth of the lease, between 100 ms and 1 s (500 ms with the
/// default 6 s lease).
pub(super) fn period(lease: Duration) -> Duration {
    (lease / 12).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The dead worker's engine (at `address`, with ID `engine_id` as it recorded them) as this
/// worker reaches it, or `None`. Engines may share an ID (daemons started from one
/// /etc/docker, or cloned hosts): the dead worker's engine is this one only when the address is
/// the same too; another address is connected to and must answer with the recorded ID.
pub(super) async fn reach(
    shared: &Shared,
    address: &str,
    engine_id: Option<&str>,
) -> Option<Docker> {
    let mine = shared.engine_id.is_some()
        && engine_id == shared.engine_id.as_deref()
        && address == shared.engine;
    if mine {
        return Some(shared.runner.docker().clone());
    }
    let docker = crate::docker::connect(Some(address), shared.docker_timeout).ok()?;
    match tokio::time::timeout(Duration::from_secs(2), docker.info()).await {
        Ok(Ok(info)) if engine_id.is_none() || info.id.as_deref() == engine_id => Some(docker),
        _ => None,
    }
}

/// Settles the runs of dead worker `worker` on `docker` ([`dead_run::settle_all`]: a run that
/// ended is recorded from its container, one still going is stopped and put back to `queued`),
/// then kills and removes its other containers of `installation` (its pool containers, and runs
/// whose record another worker has claimed since); returns how many containers it stopped or
/// removed.
pub(super) async fn stop_containers_of(
    shared: &Shared,
    docker: &Docker,
    worker: &str,
    installation: &str,
) -> usize {
    let label = format!("{LABEL_WORKER}={worker}");
    let installation = format!("{LABEL_INSTALLATION}={installation}");
    let found = reaper::list(docker, &[&label, &installation]).await;
    let all = found.len();
    let rest = dead_run::settle_all(shared, docker, worker, found).await;
    futures_util::future::join_all(rest.iter().map(|id| remove(docker, id))).await;
    all
}

/// The engines of dead workers, as reached (or not) so far.
#[derive(Default)]
struct Engines {
    /// By address and engine ID: the engine, or when to try again.
    known: HashMap<(String, Option<String>), Result<Docker, Instant>>,
}

impl Engines {
    async fn get(&mut self, shared: &Shared, dead: &heartbeat::DeadWorker) -> Option<Docker> {
        let address = dead.engine.clone()?;
        let key = (address, dead.engine_id.clone());
        if let Some(known) = self.known.get(&key) {
            match known {
                Ok(docker) => return Some(docker.clone()),
                Err(again) if Instant::now() < *again => return None,
                Err(_) => {}
            }
        }
        let reached = reach(shared, &key.0, key.1.as_deref()).await;
        if reached.is_none() && !self.known.contains_key(&key) {
            tracing::warn!(worker = %dead.worker, engine = %key.0, "a dead worker's engine is not reachable from here; its containers may run on");
        }
        self.known.insert(
            key,
            reached.clone().ok_or(Instant::now() + RETRY_UNREACHABLE),
        );
        reached
    }
}

/// Sweeps the dead workers' engines every [`period`] until the worker stops.
pub(super) async fn sweep_forever(
    shared: Arc<Shared>,
    installation: String,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let mut engines = Engines::default();
    while !shutdown.stopped_during(period(shared.lease)).await {
        sweep(&shared, &installation, &mut engines).await;
    }
}

async fn sweep(shared: &Shared, installation: &str, engines: &mut Engines) {
    let dead = match heartbeat::expired(&shared.pool, &shared.worker_id, WINDOW).await {
        Ok(dead) => dead,
        Err(e) => {
            tracing::debug!(error = %e, "can't read heartbeats; the takeover sweep waits");
            return;
        }
    };
    for dead in dead {
        let Some(docker) = engines.get(shared, &dead).await else {
            continue;
        };
        let stopped = stop_containers_of(shared, &docker, &dead.worker, installation).await;
        if stopped > 0 {
            tracing::info!(worker = %dead.worker, engine = dead.engine.as_deref().unwrap_or(""), stopped, "stopped the containers of a worker whose lease ran out");
            shared.metrics.add(
                "granda_worker_takeover_containers_stopped_total",
                String::new(),
                stopped as u64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_runs_a_few_times_a_lease() {
        assert_eq!(period(Duration::from_secs(6)), Duration::from_millis(500));
        assert_eq!(
            period(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(1));
    }
}
