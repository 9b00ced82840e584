//! `granda schedules create|ls|get|rm|pause|resume`: cron schedules that run a function.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{CliError, Client, cell, fields, segment, time_cell};

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum SchedulesCommand {
    /// Create a schedule; prints it with its next fire times.
    Create {
        /// The function to run.
        function: String,
        /// 5 fields, 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly.
        cron: String,
        /// IANA time zone the pattern is read in (default UTC), e.g. Europe/Berlin.
        #[arg(long, short = 'z')]
        timezone: Option<String>,
        /// Each run's input (text).
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// The input's content type.
        #[arg(long)]
        content_type: Option<String>,
        /// Ticks missed while every server was down: none (default) or latest.
        #[arg(long, value_parser = ["none", "latest"])]
        catch_up: Option<String>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// List schedules.
    Ls {
        /// Only this function's.
        #[arg(long, short = 'f')]
        function: Option<String>,
    },
    /// Show a schedule and its next fire times.
    Get { id: String },
    /// Delete a schedule.
    Rm { id: String },
    /// Stop a schedule firing (ticks while paused never fire).
    Pause { id: String },
    /// Start a paused schedule again, from now.
    Resume { id: String },
}

pub(crate) async fn run(client: &Client, command: SchedulesCommand) -> Result<(), CliError> {
    match command {
        SchedulesCommand::Create {
            function,
            cron,
            timezone,
            data,
            content_type,
            catch_up,
            paused,
        } => {
            let mut body = json!({"function": &function, "cron": cron, "enabled": !paused});
            for (k, v) in [
                ("timezone", timezone),
                ("payload", data),
                ("content_type", content_type),
                ("catch_up", catch_up),
            ] {
                if let Some(v) = v {
                    body[k] = v.into();
                }
            }
            let s = match client
                .call(client.request(Method::POST, "/v1/schedules").json(&body))
                .await
            {
                Ok(s) => s,
                Err(e) => return Err(super::unless_missing(client, &function, e).await),
            };
            show(client, &s);
        }
        SchedulesCommand::Ls { function } => {
            let path = match function {
                Some(f) => format!("/v1/schedules?function={}", segment(&f)),
                None => "/v1/schedules".to_string(),
            };
            let list = client.get(&path).await?;
            super::print_list(
                client,
                &list,
                "schedules",
                &["ID", "FUNCTION", "CRON", "TIMEZONE", "ENABLED", "NEXT"],
                |s| {
                    vec![
                        cell(&s["id"]),
                        cell(&s["function"]),
                        cell(&s["cron"]),
                        cell(&s["timezone"]),
                        if s["enabled"] == true {
                            "yes"
                        } else {
                            "paused"
                        }
                        .into(),
                        time_cell(&s["next_runs"][0]),
                    ]
                },
            );
        }
        SchedulesCommand::Get { id } => {
            let s = client
                .get(&format!("/v1/schedules/{}", segment(&id)))
                .await?;
            show(client, &s);
        }
        SchedulesCommand::Rm { id } => {
            client
                .call(client.request(Method::DELETE, &format!("/v1/schedules/{}", segment(&id))))
                .await?;
            if !client.json {
                println!("deleted schedule {id}");
            }
        }
        SchedulesCommand::Pause { id } => set_enabled(client, &id, false).await?,
        SchedulesCommand::Resume { id } => set_enabled(client, &id, true).await?,
    }
    Ok(())
}

async fn set_enabled(client: &Client, id: &str, enabled: bool) -> Result<(), CliError> {
    let s = client
        .call(
            client
                .request(Method::PUT, &format!("/v1/schedules/{}", segment(id)))
                .json(&json!({ "enabled": enabled })),
        )
        .await?;
    show(client, &s);
    Ok(())
}

fn show(client: &Client, s: &Value) {
    if client.json {
        client.print_json(s);
        return;
    }
    fields(
        s,
        &[
            "id",
            "function",
            "cron",
            "timezone",
            "enabled",
            "catch_up",
            "last_fired_at",
        ],
    );
    let next: Vec<String> = s["next_runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(time_cell)
        .collect();
    println!(
        "next_runs:      {}",
        if next.is_empty() {
            "-".into()
        } else {
            next.join(", ")
        }
    );
}
