//! The names of the queues and exchanges of one installation, and declaring and deleting them.

use super::*;

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

/// Names of the queues and exchanges of one Granda installation.
#[derive(Clone, Debug)]
pub struct Topology {
    pub(super) prefix: String,
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

    /// Where sync calls to `queue` go.
    pub(crate) fn sync_queue(&self, queue: &str) -> String {
        format!("{}.work.{queue}.sync", self.prefix)
    }

    pub(crate) fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub(crate) fn delay_queue(&self, queue: &str, delay: Duration) -> String {
        format!("{}.delay.{queue}.{}ms", self.prefix, delay.as_millis())
    }

    /// Declares the delay queue that holds retries of `queue` for `delay`. Idempotent.
    pub(crate) async fn declare_delay(
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
        declare_durable_queue(channel, self.delay_queue(queue, delay), args).await
    }

    /// Declares the work queue `queue`, its sync twin and the dead-letter path. Idempotent.
    pub(crate) async fn declare(&self, channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
        declare_topic_exchange(channel, &self.dead_letter_exchange()).await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        declare_durable_queue(channel, self.dead_letter_queue(), dead_args).await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let args = dead_lettering_quorum_args(&self.dead_letter_exchange());
        declare_durable_queue(channel, self.work_queue(queue), args.clone()).await?;
        declare_durable_queue(channel, self.sync_queue(queue), args).await
    }
}

/// Declares the durable topic exchange `name`. Idempotent.
pub(super) async fn declare_topic_exchange(
    channel: &Channel,
    name: &str,
) -> Result<(), lapin::Error> {
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

/// Declares the durable queue `name` with `args`. Idempotent.
async fn declare_durable_queue(
    channel: &Channel,
    name: String,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

pub(super) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
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
        channel
            .queue_delete(topology.sync_queue(q).into(), Default::default())
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
        .queue_delete(topology.probe_queue().into(), Default::default())
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
// for the routers (one per ingress, competing consumers; see `crate::producer::inbound`). What a router
// can't accept goes to the quorum queue `p.inbound.dead`, with the reason in `x-granda-reason`;
// a message redelivered past the delivery limit is dead-lettered there by the broker.
impl Topology {
    pub fn inbound_exchange(&self) -> String {
        format!("{}.inbound", self.prefix)
    }

    pub(crate) fn inbound_queue(&self) -> String {
        format!("{}.inbound.router", self.prefix)
    }

    pub fn inbound_dead_queue(&self) -> String {
        format!("{}.inbound.dead", self.prefix)
    }

    /// Declares the inbound exchange, the router's queue and its dead-letter queue. Idempotent.
    pub(crate) async fn declare_inbound(&self, channel: &Channel) -> Result<(), lapin::Error> {
        declare_topic_exchange(channel, &self.inbound_exchange()).await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        declare_durable_queue(channel, self.inbound_dead_queue(), dead_args).await?;
        let mut args = dead_lettering_quorum_args("");
        args.insert(
            "x-dead-letter-routing-key".into(),
            text(&self.inbound_dead_queue()),
        );
        declare_durable_queue(channel, self.inbound_queue(), args).await?;
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

// The workers' quorum probe (issue 32): a quorum queue `p.probe` holding at most one message
// (drop-head), to which each worker publishes an empty message every few seconds; the broker's
// confirm says a quorum write is possible now (the work queues need one), for `/readyz`.
impl Topology {
    pub(crate) fn probe_queue(&self) -> String {
        format!("{}.probe", self.prefix)
    }

    /// Declares the probe queue. Idempotent.
    pub(crate) async fn declare_probe(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
        args.insert("x-overflow".into(), text("drop-head"));
        declare_durable_queue(channel, self.probe_queue(), args).await
    }
}
