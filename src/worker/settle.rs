//! Settling a message: parking it in a delay queue, replying to a waiting caller, acking and
//! rejecting; and the delivery boundary that settles a message whose handling panicked.

use super::*;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::ShortString;

use crate::broker::{self, BrokerError};
use crate::invocation::{self, Outcome, Status};
use crate::message::{Reply, Work};
use crate::retry;

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

/// The delivery boundary: `handled` runs to its end, and should it panic anyway (a run's own
/// panics are caught in [`super::delivery::run_claimed`] and become a platform failure), its message goes back to
/// the queue, a no-op if it was settled: RabbitMQ counts the delivery. On the message's last
/// deliveries before the quorum queue's delivery limit (see [`retry::on_unavailable`]) it is not
/// given back: invocation `id` is recorded `dead` (unless a run already recorded it final) and
/// the message is dead-lettered, so a message that panics every time ends `dead`, never stuck
/// `running`. Its slot and in-flight marks are guards, released as the panic unwinds.
pub(super) async fn settled_even_on_panic(
    shared: Arc<Shared>,
    handled: impl Future<Output = ()>,
    acker: lapin::Acker,
    id: Option<Uuid>,
    deliveries: i64,
) {
    let Err(panic) = AssertUnwindSafe(handled).catch_unwind().await else {
        return;
    };
    let message = panic_message(&*panic);
    let last =
        retry::on_unavailable(deliveries, broker::DELIVERY_LIMIT) == retry::Unavailable::Attempt;
    let Some(id) = id.filter(|_| last) else {
        tracing::error!(panic = %message, "handling a delivery panicked; giving the message back");
        if let Err(e) = acker.reject(BasicRejectOptions { requeue: true }).await {
            tracing::warn!(error = %e, "reject failed; the message will come back");
        }
        return;
    };
    tracing::error!(panic = %message, %id, deliveries, "handling a delivery panicked on its last delivery; recording it dead and dead-lettering it");
    let outcome = Outcome {
        status: Some(Status::Dead),
        error: Some(format!(
            "the worker failed handling this invocation's message {} times: {}",
            deliveries + 1,
            message.replace('\0', "\u{FFFD}")
        )),
        ..Default::default()
    };
    let recorded = with_db_retries(|| invocation::store::finish(&shared.pool, id, &outcome)).await;
    if recorded {
        crate::callback::deliver_later(shared.pool.clone(), shared.callbacks.clone(), id);
    }
    if let Err(e) = acker.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(error = %e, "reject failed; the message will come back");
    }
}

/// What a caught panic said.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}
