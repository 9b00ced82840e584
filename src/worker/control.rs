//! Registration checks over RabbitMQ, for an ingress with no Docker engine (`granda server`).
//!
//! The ingress publishes a [`Check`] (an image, a container runtime) to `<prefix>.control.<queue>`
//! with a direct reply-to; any worker serving that queue takes it, makes sure its own engine has
//! the image (present, or pulled as `GRANDA_IMAGE_PULL` allows) and knows the runtime, and
//! answers. The ingress turns the answer into 201, 422 with the engine's reason, or 503.
//!
//! The control queue is not durable and is deleted with its last consumer: with no worker serving
//! the queue, the ingress's publish is unroutable and it answers 503 at once; with a worker that
//! does not answer within the bound (the pull timeout and a few seconds), 503 too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::broker::{BrokerError, DIRECT_REPLY_TO};

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
    let sent = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let replies = crate::broker::consume_replies(channel, tag).await?;
        let correlation = Uuid::new_v4().to_string();
        let properties = properties
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(correlation.as_str().into());
        match crate::broker::publish_confirmed_unbounded(channel, routing_key, body, properties)
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

/// Closes `connection` in the background, giving the broker `within` to answer.
fn close_later(connection: Option<Connection>, within: Duration) {
    if let Some(connection) = connection {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(within, connection.close(200, "stalled".into())).await;
        });
    }
}

/// The control queue of `queue`.
pub fn queue_name(prefix: &str, queue: &str) -> String {
    format!("{prefix}.control.{queue}")
}

/// What the ingress asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub image: Option<String>,
    pub container_runtime: Option<String>,
}

/// What a worker answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "message", rename_all = "snake_case")]
pub enum Answer {
    Ok,
    /// The image can't be had, or the runtime is unknown: the engine's words.
    Unprocessable(String),
    /// The worker's engine did not answer.
    Unavailable(String),
}

/// Why no worker answered.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
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

/// The ingress's side: one connection, opened when first needed.
pub struct Client {
    nodes: Arc<crate::broker::Nodes>,
    prefix: String,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl Client {
    pub fn new(nodes: Arc<crate::broker::Nodes>, prefix: &str) -> Arc<Client> {
        Arc::new(Client {
            nodes,
            prefix: prefix.to_string(),
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// The bound on the broker's confirm of a request ([`request`]).
    pub(crate) fn publish_timeout(&self) -> Duration {
        self.nodes.publish_timeout()
    }

    /// A new channel on the client's connection (opened, or reopened, as needed).
    pub(crate) async fn channel(&self) -> Result<Channel, AskError> {
        let within = self.publish_timeout();
        let mut guard = self.connection.lock().await;
        if let Some(c) = guard.as_ref()
            && c.status().connected()
        {
            // A broker that stopped reading this connection (a resource alarm) never opens it.
            match tokio::time::timeout(within, c.create_channel()).await {
                Ok(channel) => return Ok(channel?),
                Err(_) => close_later(guard.take(), within),
            }
        }
        let (connection, _) = self.nodes.connect("ingress-control").await?;
        let channel = tokio::time::timeout(within, connection.create_channel()).await;
        *guard = Some(connection);
        match channel {
            Ok(channel) => Ok(channel?),
            Err(_) => {
                close_later(guard.take(), within);
                Err(AskError::Unconfirmed {
                    ms: within.as_millis(),
                })
            }
        }
    }

    /// Done with a request's `channel`: closes it without keeping the caller waiting on the
    /// broker. After a request the broker did not take (`failed`), drops the connection too, so
    /// that the next request starts on a fresh one rather than behind a stalled one.
    pub(crate) async fn finish(&self, channel: Channel, failed: bool) {
        let within = self.publish_timeout();
        if failed {
            close_later(self.connection.lock().await.take(), within);
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(within, channel.close(200, "".into())).await;
        });
    }

    /// Asks a worker of `queue` to check `check`, waiting up to `wait`.
    pub async fn ask(
        &self,
        queue: &str,
        check: &Check,
        wait: Duration,
    ) -> Result<Answer, AskError> {
        let channel = self.channel().await?;
        let answered = self.ask_on(&channel, queue, check, wait).await;
        let failed = matches!(
            answered,
            Err(AskError::Unconfirmed { .. } | AskError::Broker(_))
        );
        self.finish(channel, failed).await;
        answered
    }

    async fn ask_on(
        &self,
        channel: &Channel,
        queue: &str,
        check: &Check,
        wait: Duration,
    ) -> Result<Answer, AskError> {
        let body = serde_json::to_vec(check).expect("a check serializes");
        let properties =
            BasicProperties::default().with_expiration(wait.as_millis().max(1).to_string().into());
        let routing_key = queue_name(&self.prefix, queue);
        let Some((mut replies, correlation)) = request(
            channel,
            &routing_key,
            "control",
            &body,
            properties,
            self.nodes.publish_timeout(),
        )
        .await?
        else {
            return Err(AskError::NoWorker(queue.to_string()));
        };
        let answer = tokio::time::timeout(wait, async {
            while let Some(Ok(reply)) = replies.next().await {
                let ours = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == correlation);
                if ours && let Ok(answer) = serde_json::from_slice::<Answer>(&reply.data) {
                    return Some(answer);
                }
            }
            None
        })
        .await;
        match answer {
            Ok(Some(answer)) => Ok(answer),
            _ => Err(AskError::NoAnswer {
                queue: queue.to_string(),
                ms: wait.as_millis(),
            }),
        }
    }
}

/// The worker's side: declares `queue`'s control queue on `channel` and answers every check on it
/// with `answer`, until the channel goes.
pub async fn serve<F, Fut>(
    channel: Channel,
    prefix: &str,
    queue: &str,
    tag: &str,
    answer: F,
) -> Result<(), lapin::Error>
where
    F: Fn(Check) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let answer = Arc::new(answer);
    let queue = queue_name(prefix, queue);
    serve_requests(
        channel,
        &queue,
        &format!("{tag}-control"),
        move |request, to| {
            let answer = answer.clone();
            async move {
                if let Ok(check) = serde_json::from_slice::<Check>(&request.data) {
                    to.send(&answer(check).await).await;
                }
            }
        },
    )
    .await
}

/// Where the answers to one RPC request go: its caller's reply-to address and correlation id.
#[derive(Clone)]
pub(crate) struct ReplyTo {
    channel: Channel,
    reply_to: ShortString,
    correlation: ShortString,
}

impl ReplyTo {
    /// Sends `what` (as JSON) to the caller; see [`reply`].
    pub(crate) async fn send(&self, what: &impl Serialize) {
        reply(&self.channel, &self.reply_to, &self.correlation, what).await;
    }
}

/// Consumes the RPC queue `queue` on `channel` (declaring it) and hands each request that says
/// where its answer goes to `handle`, each in a task of its own, until the channel goes.
pub(crate) async fn serve_requests<F, Fut>(
    channel: Channel,
    queue: &str,
    consumer_tag: &str,
    handle: F,
) -> Result<(), lapin::Error>
where
    F: Fn(lapin::message::Delivery, ReplyTo) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut consumer = consume_requests(&channel, queue, consumer_tag).await?;
    tokio::spawn(async move {
        while let Some(Ok(request)) = consumer.next().await {
            let (Some(reply_to), Some(correlation)) = (
                request.properties.reply_to().clone(),
                request.properties.correlation_id().clone(),
            ) else {
                continue;
            };
            let to = ReplyTo {
                channel: channel.clone(),
                reply_to,
                correlation,
            };
            tokio::spawn(handle(request, to));
        }
    });
    Ok(())
}

/// Sends `what` (as JSON) to the caller of an RPC: its reply-to address, with its correlation id.
/// A caller that has gone is not an error: the answer goes nowhere.
pub(crate) async fn reply(
    channel: &Channel,
    reply_to: &ShortString,
    correlation: &ShortString,
    what: &impl Serialize,
) {
    let body = serde_json::to_vec(what).expect("an answer serializes");
    let _ = channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_correlation_id(correlation.clone()),
        )
        .await;
}

/// Declares `queue`, a worker's RPC queue (not durable, gone with its last consumer), and
/// consumes it without acks under a tag made from `tag`: the serving side of [`request`].
pub(crate) async fn consume_requests(
    channel: &Channel,
    queue: &str,
    tag: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: false,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.into(),
            ShortString::from(format!("{tag}-{}", Uuid::new_v4().simple())),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
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
