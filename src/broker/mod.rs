//! RabbitMQ: connections, the topology Granda declares, and publishing invocations with confirms.
//!
//! Topology, for a prefix `p` (default `granda`):
//! - `p.work.<queue>`: one durable quorum queue per named queue, fed through the default exchange.
//! - `p.work.<queue>.sync`: its twin for sync calls (a caller waits on the reply), with the same
//!   dead-lettering and delivery limit; workers serve it first, so a sync call does not wait
//!   behind an async backlog. (Queue names hold no `.`, so the two can't collide.)
//! - `p.dlx`: a topic exchange that takes what a work queue dead-letters, routed to `p.dead`.
//! - `p.delay.<queue>.<ms>ms`: where a retry waits `ms` (less with jitter, by per-message
//!   expiration); when it expires it is dead-lettered back into `p.work.<queue>`.
//!
//! Every queue is a durable quorum queue with at-least-once dead-lettering.
//!
//! Size: a message's properties (the function snapshot with its env, per-invocation env) travel
//! in one header frame, which must fit the connection's negotiated `frame_max`; RabbitMQ closes
//! the whole CONNECTION on a frame that does not. So every publish measures its header frame as
//! serialized and refuses ([`BrokerError::TooLarge`]) one that would not fit with
//! `FRAME_MARGIN` to spare, and registration keeps a function's snapshot within
//! [`snapshot_budget`]. The ingress also publishes async work, events and declarations on a
//! side channel, so a channel error there can't take the reply consumer of sync calls with it.
//!
//! Layout: `topology` names and declares the queues and exchanges, `nodes` picks a node of
//! the cluster and connects, `publisher` is the ingress's side (publishing with confirms,
//! waiting for replies), `replier` the worker's side of replies; this file holds what they
//! share (errors, frame sizes, confirmed publishing on a channel, queue depths).

mod held;
mod nodes;
mod publisher;
mod replier;
mod topology;

pub use held::{Held, Linked};
pub(crate) use nodes::DEFAULT_PUBLISH_TIMEOUT;
pub use nodes::{Nodes, connect};
pub use publisher::Publisher;
pub(crate) use replier::Replier;
pub use topology::{Topology, delete_topology};
use topology::{declare_topic_exchange, text};

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

pub(crate) use crate::message::DIRECT_REPLY_TO;

/// How many times a nacked publish is tried again (over about three seconds).
const NACK_RETRIES: u32 = 6;

/// How many times a quorum queue redelivers one message (a worker crashing on it) before dead-lettering it.
pub(crate) const DELIVERY_LIMIT: i64 = 20;

pub(crate) use crate::frame::{DEFAULT_FRAME_MAX, FRAME_MARGIN};

/// Declares a queue of the channel's connection's own (named by the broker, exclusive, deleted
/// with it) bound to `exchange` with `key`: how a process listens to what an exchange routes.
pub async fn declare_listening_queue(
    channel: &Channel,
    exchange: &str,
    key: &str,
) -> Result<lapin::Queue, lapin::Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(queue)
}

/// The arguments of a quorum queue that dead-letters to `exchange`, at least once, past
/// [`DELIVERY_LIMIT`] deliveries (work queues, sync twins, the inbound router's queue).
fn dead_lettering_quorum_args(exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    args
}

fn note_frame_max(connection: &Connection) {
    crate::frame::note(connection.configuration().frame_max());
}

/// The size of the header frame that carries `properties`, as lapin writes it: frame header
/// (7), class and weight (4), body size (8), the properties, frame end (1).
pub(crate) fn header_frame_size(properties: &lapin::BasicProperties) -> usize {
    let written = cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::new(),
    );
    // Serializing into a Vec can't fail; if it ever did, call it too large.
    written.map_or(usize::MAX, |v| 7 + 4 + 8 + v.len() + 1)
}

/// Refuses `properties` whose header frame would not fit `frame_max` with [`FRAME_MARGIN`] to spare.
pub(crate) fn check_header_size(
    properties: &lapin::BasicProperties,
    frame_max: u32,
) -> Result<(), BrokerError> {
    let size = header_frame_size(properties);
    let limit = (frame_max as usize).saturating_sub(FRAME_MARGIN);
    if size > limit {
        return Err(BrokerError::TooLarge { size, limit });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    /// Refused before sending: the broker would close the connection on it.
    #[error(
        "the message's headers take {size} bytes serialized; the broker's frame leaves {limit}"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("the broker refused the message")]
    Nacked,
    #[error("no queue took the message (routing key {0})")]
    Unroutable(String),
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    /// The node accepted no AMQP handshake in time (down, or up but wedged).
    #[error("no RabbitMQ node completed the AMQP handshake within {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Config(String),
}

/// Publishes on a channel in confirm mode and waits up to `within` for the broker's confirm.
/// `mandatory`: a message no queue takes is an error, not a silent drop.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
    within: Duration,
) -> Result<(), BrokerError> {
    tokio::time::timeout(
        within,
        publish_confirmed_unbounded(channel, routing_key, body, properties),
    )
    .await
    .map_err(|_| BrokerError::Timeout(within))?
}

/// [`publish_confirmed`] with no bound of its own (the caller's).
pub(crate) async fn publish_confirmed_unbounded(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), BrokerError> {
    publish_confirmed_via(channel, "", routing_key, body, properties).await
}

/// [`publish_confirmed_unbounded`] through `exchange`.
pub(crate) async fn publish_confirmed_via(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), BrokerError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
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

/// Consumes RabbitMQ's direct replies on `channel` (no acks; the consumer tag made from `tag`):
/// a message published on it with `reply_to` [`DIRECT_REPLY_TO`] gets its answers here.
pub(crate) async fn consume_replies(
    channel: &Channel,
    tag: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            format!("{tag}-{}", uuid::Uuid::new_v4().simple()).into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
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
pub(crate) async fn passive_depth(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
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

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn header_frames_are_measured_as_serialized() {
        // Frame header, class, weight, body size, property flags, frame end.
        assert_eq!(header_frame_size(&lapin::BasicProperties::default()), 22);
        let mut headers = FieldTable::default();
        // `"` doubles in JSON, but an AMQP long string is sent as is: 1 + 1 + 1 + 4 + 1000.
        headers.insert("k".into(), text(&"\"".repeat(1000)));
        let props = lapin::BasicProperties::default().with_headers(headers);
        assert_eq!(header_frame_size(&props), 22 + 4 + 1 + 1 + 1 + 4 + 1000);
        assert!(check_header_size(&props, 131_072).is_ok());
        // 1033 bytes: over 2000 - 1024 of margin, under 3000 - 1024.
        assert!(matches!(
            check_header_size(&props, 2000),
            Err(BrokerError::TooLarge { .. })
        ));
        assert!(check_header_size(&props, 3000).is_ok());
    }
}
