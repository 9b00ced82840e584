//! `granda invoke NAME`: runs a function and prints its output to stdout, and nothing else, so it
//! pipes. `--async` queues it and prints the invocation id. Whether the run succeeded is what
//! its `X-Granda-Status` says: a function answering its own status (`response: "cgi"`, hot
//! functions) succeeded with any of them.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{CliError, Client, parse_header, read_data, segment};

#[derive(Args, Debug, Clone)]
pub(crate) struct InvokeArgs {
    /// The function.
    pub(crate) name: String,
    /// Queue it and print the invocation id instead of waiting.
    #[arg(long = "async")]
    pub(crate) r#async: bool,
    /// The input: text, `@file`, or `-` for stdin (default: empty).
    #[arg(long, short = 'd')]
    pub(crate) data: Option<String>,
    /// A request header, NAME:VALUE (repeatable), e.g. `Idempotency-Key:abc`.
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
}

pub(crate) async fn run(client: &Client, args: InvokeArgs) -> Result<(), CliError> {
    let body = read_data(args.data.as_deref())?;
    let name = segment(&args.name);
    let path = if args.r#async {
        format!("/v1/functions/{name}/invocations")
    } else {
        format!("/v1/functions/{name}/invoke")
    };
    let mut request = client.request(Method::POST, &path).body(body);
    for (n, v) in &args.headers {
        request = request.header(n, v);
    }
    let response = client.send(request).await?;
    let status = response.status();
    if args.r#async {
        if !status.is_success() {
            return Err(super::api_error(response).await);
        }
        let accepted: Value = response
            .json()
            .await
            .map_err(|e| CliError::Server(format!("a bad answer from the server: {e}")))?;
        if client.json {
            client.print_json(&accepted);
        } else {
            println!("{}", super::cell(&accepted["id"]));
        }
        return Ok(());
    }
    // Success is the run's, not the HTTP status's: a function that answers with its own status
    // (`response: "cgi"`, hot functions) succeeded with any of them.
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let verdict = header(crate::producer::invoke::HEADER_STATUS);
    let id = header(crate::producer::invoke::HEADER_ID);
    match (verdict.as_deref(), id) {
        (Some("succeeded"), _) => {
            let output = response
                .bytes()
                .await
                .map_err(|e| CliError::Server(format!("reading the output: {e}")))?;
            return write_out(&output);
        }
        (Some("queued" | "running"), Some(id)) => return follow(client, &id).await,
        (Some(_), Some(id)) => {
            let record = client
                .get(&format!("/v1/invocations/{}", segment(&id)))
                .await?;
            let status = record["status"].as_str().unwrap_or("failed");
            return Err(super::invocations::failure(&id, status, &record));
        }
        _ => {}
    }
    match status {
        StatusCode::OK => {
            let output = response
                .bytes()
                .await
                .map_err(|e| CliError::Server(format!("reading the output: {e}")))?;
            write_out(&output)
        }
        // Past the server's wait cap: the run goes on; follow its record.
        StatusCode::ACCEPTED => {
            let accepted: Value = response.json().await.unwrap_or_default();
            let id = super::cell(&accepted["id"]);
            follow(client, &id).await
        }
        // The run failed or timed out: show its record's verdict and stderr tail.
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match body["error"]["invocation_id"].as_str() {
                Some(id) => {
                    let record = client
                        .get(&format!("/v1/invocations/{}", segment(id)))
                        .await?;
                    let status = record["status"].as_str().unwrap_or("failed");
                    Err(super::invocations::failure(id, status, &record))
                }
                None => Err(super::error_from(status, &body, &text)),
            }
        }
        _ => Err(super::api_error(response).await),
    }
}

fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|e| CliError::Other(format!("writing the output: {e}")))
}

/// Polls an invocation until it is final, then prints its output or fails like a sync call.
async fn follow(client: &Client, id: &str) -> Result<(), CliError> {
    loop {
        let record = client
            .get(&format!("/v1/invocations/{}", segment(id)))
            .await?;
        match record["status"].as_str().unwrap_or("") {
            "queued" | "running" => tokio::time::sleep(Duration::from_millis(250)).await,
            "succeeded" => return write_out(&super::invocations::output(&record)),
            status => return Err(super::invocations::failure(id, status, &record)),
        }
    }
}
