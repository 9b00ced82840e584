//! The message contract on RabbitMQ: how an invocation and its reply are put into AMQP messages.
//!
//! Work message: body = the input bytes; `message_id` = invocation id; `correlation_id` and
//! `reply_to` for sync calls; headers `x-granda-function` (the function snapshot as JSON),
//! `x-granda-trigger`, `x-granda-queued-at` (ms since the epoch), and for calls of a function's
//! URL `x-granda-request` (the HTTP request, [`crate::web::WebRequest`] as JSON), and
//! `x-granda-signature`: HMAC-SHA256 under the installation's signing key ([`crate::seal`]) of
//! the id, trigger, snapshot, queued-at time, reply-to, correlation id, request and body, and
//! `x-granda-key-id` (the id of the API key that made the call, never the key) after the body
//! when there is one, so a message from before it checks as it did. The
//! snapshot's secrets travel sealed. A worker checks the signature, opens the secrets and checks
//! the snapshot's limits ([`crate::function::check_snapshot`]) before it runs or records anything.
//!
//! A work message also carries W3C Trace Context, the headers `traceparent` and `tracestate` of
//! the span that published it ([`crate::telemetry`]). They are not signed, on purpose: they are
//! hints for tracing only. A worker parses them strictly (a malformed one starts a new trace) and
//! gives the function its own run span's context, never the header's text, so a forged or
//! altered value can misplace spans in a trace and nothing else. A re-publish of the same
//! message (a retry's delay, a redelivery) keeps them: every attempt joins the caller's trace.
//!
//! Reply: body = stdout; headers `x-granda-status`, `x-granda-exit-code`, `x-granda-duration-ms`,
//! `x-granda-error` (platform error or the stderr tail of a failed run), and `x-granda-http` (the
//! function's own HTTP status and headers, [`crate::web::WebAnswer`] as JSON) when it gave them.
//!
//! Layout: [`Work`] and its signing in `work`, the [`Reply`] of a sync call in `reply`; what
//! per-invocation values may travel is `crate::function::invocation_env` (re-exported here); the
//! header names and how they are read, here.

mod reply;
mod work;

pub(crate) use crate::function::invocation_env::{header_safe, invocation_env_problem};
pub(crate) use reply::ERROR_TAIL_BYTES;
pub(crate) use reply::Reply;
pub use work::Work;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

/// The pseudo-queue of RabbitMQ's direct reply-to: a sync call's `reply_to`, and part of what a
/// work message's signature covers. Here, below [`crate::broker`] that publishes and consumes
/// on it, so the message contract imports nothing from the broker.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

const H_FUNCTION: &str = "x-granda-function";
const H_TRIGGER: &str = "x-granda-trigger";
const H_QUEUED_AT: &str = "x-granda-queued-at";
const H_STATUS: &str = "x-granda-status";
const H_EXIT_CODE: &str = "x-granda-exit-code";
const H_DURATION: &str = "x-granda-duration-ms";
const H_ERROR: &str = "x-granda-error";
const H_REQUEST: &str = "x-granda-request";
const H_HTTP: &str = "x-granda-http";
const H_SIGNATURE: &str = "x-granda-signature";
const H_KEY_ID: &str = "x-granda-key-id";

/// A message that does not follow the contract, or that this installation did not sign, or
/// whose function a registration would refuse; it is dead-lettered, never run or recorded.
#[derive(Debug, thiserror::Error)]
#[error("malformed work message: {0}")]
pub(crate) struct Malformed(pub(crate) String);

/// The trace context a work message carries (see the module's doc): its parent for the worker's
/// spans; an empty context (a new trace) when it carries none or a malformed one.
pub(crate) fn trace_context(props: &BasicProperties) -> opentelemetry::Context {
    let headers = props.headers().as_ref();
    crate::telemetry::context_from(|name| {
        headers
            .and_then(|h| bytes_header(h, name))
            .and_then(|b| std::str::from_utf8(b).ok())
    })
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn bytes_header<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

fn int_header(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}
