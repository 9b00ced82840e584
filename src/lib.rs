//! Granda: a self-hosted serverless system. Events come in over HTTP, travel over RabbitMQ,
//! and run as Docker containers; every run is recorded in Postgres.

pub mod broker;
pub mod build;
pub mod callback;
pub mod cgi;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod docker;
pub mod error;
pub mod event;
pub mod function;
pub mod inbound;
pub mod invocation;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod producer;
pub mod retry;
pub mod schedule;
pub mod scheduler;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod webhook;
pub mod worker;
