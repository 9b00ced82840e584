//! The inbound router: events published straight to RabbitMQ.
//!
//! Any AMQP client publishes to the durable topic exchange `<prefix>.inbound` (routing key =
//! topic, body = payload, `content_type` and headers kept, `message_id` = idempotency key). Every
//! ingress runs one router consuming the quorum queue `<prefix>.inbound.router` (routers compete
//! for messages). For each message, in one Postgres transaction, it notes the `message_id` (its own
//! namespace, table `inbound_messages`, 24 h, apart from HTTP callers' `Idempotency-Key`), records
//! the event and one `queued` invocation (trigger `event`) per function whose subscription matches;
//! after the commit it publishes them (the outbox sweep publishes any the broker does not
//! confirm), mirrors the event on `<prefix>.events`, and only then acks. So a message the broker
//! confirmed to its publisher is never lost; a router that dies before the commit leaves it to be
//! redelivered, one that dies after leaves a redelivery that its `message_id` turns into a no-op.
//!
//! A message without `message_id` has no idempotency key: it is accepted once per delivery (a
//! redelivery after a crash between commit and ack runs again). A message that can't be accepted
//! (a topic that is not dot-separated words of `[A-Za-z0-9_-]`, a body over
//! `GRANDA_MAX_BODY_BYTES`) is republished, with confirms, to `<prefix>.inbound.dead` with the
//! reason in the header `x-granda-reason`, then acked; none is dropped silently. A message that
//! fails for a passing reason (Postgres down) is requeued after a backoff; one redelivered more
//! than the delivery limit is dead-lettered there by the broker (reason in `x-death`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use crate::event::{FannedOut, store as events, valid_topic};
use crate::function::Function;
use crate::invocation::{NewInvocation, Trigger, store as invocations};
use crate::producer::AppState;
use crate::producer::outbox;

/// Unacked messages a router holds at once.
const PREFETCH: u16 = 32;
/// The header that says why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-granda-reason";

/// Why a message can't be accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "bad topic {0:?}: the routing key must be dot-separated words of [A-Za-z0-9_-], at most 255 characters"
    )]
    Topic(String),
    #[error("too large: {size} bytes, at most {max}")]
    TooLarge { size: usize, max: usize },
}

/// Routes until `stop` turns true; a message being handled is finished first.
pub async fn run(app: AppState, mut stop: watch::Receiver<bool>) {
    describe(&app);
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        match consume(&app, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "inbound router stopped; starting again"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn describe(app: &AppState) {
    app.metrics.describe(
        "granda_inbound_messages_total",
        "Messages the inbound router took from the inbound exchange, by outcome (accepted, duplicate, dead).",
    );
}

async fn consume(app: &AppState, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    let topology = app.publisher.topology().clone();
    let (connection, _) = crate::broker::Nodes::from_settings(&app.settings)?
        .connect("inbound-router")
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    topology.declare_inbound(&channel).await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let dead = connection.create_channel().await?;
    dead.confirm_select(ConfirmSelectOptions::default()).await?;
    let tag = format!("granda-inbound-{}", Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            topology.inbound_queue().as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %topology.inbound_queue(), "inbound router consuming");
    let mut handled: u64 = 0;
    let result = loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break Ok(()),
            d = consumer.next() => d,
        };
        let Some(delivery) = delivery else {
            break Err(anyhow::anyhow!("the inbound consumer ended"));
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => break Err(e.into()),
        };
        let mut backoff = Duration::from_millis(200);
        let mut lost = None;
        loop {
            match handle(app, &dead, &delivery).await {
                Ok(()) => break,
                Err(Failure::Channel(e)) => {
                    lost = Some(e);
                    break;
                }
                Err(Failure::Retry(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "inbound message not handled; trying again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if backoff >= Duration::from_secs(5) {
                        // Give it back (counts towards the delivery limit) and go on.
                        let _ = delivery
                            .acker
                            .reject(BasicRejectOptions { requeue: true })
                            .await;
                        break;
                    }
                }
            }
        }
        if let Some(e) = lost {
            // The ack did not reach the broker: the message comes back (to some router).
            break Err(anyhow::Error::from(e).context("acking an inbound message"));
        }
        handled += 1;
        if handled.is_multiple_of(1000)
            && let Err(e) = forget_old_ids(app).await
        {
            tracing::warn!(error = %e, "could not forget old inbound message ids");
        }
    };
    let _ = connection.close(200, "OK".into()).await;
    result
}

/// Forgets message ids older than 24 h.
async fn forget_old_ids(app: &AppState) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM inbound_messages WHERE received_at < now() - interval '24 hours'")
        .execute(&app.pool)
        .await?;
    Ok(())
}

/// Why a delivery was not handled.
enum Failure {
    /// Nothing was committed or dead-lettered: try again.
    Retry(anyhow::Error),
    /// The ack failed: the channel is gone and the message comes back.
    Channel(lapin::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Retry(e.into())
    }
}

async fn ack(delivery: &Delivery) -> Result<(), Failure> {
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(Failure::Channel)
}

/// Handles one delivery: accepted (recorded, published, acked), a duplicate (acked), or refused
/// (dead-lettered, acked).
async fn handle(app: &AppState, dead: &Channel, delivery: &Delivery) -> Result<(), Failure> {
    let topic = delivery.routing_key.as_str();
    if let Err(refusal) = check(app, topic, delivery.data.len()) {
        dead_letter(app, dead, delivery, &refusal.to_string()).await?;
        ack(delivery).await?;
        count(app, "dead");
        tracing::warn!(%topic, reason = %refusal, "inbound message dead-lettered");
        return Ok(());
    }
    let outcome = record(app, delivery).await?;
    match outcome {
        None => count(app, "duplicate"),
        Some((event_id, fired)) => {
            for f in &fired {
                outbox::publish_now(
                    app,
                    &f.function,
                    f.id,
                    Trigger::Event,
                    &delivery.data,
                    &f.env,
                )
                .await;
            }
            mirror(app, topic, delivery, event_id).await;
            count(app, "accepted");
            tracing::debug!(%event_id, %topic, invocations = fired.len(), "inbound event accepted");
        }
    }
    ack(delivery).await
}

fn count(app: &AppState, outcome: &str) {
    app.metrics.inc(
        "granda_inbound_messages_total",
        format!("outcome=\"{outcome}\""),
    );
}

/// Whether a message can be accepted at all.
pub fn check(app: &AppState, topic: &str, size: usize) -> Result<(), Refusal> {
    if !valid_topic(topic) {
        return Err(Refusal::Topic(topic.chars().take(300).collect()));
    }
    let max = app.settings.max_body_bytes;
    if size > max {
        return Err(Refusal::TooLarge { size, max });
    }
    Ok(())
}

/// One invocation recorded for a message.
struct Fired {
    function: Function,
    id: Uuid,
    env: BTreeMap<String, String>,
}

/// Records the event and its invocations in one transaction. `None`: its `message_id` was
/// accepted before (in the last 24 h); nothing was written.
async fn record(app: &AppState, delivery: &Delivery) -> anyhow::Result<Option<(Uuid, Vec<Fired>)>> {
    let topic = delivery.routing_key.as_str();
    let props = &delivery.properties;
    let message_id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
        .filter(|m| !m.is_empty());
    let content_type = props
        .content_type()
        .as_ref()
        .map(|c| c.as_str())
        .filter(|c| !c.is_empty());
    let headers = headers_json(props.headers().as_ref());
    let event_id = Uuid::now_v7();
    let mut tx = app.pool.begin().await?;
    if let Some(message_id) = message_id {
        sqlx::query(
            "DELETE FROM inbound_messages WHERE message_id = $1 AND received_at < now() - interval '24 hours'",
        )
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
        let claimed = sqlx::query(
            "INSERT INTO inbound_messages (message_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(message_id)
        .bind(event_id)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
    }
    let mut fired = Vec::new();
    let mut fanned = Vec::new();
    for name in events::subscribers(&app.pool, topic).await? {
        let Some(function) = crate::function::store::get(&app.pool, &name).await? else {
            continue;
        };
        let mut env = BTreeMap::new();
        env.insert("GRANDA_EVENT_TOPIC".to_string(), topic.to_string());
        env.insert("GRANDA_EVENT_ID".to_string(), event_id.to_string());
        if let Some(ct) = content_type.filter(|c| !c.contains('\0')) {
            env.insert("GRANDA_CONTENT_TYPE".to_string(), ct.to_string());
        }
        if let Some(m) = message_id.filter(|m| !m.contains('\0')) {
            env.insert("GRANDA_EVENT_MESSAGE_ID".to_string(), m.to_string());
        }
        if !headers.is_empty() {
            env.insert(
                "GRANDA_EVENT_HEADERS".to_string(),
                Value::Object(headers.clone()).to_string(),
            );
        }
        let id = Uuid::now_v7();
        invocations::insert_queued_in(
            &mut tx,
            &NewInvocation {
                id,
                function: &function.name,
                trigger: Trigger::Event,
                input: &delivery.data,
                stored_input_cap: app.settings.max_stored_input_bytes,
                idempotency_key: None,
            },
            &env,
        )
        .await?;
        fanned.push(FannedOut {
            function: name.clone(),
            id,
        });
        fired.push(Fired { function, id, env });
    }
    let stored = &delivery.data[..delivery.data.len().min(app.settings.max_stored_input_bytes)];
    events::insert_event_in(
        &mut tx,
        event_id,
        topic,
        stored,
        delivery.data.len() as i64,
        content_type,
        &headers,
        &fanned,
    )
    .await?;
    tx.commit().await?;
    Ok(Some((event_id, fired)))
}

/// The headers of a message as JSON: strings, numbers and booleans (other values are left out).
fn headers_json(table: Option<&FieldTable>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let Some(table) = table else { return out };
    for (name, value) in table.inner() {
        let v = match value {
            AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::ShortString(s) => Value::from(s.as_str()),
            AMQPValue::Boolean(b) => Value::from(*b),
            AMQPValue::ShortShortInt(n) => Value::from(*n),
            AMQPValue::ShortShortUInt(n) => Value::from(*n),
            AMQPValue::ShortInt(n) => Value::from(*n),
            AMQPValue::ShortUInt(n) => Value::from(*n),
            AMQPValue::LongInt(n) => Value::from(*n),
            AMQPValue::LongUInt(n) => Value::from(*n),
            AMQPValue::LongLongInt(n) => Value::from(*n),
            AMQPValue::Float(n) => Value::from(*n),
            AMQPValue::Double(n) => Value::from(*n),
            _ => continue,
        };
        out.insert(name.as_str().to_string(), v);
    }
    out
}

/// Republishes a refused message to the inbound dead-letter queue, with confirms, keeping its
/// properties and adding the reason and the routing key it came with.
async fn dead_letter(
    app: &AppState,
    dead: &Channel,
    delivery: &Delivery,
    reason: &str,
) -> anyhow::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), long_string(reason));
    headers.insert(
        "x-granda-routing-key".into(),
        long_string(delivery.routing_key.as_str()),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    crate::broker::publish_confirmed(
        dead,
        &app.publisher.topology().inbound_dead_queue(),
        &delivery.data,
        properties,
        std::time::Duration::from_millis(app.settings.publish_timeout_ms),
    )
    .await?;
    Ok(())
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Mirrors an accepted event on `<prefix>.events` for observers, like HTTP-published ones.
async fn mirror(app: &AppState, topic: &str, delivery: &Delivery, event_id: Uuid) {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        "x-granda-event-id".into(),
        long_string(&event_id.to_string()),
    );
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(event_id.to_string()))
        .with_delivery_mode(2)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_content_type(ShortString::from(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str())
                .unwrap_or("application/octet-stream"),
        ))
        .with_headers(headers);
    if let Err(e) = app
        .publisher
        .publish_event(topic, &delivery.data, properties)
        .await
    {
        tracing::warn!(%event_id, error = %e, "could not mirror an inbound event on the events exchange");
    }
}
