//! Builds from source on a worker, for an ingress with no Docker engine (`granda server`).
//!
//! The same RPC pattern as [`super::control`], on a queue of its own, `<prefix>.builds.<queue>`
//! (so a worker that doesn't build never takes a build): the ingress publishes the build context
//! (an uncompressed tar, the message body) with the tag, the runtime's base image and its own
//! `GRANDA_REGISTRY` in headers, and a direct reply-to. One worker of the function's queue takes
//! it, makes sure its engine has the base image (present, or pulled as `GRANDA_IMAGE_PULL`
//! allows), builds on its engine, and, with a registry (the ingress's, else its own), tags the
//! image `<registry>/<tag>` and pushes it there. It streams [`Event`]s back: log lines as the
//! engine writes them, `alive` every [`ALIVE_EVERY`], then one last event.
//!
//! With no worker serving the queue the publish is unroutable and the ingress answers 503 at once;
//! a worker that goes silent for [`SILENCE`] (it died mid-build) gets 503 too. Without a registry
//! the image stays on the builder's engine, which only works when the queue's workers share it.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::control::{AskError, Client};

/// How often a building worker says it is still at it.
pub(crate) const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// How long the ingress waits without a word from the builder before it answers 503.
pub(crate) const SILENCE: Duration = Duration::from_secs(60);
/// How long a build request waits in its queue for a worker to take it.
const REQUEST_TTL: Duration = Duration::from_secs(30);

/// The build queue of `queue`.
pub(crate) fn queue_name(prefix: &str, queue: &str) -> String {
    format!("{prefix}.builds.{queue}")
}

/// What the ingress asks (the context goes as the message body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Job {
    /// `<prefix>-fn/<installation>/<name>:v<N>`.
    pub(crate) tag: String,
    /// The runtime's base image (the Dockerfile's `FROM`).
    pub(crate) base_image: String,
    /// The ingress's `GRANDA_REGISTRY`, which wins over the worker's.
    pub(crate) registry: Option<String>,
}

impl Job {
    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        headers.insert(
            "tag".into(),
            AMQPValue::LongString(self.tag.as_str().into()),
        );
        headers.insert(
            "base_image".into(),
            AMQPValue::LongString(self.base_image.as_str().into()),
        );
        if let Some(r) = &self.registry {
            headers.insert("registry".into(), AMQPValue::LongString(r.as_str().into()));
        }
        headers
    }

    pub(crate) fn from_headers(headers: &FieldTable) -> Option<Job> {
        let text = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        };
        Some(Job {
            tag: text("tag")?,
            base_image: text("base_image")?,
            registry: text("registry"),
        })
    }
}

/// What a building worker says, one message each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// Build output, as the engine writes it.
    Log { text: String },
    /// Still building.
    Alive,
    /// The image is built (and pushed, when `pushed`).
    Built {
        image: String,
        worker: String,
        pushed: bool,
    },
    /// The build failed: the user's source or the base image (422).
    Failed { message: String },
    /// The worker's engine or registry did not answer (503).
    Unavailable { message: String },
}

/// A build done on a worker.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) image: String,
    pub(crate) worker: String,
    pub(crate) pushed: bool,
    pub(crate) log: String,
}

/// How a build on a worker ended when it built nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("{message}")]
    Failed { message: String, log: String },
    #[error("the worker that built: {message}")]
    Unavailable { message: String, log: String },
    #[error("builds from source run on a worker of queue {0:?}, and none serves it now")]
    NoWorker(String),
    #[error(
        "the worker building for queue {queue:?} said nothing for {} s (it may have stopped)",
        SILENCE.as_secs()
    )]
    Silent { queue: String, log: String },
    #[error("RabbitMQ: {0}")]
    Broker(String),
}

impl From<AskError> for BuildError {
    fn from(e: AskError) -> Self {
        BuildError::Broker(e.to_string())
    }
}

impl From<lapin::Error> for BuildError {
    fn from(e: lapin::Error) -> Self {
        BuildError::Broker(e.to_string())
    }
}

/// The ingress's side: asks a worker of `queue` to build `context` as `job` says, passing log
/// lines to `lines` as they come.
pub(crate) async fn request(
    client: &Client,
    prefix: &str,
    queue: &str,
    job: &Job,
    context: Vec<u8>,
    lines: Option<&mpsc::UnboundedSender<String>>,
) -> Result<Built, BuildError> {
    let channel = client.channel().await?;
    let within = client.publish_timeout();
    let done = request_on(&channel, prefix, queue, job, context, lines, within).await;
    client
        .finish(channel, matches!(done, Err(BuildError::Broker(_))))
        .await;
    done
}

async fn request_on(
    channel: &Channel,
    prefix: &str,
    queue: &str,
    job: &Job,
    context: Vec<u8>,
    lines: Option<&mpsc::UnboundedSender<String>>,
    within: Duration,
) -> Result<Built, BuildError> {
    let properties = BasicProperties::default()
        .with_headers(job.headers())
        .with_expiration(REQUEST_TTL.as_millis().to_string().into());
    let routing_key = queue_name(prefix, queue);
    let Some((mut replies, correlation)) =
        super::control::request(channel, &routing_key, "build", &context, properties, within)
            .await?
    else {
        return Err(BuildError::NoWorker(queue.to_string()));
    };
    let mut log = String::new();
    loop {
        let event = match tokio::time::timeout(SILENCE, replies.next()).await {
            Ok(Some(Ok(reply))) => {
                let ours = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == correlation);
                match serde_json::from_slice::<Event>(&reply.data) {
                    Ok(event) if ours => event,
                    _ => continue,
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err(BuildError::Broker("the reply consumer ended".into())),
            Err(_) => {
                return Err(BuildError::Silent {
                    queue: queue.to_string(),
                    log,
                });
            }
        };
        match event {
            Event::Log { text } => {
                if let Some(lines) = lines {
                    let _ = lines.send(text.clone());
                }
                log.push_str(&text);
            }
            Event::Alive => {}
            Event::Built {
                image,
                worker,
                pushed,
            } => {
                return Ok(Built {
                    image,
                    worker,
                    pushed,
                    log,
                });
            }
            Event::Failed { message } => return Err(BuildError::Failed { message, log }),
            Event::Unavailable { message } => {
                return Err(BuildError::Unavailable { message, log });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_through_headers() {
        for registry in [None, Some("127.0.0.1:5000".to_string())] {
            let job = Job {
                tag: "granda-fn/f:v1".into(),
                base_image: "granda/runtime-shell:latest".into(),
                registry,
            };
            assert_eq!(Job::from_headers(&job.headers()), Some(job));
        }
    }

    #[test]
    fn events_round_trip_as_json() {
        for e in [
            Event::Log { text: "a\n".into() },
            Event::Alive,
            Event::Built {
                image: "r/i:v1".into(),
                worker: "w".into(),
                pushed: true,
            },
            Event::Failed {
                message: "no".into(),
            },
        ] {
            let text = serde_json::to_vec(&e).unwrap();
            assert_eq!(serde_json::from_slice::<Event>(&text).unwrap(), e);
        }
    }
}
