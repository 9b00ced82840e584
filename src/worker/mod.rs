//! The worker: consumes invocations from RabbitMQ, runs each as a container, records the result
//! in Postgres, then acks and replies.
//!
//! Order of a run: claim the record (`running`), run the container, commit the final record,
//! reply to a waiting caller, ack. A message whose record is already final is acked without a
//! new run and its reply is sent again. A worker holds at most as many unacked messages as it
//! runs at once (its prefetch is its concurrency).

pub mod container;
mod reaper;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::invocation::{self, Claim, Outcome, Status};
use crate::message::{Reply, Work};
use container::{Caps, Exit, Run, Runner};

/// A shutdown signal, as a future that completes when it is time to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One worker process's consumer pool.
pub struct Worker {
    shared: Arc<Shared>,
    amqp_url: String,
    queues: Vec<String>,
    concurrency: usize,
    grace: Duration,
}

/// What every run of this worker needs.
struct Shared {
    pool: PgPool,
    runner: Runner,
    worker_id: String,
}

impl Worker {
    pub async fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Worker> {
        let docker = crate::docker::connect(
            settings.docker_host.as_deref(),
            settings.max_timeout_ms / 1000 + 120,
        )
        .context("connecting to the Docker engine")?;
        docker.ping().await.context("pinging the Docker engine")?;
        let worker_id = settings.worker_id();
        let caps = Caps {
            stdout: settings.max_output_bytes,
            stderr: settings.max_log_bytes,
        };
        Ok(Worker {
            shared: Arc::new(Shared {
                pool,
                runner: Runner::new(docker, worker_id.clone(), caps),
                worker_id,
            }),
            amqp_url: settings.amqp_url.clone(),
            queues: settings.queues.clone(),
            concurrency: crate::scheduler::max_concurrency(settings),
            grace: settings.shutdown_grace(),
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
        topology: Topology,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut shutdown: Shutdown = Box::pin(shutdown);
        reaper::reap_own(self.shared.runner.docker(), &self.shared.worker_id).await;
        let reaper = tokio::spawn(reaper::reap_expired_forever(
            self.shared.runner.docker().clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.concurrency));
        tracing::info!(worker = %self.shared.worker_id, concurrency = self.concurrency, queues = ?self.queues, "worker started");
        loop {
            match self.session(&topology, &slots, &mut shutdown).await {
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
        tracing::info!(worker = %self.shared.worker_id, "worker stopped");
        Ok(())
    }

    /// One connection's life: consume until it breaks (`Err`) or shutdown (`Ok`).
    async fn session(
        &self,
        topology: &Topology,
        slots: &Arc<Semaphore>,
        shutdown: &mut Shutdown,
    ) -> anyhow::Result<()> {
        let connection = broker::connect(&self.amqp_url, &self.shared.worker_id).await?;
        let replies = connection.create_channel().await?;
        let mut consumers = Vec::new();
        for queue in &self.queues {
            let channel = connection.create_channel().await?;
            topology.declare(&channel, queue).await?;
            channel
                .basic_qos(self.concurrency as u16, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    topology.work_queue(queue).into(),
                    format!("{}-{queue}", self.shared.worker_id).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push((channel, consumer));
        }
        let tags: Vec<(Channel, String)> = consumers
            .iter()
            .map(|(ch, c)| (ch.clone(), c.tag().to_string()))
            .collect();
        let mut deliveries =
            futures_util::stream::select_all(consumers.into_iter().map(|(_, c)| c));
        loop {
            tokio::select! {
                _ = &mut *shutdown => {
                    self.drain(&connection, &tags, slots).await;
                    return Ok(());
                }
                delivery = deliveries.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let slot = slots.clone().acquire_owned().await.expect("semaphore open");
                        tokio::spawn(handle(self.shared.clone(), replies.clone(), delivery, slot));
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("consumer cancelled"),
                }
            }
        }
    }

    /// Stops consuming, waits up to the grace period for in-flight runs, then closes the
    /// connection, which gives unacked messages back to the queue.
    async fn drain(&self, connection: &Connection, tags: &[(Channel, String)], slots: &Semaphore) {
        for (channel, tag) in tags {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        let in_flight = self.concurrency - slots.available_permits();
        tracing::info!(in_flight, "draining");
        let all = slots.acquire_many(self.concurrency as u32);
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!("grace period over; unfinished invocations go back to the queue");
        }
        let _ = connection.close(200, "worker stopping".into()).await;
    }
}

/// Handles one delivery from start to ack.
#[tracing::instrument(skip_all, fields(id))]
async fn handle(
    shared: Arc<Shared>,
    replies: Channel,
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
) {
    let work = match Work::decode(&delivery.properties) {
        Ok(work) => work,
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering a malformed message");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    tracing::Span::current().record("id", tracing::field::display(work.id));
    let claim = match with_db_retries(|| {
        invocation::store::claim(&shared.pool, work.id, &shared.worker_id)
    })
    .await
    {
        Ok(claim) => claim,
        Err(e) => {
            tracing::error!(error = %e, "can't record the start; giving the message back");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
            return;
        }
    };
    let reply = match claim {
        Claim::Claimed { .. } => {
            let outcome = execute(&shared.runner, &work, &delivery.data).await;
            // Never ack what is not recorded: keep trying while the database is away.
            let mut backoff = Duration::from_millis(100);
            loop {
                match invocation::store::finish(&shared.pool, work.id, &outcome).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "can't record the result yet; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Reply::from_outcome(&outcome)
        }
        Claim::AlreadyFinal(record) => {
            tracing::info!("already final; acking without a run");
            Reply::from_record(&record)
        }
        Claim::Missing => {
            tracing::error!("no record for this invocation; dead-lettering it");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    if let (Some(reply_to), Some(correlation_id)) = (&work.reply_to, &work.correlation_id) {
        let sent = replies
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &reply.output,
                reply.properties(correlation_id),
            )
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "reply not sent; the caller reads the record");
        }
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed; the message will come back and be acked then");
    }
}

/// Runs the container and turns whatever happened into the final outcome.
async fn execute(runner: &Runner, work: &Work, input: &[u8]) -> Outcome {
    match runner.run(work.id, &work.function, input).await {
        Ok(run) => outcome_of(run, work.function.timeout_ms),
        Err(e) => Outcome {
            status: Some(Status::Failed),
            error: Some(e.to_string()),
            cold: true,
            ..Default::default()
        },
    }
}

fn outcome_of(run: Run, timeout_ms: i64) -> Outcome {
    let (status, exit_code, error) = match run.exit {
        Exit::Code(0) => (Status::Succeeded, Some(0), None),
        Exit::Code(code) if run.oom_killed => (
            Status::Failed,
            Some(code as i32),
            Some("out of memory: the engine killed the container at its memory limit".to_string()),
        ),
        Exit::Code(code) => (Status::Failed, Some(code as i32), None),
        Exit::TimedOut => (
            Status::TimedOut,
            None,
            Some(format!(
                "timed out after {timeout_ms} ms; the container was killed"
            )),
        ),
    };
    Outcome {
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
    }
}

/// Retries a database call a few times over about ten seconds before giving up.
async fn with_db_retries<T, F, Fut>(mut call: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if tries >= 7 => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "database call failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
                tries += 1;
            }
        }
    }
}
