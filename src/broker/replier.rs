//! The worker's side of sync replies, on a connection of its own.

use super::*;

use std::sync::Arc;

use lapin::Channel;
use lapin::options::BasicPublishOptions;

use crate::message::Reply;

/// Sends the replies of sync calls on a connection of its own, so that whatever a reply runs
/// into (the caller's node went down and RabbitMQ fails the publish to its
/// `amq.rabbitmq.reply-to.*`, closing the channel or the whole connection) can't take down the
/// consumers. Reopened on the next reply when it died. Not mandatory, no confirms: a reply only
/// makes waiting fast; the record in Postgres is the truth. Only the channel died (a failed
/// reply): the node is kept, the connection closed ([`Held`]).
pub(crate) struct Replier {
    held: Held<Channel>,
}

impl Replier {
    pub(crate) fn new(nodes: Arc<Nodes>, name: &str) -> Replier {
        Replier {
            held: Held::new(nodes, format!("{name}-replies")),
        }
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        let link = self
            .held
            .get(
                |link| (**link).status().connected(),
                async |connection| Ok(connection.create_channel().await?),
            )
            .await?;
        Ok(Channel::clone(&link))
    }

    /// Sends `reply` to `reply_to`, waiting at most the publish timeout; a reply that can't be
    /// sent is logged and dropped (the caller reads the record).
    pub(crate) async fn send(&self, reply_to: &str, correlation_id: &str, reply: &Reply) {
        let within = self.held.nodes().publish_timeout();
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
