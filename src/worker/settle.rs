//! Settling a message: parking it in a delay queue, replying to a waiting caller, acking and
//! rejecting.

use super::*;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::ShortString;

use crate::broker::{self, BrokerError};
use crate::message::{Reply, Work};

/// Moves the message to the delay queue of `level` to wait `delay` (at most `level`), then acks
/// it here; if the broker does not take it, the message comes back at once instead (nothing is
/// lost).
pub(super) async fn park_for(
    shared: &Shared,
    channels: &Channels,
    queue: &str,
    delivery: &Delivery,
    level: Duration,
    delay: Duration,
) {
    let parked = async {
        let name = shared.topology.delay_queue(queue, level);
        let declared = channels
            .delay_declared
            .lock()
            .expect("lock")
            .contains(&name);
        if !declared {
            shared
                .topology
                .declare_delay(&channels.publish, queue, level)
                .await?;
            channels
                .delay_declared
                .lock()
                .expect("lock")
                .insert(name.clone());
        }
        let properties = delivery
            .properties
            .clone()
            .with_expiration(ShortString::from(delay.as_millis().max(1).to_string()));
        broker::publish_confirmed(
            &channels.publish,
            &name,
            &delivery.data,
            properties,
            channels.publish_timeout,
        )
        .await
    };
    match parked.await {
        Ok(()) => ack(delivery).await,
        Err::<(), BrokerError>(e) => {
            tracing::warn!(error = %e, "could not park the message; giving it back");
            reject(delivery, true).await;
        }
    }
}

pub(super) async fn reply(channels: &Channels, work: &Work, reply: &Reply) {
    let (Some(reply_to), Some(correlation_id)) = (&work.reply_to, &work.correlation_id) else {
        return;
    };
    channels.replies.send(reply_to, correlation_id, reply).await;
}

pub(super) async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed; the message will come back and be acked then");
    }
}

pub(super) async fn reject(delivery: &Delivery, requeue: bool) {
    if let Err(e) = delivery.acker.reject(BasicRejectOptions { requeue }).await {
        tracing::warn!(error = %e, "reject failed; the message will come back");
    }
}
