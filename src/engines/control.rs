//! Registration checks over RabbitMQ, for an ingress with no Docker engine (`granda server`).
//!
//! The ingress publishes a [`Check`] (an image, a container runtime) to the direct exchange
//! `<prefix>.control` with the queue's name as routing key and a direct reply-to: every worker
//! serving that queue has a queue of its own bound there (exclusive, gone with its connection),
//! so each makes sure its own engine has the image (present, or pulled as `GRANDA_IMAGE_PULL`
//! allows) and knows the runtime, and answers, naming itself. The ingress
//! ([`crate::engines::Remote`]) turns the answers into 201, 422 or 503 by one rule
//! ([`crate::engines::verdict`]). Workers also serve `<prefix>.control.<queue>`, where any one of
//! them answers (ingresses of earlier versions ask there).
//!
//! With no worker serving the queue, the ingress's publish is unroutable and it answers 503 at
//! once; with no answer within the bound (the pull timeout and a few seconds), 503 too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::broker::{BrokerError, DIRECT_REPLY_TO, Held};

/// Sends one request of an RPC over RabbitMQ (registration checks, builds): in confirm mode,
/// with a direct reply-to consumer tagged `tag-…` and a fresh correlation id added to
/// `properties`, mandatory so that a queue no worker serves is known at once (`None`). `Some`
/// holds the consumer the answers come on and the correlation id they carry.
///
/// The broker has `within` (`GRANDA_PUBLISH_TIMEOUT_MS`) to take and confirm the request (a node
/// without quorum may never answer): past it the request is given up ([`AskError::Unconfirmed`],
/// 503 to the caller), and its channel should be closed, so that an answer that comes later
/// goes nowhere.
pub(crate) async fn request(
    channel: &Channel,
    routing_key: &str,
    tag: &str,
    body: &[u8],
    properties: BasicProperties,
    within: Duration,
) -> Result<Option<(lapin::Consumer, String)>, AskError> {
    request_via(channel, "", routing_key, tag, body, properties, within).await
}

/// [`request`] through `exchange`: every queue bound with `routing_key` gets it.
pub(crate) async fn request_via(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    tag: &str,
    body: &[u8],
    properties: BasicProperties,
    within: Duration,
) -> Result<Option<(lapin::Consumer, String)>, AskError> {
    let sent = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let replies = crate::broker::consume_replies(channel, tag).await?;
        let correlation = Uuid::new_v4().to_string();
        let properties = properties
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(correlation.as_str().into());
        match crate::broker::publish_confirmed_via(channel, exchange, routing_key, body, properties)
            .await
        {
            Ok(()) => Ok(Some((replies, correlation))),
            Err(BrokerError::Unroutable(_)) => Ok(None),
            Err(e) => Err(AskError::from(e)),
        }
    };
    match tokio::time::timeout(within, sent).await {
        Ok(sent) => sent,
        Err(_) => Err(AskError::Unconfirmed {
            ms: within.as_millis(),
        }),
    }
}

/// The control queue of `queue`.
pub(crate) fn queue_name(prefix: &str, queue: &str) -> String {
    format!("{prefix}.control.{queue}")
}

/// The direct exchange through which a check reaches every worker of a queue (routing key: the
/// queue's name), each on a queue of its own.
pub(crate) fn exchange_name(prefix: &str) -> String {
    format!("{prefix}.control")
}

/// What the ingress asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Check {
    pub(crate) image: Option<String>,
    pub(crate) container_runtime: Option<String>,
}

/// What a worker answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "message", rename_all = "snake_case")]
pub(crate) enum Answer {
    Ok,
    /// The image can't be had, or the runtime is unknown: the engine's words.
    Unprocessable(String),
    /// The worker's engine did not answer.
    Unavailable(String),
}

/// Why no worker answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    #[error("no worker serves queue {0:?} now, so the image can't be checked")]
    NoWorker(String),
    #[error("no worker of queue {queue:?} answered within {ms} ms")]
    NoAnswer { queue: String, ms: u128 },
    #[error("RabbitMQ did not take the request within {ms} ms (GRANDA_PUBLISH_TIMEOUT_MS)")]
    Unconfirmed { ms: u128 },
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ: {0}")]
    Connect(#[from] crate::broker::BrokerError),
}

/// The ingress's side: one connection, opened when first needed ([`Held`]: a dead one is
/// replaced, failing over across the nodes).
pub(crate) struct Client {
    held: Held<()>,
    prefix: String,
}

impl Client {
    pub(crate) fn new(nodes: Arc<crate::broker::Nodes>, prefix: &str) -> Arc<Client> {
        Arc::new(Client {
            held: Held::new(nodes, "ingress-control"),
            prefix: prefix.to_string(),
        })
    }

    /// The bound on the broker's confirm of a request ([`request`]).
    pub(crate) fn publish_timeout(&self) -> Duration {
        self.held.nodes().publish_timeout()
    }

    /// A new channel on the client's connection (opened, or reopened, as needed). A broker that
    /// stopped reading the connection (a resource alarm) never opens the channel: the connection
    /// is let go, and one fresh connection tried.
    pub(crate) async fn channel(&self) -> Result<Channel, AskError> {
        let within = self.publish_timeout();
        loop {
            let (link, new) = self
                .held
                .get_noting_new(
                    |link| link.connection.status().connected(),
                    async |_| Ok(()),
                )
                .await?;
            match tokio::time::timeout(within, link.connection.create_channel()).await {
                Ok(channel) => return Ok(channel?),
                Err(_) => {
                    self.held.reset().await;
                    if new {
                        return Err(AskError::Unconfirmed {
                            ms: within.as_millis(),
                        });
                    }
                }
            }
        }
    }

    /// Done with a request's `channel`: closes it without keeping the caller waiting on the
    /// broker. After a request the broker did not take (`failed`), drops the connection too, so
    /// that the next request starts on a fresh one rather than behind a stalled one.
    pub(crate) async fn finish(&self, channel: Channel, failed: bool) {
        let within = self.publish_timeout();
        if failed {
            self.held.reset().await;
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(within, channel.close(200, "".into())).await;
        });
    }

    /// Asks every worker of `queue` to check `check`: their answers, each with the worker's id,
    /// as they come, until one answers [`Answer::Ok`], `expected` have answered, or `wait` is
    /// up. `NoWorker` when no worker serves the queue, `NoAnswer` when none answered.
    pub(crate) async fn ask_every(
        &self,
        queue: &str,
        check: &Check,
        wait: Duration,
        expected: usize,
    ) -> Result<Vec<(String, Answer)>, AskError> {
        let channel = self.channel().await?;
        let answered = self
            .ask_every_on(&channel, queue, check, wait, expected)
            .await;
        let failed = matches!(
            answered,
            Err(AskError::Unconfirmed { .. } | AskError::Broker(_))
        );
        self.finish(channel, failed).await;
        answered
    }

    async fn ask_every_on(
        &self,
        channel: &Channel,
        queue: &str,
        check: &Check,
        wait: Duration,
        expected: usize,
    ) -> Result<Vec<(String, Answer)>, AskError> {
        let body = serde_json::to_vec(check).expect("a check serializes");
        let properties =
            BasicProperties::default().with_expiration(wait.as_millis().max(1).to_string().into());
        let Some((mut replies, correlation)) = request_via(
            channel,
            &exchange_name(&self.prefix),
            queue,
            "control",
            &body,
            properties,
            self.publish_timeout(),
        )
        .await?
        else {
            return Err(AskError::NoWorker(queue.to_string()));
        };
        let mut answers: Vec<(String, Answer)> = Vec::new();
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(reply)) = replies.next().await {
                let ours = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == correlation);
                let Ok(answer) = serde_json::from_slice::<Answer>(&reply.data) else {
                    continue;
                };
                if !ours {
                    continue;
                }
                let worker = reply
                    .properties
                    .app_id()
                    .as_ref()
                    .map_or_else(|| "a worker".to_string(), |w| w.to_string());
                if answers.iter().any(|(w, _)| *w == worker) {
                    continue;
                }
                let ok = answer == Answer::Ok;
                answers.push((worker, answer));
                if ok || answers.len() >= expected.max(1) {
                    return;
                }
            }
        })
        .await;
        if answers.is_empty() {
            return Err(AskError::NoAnswer {
                queue: queue.to_string(),
                ms: wait.as_millis(),
            });
        }
        Ok(answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_as_json() {
        for a in [
            Answer::Ok,
            Answer::Unprocessable("no such image".into()),
            Answer::Unavailable("engine away".into()),
        ] {
            let text = serde_json::to_vec(&a).unwrap();
            assert_eq!(serde_json::from_slice::<Answer>(&text).unwrap(), a);
        }
    }
}
