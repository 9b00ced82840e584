//! The worker's side of sync replies, on a connection of its own.

use super::*;

use std::sync::Arc;

use lapin::options::BasicPublishOptions;
use lapin::{Channel, Connection};

use crate::message::Reply;

/// Sends the replies of sync calls on a connection of its own, so that whatever a reply runs
/// into (the caller's node went down and RabbitMQ fails the publish to its
/// `amq.rabbitmq.reply-to.*`, closing the channel or the whole connection) can't take down the
/// consumers. Reopened on the next reply when it died. Not mandatory, no confirms: a reply only
/// makes waiting fast; the record in Postgres is the truth.
pub(crate) struct Replier {
    nodes: Arc<Nodes>,
    name: String,
    link: tokio::sync::Mutex<Option<(Connection, Channel, usize)>>,
}

impl Replier {
    pub(crate) fn new(nodes: Arc<Nodes>, name: &str) -> Replier {
        Replier {
            nodes,
            name: format!("{name}-replies"),
            link: tokio::sync::Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some((_, channel, _)) = guard.as_ref()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        if let Some((connection, _, node)) = guard.take() {
            if connection.status().connected() {
                // Only the channel died (a failed reply): keep the node, drop the connection.
                let _ = connection.close(200, "reopening".into()).await;
            } else {
                self.nodes.lost(node);
            }
        }
        let (connection, node) = self.nodes.connect(&self.name).await?;
        let channel = connection.create_channel().await?;
        *guard = Some((connection, channel.clone(), node));
        Ok(channel)
    }

    /// Sends `reply` to `reply_to`, waiting at most the publish timeout; a reply that can't be
    /// sent is logged and dropped (the caller reads the record).
    pub(crate) async fn send(&self, reply_to: &str, correlation_id: &str, reply: &Reply) {
        let within = self.nodes.publish_timeout();
        let send = async {
            let channel = self.channel().await?;
            channel
                .basic_publish(
                    "".into(),
                    reply_to.into(),
                    BasicPublishOptions::default(),
                    &reply.output,
                    reply.properties(correlation_id),
                )
                .await?;
            Ok::<_, BrokerError>(())
        };
        match tokio::time::timeout(within, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reply not sent; the caller reads the record"),
            Err(_) => tracing::warn!("reply not sent in time; the caller reads the record"),
        }
    }
}
