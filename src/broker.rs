//! RabbitMQ: connections, the topology Granda declares, and publishing invocations with confirms.
//!
//! Topology, for a prefix `p` (default `granda`):
//! - `p.work.<queue>`: one durable quorum queue per named queue, fed through the default exchange.
//! - `p.dlx`: a topic exchange that takes what a work queue dead-letters, routed to `p.dead`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::message::{Reply, Work};

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// How many times a quorum queue redelivers one message (a worker crashing on it) before dead-lettering it.
pub const DELIVERY_LIMIT: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message")]
    Nacked,
    #[error("no queue took the message (routing key {0})")]
    Unroutable(String),
}

/// Names of the queues and exchanges of one Granda installation.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Topology {
            prefix: prefix.to_string(),
        }
    }

    pub fn work_queue(&self, queue: &str) -> String {
        format!("{}.work.{queue}", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Declares the work queue `queue` and the dead-letter path. Idempotent.
    pub async fn declare(&self, channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(self.dead_letter_queue().into(), durable, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert(
            "x-dead-letter-exchange".into(),
            text(&self.dead_letter_exchange()),
        );
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        channel
            .queue_declare(self.work_queue(queue).into(), durable, args)
            .await?;
        Ok(())
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Opens a connection named after the process's role.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("granda-{name}").into_bytes()));
    Connection::connect(url, props).await
}

/// Waiters for replies, by correlation id.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

/// One live connection with its publishing channel, which also consumes direct replies.
struct Link {
    _connection: Connection,
    channel: Channel,
    declared: Mutex<HashSet<String>>,
}

impl Link {
    fn healthy(&self) -> bool {
        self.channel.status().connected()
    }
}

/// Publishes invocations with publisher confirms, and waits for replies of sync calls.
/// Reconnects by itself when the broker went away.
pub struct Publisher {
    url: String,
    topology: Topology,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    waiters: Waiters,
}

impl Publisher {
    pub async fn connect(url: &str, topology: Topology) -> Result<Arc<Publisher>, BrokerError> {
        let publisher = Arc::new(Publisher {
            url: url.to_string(),
            topology,
            link: tokio::sync::Mutex::new(None),
            waiters: Arc::default(),
        });
        publisher.link().await?;
        Ok(publisher)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the broker is reachable now (reconnecting if needed).
    pub async fn ready(&self) -> bool {
        self.link().await.is_ok()
    }

    async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref()
            && link.healthy()
        {
            return Ok(link.clone());
        }
        *guard = None;
        let connection = connect(&self.url, "ingress").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let replies = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                ShortString::from(format!("replies-{}", Uuid::new_v4())),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        tokio::spawn(dispatch_replies(replies, self.waiters.clone()));
        let link = Arc::new(Link {
            _connection: connection,
            channel,
            declared: Mutex::default(),
        });
        *guard = Some(link.clone());
        tracing::info!("connected to RabbitMQ");
        Ok(link)
    }

    /// Publishes `work` to its queue and returns once the broker confirmed it.
    #[tracing::instrument(skip_all, fields(id = %work.id, queue))]
    pub async fn publish(&self, queue: &str, work: &Work, body: &[u8]) -> Result<(), BrokerError> {
        match self.try_publish(queue, work, body).await {
            Err(BrokerError::Amqp(e)) => {
                // The connection may have died since the last use: one fresh try.
                tracing::warn!(error = %e, "publish failed, reconnecting");
                self.try_publish(queue, work, body).await
            }
            other => other,
        }
    }

    async fn try_publish(&self, queue: &str, work: &Work, body: &[u8]) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let declared = link.declared.lock().expect("lock").contains(queue);
        if !declared {
            self.topology.declare(&link.channel, queue).await?;
            link.declared
                .lock()
                .expect("lock")
                .insert(queue.to_string());
        }
        let routing_key = self.topology.work_queue(queue);
        let confirm = link
            .channel
            .basic_publish(
                "".into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                work.properties(),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key)),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
        }
    }

    /// Publishes a sync invocation and waits up to `wait` for its reply.
    /// `Ok(None)`: no reply in time; the invocation goes on and its record tells the end.
    pub async fn call(
        &self,
        queue: &str,
        mut work: Work,
        body: &[u8],
        wait: Duration,
    ) -> Result<Option<Reply>, BrokerError> {
        let correlation_id = work.id.to_string();
        work.reply_to = Some(DIRECT_REPLY_TO.to_string());
        work.correlation_id = Some(correlation_id.clone());
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("lock")
            .insert(correlation_id.clone(), tx);
        let _forget = Forget(&self.waiters, &correlation_id);
        self.publish(queue, &work, body).await?;
        Ok(tokio::time::timeout(wait, rx)
            .await
            .ok()
            .and_then(Result::ok))
    }
}

/// Removes a waiter when its call ends, however it ends.
struct Forget<'a>(&'a Waiters, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("lock").remove(self.1);
    }
}

async fn dispatch_replies(mut replies: lapin::Consumer, waiters: Waiters) {
    while let Some(delivery) = replies.next().await {
        let Ok(delivery) = delivery else { break };
        let Some(correlation_id) = delivery.properties.correlation_id().clone() else {
            continue;
        };
        let waiter = waiters
            .lock()
            .expect("lock")
            .remove(correlation_id.as_str());
        let Some(waiter) = waiter else { continue };
        if let Some(reply) = Reply::decode(&delivery.properties, delivery.data) {
            let _ = waiter.send(reply);
        }
    }
    tracing::debug!("reply consumer ended");
}

/// The number of ready messages in `queue`, by a passive declare on a throwaway channel
/// (a passive declare of a missing queue closes its channel).
pub async fn queue_depth(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let channel = connection.create_channel().await?;
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = channel.close(200, "".into()).await;
    Ok(q?.message_count())
}

/// Deletes every queue and exchange of `topology` for `queues` (tests and uninstall).
pub async fn delete_topology(
    connection: &Connection,
    topology: &Topology,
    queues: &[&str],
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    for q in queues {
        channel
            .queue_delete(topology.work_queue(q).into(), Default::default())
            .await?;
    }
    channel
        .queue_delete(topology.dead_letter_queue().into(), Default::default())
        .await?;
    channel
        .exchange_delete(topology.dead_letter_exchange().into(), Default::default())
        .await?;
    Ok(())
}

// Published events (issue 5): a durable topic exchange `p.events` that carries every event published
// through `POST /v1/events/{topic}`, routing key = topic, for observers outside Granda. Granda's own
// fan-out to subscribed functions does not go through it (the ingress matches subscriptions itself,
// to answer with the invocation ids).
impl Topology {
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
}

impl Publisher {
    /// Publishes an event on the events exchange (declared on first use) and returns once the
    /// broker confirmed it. Not mandatory: an event nobody outside observes is fine.
    #[tracing::instrument(skip_all, fields(%topic))]
    pub async fn publish_event(
        &self,
        topic: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), BrokerError> {
        match self.try_publish_event(topic, body, &properties).await {
            Err(BrokerError::Amqp(e)) => {
                tracing::warn!(error = %e, "event publish failed, reconnecting");
                self.try_publish_event(topic, body, &properties).await
            }
            other => other,
        }
    }

    async fn try_publish_event(
        &self,
        topic: &str,
        body: &[u8],
        properties: &lapin::BasicProperties,
    ) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let exchange = self.topology.events_exchange();
        // Queue names never hold ':', so this can't collide with a declared queue.
        let marker = format!("exchange:{exchange}");
        if !link.declared.lock().expect("lock").contains(&marker) {
            link.channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            link.declared.lock().expect("lock").insert(marker);
        }
        let confirm = link
            .channel
            .basic_publish(
                exchange.as_str().into(),
                topic.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            _ => Ok(()),
        }
    }
}
