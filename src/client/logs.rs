//! `granda logs FUNCTION [--follow]`: each finished invocation of a function, oldest first, with
//! its id, status, output and logs (stderr). `--follow` keeps printing them as they finish,
//! polling `GET /v1/invocations` every second, until Ctrl-C.

use std::collections::HashSet;

use clap::Args;
use serde_json::Value;

use super::invocations::{FOLLOW_EVERY, filters, newer, output};
use super::{CliError, Client, cell, segment, time_cell};

#[derive(Args, Debug, Clone)]
pub(crate) struct LogsArgs {
    /// The function.
    pub(crate) function: String,
    /// Keep printing invocations as they finish, until Ctrl-C.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// How many of the latest invocations to look at first (1–500).
    #[arg(long, default_value_t = 10)]
    pub(crate) limit: u32,
}

/// Whether an invocation's status is final.
fn finished(i: &Value) -> bool {
    !matches!(i["status"].as_str(), Some("queued" | "running") | None)
}

/// Prints one finished invocation: a header line, then its output (`out| `) and its stderr
/// (`err| `) line by line.
fn print(client: &Client, i: &Value) {
    if client.json {
        println!("{i}");
        return;
    }
    let mut header = format!(
        "{} {} {}",
        time_cell(&i["finished_at"]),
        cell(&i["id"]),
        cell(&i["status"])
    );
    if let Some(code) = i["exit_code"].as_i64() {
        header.push_str(&format!(" exit={code}"));
    }
    if let Some(ms) = i["duration_ms"].as_i64() {
        header.push_str(&format!(" duration={ms}ms"));
    }
    if let Some(error) = i["error"].as_str() {
        header.push_str(&format!(" error={error:?}"));
    }
    println!("{header}");
    let out = output(i);
    match std::str::from_utf8(&out) {
        Ok(text) => {
            for line in text.lines() {
                println!("  out| {line}");
            }
        }
        Err(_) => println!("  out| ({} bytes, not UTF-8)", out.len()),
    }
    if i["output_truncated"] == true {
        println!("  out| (truncated)");
    }
    for line in i["logs"].as_str().unwrap_or("").lines() {
        println!("  err| {line}");
    }
    if i["logs_truncated"] == true {
        println!("  err| (truncated)");
    }
}

pub(crate) async fn run(client: &Client, args: LogsArgs) -> Result<(), CliError> {
    // Not found is exit 3, as everywhere.
    client
        .get(&format!("/v1/functions/{}", segment(&args.function)))
        .await?;
    let query = filters(Some(&args.function), None, None, None);
    let recent = newer(client, &query, None, args.limit).await?;
    // Everything at or below `floor` is printed or was never going to be (all final); above it,
    // the ones printed so far, so none is printed twice.
    let mut printed: HashSet<String> = HashSet::new();
    let mut floor: Option<String> = None;
    let mut batch = recent;
    loop {
        let mut all_final_so_far = true;
        for i in &batch {
            let id = cell(&i["id"]);
            if finished(i) {
                if printed.insert(id.clone()) {
                    print(client, i);
                }
                if all_final_so_far {
                    floor = Some(id);
                }
            } else {
                all_final_so_far = false;
            }
        }
        if !args.follow {
            return Ok(());
        }
        if let Some(f) = &floor {
            printed.retain(|id| id > f);
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        batch = match &floor {
            Some(f) => newer(client, &query, Some(f), 500).await?,
            // Nothing final yet: look at the same latest ones again, and anything newer.
            None => match batch.first().map(|i| cell(&i["id"])) {
                Some(oldest) => {
                    let mut again = vec![client.get(&format!("/v1/invocations/{oldest}")).await?];
                    again.extend(newer(client, &query, Some(&oldest), 500).await?);
                    again
                }
                None => newer(client, &query, None, args.limit).await?,
            },
        };
    }
}
