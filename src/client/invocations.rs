//! `granda inv ls|get|logs|retry|cancel`: invocation records.

use base64::Engine as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{CliError, Client, cell, fields, segment, table, time_cell};

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum InvCommand {
    /// Invocations, newest first: of every function, or of FUNCTION.
    Ls {
        /// Only this function's.
        function: Option<String>,
        /// Only these.
        #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "timed_out", "dead", "cancelled"])]
        status: Option<String>,
        /// Only those started this way.
        #[arg(long, value_parser = ["sync", "async", "webhook", "event", "schedule"])]
        trigger: Option<String>,
        /// Only those queued at or after this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// How many (1–500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Those older than this invocation id (the `next` of a previous page).
        #[arg(long, conflicts_with = "follow")]
        before: Option<String>,
        /// Keep printing new invocations as they are queued (one line each, oldest first),
        /// until Ctrl-C.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print only the ids, one a line (for scripts: `id=$(granda inv ls f --limit 1 -q)`).
        #[arg(long, short = 'q', conflicts_with = "follow")]
        quiet: bool,
    },
    /// One invocation's record.
    Get { id: String },
    /// One invocation's logs (its stderr), as they are.
    Logs { id: String },
    /// Run a failed, timed out or dead invocation again.
    Retry { id: String },
    /// Stop a queued or running invocation: a queued one never runs, a running one's container
    /// is killed; it is recorded `cancelled` and never retried.
    Cancel { id: String },
}

/// The filters of `GET /v1/invocations` as a query string (without `limit`, `before`, `after`).
pub(crate) fn filters(
    function: Option<&str>,
    status: Option<&str>,
    trigger: Option<&str>,
    since: Option<&str>,
) -> String {
    let mut query = String::new();
    for (k, v) in [
        ("function", function),
        ("status", status),
        ("trigger", trigger),
        ("since", since),
    ] {
        if let Some(v) = v {
            query.push_str(&format!("&{k}={}", segment(v)));
        }
    }
    query
}

/// How often `--follow` asks the server.
pub(crate) const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Every invocation matching `filters` newer than `after` (all of them when `None`, else at most
/// `limit`), oldest first.
pub(crate) async fn newer(
    client: &Client,
    filters: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Value>, CliError> {
    let mut found = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/v1/invocations?limit={}{filters}", limit.clamp(1, 500));
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let page = client.get(&path).await?;
        found.extend(page["invocations"].as_array().cloned().unwrap_or_default());
        // Without `after`, one page of the newest; with it, every one newer.
        match page["next"].as_str() {
            Some(next) if after.is_some() => before = Some(next.to_string()),
            _ => break,
        }
    }
    found.reverse();
    Ok(found)
}

/// One invocation as a `--follow` line, columns as wide as the header's.
fn follow_line(i: &Value) -> String {
    format!(
        "{:<36}  {:<20}  {:<9}  {:<8}  {}",
        cell(&i["id"]),
        cell(&i["function"]),
        cell(&i["status"]),
        cell(&i["trigger"]),
        time_cell(&i["queued_at"])
    )
}

/// Fails with "not found" (exit 3) when `function` doesn't exist.
async fn must_exist(client: &Client, function: &str) -> Result<(), CliError> {
    client
        .get(&format!("/v1/functions/{}", segment(function)))
        .await
        .map(|_| ())
}

pub(crate) async fn run(client: &Client, command: InvCommand) -> Result<(), CliError> {
    match command {
        InvCommand::Ls {
            function,
            status,
            trigger,
            since,
            limit,
            before,
            follow,
            quiet,
        } => {
            let query = filters(
                function.as_deref(),
                status.as_deref(),
                trigger.as_deref(),
                since.as_deref(),
            );
            if follow {
                if let Some(f) = &function {
                    must_exist(client, f).await?;
                }
                let mut last: Option<String> = None;
                if !client.json {
                    println!(
                        "{:<36}  {:<20}  {:<9}  {:<8}  QUEUED_AT",
                        "ID", "FUNCTION", "STATUS", "TRIGGER"
                    );
                }
                loop {
                    for i in newer(client, &query, last.as_deref(), limit).await? {
                        if client.json {
                            println!("{i}");
                        } else {
                            println!("{}", follow_line(&i));
                        }
                        last = i["id"].as_str().map(str::to_string);
                    }
                    tokio::time::sleep(FOLLOW_EVERY).await;
                }
            }
            let mut path = format!("/v1/invocations?limit={limit}{query}");
            if let Some(b) = before {
                path.push_str(&format!("&before={}", segment(&b)));
            }
            let page = client.get(&path).await?;
            let list = page["invocations"].as_array().cloned().unwrap_or_default();
            if list.is_empty()
                && let Some(f) = &function
            {
                must_exist(client, f).await?;
            }
            if client.json {
                client.print_json(&page);
                return Ok(());
            }
            if quiet {
                for i in &list {
                    println!("{}", cell(&i["id"]));
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    vec![
                        cell(&i["id"]),
                        cell(&i["function"]),
                        cell(&i["status"]),
                        cell(&i["trigger"]),
                        cell(&i["attempt"]),
                        cell(&i["exit_code"]),
                        cell(&i["duration_ms"]),
                        time_cell(&i["queued_at"]),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "FUNCTION",
                    "STATUS",
                    "TRIGGER",
                    "ATTEMPT",
                    "EXIT",
                    "DURATION_MS",
                    "QUEUED_AT",
                ],
                &rows,
            );
            if let Some(next) = page["next"].as_str() {
                eprintln!("more: --before {next}");
            }
            Ok(())
        }
        InvCommand::Get { id } => {
            let record = client
                .get(&format!("/v1/invocations/{}", segment(&id)))
                .await?;
            if client.json {
                client.print_json(&record);
            } else {
                fields(
                    &record,
                    &[
                        "id",
                        "function",
                        "status",
                        "trigger",
                        "key_name",
                        "key_id",
                        "attempt",
                        "exit_code",
                        "error",
                        "queued_at",
                        "started_at",
                        "finished_at",
                        "duration_ms",
                        "queue_ms",
                        "cold",
                        "worker",
                        "cancelled_by",
                        "http_method",
                        "http_path",
                        "http_status",
                        "kept_until",
                        "output",
                    ],
                );
            }
            Ok(())
        }
        InvCommand::Logs { id } => {
            let record = client
                .get(&format!("/v1/invocations/{}", segment(&id)))
                .await?;
            if client.json {
                client.print_json(&serde_json::json!({
                    "id": record["id"],
                    "logs": record["logs"],
                    "logs_truncated": record["logs_truncated"],
                }));
            } else {
                print!("{}", record["logs"].as_str().unwrap_or(""));
                if record["logs_truncated"] == true {
                    eprintln!("(the logs were truncated)");
                }
            }
            Ok(())
        }
        InvCommand::Cancel { id } => {
            let request = client.request(
                Method::POST,
                &format!("/v1/invocations/{}/cancel", segment(&id)),
            );
            let answer = client.call(request).await?;
            if client.json {
                client.print_json(&answer);
            } else {
                println!(
                    "{} cancelled by {}",
                    cell(&answer["id"]),
                    cell(&answer["cancelled_by"])
                );
            }
            Ok(())
        }
        InvCommand::Retry { id } => {
            let request = client.request(
                Method::POST,
                &format!("/v1/invocations/{}/retry", segment(&id)),
            );
            let answer = client.call(request).await?;
            if client.json {
                client.print_json(&answer);
            } else {
                println!("{}", cell(&answer["id"]));
            }
            Ok(())
        }
    }
}

/// An invocation's output bytes (`output`, or `output_base64` when not UTF-8).
pub(crate) fn output(record: &Value) -> Vec<u8> {
    if let Some(text) = record["output"].as_str() {
        return text.as_bytes().to_vec();
    }
    record["output_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default()
}

/// A final, unsuccessful invocation as an error.
pub(crate) fn failure(id: &str, status: &str, record: &Value) -> CliError {
    let mut message = format!("invocation {id} {}", status.replace('_', " "));
    if let Some(code) = record["exit_code"].as_i64() {
        message.push_str(&format!(" (exit {code})"));
    }
    if let Some(error) = record["error"].as_str() {
        message.push_str(&format!(": {error}"));
    }
    let logs = record["logs"].as_str().unwrap_or("");
    let lines: Vec<&str> = logs.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    CliError::RunFailed {
        message,
        logs: tail,
        timed_out: status == "timed_out",
    }
}

/// How many of a failed run's last stderr lines a client command shows.
const LOG_TAIL_LINES: usize = 10;
