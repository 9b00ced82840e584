//! `granda usage [--from] [--to] [--function]`: what each namespace and function used
//! (`GET /v1/usage`), in the caller's namespace or, for a global key, every namespace; then per
//! namespace, on stderr, the calls its quotas refused and the record bytes it holds.

use clap::Args;

use super::{CliError, Client, cell};

#[derive(Args, Debug, Clone)]
pub(crate) struct UsageArgs {
    /// Start of the window (RFC 3339); default 30 days before `--to`.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// End of the window (RFC 3339); default now.
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Only this function.
    #[arg(long)]
    pub(crate) function: Option<String>,
}

pub(crate) async fn run(client: &Client, args: UsageArgs) -> Result<(), CliError> {
    let mut query = vec![];
    for (k, v) in [
        ("from", &args.from),
        ("to", &args.to),
        ("function", &args.function),
    ] {
        if let Some(v) = v {
            query.push(format!("{k}={}", urlencoding(v)));
        }
    }
    let path = if query.is_empty() {
        "/v1/usage".to_string()
    } else {
        format!("/v1/usage?{}", query.join("&"))
    };
    let usage = client.get(&path).await?;
    super::print_list(
        client,
        &usage,
        "usage",
        &[
            "NAMESPACE",
            "FUNCTION",
            "INVOCATIONS",
            "DURATION_MS",
            "GB_SECONDS",
            "COLD",
        ],
        |u| {
            vec![
                cell(&u["namespace"]),
                cell(&u["function"]),
                cell(&u["invocations"]),
                cell(&u["duration_ms"]),
                format!("{:.3}", u["gb_seconds"].as_f64().unwrap_or_default()),
                cell(&u["cold_starts"]),
            ]
        },
    );
    // Per namespace, after the table: calls its quotas refused and the record bytes it holds.
    if !client.json {
        for ns in usage["namespaces"].as_array().into_iter().flatten() {
            let throttled: i64 = ns["throttled"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, n)| n.as_i64())
                .sum();
            eprintln!(
                "{}: {throttled} throttled (429), {} bytes of records held",
                cell(&ns["namespace"]),
                cell(&ns["stored_bytes"])
            );
        }
    }
    Ok(())
}

/// Percent-encodes what a query value can't hold as is (`+` and `:` of a time, for one).
fn urlencoding(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}
