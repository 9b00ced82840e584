//! Granda: a self-hosted serverless system. Events come in over HTTP, travel over RabbitMQ,
//! and run as Docker containers; every run is recorded in Postgres.
//!
//! # Layout
//!
//! Three rooms, one per process role, around a core both roles use.
//!
//! - [`producer`]: the whole ingress. The API, `/fn/{name}`, webhooks (`/hooks/{id}`), the
//!   dashboard (`producer::ui`); it records an invocation as `queued` and publishes it. Beside
//!   the API run its loops: `producer::outbox` (re-publishing what the broker never confirmed),
//!   `producer::cron` (cron schedules and their ticker), `producer::inbound` (events published
//!   over AMQP), `producer::pruner` (records past their retention) and `producer::records_size`
//!   (the database's size, sampled); `producer::ingress` is what those loops share.
//! - [`worker`]: the whole worker. Consuming, claiming, running a container (cold, warm, hot;
//!   `worker::cgi` for functions that answer HTTP), settling the message, taking over a dead
//!   worker's containers.
//! - `scheduler`: how many runs a worker takes at once (the adaptive limit and its model).
//!
//! The core, in the order an invocation travels:
//!
//! - [`function`]: what a function is (its definition, validation, how it runs: the
//!   `RunSpec` the snapshot in every message carries); [`build`]: building one from source.
//! - [`invocation`]: what an invocation is, how it is stored (its states and who writes them)
//!   and how the API shows it (`InvocationView`).
//! - `message`: the wire message (`Work`, signed) and the reply of a sync call; `seal`: the
//!   installation's signing key and the keys secrets are sealed with.
//! - [`broker`]: RabbitMQ: topology, nodes and failover, publishing with confirms, replies.
//! - `retry`: failure classes and the one decision of whether and when to run again;
//!   `trigger`: how an event reached Granda, which that decision reads.
//! - [`callback`]: POSTing a final result to a caller's URL, signed.
//! - [`webhook`] (signed deliveries from GitHub, Stripe, Standard Webhooks), `event`
//!   (published events and subscriptions), `namespace` (teams, their quotas), [`retention`]
//!   (how long an ended record is kept, and one pruning pass).
//!
//! The process's composition: `up` wires an ingress and a worker together (`granda up`, the
//! tests, the benchmark), and `shutdown` is how every task of a process is told to stop and
//! waited for. Around them: [`config`] (every setting), [`db`] (Postgres and
//! migrations), `frame` (what fits in one AMQP frame), [`docker`] (the engine connection),
//! `engines` (what the ingress asks of the engines: image checks and builds), [`web`] (the HTTP
//! request and answer of a function called as a web endpoint), [`keys`] (API keys), `metrics`,
//! [`telemetry`], [`tls`], `error` (the API's error type), and the command line: [`cli`] and its
//! API client `client`.
//!
//! # Visibility
//!
//! `pub(crate)` by default (`unreachable_pub` warns on a `pub` nothing outside can reach). Only
//! what the integration tests (`tests/it`), the benchmark (`src/bin/granda-bench`) and
//! `src/main.rs` use is `pub`, item by item; the `hot` crate uses none of it.
//!
//! - Modules kept `pub`, because the tests call their functions by the module's name
//!   (`granda::broker::connect`, `granda::db::connect_and_migrate`, `granda::tls::install_provider`)
//!   or use many of their items: [`broker`] (connecting, the topology, publishing, queue depths),
//!   [`config`] (`Settings`, whose fields the tests set), [`docker`], [`function`] (`RunSpec`,
//!   `Snapshot`, the store), [`invocation`] (`Trigger`, `NewInvocation`, the store),
//!   [`producer`] (`Application`, the cron parser, the inbound header mapping), [`worker`]
//!   (`Worker`, the container runner, the hot-socket calls the benchmark makes), [`db`],
//!   [`keys`], [`retention`], [`callback`], [`webhook`], [`build`], [`web`], [`tls`],
//!   [`telemetry`], [`cli`] (`main`). Inside them everything else is `pub(crate)`, except the
//!   types those items' signatures name (`BrokerError`, `Reply`, `RetryOn`, ...).
//! - Modules private, one type re-exported here because that is all the outside uses of them:
//!   [`Up`] (`up`), [`Work`] (`message`), [`Keys`] (`seal`), [`Metrics`] (`metrics`).
//! - Modules private and used by nothing outside: `client`, `engines`, `error`, `event`,
//!   `frame`, `namespace`, `retry`, `scheduler`, `trigger`.

#![warn(unreachable_pub)]

pub mod broker;
pub mod build;
pub mod callback;
pub mod cli;
mod client;
pub mod config;
pub mod db;
pub mod docker;
mod engines;
mod error;
mod event;
mod frame;
pub mod function;
pub mod invocation;
pub mod keys;
mod message;
mod metrics;
mod namespace;
pub mod producer;
pub mod retention;
mod retry;
mod scheduler;
mod seal;
mod shutdown;
pub mod telemetry;
pub mod tls;
mod trigger;
mod up;
pub mod web;
pub mod webhook;
pub mod worker;

pub use message::Work;
pub use metrics::Metrics;
pub use seal::Keys;
pub use shutdown::BOUND as SHUTDOWN_BOUND;
pub use up::Up;
