//! Granda: a self-hosted serverless system. Events come in over HTTP, travel over RabbitMQ,
//! and run as Docker containers; every run is recorded in Postgres.
//!
//! # Layout
//!
//! The life of an invocation, in the order it travels:
//!
//! - [`producer`]: the ingress (axum): the API, `/fn/{name}`, webhooks (`/hooks/{id}`), the
//!   dashboard (`producer::ui`); it records an invocation as `queued` and publishes it.
//! - [`function`]: what a function is (its definition, validation, how it runs: the
//!   `RunSpec` the snapshot in every message carries); [`build`]: building one from source.
//! - [`invocation`]: what an invocation is, how it is stored (its states and who writes them)
//!   and how the API shows it (`InvocationView`).
//! - [`ingress`]: what the ingress's parts share (database, publisher, settings, metrics);
//!   [`outbox`]: publishing what was recorded, and re-publishing what the broker never confirmed.
//! - [`message`]: the wire message (`Work`, signed) and the reply of a sync call; [`seal`]: the
//!   installation's signing key and the keys secrets are sealed with.
//! - [`broker`]: RabbitMQ: topology, nodes and failover, publishing with confirms, replies.
//! - [`worker`]: consuming, claiming, running a container (cold, warm, hot), settling the message.
//! - [`scheduler`]: how many runs a worker takes at once (the adaptive limit and its model).
//! - [`retry`]: failure classes and the one decision of whether and when to run again.
//! - [`callback`]: POSTing a final result to a caller's URL, signed.
//!
//! Other ways in: [`webhook`] (signed deliveries from GitHub, Stripe, Standard Webhooks),
//! [`event`] (published events and subscriptions), [`inbound`] (events published over AMQP),
//! [`schedule`] (cron schedules). Around them: [`config`] (every setting), [`db`] (Postgres and
//! migrations), [`docker`] (the engine), [`keys`] (API keys), [`metrics`], [`telemetry`],
//! [`tls`], [`error`] (the API's error type), and the command line: [`cli`] and its API client
//! [`client`].

pub mod broker;
pub mod build;
pub mod callback;
pub mod cgi;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod docker;
pub mod engines;
pub mod error;
pub mod event;
pub mod function;
pub mod inbound;
pub mod ingress;
pub mod invocation;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod namespace;
pub mod outbox;
pub mod producer;
pub mod records_size;
pub mod retry;
pub mod schedule;
pub mod scheduler;
pub mod seal;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod webhook;
pub mod worker;
