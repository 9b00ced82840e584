//! `granda events publish TOPIC`: publishes an event to the functions subscribed to its topic.

use clap::Subcommand;
use reqwest::Method;

use super::{CliError, Client, cell, parse_header, read_data, segment, table};

#[derive(Subcommand, Debug, Clone)]
pub enum EventsCommand {
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
}

pub async fn run(client: &Client, command: EventsCommand) -> Result<(), CliError> {
    let EventsCommand::Publish {
        topic,
        data,
        headers,
    } = command;
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
    let rows: Vec<Vec<String>> = answer["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| vec![cell(&i["function"]), cell(&i["id"])])
        .collect();
    if !rows.is_empty() {
        table(&["FUNCTION", "INVOCATION"], &rows);
    }
    Ok(())
}
