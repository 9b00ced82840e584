//! The worker: consumes invocations from RabbitMQ, runs each as a container, records the result
//! in Postgres, then replies and acks.
//!
//! For each message: claim the record (`running`, attempt + 1), run the container, then act on
//! the retry verdict (`crate::retry`): commit the final record, reply and ack; or put the
//! record back to `queued` and park the message in a delay queue, then ack; or record it `dead`
//! and dead-letter the message. A message is acked only after its record is committed.
//!
//! Duplicates never run twice at once: a message whose invocation is final is acked (and its
//! reply sent again); one that runs here now waits for that run; one that runs on another live
//! worker is parked in a delay queue until that run ends. A worker holds at most as many unacked
//! messages as it runs at once (its prefetch is its concurrency).
//!
//! Before it claims a message, a worker makes sure its engine has the image (`images`). One it
//! can't run here (the image can't be had, the engine is away, or the queue's circuit breaker is
//! open: [`breaker`]) is given back unclaimed for another worker, as [`crate::retry`] decides. An
//! unhealthy worker (its engine unreachable) cancels its consumers until it recovers, unless hot
//! processes run here: then it goes on taking messages, runs the calls of those processes (they
//! need no engine) and parks the rest for [`ENGINE_AWAY_DELAY`] at a time.

mod batches;
mod breaker;
mod builds;
mod cancel;
mod cgi;
mod consume;
pub mod container;
mod control;
mod dead_run;
mod delivery;
pub(crate) mod endpoints;
mod execute;
mod faults;
mod heartbeat;
pub mod hot;
mod images;
mod in_process;
pub mod pool;
mod readiness;
pub mod reaper;
mod recorder;
mod settle;
mod share;
mod shared;
mod takeover;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::Channel;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, watch};
use uuid::Uuid;

use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::metrics::{Metrics, label};
use crate::retry::Backoff;
use crate::scheduler::{self, Controller, Limiter};
use crate::shutdown::Shutdown;
use consume::*;
use container::{Caps, Runner};
use delivery::*;
use execute::*;
use settle::*;
use shared::*;

/// How long a duplicate of an invocation running on another worker waits before it looks again.
const ELSEWHERE_DELAY: Duration = Duration::from_secs(2);
/// How long a message of a function that would take this worker's last free slot goes round
/// through a delay queue (fair sharing), so the calls behind it in its queue are delivered.
const FAIR_SHARE_DELAY: Duration = Duration::from_millis(500);
/// How long a message sent round for fair sharing counts as waiting (it is back in its queue
/// after [`FAIR_SHARE_DELAY`], and seen there by the next depth read).
const FAIR_SHARE_WAITING: Duration = Duration::from_secs(1);

impl Shared {
    /// Messages sent round for fair sharing in the last [`FAIR_SHARE_WAITING`].
    fn fair_deferred_now(&self) -> u64 {
        let mut deferred = self.fair_deferred.lock().expect("lock");
        while deferred
            .front()
            .is_some_and(|at| at.elapsed() > FAIR_SHARE_WAITING)
        {
            deferred.pop_front();
        }
        deferred.len() as u64
    }
}
/// How long a message waits queued when its namespace runs `max_concurrency` invocations
/// already, before a worker looks again (parked in a delay queue: no worker spins on it).
const NAMESPACE_FULL_DELAY: Duration = Duration::from_secs(1);

/// How long a message that needs the engine waits, parked, while the engine does not answer and
/// the worker goes on taking messages for its hot processes.
const ENGINE_AWAY_DELAY: Duration = Duration::from_secs(1);

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
    /// The installation's keys: a message runs only if signed with them ([`crate::message::Work::decode`]).
    keys: Arc<crate::seal::Keys>,
    /// The longest timeout a message's function may have (`GRANDA_MAX_TIMEOUT_MS`).
    max_timeout_ms: u64,
    /// Writes claims and final records in batches ([`recorder`]).
    recorder: recorder::Recorder,
    /// How much of a sync call's input its record keeps (the worker writes that record).
    stored_input_cap: usize,
    runner: Runner,
    worker_id: String,
    topology: Topology,
    backoff: Backoff,
    /// Invocations held here now, from before their claim to the end of their run
    /// ([`delivery::Here`]), each with a receiver that closes when the hold goes.
    in_flight: Mutex<HashMap<Uuid, watch::Receiver<()>>>,
    /// Runs here that a cancel stops ([`cancel`]).
    cancels: cancel::Cancels,
    /// Messages being handled now (waiting for a slot, running, or settling).
    busy: AtomicUsize,
    limiter: Limiter,
    controller: Mutex<Controller>,
    /// Per-function bounds (`max_concurrency`), by function name and bound.
    function_slots: Mutex<HashMap<(String, i32), Arc<Semaphore>>>,
    /// Runs of each function on this worker now (fair sharing: see [`share::FunctionShare`]).
    function_running: Mutex<HashMap<String, usize>>,
    /// `GRANDA_FAIR_SHARE`.
    fair_share: bool,
    /// When this worker sent messages round a delay queue for fair sharing: they wait, though
    /// not in the queue, and count as waiting for the scheduler for [`FAIR_SHARE_WAITING`].
    fair_deferred: Mutex<std::collections::VecDeque<Instant>>,
    /// Namespaces' quotas, read at most once a second (`max_concurrency` is held at claim time).
    namespace_quotas: crate::namespace::QuotaCache,
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
    /// Whether the session has its consumers set up ([`readiness`]).
    consuming: AtomicBool,
    /// Whether the last quorum probe was confirmed; `None` before the first ([`readiness`]).
    quorum: Mutex<Option<bool>>,
    /// The queues this worker serves.
    served: Vec<String>,
    /// `DOCKER_HOST` and the engine's ID, for the heartbeat.
    engine: String,
    engine_id: Option<String>,
    /// How long this worker counts as alive after a beat.
    lease: Duration,
    /// How long to wait before connecting to another worker's engine.
    docker_timeout: u64,
    /// `GRANDA_TEST_FAULTS`: Granda's own tests make runs panic ([`faults`]).
    test_faults: bool,
    /// Whether `/metrics` asks for an admin key (`GRANDA_METRICS_AUTH=key` with `GRANDA_AUTH=on`).
    metrics_need_key: bool,
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
        let keys = Arc::new(
            crate::seal::Keys::load(&pool, settings)
                .await
                .context("reading the installation's message keys")?,
        );
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
            Some(addr) => Some(endpoints::bind(addr).await?),
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
                recorder: recorder::Recorder::start(
                    pool.clone(),
                    crate::db::lease_pool(&pool),
                    &worker_id,
                ),
                keys,
                max_timeout_ms: settings.max_timeout_ms,
                stored_input_cap: settings.max_stored_input_bytes,
                pool,
                warm: pool::Pool::new(
                    runner.clone(),
                    &settings.state_dir,
                    &installation,
                    &worker_id,
                    schedule.max,
                )
                .with_context(|| format!("writing to {}", settings.state_dir.display()))?,
                runner,
                worker_id,
                topology: Topology::new(&settings.amqp_prefix),
                backoff: settings.backoff(),
                in_flight: Mutex::default(),
                cancels: cancel::Cancels::default(),
                busy: AtomicUsize::new(0),
                limiter: Limiter::new(schedule.min, schedule.max),
                controller: Mutex::new(Controller::new(schedule, Instant::now())),
                function_slots: Mutex::default(),
                namespace_quotas: Default::default(),
                function_running: Mutex::default(),
                fair_share: settings.fair_share,
                fair_deferred: Mutex::default(),
                metrics: Arc::default(),
                callbacks: crate::callback::Callbacks::new(&settings.callbacks()),
                images,
                breakers: breaker::Breakers::default(),
                reschedule: Notify::new(),
                health: Mutex::default(),
                shared_queues: Mutex::default(),
                connected: AtomicBool::new(false),
                consuming: AtomicBool::new(false),
                quorum: Mutex::default(),
                served: settings.queues.clone(),
                engine: crate::docker::address(settings.docker_host.as_deref()),
                engine_id,
                lease: Duration::from_millis(settings.worker_lease_ms.max(300)),
                docker_timeout: 30,
                test_faults: settings.test_faults,
                metrics_need_key: settings.metrics_auth == crate::config::MetricsAuth::Key
                    && settings.auth == crate::config::AuthMode::On,
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
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Worker {
        Arc::get_mut(&mut self.shared)
            .expect("a worker not yet running")
            .metrics = metrics;
        self
    }

    /// This worker's engine, for the ingress of the same process (`granda up`): its
    /// registration checks and builds are done here directly. Call it after
    /// [`Worker::with_metrics`].
    pub(crate) fn engines(&self) -> Arc<dyn crate::engines::Engines> {
        Arc::new(in_process::Local {
            shared: self.shared.clone(),
            builder: self.builder.clone(),
        })
    }

    pub fn id(&self) -> &str {
        &self.shared.worker_id
    }

    /// Runs until `shutdown` completes, reconnecting to RabbitMQ whenever the connection is lost.
    /// On shutdown it stops taking messages, lets in-flight runs finish within the grace period,
    /// and gives back what it could not finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        crate::shutdown::run_until(shutdown, "worker", |handle| self.work(handle)).await
    }

    /// Works until `shutdown` says stop, then drains: it stops taking messages, lets in-flight
    /// runs finish within the grace period and gives back what it could not finish. Its
    /// background loops (reapers, takeover, endpoints, cancels, warm pool expiry) stop after the
    /// drain, and its heartbeat last, each a phase of `shutdown` ([`Shutdown::phase`]).
    pub async fn work(mut self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        // Stopped after the drain: runs in flight still need them.
        let loops = shutdown.phase();
        // Stopped last: the worker is alive until it has given back what it holds.
        let beats = shutdown.phase();
        if let Some(listener) = self.endpoints.take() {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "worker endpoints listening");
            }
            let app = endpoints::router(self.shared.clone());
            let handle = loops.handle("worker endpoints");
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(handle.signal())
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "worker endpoints stopped");
                }
                drop(handle);
            });
        }
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
        tokio::spawn(reaper::reap_strays_forever(
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
            loops.handle("stray reaper"),
        ));
        tokio::spawn(reaper::reap_expired_forever(
            self.shared.runner.docker().clone(),
            loops.handle("expired reaper"),
        ));
        tokio::spawn(reaper::reap_orphaned_pools_forever(
            self.shared.runner.docker().clone(),
            self.shared.pool.clone(),
            self.installation.clone(),
            loops.handle("orphan reaper"),
        ));
        tokio::spawn(takeover::sweep_forever(
            self.shared.clone(),
            self.installation.clone(),
            loops.handle("takeover"),
        ));
        tokio::spawn(beat_forever(
            self.shared.clone(),
            self.queues.clone(),
            beats.handle("heartbeat"),
        ));
        tokio::spawn(cancel::listen_forever(
            self.shared.clone(),
            loops.handle("cancels"),
        ));
        tokio::spawn({
            let shared = self.shared.clone();
            let mut shutdown = loops.handle("warm pool expiry");
            async move {
                while !shutdown.stopped_during(Duration::from_millis(200)).await {
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
                    if shutdown.stopped_during(Duration::from_millis(250)).await {
                        break;
                    }
                }
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "lost RabbitMQ, reconnecting");
                    if shutdown.stopped_during(Duration::from_secs(1)).await {
                        break;
                    }
                }
            }
        }
        loops.finish(crate::shutdown::BOUND).await;
        self.shared.warm.clear().await;
        beats.finish(crate::shutdown::BOUND).await;
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
}
