//! RabbitMQ: connections, the topology Granda declares, and publishing invocations with confirms.
//!
//! Topology, for a prefix `p` (default `granda`):
//! - `p.work.<queue>`: one durable quorum queue per named queue, fed through the default exchange.
//! - `p.dlx`: a topic exchange that takes what a work queue dead-letters, routed to `p.dead`.
//! - `p.delay.<queue>.<ms>ms`: where a retry waits `ms` (less with jitter, by per-message
//!   expiration); when it expires it is dead-lettered back into `p.work.<queue>`.
//!
//! Every queue is a durable quorum queue with at-least-once dead-lettering.

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

/// How many times a nacked publish is tried again (over about three seconds).
const NACK_RETRIES: u32 = 6;

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

    pub fn delay_queue(&self, queue: &str, delay: Duration) -> String {
        format!("{}.delay.{queue}.{}ms", self.prefix, delay.as_millis())
    }

    /// Declares the delay queue that holds retries of `queue` for `delay`. Idempotent.
    pub async fn declare_delay(
        &self,
        channel: &Channel,
        queue: &str,
        delay: Duration,
    ) -> Result<(), lapin::Error> {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.work_queue(queue)),
        );
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        channel
            .queue_declare(
                self.delay_queue(queue, delay).into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        Ok(())
    }

    /// Declares the work queue `queue` and the dead-letter path. Idempotent.
    pub async fn declare(&self, channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_topic_exchange(channel, &self.dead_letter_exchange()).await?;
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

/// Declares the durable topic exchange `name`. Idempotent.
async fn declare_topic_exchange(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Opens a connection named after the process's role. Heartbeats default to 10 s, so a broker
/// that went away is noticed within seconds.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("granda-{name}").into_bytes()));
    let url = if url.contains("heartbeat=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    };
    Connection::connect(&url, props).await
}

/// Publishes on a channel in confirm mode and waits for the broker's confirm.
/// `mandatory`: a message no queue takes is an error, not a silent drop.
pub async fn publish_confirmed(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key.to_string())),
        Confirmation::Nack(_) => Err(BrokerError::Nacked),
    }
}

/// Waiters for replies, by correlation id, with the generation of the link they wait on.
type Waiters = Arc<Mutex<HashMap<String, (u64, oneshot::Sender<Reply>)>>>;

/// One live connection with its publishing channel, which also consumes direct replies.
struct Link {
    generation: u64,
    connection: Connection,
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
    generations: std::sync::atomic::AtomicU64,
    waiters: Waiters,
}

impl Publisher {
    pub async fn connect(url: &str, topology: Topology) -> Result<Arc<Publisher>, BrokerError> {
        let publisher = Arc::new(Publisher {
            url: url.to_string(),
            topology,
            link: tokio::sync::Mutex::new(None),
            generations: Default::default(),
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
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(dispatch_replies(replies, self.waiters.clone(), generation));
        let link = Arc::new(Link {
            generation,
            connection,
            channel,
            declared: Mutex::default(),
        });
        *guard = Some(link.clone());
        tracing::info!("connected to RabbitMQ");
        Ok(link)
    }

    /// Publishes `work` to its queue and returns once the broker confirmed it.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %work.id, queue))]
    pub async fn publish(&self, queue: &str, work: &Work, body: &[u8]) -> Result<(), BrokerError> {
        self.publish_retrying(queue, work, body, |_| {}).await
    }

    /// Publishes, retrying what is safe to retry: a dead connection (once, after reconnecting)
    /// and a nack (the broker did not store the message; a quorum queue still electing its
    /// leader does that), with a short backoff. `on_link` runs before each try.
    async fn publish_retrying(
        &self,
        queue: &str,
        work: &Work,
        body: &[u8],
        on_link: impl Fn(&Link),
    ) -> Result<(), BrokerError> {
        let mut reconnected = false;
        let mut nacks = 0;
        loop {
            let link = self.link().await?;
            on_link(&link);
            match self.publish_on(&link, queue, work, body).await {
                Ok(()) => return Ok(()),
                Err(BrokerError::Amqp(e)) if !reconnected => {
                    tracing::warn!(error = %e, "publish failed, reconnecting");
                    reconnected = true;
                }
                Err(BrokerError::Nacked) if nacks < NACK_RETRIES => {
                    nacks += 1;
                    tracing::debug!(nacks, "publish nacked; trying again");
                    tokio::time::sleep(Duration::from_millis(25 << nacks)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn publish_on(
        &self,
        link: &Link,
        queue: &str,
        work: &Work,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let declared = link.declared.lock().expect("lock").contains(queue);
        if !declared {
            self.topology.declare(&link.channel, queue).await?;
            link.declared
                .lock()
                .expect("lock")
                .insert(queue.to_string());
        }
        let routing_key = self.topology.work_queue(queue);
        publish_confirmed(&link.channel, &routing_key, body, work.properties()).await
    }

    /// Publishes a sync invocation and waits up to `wait` for its reply.
    /// `Ok(None)`: no reply in time, or the connection the reply would come on was lost; the
    /// invocation goes on and its record tells the end.
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
        let _forget = Forget(&self.waiters, &correlation_id);
        let rx = Mutex::new(None);
        self.publish_retrying(queue, &work, body, |link| {
            let (tx, new_rx) = oneshot::channel();
            self.waiters
                .lock()
                .expect("lock")
                .insert(correlation_id.clone(), (link.generation, tx));
            *rx.lock().expect("lock") = Some(new_rx);
        })
        .await?;
        let rx = rx
            .into_inner()
            .expect("lock")
            .expect("a waiter was registered");
        Ok(tokio::time::timeout(wait, rx)
            .await
            .ok()
            .and_then(Result::ok))
    }
}

impl Publisher {
    /// Messages waiting in the dead-letter queue.
    pub async fn dead_letter_depth(&self) -> Result<u32, BrokerError> {
        let link = self.link().await?;
        Ok(queue_depth(&link.connection, &self.topology.dead_letter_queue()).await?)
    }

    /// Ready messages and consumers of the broker queue `name` (a full name, e.g. from
    /// [`Topology::work_queue`]), by a passive declare on a throwaway channel; `None` when the
    /// queue does not exist (yet).
    pub async fn queue_info(&self, name: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        let link = self.link().await?;
        let channel = link.connection.create_channel().await?;
        let q = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "".into()).await;
        Ok(q.ok().map(|q| (q.message_count(), q.consumer_count())))
    }
}

/// Removes a waiter when its call ends, however it ends.
struct Forget<'a>(&'a Waiters, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("lock").remove(self.1);
    }
}

async fn dispatch_replies(mut replies: lapin::Consumer, waiters: Waiters, generation: u64) {
    while let Some(delivery) = replies.next().await {
        let Ok(delivery) = delivery else { break };
        let Some(correlation_id) = delivery.properties.correlation_id().clone() else {
            continue;
        };
        let waiter = waiters
            .lock()
            .expect("lock")
            .remove(correlation_id.as_str());
        let Some((_, waiter)) = waiter else { continue };
        if let Some(reply) = Reply::decode(&delivery.properties, delivery.data) {
            let _ = waiter.send(reply);
        }
    }
    // Replies to this connection are lost with it: let its waiters answer now, not at the cap.
    waiters
        .lock()
        .expect("lock")
        .retain(|_, (g, _)| *g != generation);
    tracing::debug!(generation, "reply consumer ended");
}

/// The number of ready messages in `queue`, by a passive declare on a throwaway channel
/// (a passive declare of a missing queue closes its channel).
pub async fn queue_depth(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let channel = connection.create_channel().await?;
    let depth = passive_depth(&channel, queue).await;
    let _ = channel.close(200, "".into()).await;
    depth
}

/// The number of ready messages in `queue`, by a passive declare on `channel`, which must be a
/// side channel: a passive declare of a missing queue closes it.
pub async fn passive_depth(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Deletes every queue and exchange of `topology` for `queues` and the delay `levels`
/// (tests and uninstall).
pub async fn delete_topology(
    connection: &Connection,
    topology: &Topology,
    queues: &[&str],
    levels: &[Duration],
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    for q in queues {
        channel
            .queue_delete(topology.work_queue(q).into(), Default::default())
            .await?;
        for level in levels {
            channel
                .queue_delete(topology.delay_queue(q, *level).into(), Default::default())
                .await?;
        }
    }
    channel
        .queue_delete(topology.dead_letter_queue().into(), Default::default())
        .await?;
    channel
        .exchange_delete(topology.dead_letter_exchange().into(), Default::default())
        .await?;
    channel
        .exchange_delete(topology.events_exchange().into(), Default::default())
        .await?;
    for q in [topology.inbound_queue(), topology.inbound_dead_queue()] {
        channel.queue_delete(q.into(), Default::default()).await?;
    }
    channel
        .exchange_delete(topology.inbound_exchange().into(), Default::default())
        .await?;
    Ok(())
}

// Events published over AMQP (issue 19): any client publishes to the durable topic exchange
// `p.inbound` (routing key = topic). A quorum queue `p.inbound.router`, bound with `#`, holds them
// for the routers (one per ingress, competing consumers; see `crate::inbound`). What a router
// can't accept goes to the quorum queue `p.inbound.dead`, with the reason in `x-granda-reason`;
// a message redelivered past the delivery limit is dead-lettered there by the broker.
impl Topology {
    pub fn inbound_exchange(&self) -> String {
        format!("{}.inbound", self.prefix)
    }

    pub fn inbound_queue(&self) -> String {
        format!("{}.inbound.router", self.prefix)
    }

    pub fn inbound_dead_queue(&self) -> String {
        format!("{}.inbound.dead", self.prefix)
    }

    /// Declares the inbound exchange, the router's queue and its dead-letter queue. Idempotent.
    pub async fn declare_inbound(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_topic_exchange(channel, &self.inbound_exchange()).await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(self.inbound_dead_queue().into(), durable, dead_args)
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.inbound_dead_queue()),
        );
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        channel
            .queue_declare(self.inbound_queue().into(), durable, args)
            .await?;
        channel
            .queue_bind(
                self.inbound_queue().into(),
                self.inbound_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
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
            declare_topic_exchange(&link.channel, &exchange).await?;
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
