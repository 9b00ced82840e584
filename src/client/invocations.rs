//! `granda inv ls|get|logs|retry`: invocation records.

use base64::Engine as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;

use super::{CliError, Client, cell, fields, segment, table};

#[derive(Subcommand, Debug, Clone)]
pub enum InvCommand {
    /// A function's invocations, newest first.
    Ls {
        /// The function.
        function: String,
        /// Only these: queued, running, succeeded, failed, timed_out, dead.
        #[arg(long)]
        status: Option<String>,
        /// How many (1–500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Those older than this invocation id (the `next` of a previous page).
        #[arg(long)]
        before: Option<String>,
    },
    /// One invocation's record.
    Get { id: String },
    /// One invocation's logs (its stderr), as they are.
    Logs { id: String },
    /// Run a failed, timed out or dead invocation again.
    Retry { id: String },
}

pub async fn run(client: &Client, command: InvCommand) -> Result<(), CliError> {
    match command {
        InvCommand::Ls {
            function,
            status,
            limit,
            before,
        } => {
            let mut path = format!(
                "/v1/functions/{}/invocations?limit={limit}",
                segment(&function)
            );
            if let Some(s) = status {
                path.push_str(&format!("&status={}", segment(&s)));
            }
            if let Some(b) = before {
                path.push_str(&format!("&before={}", segment(&b)));
            }
            let page = client.get(&path).await?;
            if client.json {
                client.print_json(&page);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = page["invocations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    vec![
                        cell(&i["id"]),
                        cell(&i["status"]),
                        cell(&i["trigger"]),
                        cell(&i["attempt"]),
                        cell(&i["exit_code"]),
                        cell(&i["duration_ms"]),
                        cell(&i["queued_at"]),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
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
pub fn output(record: &Value) -> Vec<u8> {
    if let Some(text) = record["output"].as_str() {
        return text.as_bytes().to_vec();
    }
    record["output_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default()
}

/// A final, unsuccessful invocation as an error.
pub fn failure(id: &str, status: &str, record: &Value) -> CliError {
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
