//! Consuming: one consumer per served queue (its sync twin first), the scheduler's tick that
//! sets the target and the prefetches, and draining at shutdown.

use super::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::broker::{self};
use crate::metrics::{Metrics, label};
use crate::scheduler::{self, Observation};

impl Worker {
    /// Consumes on `connection` until it breaks (`Err`) or shutdown (`Ok`).
    pub(super) async fn consume(
        &self,
        connection: &Connection,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let channels = Channels {
            replies: self.replier.clone(),
            publish,
            publish_timeout: self.nodes.publish_timeout(),
            delay_declared: Arc::default(),
        };
        let (errors, mut failed) = mpsc::unbounded_channel();
        let tx = Deliveries {
            shared: self.shared.clone(),
            channels: channels.clone(),
            errors,
            shutdown: Arc::new(shutdown.handle("consumers")),
        };
        let target = self.shared.limiter.size();
        let mut consumers = Vec::new();
        // Each named queue's sync twin first, then its work queue: sync calls are served first.
        let sources: Vec<(String, String)> = self
            .queues
            .iter()
            .flat_map(|q| {
                [
                    (q.clone(), self.shared.topology.sync_queue(q)),
                    (q.clone(), self.shared.topology.work_queue(q)),
                ]
            })
            .collect();
        let kinds: Vec<bool> = (0..sources.len()).map(|i| i % 2 == 0).collect();
        let prefetches = self.prefetches(target, &kinds, &vec![0; sources.len()]);
        for (((queue, source), sync), prefetch) in sources.into_iter().zip(kinds).zip(prefetches) {
            let prefetch = self.shared.allowed(&queue, prefetch);
            let channel = connection.create_channel().await?;
            self.shared.topology.declare(&channel, &queue).await?;
            let mut consumer = QueueConsumer {
                queue,
                source,
                sync,
                channel,
                consumers: Vec::new(),
            };
            consumer.resize(&self.shared, prefetch, &tx).await?;
            consumers.push(consumer);
        }
        for queue in &self.queues {
            let shared = self.shared.clone();
            control::serve(
                connection.create_channel().await?,
                &self.amqp_prefix,
                queue,
                &self.shared.worker_id,
                move |check| {
                    let shared = shared.clone();
                    async move { shared.check(check).await }
                },
            )
            .await?;
            builds::serve(
                connection.create_channel().await?,
                &self.amqp_prefix,
                queue,
                self.builder.clone(),
            )
            .await?;
        }
        let mut side = connection.create_channel().await?;
        // Consuming now: ready, once the broker also confirms quorum writes ([`readiness`]).
        self.shared.consuming.store(true, Ordering::Relaxed);
        let _consuming = Connected(&self.shared.consuming);
        let probe_every = heartbeat::every(self.shared.lease);
        let probe_within = self.nodes.publish_timeout();
        // The quorum probe lives as long as this session: dropping `session` tells it to stop.
        let session = shutdown.phase();
        let spawn_probe = |channel| {
            tokio::spawn(readiness::probe_quorum(
                self.shared.clone(),
                channel,
                probe_every,
                probe_within,
                session.handle("quorum probe"),
            ))
        };
        let mut probe = spawn_probe(connection.create_channel().await?);
        let mut tick = tokio::time::interval(self.schedule.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => {
                    self.drain(connection, &consumers).await;
                    return Ok(());
                }
                error = failed.recv() => match error {
                    Some(e) => return Err(e.into()),
                    None => anyhow::bail!("consumers ended"),
                },
                _ = tick.tick() => {
                    if !side.status().connected() {
                        side = connection.create_channel().await?;
                    }
                    if probe.is_finished() {
                        probe = spawn_probe(connection.create_channel().await?);
                    }
                    self.concurrency_tick(&side, &mut consumers, &tx).await?;
                }
                _ = self.shared.reschedule.notified() => {
                    if !side.status().connected() {
                        side = connection.create_channel().await?;
                    }
                    self.concurrency_tick(&side, &mut consumers, &tx).await?;
                }
            }
        }
    }

    /// One tick of the concurrency scheduler: observe, set the target, and make the prefetch
    /// follow it.
    pub(super) async fn concurrency_tick(
        &self,
        side: &Channel,
        consumers: &mut [QueueConsumer],
        tx: &Deliveries,
    ) -> anyhow::Result<()> {
        let mut depths = Vec::with_capacity(consumers.len());
        let mut by_queue: Vec<(&str, u64)> = Vec::new();
        for c in consumers.iter() {
            let depth = match broker::passive_depth(side, &c.source).await {
                Ok(d) => u64::from(d),
                Err(e) => {
                    tracing::debug!(error = %e, "queue depth unknown this tick");
                    0
                }
            };
            match by_queue.iter_mut().find(|(q, _)| *q == c.queue) {
                Some((_, total)) => *total += depth,
                None => by_queue.push((&c.queue, depth)),
            }
            depths.push(depth);
        }
        // A named queue's depth counts its sync twin.
        for (queue, depth) in by_queue {
            self.shared.metrics.set(
                "granda_queue_depth",
                format!("queue=\"{}\"", label(queue)),
                depth as f64,
            );
        }
        let in_flight = self.shared.busy.load(Ordering::Relaxed);
        // Messages sent round a delay queue for fair sharing wait too, out of the queue's sight.
        let deferred = self.shared.fair_deferred_now();
        let target = self.shared.controller.lock().expect("lock").observe(
            Observation {
                depth: depths.iter().sum::<u64>() + deferred,
                in_flight,
            },
            Instant::now(),
        );
        if target != self.shared.limiter.size() {
            tracing::debug!(
                target,
                in_flight,
                depth = depths.iter().sum::<u64>(),
                "concurrency target"
            );
            self.shared.limiter.resize(target);
        }
        let worker = format!("worker=\"{}\"", label(&self.shared.worker_id));
        self.shared.metrics.set(
            "granda_worker_concurrency_target",
            worker.clone(),
            target as f64,
        );
        self.shared
            .metrics
            .set("granda_worker_in_flight", worker, in_flight as f64);
        let kinds: Vec<bool> = consumers.iter().map(|c| c.sync).collect();
        for (consumer, prefetch) in consumers
            .iter_mut()
            .zip(self.prefetches(target, &kinds, &depths))
        {
            let prefetch = self.shared.allowed(&consumer.queue, prefetch);
            if consumer.prefetch() != prefetch {
                consumer.resize(&self.shared, prefetch, tx).await?;
            }
        }
        Ok(())
    }

    /// The prefetch of each consumer: work queues share the target by their backlog; sync twins
    /// share what sync calls may use (the target and the reserve), as the limiter starts them
    /// first.
    pub(super) fn prefetches(&self, target: usize, sync: &[bool], depths: &[u64]) -> Vec<usize> {
        let reserve = scheduler::sync_reserve(self.schedule.max);
        let sync_limit = (target + reserve).min(self.schedule.max).max(1);
        let mut out = vec![0; depths.len()];
        for kind in [true, false] {
            let index: Vec<usize> = (0..depths.len()).filter(|&i| sync[i] == kind).collect();
            let backlogs: Vec<u64> = index.iter().map(|&i| depths[i]).collect();
            let limit = if kind { sync_limit } else { target };
            for (i, p) in index
                .into_iter()
                .zip(scheduler::share_prefetch(limit, &backlogs))
            {
                out[i] = p;
            }
        }
        out
    }

    /// Stops consuming, waits up to the grace period for in-flight runs, then closes the
    /// connection, which gives unacked messages back to the queue.
    pub(super) async fn drain(&self, connection: &Connection, consumers: &[QueueConsumer]) {
        for c in consumers {
            c.cancel().await;
        }
        let busy = || self.shared.busy.load(Ordering::Relaxed);
        tracing::info!(in_flight = busy(), "draining");
        let deadline = Instant::now() + self.grace;
        while busy() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if busy() > 0 {
            tracing::warn!(
                in_flight = busy(),
                "grace period over; unfinished invocations go back to the queue"
            );
        }
        let _ = connection.close(200, "worker stopping".into()).await;
    }
}

/// What a consumer needs to handle its deliveries: each in its own task, started at once (no
/// hop through the session); a consumer's error goes to the session, which ends on it.
#[derive(Clone)]
pub(super) struct Deliveries {
    shared: Arc<Shared>,
    channels: Channels,
    errors: mpsc::UnboundedSender<lapin::Error>,
    /// Held by each consumer's task until its deliveries end: a consumer stops when the drain
    /// cancels it or its connection closes, and the worker's signal waits for it.
    shutdown: Arc<Shutdown>,
}

/// The consumers of one queue on one channel. RabbitMQ fixes a consumer's prefetch when it
/// starts, so the queue's total prefetch follows the target by adding a consumer for each
/// increase and cancelling the newest ones to decrease. A cancelled consumer's deliveries stay
/// ackable (acks belong to the channel) and are started as slots free up.
pub(super) struct QueueConsumer {
    /// The named queue (retries park in its delay queues).
    queue: String,
    /// The broker queue consumed: the named queue's work queue or its sync twin.
    source: String,
    /// Consuming a sync twin.
    sync: bool,
    channel: Channel,
    /// Live consumers, oldest first: tag and prefetch.
    consumers: Vec<(String, usize)>,
}

impl QueueConsumer {
    pub(super) fn prefetch(&self) -> usize {
        self.consumers.iter().map(|c| c.1).sum()
    }

    /// Makes the queue's total prefetch `prefetch`.
    pub(super) async fn resize(
        &mut self,
        shared: &Shared,
        prefetch: usize,
        tx: &Deliveries,
    ) -> Result<(), lapin::Error> {
        while self.prefetch() > prefetch {
            let (tag, _) = self.consumers.pop().expect("a consumer while prefetch > 0");
            self.channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await?;
        }
        if prefetch > self.prefetch() {
            self.add(shared, prefetch - self.prefetch(), tx.clone())
                .await?;
        }
        Ok(())
    }

    pub(super) async fn add(
        &mut self,
        shared: &Shared,
        prefetch: usize,
        tx: Deliveries,
    ) -> Result<(), lapin::Error> {
        self.channel
            .basic_qos(
                prefetch.min(u16::MAX as usize) as u16,
                BasicQosOptions::default(),
            )
            .await?;
        let tag = format!(
            "{}-{}-{}",
            shared.worker_id,
            self.queue,
            Uuid::new_v4().simple()
        );
        let consumer = self
            .channel
            .basic_consume(
                self.source.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consumers.push((tag, prefetch));
        let queue = self.queue.clone();
        let consuming = tx.shutdown.handle("consumer");
        tokio::spawn(async move {
            let _consuming = consuming;
            let mut consumer = consumer;
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(delivery) => {
                        tx.shared.busy.fetch_add(1, Ordering::Relaxed);
                        let acker = delivery.acker.clone();
                        let id = delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .and_then(|m| Uuid::parse_str(m.as_str()).ok());
                        let deliveries = delivery_count(&delivery);
                        // Boxed where it is made: a handler's future is tens of KiB, and the
                        // wrapper and the task would each copy it again.
                        let handled = Box::pin(handle(
                            tx.shared.clone(),
                            tx.channels.clone(),
                            queue.clone(),
                            delivery,
                        ));
                        tokio::spawn(settled_even_on_panic(
                            tx.shared.clone(),
                            handled,
                            acker,
                            id,
                            deliveries,
                        ));
                    }
                    Err(e) => {
                        let _ = tx.errors.send(e);
                        break;
                    }
                }
            }
        });
        Ok(())
    }

    pub(super) async fn cancel(&self) {
        for (tag, _) in &self.consumers {
            let _ = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }
}

pub(super) fn describe_metrics(m: &Metrics) {
    m.describe(
        "granda_invocations_total",
        "Invocations that reached a final status, by function and status.",
    );
    m.describe(
        "granda_invocation_retries_total",
        "Attempts that failed and were scheduled again.",
    );
    m.describe(
        "granda_invocation_duration_seconds",
        "Compute time of a run: container start to exit.",
    );
    m.describe(
        "granda_invocation_queue_wait_seconds",
        "Time from acceptance to a worker picking the invocation up.",
    );
    m.describe(
        "granda_cold_starts_total",
        "Runs that started a new container.",
    );
    m.describe(
        "granda_worker_in_flight",
        "Invocations a worker handles now.",
    );
    m.describe(
        "granda_worker_concurrency_target",
        "How many invocations the scheduler lets a worker run at once.",
    );
    m.describe("granda_queue_depth", "Messages waiting in a work queue.");
}
