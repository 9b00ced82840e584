//! The worker: consumes invocations from RabbitMQ, runs each as a container, records the result
//! in Postgres, then replies and acks.
//!
//! For each message: claim the record (`running`, attempt + 1), run the container, then act on
//! the retry verdict ([`crate::retry`]): commit the final record, reply and ack; or put the
//! record back to `queued` and park the message in a delay queue, then ack; or record it `dead`
//! and dead-letter the message. A message is acked only after its record is committed.
//!
//! Duplicates never run twice at once: a message whose invocation is final is acked (and its
//! reply sent again); one that runs here now waits for that run; one that runs on another live
//! worker is parked in a delay queue until that run ends. A worker holds at most as many unacked
//! messages as it runs at once (its prefetch is its concurrency).
//!
//! Before it claims a message, a worker makes sure its engine has the image ([`images`]). One it
//! can't run here (the image can't be had, the engine is away, or the queue's circuit breaker is
//! open: [`breaker`]) is given back unclaimed for another worker, as [`crate::retry`] decides. An
//! unhealthy worker (its engine unreachable) cancels its consumers until it recovers.

pub mod breaker;
pub mod builds;
pub mod container;
pub mod control;
pub mod endpoints;
mod heartbeat;
pub mod hot;
pub mod images;
pub mod pool;
pub mod reaper;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use uuid::Uuid;

use crate::broker::{self, BrokerError, Topology};
use crate::config::Settings;
use crate::function::{Mode, ResponseMode};
use crate::invocation::{self, Claim, Outcome, Status, Trigger};
use crate::message::{Reply, Work};
use crate::metrics::{Metrics, label};
use crate::retry::{self, Backoff, Failure, Verdict};
use crate::scheduler::{self, Controller, Lane, Limiter, Observation};
use container::{Caps, Exit, PlatformError, Removal, Run, Runner};

/// A shutdown signal, as a future that completes when it is time to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long a duplicate of an invocation running on another worker waits before it looks again.
const ELSEWHERE_DELAY: Duration = Duration::from_secs(2);

/// How long a message this worker can't run is held before it is given back, so that a worker
/// whose breaker is about to open does not spin it through its deliveries.
const RELEASE_PAUSE: Duration = Duration::from_millis(100);

/// Marks a session that ended because its connection broke: the next one fails over.
#[derive(Debug, thiserror::Error)]
#[error("the broker connection was lost")]
struct SessionEnded;

/// One worker process's consumer pool.
pub struct Worker {
    shared: Arc<Shared>,
    /// The broker's nodes: a session connects to one that answers and fails over on loss.
    nodes: Arc<broker::Nodes>,
    /// Sync replies, on a connection of their own (see [`broker::Replier`]).
    replier: Arc<broker::Replier>,
    queues: Vec<String>,
    schedule: scheduler::Config,
    grace: Duration,
    installation: String,
    /// `GRANDA_WORKER_LISTEN`, bound.
    endpoints: Option<tokio::net::TcpListener>,
    amqp_prefix: String,
    /// Builds from source for an ingress with no engine ([`builds`]).
    builder: builds::Builder,
}

/// What every run of this worker needs.
struct Shared {
    pool: PgPool,
    /// For claims: the same database, with commits that don't wait for the disk.
    leases: PgPool,
    /// How much of a sync call's input its record keeps (the worker writes that record).
    stored_input_cap: usize,
    runner: Runner,
    worker_id: String,
    topology: Topology,
    backoff: Backoff,
    /// Invocations running here now, each with a flag that turns true when its run is over.
    in_flight: Mutex<HashMap<Uuid, watch::Receiver<bool>>>,
    /// Messages being handled now (waiting for a slot, running, or settling).
    busy: AtomicUsize,
    limiter: Limiter,
    controller: Mutex<Controller>,
    /// Per-function bounds (`max_concurrency`), by function name and bound.
    function_slots: Mutex<HashMap<(String, i32), Arc<Semaphore>>>,
    metrics: Arc<Metrics>,
    callbacks: Arc<crate::callback::Callbacks>,
    /// Kept containers of `warm` functions.
    warm: pool::Pool,
    /// The images on this worker's engine, pulled as needed.
    images: images::Images,
    /// Per queue: whether this worker takes its messages now.
    breakers: breaker::Breakers,
    /// Wakes the session to make its consumers follow the breakers and health at once.
    reschedule: Notify,
    /// What is wrong with this worker now (its engine unreachable), if anything.
    health: Mutex<Option<String>>,
    /// This worker's queues that another live, healthy worker serves too (from the heartbeats).
    /// A breaker gives a queue's messages to the others only where there are others: a worker
    /// alone on its queue runs what it can't run, so that the failure is recorded and the retry
    /// policy decides, instead of the queue standing still.
    /// `None` until the first heartbeat has looked: then every queue counts as shared, so a
    /// worker that starts beside others never runs what it can't run before it knows.
    shared_queues: Mutex<Option<HashSet<String>>>,
    /// Whether the session is connected to RabbitMQ.
    connected: AtomicBool,
    /// `DOCKER_HOST` and the engine's ID, for the heartbeat.
    engine: String,
    engine_id: Option<String>,
    /// How long this worker counts as alive after a beat.
    lease: Duration,
    /// How long to wait before connecting to another worker's engine.
    docker_timeout: u64,
}

/// The channels of one connection that handlers use.
#[derive(Clone)]
struct Channels {
    replies: Arc<broker::Replier>,
    /// In confirm mode: parking messages in delay queues.
    publish: Channel,
    /// The bound on a confirm wait.
    publish_timeout: Duration,
    delay_declared: Arc<Mutex<HashSet<String>>>,
}

impl Worker {
    pub async fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Worker> {
        let docker = crate::docker::connect(
            settings.docker_host.as_deref(),
            settings.max_timeout_ms / 1000 + 120,
        )
        .context("connecting to the Docker engine")?;
        docker.ping().await.context("pinging the Docker engine")?;
        let installation = crate::docker::installation(&pool)
            .await
            .context("reading the installation's id")?;
        let worker_id = settings.worker_id(&installation);
        let engine_id = docker.info().await.ok().and_then(|i| i.id);
        let images = images::Images::new(
            docker.clone(),
            settings.image_pull,
            Duration::from_millis(settings.image_pull_timeout_ms.max(1)),
        );
        let caps = Caps {
            stdout: settings.max_output_bytes,
            stderr: settings.max_log_bytes,
        };
        let schedule = scheduler::Config::from_settings(settings);
        let runner =
            Runner::new(docker, worker_id.clone(), caps).with_installation(installation.clone());
        let endpoints = match settings.worker_listen.as_deref() {
            None | Some("") | Some("off") => None,
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding GRANDA_WORKER_LISTEN {addr}"))?,
            ),
        };
        let nodes = broker::Nodes::from_settings(settings)?;
        let builder = builds::Builder {
            docker: runner.docker().clone(),
            images: images.clone(),
            registry: settings.registry.clone(),
            worker: worker_id.clone(),
        };
        Ok(Worker {
            replier: Arc::new(broker::Replier::new(nodes.clone(), &worker_id)),
            nodes,
            shared: Arc::new(Shared {
                leases: crate::db::lease_pool(&pool),
                stored_input_cap: settings.max_stored_input_bytes,
                pool,
                warm: pool::Pool::new(
                    runner.clone(),
                    &settings.state_dir,
                    &worker_id,
                    schedule.max,
                )
                .with_context(|| format!("writing to {}", settings.state_dir.display()))?,
                runner,
                worker_id,
                topology: Topology::new(&settings.amqp_prefix),
                backoff: settings.backoff(),
                in_flight: Mutex::default(),
                busy: AtomicUsize::new(0),
                limiter: Limiter::new(schedule.min, schedule.max),
                controller: Mutex::new(Controller::new(schedule, Instant::now())),
                function_slots: Mutex::default(),
                metrics: Arc::default(),
                callbacks: crate::callback::Callbacks::new(settings),
                images,
                breakers: breaker::Breakers::default(),
                reschedule: Notify::new(),
                health: Mutex::default(),
                shared_queues: Mutex::default(),
                connected: AtomicBool::new(false),
                engine: crate::docker::address(settings.docker_host.as_deref()),
                engine_id,
                lease: Duration::from_millis(settings.worker_lease_ms.max(300)),
                docker_timeout: 30,
            }),
            queues: settings.queues.clone(),
            schedule,
            grace: settings.shutdown_grace(),
            installation,
            endpoints,
            amqp_prefix: settings.amqp_prefix.clone(),
            builder,
        })
    }

    /// Shares `metrics` with the rest of the process (the ingress serves them at `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Worker {
        Arc::get_mut(&mut self.shared)
            .expect("a worker not yet running")
            .metrics = metrics;
        self
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Where the worker's endpoints listen, when `GRANDA_WORKER_LISTEN` is set.
    pub fn endpoints_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoints.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` completes, reconnecting to RabbitMQ whenever the connection is lost.
    /// On shutdown it stops taking messages, lets in-flight runs finish within the grace period,
    /// and gives back what it could not finish.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut shutdown: Shutdown = Box::pin(shutdown);
        let endpoints = self.endpoints.take().map(|listener| {
            tracing::info!(addr = ?listener.local_addr().ok(), "worker endpoints listening");
            let app = endpoints::router(self.shared.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "worker endpoints stopped");
                }
            })
        });
        describe_metrics(&self.shared.metrics);
        self.shared.images.set_metrics(self.shared.metrics.clone());
        self.shared
            .callbacks
            .set_metrics(self.shared.metrics.clone());
        reaper::reap_own(
            self.shared.runner.docker(),
            &self.shared.worker_id,
            &self.installation,
        )
        .await;
        let strays = tokio::spawn(reaper::reap_strays_forever(
            self.shared.runner.docker().clone(),
            self.shared.worker_id.clone(),
            self.installation.clone(),
            {
                let shared = Arc::downgrade(&self.shared);
                move |invocation: &str| {
                    let Some(shared) = shared.upgrade() else {
                        return true;
                    };
                    let Ok(id) = invocation.parse::<Uuid>() else {
                        return false;
                    };
                    shared.in_flight.lock().expect("lock").contains_key(&id)
                }
            },
        ));
        let reaper = tokio::spawn(reaper::reap_expired_forever(
            self.shared.runner.docker().clone(),
        ));
        let orphans = tokio::spawn(reaper::reap_orphaned_pools_forever(
            self.shared.runner.docker().clone(),
            self.shared.pool.clone(),
            self.installation.clone(),
        ));
        let beating = tokio::spawn(beat_forever(self.shared.clone(), self.queues.clone()));
        let expiring = tokio::spawn({
            let shared = self.shared.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    shared.warm.expire(pool::memory_pressure());
                }
            }
        });
        tracing::info!(worker = %self.shared.worker_id, min = self.schedule.min, max = self.schedule.max, queues = ?self.queues, "worker started");
        loop {
            match self.session(&mut shutdown).await {
                Err(e) if e.downcast_ref::<SessionEnded>().is_some() => {
                    tracing::warn!(error = format!("{e:#}"), "lost RabbitMQ, failing over");
                    self.shared.metrics.inc(
                        "granda_worker_broker_reconnects_total",
                        format!("worker=\"{}\"", label(&self.shared.worker_id)),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = &mut shutdown => break,
                    }
                }
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "lost RabbitMQ, reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = &mut shutdown => break,
                    }
                }
            }
        }
        reaper.abort();
        orphans.abort();
        if let Some(endpoints) = endpoints {
            endpoints.abort();
        }
        strays.abort();
        expiring.abort();
        self.shared.warm.clear().await;
        beating.abort();
        if self.shared.busy.load(Ordering::Relaxed) == 0 {
            let _ = heartbeat::forget(&self.shared.pool, &self.shared.worker_id).await;
        }
        tracing::info!(worker = %self.shared.worker_id, "worker stopped");
        Ok(())
    }

    /// One connection's life: consume until it breaks (`Err`) or shutdown (`Ok`).
    async fn session(&self, shutdown: &mut Shutdown) -> anyhow::Result<()> {
        let (connection, node) = self.nodes.connect(&self.shared.worker_id).await?;
        self.shared.connected.store(true, Ordering::Relaxed);
        let _connected = Connected(&self.shared.connected);
        let lost = |e: anyhow::Error| {
            self.nodes.lost(node);
            e.context(SessionEnded)
        };
        let consumed = self.consume(&connection, shutdown).await.map_err(lost);
        if consumed.is_err() {
            let _ = connection.close(200, "failing over".into()).await;
        }
        consumed
    }

    /// Consumes on `connection` until it breaks (`Err`) or shutdown (`Ok`).
    async fn consume(
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
        let mut tick = tokio::time::interval(self.schedule.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut *shutdown => {
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
                    self.schedule(&side, &mut consumers, &tx).await?;
                }
                _ = self.shared.reschedule.notified() => {
                    if !side.status().connected() {
                        side = connection.create_channel().await?;
                    }
                    self.schedule(&side, &mut consumers, &tx).await?;
                }
            }
        }
    }

    /// One scheduler tick: observe, set the target, and make the prefetch follow it.
    async fn schedule(
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
        let target = self.shared.controller.lock().expect("lock").observe(
            Observation {
                depth: depths.iter().sum(),
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
    fn prefetches(&self, target: usize, sync: &[bool], depths: &[u64]) -> Vec<usize> {
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
    async fn drain(&self, connection: &Connection, consumers: &[QueueConsumer]) {
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
struct Deliveries {
    shared: Arc<Shared>,
    channels: Channels,
    errors: mpsc::UnboundedSender<lapin::Error>,
}

/// The consumers of one queue on one channel. RabbitMQ fixes a consumer's prefetch when it
/// starts, so the queue's total prefetch follows the target by adding a consumer for each
/// increase and cancelling the newest ones to decrease. A cancelled consumer's deliveries stay
/// ackable (acks belong to the channel) and are started as slots free up.
struct QueueConsumer {
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
    fn prefetch(&self) -> usize {
        self.consumers.iter().map(|c| c.1).sum()
    }

    /// Makes the queue's total prefetch `prefetch`.
    async fn resize(
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

    async fn add(
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
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(delivery) = consumer.next().await {
                match delivery {
                    Ok(delivery) => {
                        tx.shared.busy.fetch_add(1, Ordering::Relaxed);
                        let acker = delivery.acker.clone();
                        let handled = handle(
                            tx.shared.clone(),
                            tx.channels.clone(),
                            queue.clone(),
                            delivery,
                        );
                        tokio::spawn(settled_even_on_panic(handled, acker));
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

    async fn cancel(&self) {
        for (tag, _) in &self.consumers {
            let _ = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }
}

fn describe_metrics(m: &Metrics) {
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

/// Beats every third of the lease, checking the engine first: an engine that does not answer
/// makes the worker unhealthy (its consumers are cancelled until the engine answers again).
async fn beat_forever(shared: Arc<Shared>, queues: Vec<String>) {
    let every = heartbeat::every(shared.lease);
    loop {
        let engine = tokio::time::timeout(every, shared.runner.docker().ping()).await;
        let problem = match engine {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("docker engine unreachable: {e}")),
            Err(_) => Some("docker engine did not answer a ping in time".to_string()),
        };
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
        let beat = heartbeat::Beat {
            worker: &shared.worker_id,
            concurrency: shared.limiter.size() as i32,
            in_flight: shared.busy.load(Ordering::Relaxed) as i32,
            queues: &queues,
            engine: &shared.engine,
            engine_id: shared.engine_id.as_deref(),
            unhealthy: problem.as_deref(),
            lease: shared.lease,
        };
        if let Err(e) = heartbeat::beat(&shared.pool, &beat).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
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
        tokio::time::sleep(every).await;
    }
}

/// Marks the session connected until dropped.
struct Connected<'a>(&'a AtomicBool);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Shared {
    /// The prefetch `queue` may have now: none while the worker is unhealthy, else what its
    /// breaker allows of `wanted`.
    fn allowed(&self, queue: &str, wanted: usize) -> usize {
        if self.health.lock().expect("lock").is_some() {
            return 0;
        }
        if !self.others_serve(queue) {
            return wanted;
        }
        self.breakers.allow(queue, wanted, Instant::now())
    }

    /// Whether another live, healthy worker serves `queue` (as of the last heartbeat).
    fn others_serve(&self, queue: &str) -> bool {
        self.shared_queues
            .lock()
            .expect("lock")
            .as_ref()
            .is_none_or(|served| served.contains(queue))
    }

    /// A platform failure (or not) on `queue`, for its breaker; wakes the session when the
    /// breaker opens or closes.
    fn ran(&self, queue: &str, platform_failure: bool) {
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
    async fn check(&self, check: control::Check) -> control::Answer {
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
                Ok(_) => {}
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
    async fn runnable_here(&self, queue: &str, work: &Work) -> Result<(), String> {
        if self.health.lock().expect("lock").is_some() {
            return Err("this worker is unhealthy".into());
        }
        // Alone on the queue, a worker runs what it can't run: the failure is recorded and the
        // retry policy decides (there is nobody to give it to).
        let alone = !self.others_serve(queue);
        if !alone && self.breakers.state(queue, Instant::now()) == breaker::State::Open {
            return Err("this worker's circuit breaker for the queue is open".into());
        }
        match self.images.ensure(&work.function.image).await {
            Ok(_) => Ok(()),
            Err(_) if alone => Ok(()),
            Err(e) => {
                self.ran(queue, true);
                Err(e.to_string())
            }
        }
    }
}

/// Whether this message comes back from a delay queue (it carries an `x-death` header).
fn was_parked(delivery: &Delivery) -> bool {
    delivery
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key("x-death"))
}

/// How many times the broker delivered this message before (`x-delivery-count`).
fn delivery_count(delivery: &Delivery) -> i64 {
    use lapin::types::AMQPValue;
    let Some(headers) = delivery.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        _ => 0,
    }
}

/// Before running a message that another worker was running: if that worker's lease ran out and
/// its engine is reachable from here (the same engine ID at its address), stops its container of
/// `id`, so the dead worker's run does not go on beside this one. Where it is not reachable, the
/// dead host's container may run on: at least once.
async fn stop_dead_run(shared: &Shared, dead: &heartbeat::DeadRun, id: Uuid) {
    let Some(address) = dead.engine.as_deref() else {
        return;
    };
    // Engines may share an ID (daemons started from one /etc/docker, or cloned hosts): the
    // dead worker's engine is this one only when its address is the same too.
    let mine = shared.engine_id.is_some()
        && dead.engine_id == shared.engine_id
        && address == shared.engine;
    let docker = if mine {
        shared.runner.docker().clone()
    } else {
        let Ok(docker) = crate::docker::connect(Some(address), shared.docker_timeout) else {
            return;
        };
        let same = tokio::time::timeout(Duration::from_secs(2), docker.info()).await;
        match same {
            Ok(Ok(info)) if dead.engine_id.is_none() || info.id == dead.engine_id => docker,
            _ => {
                tracing::warn!(worker = %dead.worker, engine = address, "the dead worker's engine is not reachable from here; its container may run on");
                return;
            }
        }
    };
    let stopped = reaper::remove_invocation(&docker, &id.to_string()).await;
    if stopped > 0 {
        tracing::info!(worker = %dead.worker, engine = address, stopped, "stopped a dead worker's container before running its invocation again");
    }
}

/// Counts a message as handled here until dropped.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks an invocation as running here until dropped.
struct Running<'a> {
    shared: &'a Shared,
    id: Uuid,
    _done: watch::Sender<bool>,
}

impl<'a> Running<'a> {
    fn start(shared: &'a Shared, id: Uuid) -> Running<'a> {
        let (done, watching) = watch::channel(false);
        shared.in_flight.lock().expect("lock").insert(id, watching);
        Running {
            shared,
            id,
            _done: done,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // Dropping the sender wakes every duplicate waiting on this run.
        self.shared.in_flight.lock().expect("lock").remove(&self.id);
    }
}

/// Sync calls (a caller waits on the reply) get slots before async work.
fn lane(delivery: &Delivery) -> Lane {
    if delivery.properties.reply_to().is_some() {
        Lane::Sync
    } else {
        Lane::Async
    }
}

/// The delivery boundary: `handled` runs to its end, and should it panic anyway (a run's own
/// panics are caught in [`run_claimed`] and become a platform failure), its message goes back to
/// the queue, a no-op if it was settled: RabbitMQ counts the delivery, and past the quorum
/// queue's delivery limit dead-letters it. Its slot and in-flight marks are guards, released as
/// the panic unwinds.
async fn settled_even_on_panic(handled: impl Future<Output = ()>, acker: lapin::Acker) {
    if let Err(panic) = AssertUnwindSafe(handled).catch_unwind().await {
        tracing::error!(
            panic = panic_message(&*panic),
            "handling a delivery panicked; giving the message back"
        );
        if let Err(e) = acker.reject(BasicRejectOptions { requeue: true }).await {
            tracing::warn!(error = %e, "reject failed; the message will come back");
        }
    }
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Handles one delivery from claim to ack, once the scheduler gives it a slot.
#[tracing::instrument(skip_all, fields(id, queue = %queue))]
async fn handle(shared: Arc<Shared>, channels: Channels, queue: String, delivery: Delivery) {
    let _busy = Busy(&shared.busy);
    let Some(_slot) = shared.limiter.acquire(lane(&delivery)).await else {
        return;
    };
    let work = match Work::decode(&delivery.properties) {
        Ok(work) => work,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering a malformed message");
            reject(&delivery, false).await;
            return;
        }
    };
    tracing::Span::current().record("id", tracing::field::display(work.id));

    if let Err(why) = shared.runnable_here(&queue, &work).await {
        let count = delivery_count(&delivery);
        match retry::on_unavailable(count, broker::DELIVERY_LIMIT) {
            retry::Unavailable::Release => {
                tracing::info!(reason = %why, deliveries = count, "can't run it here; giving it back for another worker");
                tokio::time::sleep(RELEASE_PAUSE).await;
                reject(&delivery, true).await;
                return;
            }
            retry::Unavailable::Attempt => {
                tracing::warn!(reason = %why, deliveries = count, "can't run it here, and it is its last delivery: running it to record the failure");
            }
        }
    }

    // A duplicate of a run going on here: wait for it, then answer from its record.
    let running_here = shared
        .in_flight
        .lock()
        .expect("lock")
        .get(&work.id)
        .cloned();
    if let Some(mut done) = running_here {
        let _ = done.wait_for(|d| *d).await;
    }

    // A redelivery may be a dead worker's run: note whose, to stop its container once claimed. So
    // may a message back from a delay queue: one parked while the dead worker's lease still ran.
    let dead = if delivery.redelivered || delivery_count(&delivery) > 0 || was_parked(&delivery) {
        heartbeat::dead_run(&shared.pool, work.id, &shared.worker_id)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let claim = with_db_retries(|| claim(&shared, &work, &delivery.data)).await;
    match claim {
        Claim::Claimed { attempt, queued_at } => {
            let running = Running::start(&shared, work.id);
            if let Some(dead) = &dead {
                stop_dead_run(&shared, dead, work.id).await;
            }
            let function = format!("function=\"{}\"", label(&work.function.name));
            if attempt == 1 {
                let waited = (chrono::Utc::now() - queued_at).num_milliseconds().max(0);
                shared.metrics.observe(
                    "granda_invocation_queue_wait_seconds",
                    function.clone(),
                    waited as f64 / 1000.0,
                );
            }
            // A function with its own bound waits for one of its slots (per worker).
            let _function_slot = match work.function.max_concurrency {
                Some(max) => {
                    let slots = shared
                        .function_slots
                        .lock()
                        .expect("lock")
                        .entry((work.function.name.clone(), max))
                        .or_insert_with(|| Arc::new(Semaphore::new(max.max(1) as usize)))
                        .clone();
                    slots.acquire_owned().await.ok()
                }
                None => None,
            };
            run_claimed(&shared, &channels, &queue, &delivery, &work, attempt).await;
            drop(running);
        }
        Claim::AlreadyFinal(record) => {
            tracing::info!("already final; acking without a run");
            // The first run may have died before its callback went out.
            crate::callback::deliver_later(shared.pool.clone(), shared.callbacks.clone(), work.id);
            reply(&channels, &work, &Reply::from_record(&record)).await;
            ack(&delivery).await;
        }
        Claim::RunningElsewhere => {
            tracing::info!("running on another live worker; looking again later");
            park(&shared, &channels, &queue, &delivery, ELSEWHERE_DELAY).await;
        }
        Claim::Missing => {
            tracing::error!("no record for this invocation; dead-lettering it");
            reject(&delivery, false).await;
        }
    }
}

/// Marks the invocation `running` here. A sync call's record is written by this claim: the
/// ingress published it without writing one first (see [`crate::producer::enqueue`]).
async fn claim(shared: &Shared, work: &Work, input: &[u8]) -> Result<Claim, sqlx::Error> {
    if work.trigger != Trigger::Sync {
        return invocation::store::claim(&shared.leases, work.id, &shared.worker_id).await;
    }
    // A lease like any claim (an asynchronous commit): if a Postgres crash loses it, the final
    // record is written whole by `record_final`, and a redelivery claims it again.
    invocation::store::claim_or_create(
        &shared.leases,
        &sync_record(shared, work, input),
        work.queued_at_ms,
        &shared.worker_id,
    )
    .await
}

/// The record a sync call's claim creates, and its final write restores if that claim was lost.
fn sync_record<'a>(
    shared: &Shared,
    work: &'a Work,
    input: &'a [u8],
) -> invocation::NewInvocation<'a> {
    invocation::NewInvocation {
        id: work.id,
        function: &work.function.name,
        trigger: work.trigger,
        input,
        stored_input_cap: shared.stored_input_cap,
        idempotency_key: None,
    }
}

/// Writes the final record (a durable commit, before the reply and the ack). A sync call's
/// record that is missing, its claim lost in a Postgres crash, is written whole.
async fn record_final(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
    outcome: &Outcome,
) -> Result<(), sqlx::Error> {
    let finished = invocation::store::finish(&shared.pool, work.id, outcome).await?;
    if !finished && work.trigger == Trigger::Sync {
        let restored = invocation::store::restore_final(
            &shared.pool,
            &sync_record(shared, work, input),
            work.queued_at_ms,
            &shared.worker_id,
            attempt,
            outcome,
        )
        .await?;
        if restored {
            tracing::warn!("the claim's record was gone (a Postgres crash?); wrote it whole");
        }
    }
    Ok(())
}

/// Runs a claimed invocation and settles its message by the retry verdict.
async fn run_claimed(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    work: &Work,
    attempt: i32,
) {
    let started = Instant::now();
    // Whatever the run does, the invocation is settled: a panic is the platform's failure (its
    // container and pool slot are released by their guards as it unwinds).
    let executed = AssertUnwindSafe(execute(shared, work, attempt, &delivery.data))
        .catch_unwind()
        .await;
    let (mut outcome, failure, removal) = executed.unwrap_or_else(|panic| {
        let message = panic_message(&*panic);
        tracing::error!(panic = %message, "the run panicked; a platform failure");
        (
            failed(
                format!("the worker failed while running this invocation: {message}"),
                false,
            ),
            Some(Failure::Platform),
            None,
        )
    });
    // Postgres text can't hold NUL: an error naming what a caller sent must stay recordable.
    if let Some(error) = outcome.error.as_mut()
        && error.contains('\0')
    {
        *error = error.replace('\0', "\u{FFFD}");
    }
    if let Some(request) = &work.request {
        outcome.http_method = Some(request.method.clone());
        outcome.http_path = Some(request.path.clone());
    }
    let platform = failure == Some(Failure::Platform);
    if platform {
        // The image may have gone from the engine since it was seen there.
        shared.images.forget(&work.function.image);
    }
    shared.ran(queue, platform);
    let class = format!(
        "{}{}",
        work.function.name,
        if outcome.cold { "#cold" } else { "" }
    );
    shared
        .controller
        .lock()
        .expect("lock")
        .record_run(&class, started.elapsed());
    let function = format!("function=\"{}\"", label(&work.function.name));
    if outcome.cold {
        shared
            .metrics
            .inc("granda_cold_starts_total", function.clone());
    }
    if let Some(ms) = outcome.duration_ms {
        shared.metrics.observe(
            "granda_invocation_duration_seconds",
            function.clone(),
            ms as f64 / 1000.0,
        );
    }
    let verdict = retry::decide(
        work.trigger,
        work.function.max_attempts,
        &work.function.retry_on,
        attempt,
        failure,
        &shared.backoff,
    );
    match verdict {
        Verdict::Final | Verdict::Dead => {
            if verdict == Verdict::Dead {
                outcome.status = Some(Status::Dead);
                tracing::warn!(attempt, "retries spent; dead-lettering");
            }
            with_db_retries(|| record_final(shared, work, attempt, &delivery.data, &outcome)).await;
            // Sync calls have no callbacks: their caller has the answer.
            if work.trigger != Trigger::Sync {
                crate::callback::deliver_later(
                    shared.pool.clone(),
                    shared.callbacks.clone(),
                    work.id,
                );
            }
            shared.metrics.inc(
                "granda_invocations_total",
                format!("{function},status=\"{}\"", outcome.status().as_str()),
            );
            // Both at once: the connection's I/O thread sends them in one write.
            let answer = Reply::from_outcome(&outcome);
            let settle = async {
                if verdict == Verdict::Dead {
                    reject(delivery, false).await;
                } else {
                    ack(delivery).await;
                }
            };
            tokio::join!(reply(channels, work, &answer), settle);
        }
        Verdict::RetryAfter(level) => {
            let delay = retry::jittered(level, (Uuid::new_v4().as_u128() & 0xffff) as u16);
            let retry_at = chrono::Utc::now() + delay;
            tracing::info!(
                attempt,
                ?delay,
                error = outcome.error.as_deref().unwrap_or(""),
                "retrying later"
            );
            with_db_retries(|| {
                invocation::store::requeue(
                    &shared.pool,
                    work.id,
                    &shared.worker_id,
                    &outcome,
                    retry_at,
                )
            })
            .await;
            park_for(shared, channels, queue, delivery, level, delay).await;
        }
    }
    // Answered and settled; the slot is held until the container is gone, so a worker never has
    // more containers on the engine than it has slots (removals would otherwise pile up beside
    // new starts and slow them).
    if let Some(removal) = removal {
        let _ = removal.await;
    }
}

/// Moves the message to the delay queue for `delay`, then acks it here.
async fn park(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    delay: Duration,
) {
    park_for(shared, channels, queue, delivery, delay, delay).await
}

async fn park_for(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    level: Duration,
    delay: Duration,
) {
    match publish_delayed(shared, channels, queue, delivery, level, delay).await {
        Ok(()) => ack(delivery).await,
        Err(e) => {
            // The message comes back at once instead; nothing is lost.
            tracing::warn!(error = %e, "could not park the message; giving it back");
            reject(delivery, true).await;
        }
    }
}

async fn publish_delayed(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    level: Duration,
    delay: Duration,
) -> Result<(), BrokerError> {
    let name = shared.topology.delay_queue(queue, level);
    let declared = channels
        .delay_declared
        .lock()
        .expect("lock")
        .contains(&name);
    if !declared {
        shared
            .topology
            .declare_delay(&channels.publish, queue, level)
            .await?;
        channels
            .delay_declared
            .lock()
            .expect("lock")
            .insert(name.clone());
    }
    let properties = delivery
        .properties
        .clone()
        .with_expiration(ShortString::from(delay.as_millis().max(1).to_string()));
    broker::publish_confirmed(
        &channels.publish,
        &name,
        &delivery.data,
        properties,
        channels.publish_timeout,
    )
    .await
}

async fn reply(channels: &Channels, work: &Work, reply: &Reply) {
    let (Some(reply_to), Some(correlation_id)) = (&work.reply_to, &work.correlation_id) else {
        return;
    };
    channels.replies.send(reply_to, correlation_id, reply).await;
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed; the message will come back and be acked then");
    }
}

async fn reject(delivery: &Delivery, requeue: bool) {
    if let Err(e) = delivery.acker.reject(BasicRejectOptions { requeue }).await {
        tracing::warn!(error = %e, "reject failed; the message will come back");
    }
}

/// Runs the container and turns whatever happened into the attempt's outcome and failure class,
/// and the removal of a cold run's container, for the caller to wait for after it answered.
async fn execute(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
) -> (Outcome, Option<Failure>, Option<Removal>) {
    // A call of the function's URL: the CGI meta-variables join its env for this run.
    let with_request = work.request.as_ref().map(|request| {
        let mut function = work.function.clone();
        function
            .env
            .extend(crate::cgi::meta_variables(request, input.len()));
        function
    });
    let function = with_request.as_ref().unwrap_or(&work.function);
    let (ran, cold, removal) = match work.function.mode {
        Mode::Cold => {
            let (ran, removal) = shared.runner.run(work.id, function, input).await;
            (ran, true, removal)
        }
        Mode::Warm => {
            let (ran, cold) = run_warm(shared, work, function, input).await;
            (ran, cold, None)
        }
        Mode::Hot => {
            let (outcome, failure) = run_hot(shared, work, attempt, input).await;
            return (outcome, failure, None);
        }
    };
    match ran {
        Ok(run) => {
            let (mut outcome, mut failure) = outcome_of(run, work.function.timeout_ms);
            outcome.cold = cold;
            if work.function.response == ResponseMode::Cgi
                && outcome.status == Some(Status::Succeeded)
            {
                match crate::cgi::parse_response(&outcome.output) {
                    Ok((answer, body)) => {
                        outcome.output = body;
                        outcome.http = Some(answer);
                    }
                    Err(e) => {
                        outcome.status = Some(Status::Failed);
                        outcome.error = Some(format!("malformed CGI response: {e}"));
                        failure = Some(Failure::Error);
                    }
                }
            }
            (outcome, failure, removal)
        }
        Err(e) => (
            failed(e.to_string(), cold),
            Some(Failure::Platform),
            removal,
        ),
    }
}

/// A warm run: an exec in a kept container, taking another when the one it got is gone.
async fn run_warm(
    shared: &Shared,
    work: &Work,
    function: &crate::function::Snapshot,
    input: &[u8],
) -> (Result<Run, PlatformError>, bool) {
    let mut tries = 0;
    loop {
        let (warm, cold) = match shared.warm.acquire(&work.function).await {
            Ok(got) => got,
            Err(e) => return (Err(e), true),
        };
        let ran = shared.runner.exec(&warm.id, work.id, function, input).await;
        // Only a clean run gives its container back; anything else may have left it dirty.
        let clean = matches!(&ran, Ok(run) if run.exit == Exit::Code(0));
        shared.warm.release(warm, clean);
        match ran {
            Err(PlatformError::Gone(e)) if tries < 3 => {
                tracing::info!(error = %e, "a kept container was gone; taking another");
                tries += 1;
            }
            ran => return (ran, cold),
        }
    }
}

/// A hot run: one request to the function's own process in a kept container, taking another
/// container when the one it got no longer accepts requests.
async fn run_hot(
    shared: &Shared,
    work: &Work,
    attempt: i32,
    input: &[u8],
) -> (Outcome, Option<Failure>) {
    let timeout_ms = work.function.timeout_ms.max(1);
    // What can't be put into a request fails here, before a container is taken or started.
    let probe = hot::Call {
        id: work.id,
        function: &work.function,
        trigger: work.trigger,
        attempt,
        deadline_ms: 0,
        input,
        request: work.request.as_ref(),
    };
    if let Err(e) = hot::request_headers(&probe) {
        return (failed(e, false), Some(Failure::Error));
    }
    let mut tries = 0;
    loop {
        let (mut kept, cold) = match shared.warm.acquire(&work.function).await {
            Ok(got) => got,
            Err(PlatformError::NotReady(e)) => {
                return (failed(e.to_string(), true), Some(Failure::Error));
            }
            Err(e) => return (failed(e.to_string(), true), Some(Failure::Platform)),
        };
        let started_at = chrono::Utc::now();
        let started = Instant::now();
        let deadline_ms = started_at.timestamp_millis().saturating_add(timeout_ms);
        let (connection, _) = kept.hot.as_mut().expect("a hot pool container");
        let called = tokio::time::timeout(
            Duration::from_millis(timeout_ms as u64),
            connection.call(
                hot::Call {
                    id: work.id,
                    function: &work.function,
                    trigger: work.trigger,
                    attempt,
                    deadline_ms,
                    input,
                    request: work.request.as_ref(),
                },
                shared.runner.caps().stdout,
            ),
        )
        .await;
        let duration = started.elapsed();
        let mut outcome = Outcome {
            started_at: Some(started_at),
            finished_at: Some(chrono::Utc::now()),
            duration_ms: Some(duration.as_millis() as i64),
            cold,
            ..Default::default()
        };
        let failure = match called {
            // Its own HTTP answer, passed on: a 4xx is its answer, a 5xx its failure.
            Ok(Ok(answer)) if work.function.response == ResponseMode::Cgi => {
                let failed = answer.status >= 500;
                shared.warm.release(kept, !failed);
                outcome.status = Some(if failed {
                    Status::Failed
                } else {
                    Status::Succeeded
                });
                outcome.exit_code = Some(if failed { 1 } else { 0 });
                if failed {
                    let detail = String::from_utf8_lossy(&answer.body).replace('\0', "\u{FFFD}");
                    outcome.error = Some(format!(
                        "the function answered HTTP {}: {}",
                        answer.status,
                        tail(&detail, crate::message::ERROR_TAIL_BYTES)
                    ));
                }
                outcome.http = Some(crate::web::WebAnswer {
                    status: answer.status,
                    headers: answer.headers,
                });
                outcome.output = answer.body;
                outcome.output_truncated = answer.truncated;
                failed.then_some(Failure::Error)
            }
            Ok(Ok(answer)) if (200..300).contains(&answer.status) => {
                shared.warm.release(kept, true);
                outcome.status = Some(Status::Succeeded);
                outcome.exit_code = Some(0);
                outcome.output = answer.body;
                outcome.output_truncated = answer.truncated;
                None
            }
            Ok(Ok(answer)) => {
                // A failed run may have left the process in a bad state: never reused.
                shared.warm.release(kept, false);
                let detail = String::from_utf8_lossy(&answer.body).replace('\0', "\u{FFFD}");
                outcome.status = Some(Status::Failed);
                outcome.exit_code = Some(1);
                outcome.error = Some(format!(
                    "the function answered HTTP {}: {}",
                    answer.status,
                    tail(&detail, crate::message::ERROR_TAIL_BYTES)
                ));
                outcome.output = answer.body;
                outcome.output_truncated = answer.truncated;
                Some(Failure::Error)
            }
            Ok(Err(hot::CallError::Stale(e))) if tries < 3 => {
                tracing::info!(error = %e, "a hot container no longer accepts requests; taking another");
                shared.warm.release(kept, false);
                tries += 1;
                continue;
            }
            Ok(Err(e)) => {
                let ended = hot::ended(shared.runner.docker(), &kept.id).await;
                shared.warm.release(kept, false);
                outcome.status = Some(Status::Failed);
                match ended {
                    Some(end) => {
                        outcome.exit_code = Some(end.exit_code as i32);
                        outcome.error = Some(if end.oom_killed {
                            "out of memory: the engine killed the container at its memory limit"
                                .to_string()
                        } else {
                            format!(
                                "the function exited with code {} during the call",
                                end.exit_code
                            )
                        });
                    }
                    None => outcome.error = Some(e.to_string()),
                }
                Some(Failure::Error)
            }
            Err(_) => {
                shared.warm.release(kept, false);
                outcome.status = Some(Status::TimedOut);
                outcome.error = Some(format!(
                    "timed out after {timeout_ms} ms; the container was killed"
                ));
                Some(Failure::Timeout)
            }
        };
        return (outcome, failure);
    }
}

/// A run that never got an answer from the function.
fn failed(error: String, cold: bool) -> Outcome {
    Outcome {
        status: Some(Status::Failed),
        error: Some(error),
        cold,
        ..Default::default()
    }
}

/// The last `max` bytes of `s`, on a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn outcome_of(run: Run, timeout_ms: i64) -> (Outcome, Option<Failure>) {
    let (status, exit_code, error, failure) = match run.exit {
        Exit::Code(0) => (Status::Succeeded, Some(0), None, None),
        Exit::Code(code) if run.oom_killed => (
            Status::Failed,
            Some(code as i32),
            Some("out of memory: the engine killed the container at its memory limit".to_string()),
            Some(Failure::Error),
        ),
        Exit::Code(code) => (
            Status::Failed,
            Some(code as i32),
            None,
            Some(Failure::Error),
        ),
        Exit::TimedOut => (
            Status::TimedOut,
            None,
            Some(format!(
                "timed out after {timeout_ms} ms; the container was killed"
            )),
            Some(Failure::Timeout),
        ),
    };
    let outcome = Outcome {
        status: Some(status),
        output: run.stdout,
        output_truncated: run.stdout_truncated,
        // Postgres text can't hold NUL: a function writing one must not make its record unwritable.
        logs: String::from_utf8_lossy(&run.stderr).replace('\0', "\u{FFFD}"),
        logs_truncated: run.stderr_truncated,
        exit_code,
        error,
        started_at: Some(run.started_at),
        finished_at: Some(run.finished_at),
        duration_ms: Some(run.duration.as_millis() as i64),
        cold: true,
        cpu_ms: None,
        max_memory_bytes: None,
        ..Default::default()
    };
    (outcome, failure)
}

/// Retries a database call until it succeeds: a worker never acks what it could not record, and
/// holds the message while Postgres is away (the broker gives it to another worker if this one dies).
async fn with_db_retries<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, "database call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
