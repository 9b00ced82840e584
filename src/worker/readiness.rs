//! What a worker tells an orchestrator ([`Readiness`]), for `/readyz` and the `granda_worker_*`
//! gauges, and the quorum probe behind one of its checks.
//!
//! A worker is ready when it takes work: Postgres and its engine answer, it is connected to
//! RabbitMQ with its consumers set up, the broker confirms a write to a quorum queue (the probe:
//! without quorum the work queues deliver nothing, whatever node the worker is connected to),
//! and at least one of its queues has its circuit breaker closed. None of these is cured by a
//! restart: `/healthz` stays 200 through all of them (the orchestrator waits); it fails only when
//! the process no longer answers at all.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::ConfirmSelectOptions;

use super::Shared;
use crate::broker;
use crate::metrics::label;

/// What the worker's `/readyz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Readiness {
    pub(crate) postgres: bool,
    pub(crate) docker: bool,
    /// Connected, with its consumers set up.
    pub(crate) rabbitmq: bool,
    /// The last quorum probe was confirmed (`None`: not probed yet this session).
    pub(crate) quorum: Option<bool>,
    /// The served queues whose breaker is open.
    pub(crate) breakers_open: Vec<String>,
    /// How many queues the worker serves.
    pub(crate) queues: usize,
}

impl Readiness {
    /// Whether the worker takes work now.
    pub(super) fn ready(&self) -> bool {
        self.postgres
            && self.docker
            && self.rabbitmq
            && self.quorum == Some(true)
            && self.breakers_open.len() < self.queues.max(1)
    }

    /// Ready, but some of its queues' breakers are open (others take those queues' work).
    pub(super) fn degraded(&self) -> bool {
        self.ready() && !self.breakers_open.is_empty()
    }

    /// What keeps it from being ready, one phrase each.
    pub(super) fn reasons(&self) -> Vec<String> {
        let mut out = vec![];
        if !self.postgres {
            out.push("postgres unavailable".to_string());
        }
        if !self.docker {
            out.push("docker engine unavailable".to_string());
        }
        if !self.rabbitmq {
            out.push("not consuming from RabbitMQ".to_string());
        } else {
            match self.quorum {
                Some(true) => {}
                Some(false) => out.push(
                    "RabbitMQ does not confirm writes to quorum queues (quorum lost, or publishers blocked)"
                        .to_string(),
                ),
                None => out.push("RabbitMQ's quorum not probed yet".to_string()),
            }
        }
        if self.queues > 0 && self.breakers_open.len() >= self.queues {
            out.push("circuit breaker open on every queue it serves".to_string());
        }
        out
    }
}

impl Shared {
    /// The readiness now, with `postgres` and `docker` as just checked.
    pub(super) fn readiness(&self, queues: &[String], postgres: bool, docker: bool) -> Readiness {
        let open = self.breakers.open_queues(Instant::now());
        Readiness {
            postgres,
            docker,
            rabbitmq: self.connected.load(Ordering::Relaxed)
                && self.consuming.load(Ordering::Relaxed),
            quorum: *self.quorum.lock().expect("lock"),
            breakers_open: open.into_iter().filter(|q| queues.contains(q)).collect(),
            queues: queues.len(),
        }
    }

    /// Sets the `granda_worker_ready`, `granda_worker_broker_quorum` and
    /// `granda_worker_breaker_open` gauges from `readiness`.
    pub(super) fn export_readiness(&self, queues: &[String], readiness: &Readiness) {
        let worker = format!("worker=\"{}\"", label(&self.worker_id));
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let m = &self.metrics;
        m.set(
            "granda_worker_ready",
            worker.clone(),
            flag(readiness.ready()),
        );
        m.set(
            "granda_worker_broker_quorum",
            worker.clone(),
            flag(readiness.quorum == Some(true)),
        );
        for queue in queues {
            m.set(
                "granda_worker_breaker_open",
                format!("{worker},queue=\"{}\"", label(queue)),
                flag(readiness.breakers_open.contains(queue)),
            );
        }
    }
}

/// Publishes an empty message to the probe queue on `channel` every `every`, each confirm awaited
/// for at most `within`, and keeps the outcome in `shared.quorum`. Returns when `channel` closes
/// (the session makes another), or when told to stop (its session ended).
pub(super) async fn probe_quorum(
    shared: Arc<Shared>,
    channel: Channel,
    every: Duration,
    within: Duration,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let set = |ok: bool| {
        let mut quorum = shared.quorum.lock().expect("lock");
        if *quorum != Some(ok) {
            if ok {
                tracing::info!("RabbitMQ confirms quorum writes");
            } else {
                tracing::warn!(
                    within_ms = within.as_millis() as u64,
                    "RabbitMQ did not confirm a quorum write in time; not ready"
                );
            }
        }
        *quorum = Some(ok);
    };
    let declared = tokio::time::timeout(within, async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        shared.topology.declare_probe(&channel).await
    })
    .await;
    if !matches!(declared, Ok(Ok(()))) {
        set(false);
        let _ = channel.close(200, "probe".into()).await;
        shutdown.stopped_during(every).await;
        return;
    }
    let queue = shared.topology.probe_queue();
    loop {
        let confirmed = broker::publish_confirmed(
            &channel,
            &queue,
            b"",
            lapin::BasicProperties::default(),
            within,
        )
        .await;
        set(confirmed.is_ok());
        if !channel.status().connected() || shutdown.stopped_during(every).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness() -> Readiness {
        Readiness {
            postgres: true,
            docker: true,
            rabbitmq: true,
            quorum: Some(true),
            breakers_open: vec![],
            queues: 2,
        }
    }

    #[test]
    fn a_worker_whose_every_breaker_is_open_takes_no_work_and_is_not_ready() {
        let mut r = readiness();
        assert!(r.ready() && !r.degraded());
        r.breakers_open = vec!["a".into()];
        assert!(r.ready() && r.degraded(), "one of two queues still taken");
        r.breakers_open = vec!["a".into(), "b".into()];
        assert!(!r.ready());
        assert_eq!(
            r.reasons(),
            vec!["circuit breaker open on every queue it serves"]
        );
    }

    #[test]
    fn without_quorum_or_before_the_first_probe_a_worker_is_not_ready() {
        let mut r = readiness();
        r.quorum = Some(false);
        assert!(!r.ready());
        assert!(r.reasons()[0].contains("quorum"), "{:?}", r.reasons());
        r.quorum = None;
        assert!(!r.ready());
        r = readiness();
        r.rabbitmq = false;
        assert!(!r.ready());
        assert_eq!(r.reasons(), vec!["not consuming from RabbitMQ"]);
    }
}
