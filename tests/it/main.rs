//! Integration tests against a real RabbitMQ, Postgres and Docker engine. Each test spawns its
//! own Granda with its own database and queues, so they run in parallel.

mod auth;
mod bad_input;
mod browser;
mod builds;
mod callbacks;
mod cli;
mod cluster;
mod docs;
mod events;
mod faults;
mod functions;
mod guarantees;
mod hostile;
mod hosts;
mod hosts_ledger;
mod hot;
mod inbound;
mod invocations;
mod invoke;
mod isolation;
mod message_trust;
mod metrics;
mod openapi;
mod readme;
mod scheduler;
mod schedules;
mod support;
mod tls;
mod ui;
mod warm;
mod web;
mod webhooks;
mod worker_endpoints;
