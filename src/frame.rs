//! The broker's frame, as this process learnt it: how many bytes one AMQP header frame may take
//! (`frame_max`, negotiated by each connection), and what of it a function's snapshot may use.
//!
//! It sits in the core, below both [`crate::broker`] (which notes each connection's
//! negotiated size) and [`crate::function`] (whose validation refuses a function whose every
//! message would not fit), so neither imports the other for it. It is one process-wide value on
//! purpose: a function registered through any connection must fit every connection's frame,
//! so the smallest ever negotiated is what counts.

use std::sync::atomic::{AtomicU32, Ordering};

/// RabbitMQ's default `frame_max` (3.10): what a process assumes until it has connected.
pub(crate) const DEFAULT_FRAME_MAX: u32 = 131_072;
/// Bytes a header frame keeps free below `frame_max` at publish.
pub(crate) const FRAME_MARGIN: usize = 1024;
/// Bytes of a header frame kept, at registration, for all but the function's snapshot: frame
/// and property overhead, the other headers, and per-invocation env (a few values of at most
/// [`crate::function::invocation_env::MAX_INVOCATION_VALUE`] bytes, at most doubled by JSON
/// escaping).
pub(crate) const HEADER_RESERVE: usize = 16 * 1024;

/// The smallest `frame_max` a connection of this process negotiated (the default before any).
static FRAME_MAX: AtomicU32 = AtomicU32::new(DEFAULT_FRAME_MAX);

/// The broker's negotiated `frame_max`, as this process last learnt it (smallest seen).
pub(crate) fn frame_max() -> u32 {
    FRAME_MAX.load(Ordering::Relaxed)
}

/// Notes a connection's negotiated `frame_max` (0: none negotiated, nothing to note).
pub(crate) fn note(negotiated: u32) {
    if negotiated > 0 {
        FRAME_MAX.fetch_min(negotiated, Ordering::Relaxed);
    }
}

/// Most bytes a function snapshot (JSON, with its env and secrets) may take so that any message
/// of the function fits the broker's frame.
pub(crate) fn snapshot_budget() -> usize {
    (frame_max() as usize).saturating_sub(HEADER_RESERVE)
}
