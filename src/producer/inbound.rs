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
//! redelivery after a crash between commit and ack runs again). Everything that enters is checked
//! first (`check`): the topic (dot-separated words of `[A-Za-z0-9_-]`), the size (at most
//! `GRANDA_MAX_BODY_BYTES`), `message_id` and `content_type` (printable ASCII: they become
//! `GRANDA_EVENT_MESSAGE_ID` and `GRANDA_CONTENT_TYPE`), the headers (see [`headers_json`]) and
//! the per-invocation env they make (the checks of the HTTP entry points). A message that fails
//! one, or whose values Postgres refuses all the same (SQLSTATE class 22), is republished at once,
//! with confirms, to `<prefix>.inbound.dead` with the reason in the header `x-granda-reason`, then
//! acked; none is dropped silently and none holds up the messages behind it. A message that fails
//! for a passing reason (Postgres down) is requeued after a backoff; one redelivered more than the
//! delivery limit is dead-lettered there by the broker (reason in `x-death`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::shutdown::Shutdown;
use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use uuid::Uuid;

use crate::event::{FannedOut, store as events, valid_topic};
use crate::function::Function;
use crate::invocation::{NewInvocation, Trigger, store as invocations};
use crate::producer::ingress::Ingress;
use crate::producer::outbox;

/// Unacked messages a router holds at once.
const PREFETCH: u16 = 32;
/// How deep tables and arrays may nest in a message's headers.
const MAX_HEADER_DEPTH: usize = 16;
/// The header that says why a message was dead-lettered.
pub(crate) const REASON_HEADER: &str = "x-granda-reason";

/// Why a message can't be accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "bad topic {0:?}: the routing key must be dot-separated words of [A-Za-z0-9_-], at most 255 characters"
    )]
    Topic(String),
    #[error("too large: {size} bytes, at most {max}")]
    TooLarge { size: usize, max: usize },
    #[error("bad {0}: only printable ASCII (no control characters, CR or LF)")]
    Property(&'static str),
    #[error("bad header {name:?}: {why}")]
    Header { name: String, why: String },
    #[error("can't be passed on to functions: {0}")]
    Env(String),
    #[error("refused by the database: {0}")]
    Stored(String),
}

/// Routes until told to stop; a message being handled is finished first.
pub(crate) async fn run(app: Ingress, mut stop: Shutdown) {
    describe(&app);
    let mut backoff = Duration::from_millis(500);
    loop {
        if stop.is_shutdown() {
            return;
        }
        match consume(&app, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "inbound router stopped; starting again"
                );
                if stop.stopped_during(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn describe(app: &Ingress) {
    app.metrics.describe(
        "granda_inbound_messages_total",
        "Messages the inbound router took from the inbound exchange, by outcome (accepted, duplicate, dead).",
    );
}

async fn consume(app: &Ingress, stop: &mut Shutdown) -> anyhow::Result<()> {
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
            _ = stop.recv() => break Ok(()),
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
async fn forget_old_ids(app: &Ingress) -> Result<(), sqlx::Error> {
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
/// (dead-lettered, acked). In a span `inbound` that continues the message's own `traceparent`
/// (W3C Trace Context; a new trace without one): each subscriber's invocation is in that trace.
async fn handle(app: &Ingress, dead: &Channel, delivery: &Delivery) -> Result<(), Failure> {
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        parent: None,
        "inbound",
        otel.kind = "consumer",
        topic = %delivery.routing_key,
    );
    let _ = span.set_parent(crate::message::trace_context(&delivery.properties));
    handle_traced(app, dead, delivery).instrument(span).await
}

async fn handle_traced(app: &Ingress, dead: &Channel, delivery: &Delivery) -> Result<(), Failure> {
    let accepted = match check(app, delivery) {
        Ok(a) => a,
        Err(refusal) => return refuse(app, dead, delivery, &refusal).await,
    };
    let topic = accepted.topic;
    let outcome = match record(app, delivery, &accepted).await {
        Ok(o) => o,
        Err(e) => match refused_by_postgres(&e) {
            Some(refusal) => return refuse(app, dead, delivery, &refusal).await,
            None => return Err(Failure::Retry(e)),
        },
    };
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

/// Dead-letters a message with its reason and acks it.
async fn refuse(
    app: &Ingress,
    dead: &Channel,
    delivery: &Delivery,
    refusal: &Refusal,
) -> Result<(), Failure> {
    dead_letter(app, dead, delivery, &refusal.to_string()).await?;
    ack(delivery).await?;
    count(app, "dead");
    tracing::warn!(topic = %delivery.routing_key, reason = %refusal, "inbound message dead-lettered");
    Ok(())
}

/// A Postgres error that retrying can't cure: the data itself was refused (SQLSTATE class 22,
/// e.g. a character the column's type can't hold).
fn refused_by_postgres(e: &anyhow::Error) -> Option<Refusal> {
    let db = e.downcast_ref::<sqlx::Error>()?.as_database_error()?;
    let code = db.code()?;
    code.starts_with("22")
        .then(|| Refusal::Stored(format!("{} (SQLSTATE {code})", db.message())))
}

fn count(app: &Ingress, outcome: &str) {
    app.metrics.inc(
        "granda_inbound_messages_total",
        format!("outcome=\"{outcome}\""),
    );
}

/// A message that passed [`check`]: what [`record`] stores and passes on.
#[derive(Debug)]
pub(crate) struct Accepted<'a> {
    pub(crate) topic: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) content_type: Option<&'a str>,
    /// The headers as JSON ([`headers_json`]).
    pub(crate) headers: serde_json::Map<String, Value>,
    /// The per-invocation env every subscriber gets (`GRANDA_EVENT_ID` is added per event).
    pub(crate) env: BTreeMap<String, String>,
}

/// Whether a message can be accepted, and what of it is kept. Everything that enters Postgres
/// or a function's env is checked here, so nothing is refused later (which would hold the
/// message, and those behind it, in retries).
pub(crate) fn check<'a>(app: &Ingress, delivery: &'a Delivery) -> Result<Accepted<'a>, Refusal> {
    let topic = delivery.routing_key.as_str();
    if !valid_topic(topic) {
        return Err(Refusal::Topic(topic.chars().take(300).collect()));
    }
    let max = app.settings.max_body_bytes;
    let size = delivery.data.len();
    if size > max {
        return Err(Refusal::TooLarge { size, max });
    }
    let props = &delivery.properties;
    let text = |what: &'static str, v: &'a Option<ShortString>| -> Result<_, Refusal> {
        match v.as_ref().map(|v| v.as_str()).filter(|v| !v.is_empty()) {
            Some(v) if !crate::message::header_safe(v) => Err(Refusal::Property(what)),
            other => Ok(other),
        }
    };
    let message_id = text("message_id", props.message_id())?;
    let content_type = text("content_type", props.content_type())?;
    let headers = headers_json(props.headers().as_ref())?;

    let mut env = BTreeMap::new();
    env.insert("GRANDA_EVENT_TOPIC".to_string(), topic.to_string());
    if let Some(ct) = content_type {
        env.insert("GRANDA_CONTENT_TYPE".to_string(), ct.to_string());
    }
    if let Some(m) = message_id {
        env.insert("GRANDA_EVENT_MESSAGE_ID".to_string(), m.to_string());
    }
    if !headers.is_empty() {
        env.insert(
            "GRANDA_EVENT_HEADERS".to_string(),
            ascii_json(&Value::Object(headers.clone())),
        );
    }
    if let Some(problem) = env
        .iter()
        .find_map(|(k, v)| crate::message::invocation_env_problem(k, v))
    {
        return Err(Refusal::Env(problem));
    }
    Ok(Accepted {
        topic,
        message_id,
        content_type,
        headers,
        env,
    })
}

/// One invocation recorded for a message.
struct Fired {
    function: Function,
    id: Uuid,
    env: BTreeMap<String, String>,
}

/// Records the event and its invocations in one transaction. `None`: its `message_id` was
/// accepted before (in the last 24 h); nothing was written.
async fn record(
    app: &Ingress,
    delivery: &Delivery,
    accepted: &Accepted<'_>,
) -> anyhow::Result<Option<(Uuid, Vec<Fired>)>> {
    let topic = accepted.topic;
    let event_id = Uuid::now_v7();
    let mut tx = app.pool.begin().await?;
    if let Some(message_id) = accepted.message_id {
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
    let mut env = accepted.env.clone();
    env.insert("GRANDA_EVENT_ID".to_string(), event_id.to_string());
    let mut fired = Vec::new();
    let mut fanned = Vec::new();
    for name in events::subscribers(&app.pool, topic).await? {
        let Some(function) = crate::function::store::get(&app.pool, &name).await? else {
            continue;
        };
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
                key_id: None,
            },
            &env,
        )
        .await?;
        fanned.push(FannedOut {
            function: name.clone(),
            id,
        });
        fired.push(Fired {
            function,
            id,
            env: env.clone(),
        });
    }
    let stored = &delivery.data[..delivery.data.len().min(app.settings.max_stored_input_bytes)];
    events::insert_event_in(
        &mut tx,
        event_id,
        topic,
        stored,
        delivery.data.len() as i64,
        accepted.content_type,
        &accepted.headers,
        &fanned,
    )
    .await?;
    tx.commit().await?;
    Ok(Some((event_id, fired)))
}

/// The headers of a message as JSON. Strings (short, long, and RabbitMQ's byte arrays) must be
/// UTF-8 without control characters, names too; numbers, booleans and decimals are numbers
/// (NaN and infinities `null`), a timestamp is its seconds since the epoch, void is `null`,
/// tables are objects and arrays arrays, nested at most `MAX_HEADER_DEPTH` deep. Anything
/// else refuses the message: a header is never dropped or altered silently.
pub fn headers_json(table: Option<&FieldTable>) -> Result<serde_json::Map<String, Value>, Refusal> {
    let Some(table) = table else {
        return Ok(serde_json::Map::new());
    };
    let mut out = serde_json::Map::new();
    for (name, value) in table.inner() {
        let name = name.as_str();
        let refuse = |why: String| Refusal::Header {
            name: name.chars().take(100).collect(),
            why,
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(refuse(
                "a header name must be non-empty, without control characters".into(),
            ));
        }
        out.insert(name.to_string(), header_value(value, 1).map_err(refuse)?);
    }
    Ok(out)
}

/// One header value as JSON (see [`headers_json`]); the error says why it can't be kept.
fn header_value(value: &AMQPValue, depth: usize) -> Result<Value, String> {
    if depth > MAX_HEADER_DEPTH {
        return Err(format!(
            "tables and arrays nest at most {MAX_HEADER_DEPTH} deep"
        ));
    }
    let text = |s: &str| -> Result<Value, String> {
        if s.chars().any(char::is_control) {
            return Err("control characters (NUL, CR, LF, ...) are not allowed".into());
        }
        Ok(Value::from(s))
    };
    let bytes = |b: &[u8]| -> Result<Value, String> {
        text(std::str::from_utf8(b).map_err(|_| "bytes that are not UTF-8 text".to_string())?)
    };
    Ok(match value {
        AMQPValue::LongString(s) => bytes(s.as_bytes())?,
        AMQPValue::ByteArray(b) => bytes(b.as_slice())?,
        AMQPValue::ShortString(s) => text(s.as_str())?,
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
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::Void => Value::Null,
        AMQPValue::FieldArray(a) => Value::Array(
            a.as_slice()
                .iter()
                .map(|v| header_value(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        AMQPValue::FieldTable(t) => {
            let mut out = serde_json::Map::new();
            for (k, v) in t.inner() {
                if k.as_str().chars().any(char::is_control) {
                    return Err("a table key with control characters".into());
                }
                out.insert(k.as_str().to_string(), header_value(v, depth + 1)?);
            }
            Value::Object(out)
        }
    })
}

/// `value` as JSON in printable ASCII: anything else in a string is a `\uXXXX` escape, so
/// `GRANDA_EVENT_HEADERS` travels as env and as an HTTP header whatever language the headers
/// are in, and decodes to the same JSON.
pub fn ascii_json(value: &Value) -> String {
    struct AsciiOnly;
    impl serde_json::ser::Formatter for AsciiOnly {
        fn write_string_fragment<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            fragment: &str,
        ) -> std::io::Result<()> {
            for c in fragment.chars() {
                if c.is_ascii() {
                    writer.write_all(&[c as u8])?;
                } else {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        write!(writer, "\\u{u:04x}")?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiOnly);
    serde::Serialize::serialize(value, &mut ser).expect("JSON values serialize");
    String::from_utf8(out).expect("ASCII")
}

/// Republishes a refused message to the inbound dead-letter queue, with confirms, keeping its
/// properties and adding the reason and the routing key it came with.
async fn dead_letter(
    app: &Ingress,
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
async fn mirror(app: &Ingress, topic: &str, delivery: &Delivery, event_id: Uuid) {
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
