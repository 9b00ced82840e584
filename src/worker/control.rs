//! A worker's side of the registration checks over RabbitMQ ([`crate::engines::control`] has the
//! protocol and the ingress's side): serving the requests of a queue and answering them.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::Serialize;
use uuid::Uuid;

pub(crate) use crate::engines::control::{Answer, Check, exchange_name, queue_name};

/// The worker's side: declares `queue`'s control queue on `channel` and answers every check on it
/// with `answer`, until the channel goes.
pub(crate) async fn serve<F, Fut>(
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
    let handle = move |request: lapin::message::Delivery, to: ReplyTo| {
        let answer = answer.clone();
        async move {
            if let Ok(check) = serde_json::from_slice::<Check>(&request.data) {
                to.send(&answer(check).await).await;
            }
        }
    };
    // A queue of this worker's own, bound to the control exchange: checks asked of every worker.
    let exchange = exchange_name(prefix);
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let own = crate::broker::declare_listening_queue(&channel, &exchange, queue).await?;
    let consumer = channel
        .basic_consume(
            own.name().clone(),
            ShortString::from(format!("{tag}-control-own-{}", Uuid::new_v4().simple())),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    spawn_serving(
        channel.clone(),
        consumer,
        Some(ShortString::from(tag.to_string())),
        handle.clone(),
    );
    // The queue's shared control queue: any one worker answers (ingresses of earlier versions).
    serve_requests(
        channel,
        &queue_name(prefix, queue),
        &format!("{tag}-control"),
        handle,
    )
    .await
}

/// Where the answers to one RPC request go: its caller's reply-to address and correlation id.
#[derive(Clone)]
pub(crate) struct ReplyTo {
    channel: Channel,
    reply_to: ShortString,
    correlation: ShortString,
    /// The answering worker's id, sent as the reply's `app_id` (checks asked of every worker).
    from: Option<ShortString>,
}

impl ReplyTo {
    /// Sends `what` (as JSON) to the caller.
    pub(crate) async fn send(&self, what: &impl Serialize) {
        reply(
            &self.channel,
            &self.reply_to,
            &self.correlation,
            self.from.as_ref(),
            what,
        )
        .await;
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
    let consumer = consume_requests(&channel, queue, consumer_tag).await?;
    spawn_serving(channel, consumer, None, handle);
    Ok(())
}

/// Hands each request on `consumer` that says where its answer goes to `handle`, each in a task
/// of its own, until the channel goes; answers carry `from` as their `app_id`.
fn spawn_serving<F, Fut>(
    channel: Channel,
    mut consumer: lapin::Consumer,
    from: Option<ShortString>,
    handle: F,
) where
    F: Fn(lapin::message::Delivery, ReplyTo) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
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
                from: from.clone(),
            };
            tokio::spawn(handle(request, to));
        }
    });
}

/// Sends `what` (as JSON) to the caller of an RPC: its reply-to address, with its correlation id,
/// naming the answering worker (`from`) in the reply's `app_id`. A caller that has gone is not
/// an error: the answer goes nowhere.
async fn reply(
    channel: &Channel,
    reply_to: &ShortString,
    correlation: &ShortString,
    from: Option<&ShortString>,
    what: &impl Serialize,
) {
    let body = serde_json::to_vec(what).expect("an answer serializes");
    let mut properties = BasicProperties::default().with_correlation_id(correlation.clone());
    if let Some(from) = from {
        properties = properties.with_app_id(from.clone());
    }
    let _ = channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            properties,
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
