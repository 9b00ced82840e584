//! What the ingress asks of the engines that run a queue's functions: whether they can have an
//! image and a container runtime (at registration), a build of a function's source, and whether
//! they answer (readiness). The ingress holds one [`Engines`] and imports nothing of Docker:
//!
//! - `granda server` asks the workers of the queue over RabbitMQ: [`Remote`], through
//!   [`control`] (checks) and [`builds`] (builds), the ingress's side of those requests; the
//!   workers' side is `worker::control` and `worker::builds`.
//! - `granda up` asks its own worker, in the same process ([`crate::worker::Worker::engines`]),
//!   which does on its engine exactly what it does for a remote ingress.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;

pub(crate) mod builds;
pub(crate) mod control;

use builds::BuildError;
use control::Answer;

pub(crate) use builds::Job;
pub(crate) use control::Check;

/// Why a check or a build did not go through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
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
pub(crate) struct Built {
    /// The image runs use (the registry's name when it was pushed).
    pub(crate) image: String,
    /// Whether it was pushed to a registry (else only the builder's engine has it).
    pub(crate) pushed: bool,
    /// The worker that built it.
    pub(crate) worker: String,
    pub(crate) log: String,
}

/// A build an ingress asks for: `context` built as `job` says on an engine that runs `queue`,
/// its log lines passed to `lines` as they come.
pub(crate) struct BuildRequest<'a> {
    pub(crate) queue: &'a str,
    pub(crate) job: Job,
    pub(crate) context: Vec<u8>,
    pub(crate) lines: Option<&'a UnboundedSender<String>>,
}

/// A build under way: what it made, or why it did not finish.
pub(crate) type Building<'a> = BoxFuture<'a, Result<Built, BuildFailure>>;

/// A build that did not finish: why, and the log so far.
#[derive(Debug)]
pub(crate) struct BuildFailure {
    pub(crate) refusal: Refusal,
    pub(crate) log: String,
}

/// The engines of the queues, as the ingress sees them.
pub(crate) trait Engines: Send + Sync {
    /// Makes sure an engine that runs `queue` has `check`'s image (present, or pulled as
    /// `GRANDA_IMAGE_PULL` allows, with no `VOLUME` that can't be capped) and knows its runtime.
    fn check<'a>(&'a self, queue: &'a str, check: Check) -> BoxFuture<'a, Result<(), Refusal>>;

    /// Builds as `request` says on an engine that runs its queue.
    fn build<'a>(&'a self, request: BuildRequest<'a>) -> Building<'a>;

    /// Whether this process's own engine answers; `None` when it has none (`granda server`).
    fn ready(&self) -> BoxFuture<'_, Option<bool>>;
}

/// An answer of a worker as a result.
pub(crate) fn answered(answer: Answer) -> Result<(), Refusal> {
    match answer {
        Answer::Ok => Ok(()),
        Answer::Unprocessable(m) => Err(Refusal::Unprocessable(m)),
        Answer::Unavailable(m) => Err(Refusal::Unavailable(m)),
    }
}

/// `granda server`'s engines: the workers of each queue, asked over RabbitMQ.
pub(crate) struct Remote {
    client: Arc<control::Client>,
    /// The heartbeats: how many live workers serve a queue, so many answers to wait for.
    pool: Option<sqlx::PgPool>,
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
    pub(crate) fn new(
        nodes: Arc<crate::broker::Nodes>,
        prefix: &str,
        pull_timeout: Duration,
    ) -> Remote {
        Remote {
            client: control::Client::new(nodes, prefix),
            pool: None,
            prefix: prefix.to_string(),
            answer_within: pull_timeout + ANSWER_SLACK,
        }
    }
}

impl Remote {
    /// Reads the heartbeats in `pool` to know how many workers' answers to wait for.
    pub(crate) fn with_pool(mut self, pool: sqlx::PgPool) -> Remote {
        self.pool = Some(pool);
        self
    }

    /// How many live workers serve `queue`, by their heartbeats (1 when that can't be read).
    async fn live_workers(&self, queue: &str) -> usize {
        let Some(pool) = &self.pool else { return 1 };
        let counted: Result<(i64,), _> = sqlx::query_as(
            "SELECT count(*) FROM workers WHERE $1 = ANY(queues) AND lease_until > now()",
        )
        .bind(queue)
        .fetch_one(pool)
        .await;
        counted.map_or(1, |(n,)| n.max(1) as usize)
    }
}

/// The one rule for a registration check asked of every live worker of a queue (`expected` of
/// them; `answers` by worker): accepted when any worker's engine can have the image and runtime
/// (the others' breakers leave its runs to that one, [`crate::worker::breaker`]); refused (422)
/// when every live worker answered that its engine can't, each one's reason named; unavailable
/// (503) when none can and some could not tell (their engine away, or no answer in time).
pub(crate) fn verdict(answers: &[(String, Answer)], expected: usize) -> Result<(), Refusal> {
    if answers.iter().any(|(_, a)| *a == Answer::Ok) {
        return Ok(());
    }
    let said: Vec<String> = answers
        .iter()
        .map(|(worker, answer)| match answer {
            Answer::Ok => format!("worker {worker}: ok"),
            Answer::Unprocessable(m) => format!("worker {worker}: {m}"),
            Answer::Unavailable(m) => format!("worker {worker} could not tell: {m}"),
        })
        .collect();
    let silent = expected.saturating_sub(answers.len());
    let unsure = silent > 0
        || answers
            .iter()
            .any(|(_, a)| matches!(a, Answer::Unavailable(_)));
    let mut message = said.join("; ");
    if silent > 0 {
        message.push_str(&format!(
            "; {silent} more live worker(s) of the queue did not answer in time"
        ));
    }
    if unsure {
        Err(Refusal::Unavailable(format!(
            "no worker of the queue could confirm it can run this: {message}"
        )))
    } else {
        Err(Refusal::Unprocessable(format!(
            "no worker of the queue can run this: {message}"
        )))
    }
}

impl Engines for Remote {
    fn check<'a>(&'a self, queue: &'a str, check: Check) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let expected = self.live_workers(queue).await;
            match self
                .client
                .ask_every(queue, &check, self.answer_within, expected)
                .await
            {
                Ok(answers) => {
                    tracing::info!(queue, ?answers, "registration check answered");
                    verdict(&answers, expected)
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn no(m: &str) -> Answer {
        Answer::Unprocessable(m.into())
    }

    #[test]
    fn a_check_is_accepted_when_any_worker_can_and_refused_only_when_every_one_says_it_cant() {
        let a = |answer: Answer| ("a".to_string(), answer);
        let b = |answer: Answer| ("b".to_string(), answer);
        // Whichever answers first: one host that can have the image is enough.
        assert!(verdict(&[a(Answer::Ok)], 2).is_ok());
        assert!(verdict(&[b(no("can't be had")), a(Answer::Ok)], 2).is_ok());
        // Every live worker says it can't: 422, naming each one's reason.
        match verdict(&[a(no("pull denied")), b(no("not found"))], 2) {
            Err(Refusal::Unprocessable(m)) => {
                assert!(
                    m.contains("worker a: pull denied") && m.contains("worker b: not found"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        // One says it can't and one did not answer, or could not tell: 503.
        match verdict(&[a(no("pull denied"))], 2) {
            Err(Refusal::Unavailable(m)) => assert!(m.contains("did not answer"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verdict(
                &[a(no("x")), b(Answer::Unavailable("engine away".into()))],
                2
            ),
            Err(Refusal::Unavailable(_))
        ));
    }
}
