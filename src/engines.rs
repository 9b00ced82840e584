//! What the ingress asks of the engines that run a queue's functions: whether they can have an
//! image and a container runtime (at registration), a build of a function's source, and whether
//! they answer (readiness). The ingress holds one [`Engines`] and imports nothing of Docker:
//!
//! - `granda server` asks the workers of the queue over RabbitMQ: [`Remote`], through
//!   [`crate::worker::control`] (checks) and [`crate::worker::builds`] (builds).
//! - `granda up` asks its own worker, in the same process ([`crate::worker::Worker::engines`]),
//!   which does on its engine exactly what it does for a remote ingress.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;

use crate::worker::builds::{self, BuildError};
use crate::worker::control::{self, Answer};

pub use crate::worker::builds::Job;
pub use crate::worker::control::Check;

/// Why a check or a build did not go through.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The image can't be had, the runtime is unknown, the source does not build: the engine's
    /// or the build's own words.
    #[error("{0}")]
    Unprocessable(String),
    /// No engine answered (none serves the queue, or it did not answer in time).
    #[error("{0}")]
    Unavailable(String),
}

/// A finished build.
#[derive(Debug)]
pub struct Built {
    /// The image runs use (the registry's name when it was pushed).
    pub image: String,
    /// Whether it was pushed to a registry (else only the builder's engine has it).
    pub pushed: bool,
    /// The worker that built it.
    pub worker: String,
    pub log: String,
}

/// A build an ingress asks for: `context` built as `job` says on an engine that runs `queue`,
/// its log lines passed to `lines` as they come.
pub struct BuildRequest<'a> {
    pub queue: &'a str,
    pub job: Job,
    pub context: Vec<u8>,
    pub lines: Option<&'a UnboundedSender<String>>,
}

/// A build under way: what it made, or why it did not finish.
pub type Building<'a> = BoxFuture<'a, Result<Built, BuildFailure>>;

/// A build that did not finish: why, and the log so far.
#[derive(Debug)]
pub struct BuildFailure {
    pub refusal: Refusal,
    pub log: String,
}

/// The engines of the queues, as the ingress sees them.
pub trait Engines: Send + Sync {
    /// Makes sure an engine that runs `queue` has `check`'s image (present, or pulled as
    /// `GRANDA_IMAGE_PULL` allows, with no `VOLUME` that can't be capped) and knows its runtime.
    fn check<'a>(&'a self, queue: &'a str, check: Check) -> BoxFuture<'a, Result<(), Refusal>>;

    /// Builds as `request` says on an engine that runs its queue.
    fn build<'a>(&'a self, request: BuildRequest<'a>) -> Building<'a>;

    /// Whether this process's own engine answers; `None` when it has none (`granda server`).
    fn ready(&self) -> BoxFuture<'_, Option<bool>>;
}

/// An answer of a worker as a result.
pub fn answered(answer: Answer) -> Result<(), Refusal> {
    match answer {
        Answer::Ok => Ok(()),
        Answer::Unprocessable(m) => Err(Refusal::Unprocessable(m)),
        Answer::Unavailable(m) => Err(Refusal::Unavailable(m)),
    }
}

/// `granda server`'s engines: the workers of each queue, asked over RabbitMQ.
pub struct Remote {
    client: Arc<control::Client>,
    prefix: String,
    /// How long a check may take: the workers' pull timeout and a few seconds.
    answer_within: Duration,
}

/// How much longer than a pull the ingress waits for a worker's answer.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// What the error of a build on no worker adds.
const NO_BUILDER: &str = "granda server builds nothing itself: start a granda worker serving \
    the function's queue. Without GRANDA_REGISTRY the built image stays on that worker's engine, \
    so builds need one engine shared by the queue's workers; with it, the image is pushed to the \
    registry and every host pulls it";

impl Remote {
    /// Asks over `nodes` (one connection, opened when first needed), waiting for a check as long
    /// as a pull may take (`pull_timeout`) and a few seconds.
    pub fn new(nodes: Arc<crate::broker::Nodes>, prefix: &str, pull_timeout: Duration) -> Remote {
        Remote {
            client: control::Client::new(nodes, prefix),
            prefix: prefix.to_string(),
            answer_within: pull_timeout + ANSWER_SLACK,
        }
    }
}

impl Engines for Remote {
    fn check<'a>(&'a self, queue: &'a str, check: Check) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            match self.client.ask(queue, &check, self.answer_within).await {
                Ok(Answer::Unavailable(reason)) => Err(Refusal::Unavailable(format!(
                    "the worker that checked the image: {reason}"
                ))),
                Ok(answer) => answered(answer),
                Err(e) => Err(Refusal::Unavailable(e.to_string())),
            }
        })
    }

    fn build<'a>(&'a self, request: BuildRequest<'a>) -> Building<'a> {
        Box::pin(async move {
            let built = builds::request(
                &self.client,
                &self.prefix,
                request.queue,
                &request.job,
                request.context,
                request.lines,
            );
            match built.await {
                Ok(b) => Ok(Built {
                    image: b.image,
                    pushed: b.pushed,
                    worker: b.worker,
                    log: b.log,
                }),
                Err(e) => Err(failure(e)),
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, Option<bool>> {
        Box::pin(async { None })
    }
}

fn failure(e: BuildError) -> BuildFailure {
    let (refusal, log) = match e {
        BuildError::Failed { message, log } => (Refusal::Unprocessable(message), log),
        e @ BuildError::NoWorker(_) => (
            Refusal::Unavailable(format!("{e}. {NO_BUILDER}")),
            String::new(),
        ),
        BuildError::Unavailable { ref log, .. } | BuildError::Silent { ref log, .. } => {
            let log = log.clone();
            (Refusal::Unavailable(e.to_string()), log)
        }
        e @ BuildError::Broker(_) => (Refusal::Unavailable(e.to_string()), String::new()),
    };
    BuildFailure { refusal, log }
}
