//! `granda events publish|get|subscribe|unsubscribe|ls`: publish an event to the functions
//! subscribed to its topic, read one back, and manage what a function subscribes to.

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::{CliError, Client, cell, parse_header, read_data, segment, table, time_cell};

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum EventsCommand {
    /// Publish an event; prints the invocations it fanned out to.
    Publish {
        /// Dot-separated words, e.g. orders.created.
        topic: String,
        /// The payload: text, `@file`, or `-` for stdin.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// A request header, NAME:VALUE (repeatable), e.g. `Idempotency-Key:abc`.
        #[arg(long = "header", short = 'H', value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Show an event: its topic, payload and the invocations it fanned out to.
    Get {
        /// The event id `publish` printed.
        id: String,
    },
    /// Subscribe a function to a topic pattern (`*` one word, `#` zero or more words).
    Subscribe {
        function: String,
        /// e.g. `orders.*` or `orders.#`.
        pattern: String,
    },
    /// Remove a function's subscription, by its id or its pattern.
    Unsubscribe {
        function: String,
        /// The subscription's id, or its pattern.
        subscription: String,
    },
    /// List a function's subscriptions.
    Ls { function: String },
}

pub(crate) async fn run(client: &Client, command: EventsCommand) -> Result<(), CliError> {
    match command {
        EventsCommand::Publish {
            topic,
            data,
            headers,
        } => {
            let mut request = client
                .request(Method::POST, &format!("/v1/events/{}", segment(&topic)))
                .body(read_data(data.as_deref())?);
            for (n, v) in &headers {
                request = request.header(n, v);
            }
            let answer = client.call(request).await?;
            if client.json {
                client.print_json(&answer);
                return Ok(());
            }
            println!("event {}", cell(&answer["id"]));
            fanned_out(&answer);
        }
        EventsCommand::Get { id } => {
            let event = client.get(&format!("/v1/events/{}", segment(&id))).await?;
            if client.json {
                client.print_json(&event);
                return Ok(());
            }
            super::fields(
                &event,
                &["id", "topic", "published_at", "size", "content_type"],
            );
            match event["payload"].as_str() {
                Some(text) => println!("payload:      {text}"),
                None => println!("payload:      ({} bytes, not UTF-8)", cell(&event["size"])),
            }
            fanned_out(&event);
        }
        EventsCommand::Subscribe { function, pattern } => {
            let request = client
                .request(
                    Method::POST,
                    &format!("/v1/functions/{}/subscriptions", segment(&function)),
                )
                .json(&json!({ "pattern": pattern }));
            let made = client.call(request).await?;
            if client.json {
                client.print_json(&made);
            } else {
                println!("{}", cell(&made["id"]));
            }
        }
        EventsCommand::Unsubscribe {
            function,
            subscription,
        } => {
            let base = format!("/v1/functions/{}/subscriptions", segment(&function));
            let id = if uuid::Uuid::parse_str(&subscription).is_ok() {
                subscription.clone()
            } else {
                let list = client.get(&base).await?;
                list["subscriptions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["pattern"] == subscription.as_str())
                    .map(|s| cell(&s["id"]))
                    .ok_or_else(|| {
                        CliError::NotFound(format!(
                            "{function:?} has no subscription to {subscription:?}"
                        ))
                    })?
            };
            let request = client.request(Method::DELETE, &format!("{base}/{}", segment(&id)));
            client.call(request).await?;
            if client.json {
                client.print_json(&json!({"unsubscribed": id}));
            } else {
                println!("unsubscribed {function} from {subscription}");
            }
        }
        EventsCommand::Ls { function } => {
            let list = client
                .get(&format!(
                    "/v1/functions/{}/subscriptions",
                    segment(&function)
                ))
                .await?;
            super::print_list(
                client,
                &list,
                "subscriptions",
                &["ID", "PATTERN", "CREATED_AT"],
                |s| {
                    vec![
                        cell(&s["id"]),
                        cell(&s["pattern"]),
                        time_cell(&s["created_at"]),
                    ]
                },
            );
        }
    }
    Ok(())
}

/// The invocations an event fanned out to, as a table (nothing when none).
fn fanned_out(event: &serde_json::Value) {
    let rows: Vec<Vec<String>> = event["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| vec![cell(&i["function"]), cell(&i["id"])])
        .collect();
    if !rows.is_empty() {
        table(&["FUNCTION", "INVOCATION"], &rows);
    }
}
