//! `granda hooks create|ls|rm|rotate`: webhooks bound to functions.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value};

use super::{CliError, Client, cell, fields, segment};

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum HooksCommand {
    /// Bind a webhook to a function; prints its URL and (once) its secret.
    Create {
        /// The function it runs.
        function: String,
        /// Verification: github, stripe, standard, hmac-sha256 or none.
        #[arg(long, default_value = "github")]
        scheme: String,
        /// Your own secret (else one is generated and shown once).
        #[arg(long)]
        secret: Option<String>,
    },
    /// List the webhooks.
    Ls,
    /// Delete a webhook.
    Rm { id: String },
    /// Make a new secret; the old one verifies for the grace period.
    Rotate {
        id: String,
        /// How long the previous secret keeps verifying, in seconds.
        #[arg(long)]
        grace_seconds: Option<i64>,
    },
}

const SHOWN: [&str; 6] = [
    "id",
    "function",
    "scheme",
    "url",
    "secret",
    "previous_secret_valid_until",
];

pub(crate) async fn run(client: &Client, command: HooksCommand) -> Result<(), CliError> {
    let answer = match command {
        HooksCommand::Create {
            function,
            scheme,
            secret,
        } => {
            let mut body = Map::new();
            body.insert("function".into(), function.clone().into());
            body.insert("scheme".into(), scheme.into());
            if let Some(s) = secret {
                body.insert("secret".into(), s.into());
            }
            let request = client.request(Method::POST, "/v1/webhooks").json(&body);
            match client.call(request).await {
                Ok(answer) => answer,
                Err(e) => return Err(super::unless_missing(client, &function, e).await),
            }
        }
        HooksCommand::Ls => {
            let list = client.get("/v1/webhooks").await?;
            super::print_list(
                client,
                &list,
                "webhooks",
                &["ID", "FUNCTION", "SCHEME", "URL"],
                |h| {
                    vec![
                        cell(&h["id"]),
                        cell(&h["function"]),
                        cell(&h["scheme"]),
                        cell(&h["url"]),
                    ]
                },
            );
            return Ok(());
        }
        HooksCommand::Rm { id } => {
            let request = client.request(Method::DELETE, &format!("/v1/webhooks/{}", segment(&id)));
            client.call(request).await?;
            if !client.json {
                println!("deleted {id}");
                return Ok(());
            }
            serde_json::json!({"deleted": id})
        }
        HooksCommand::Rotate { id, grace_seconds } => {
            let mut body = Map::new();
            if let Some(g) = grace_seconds {
                body.insert("grace_seconds".into(), g.into());
            }
            let request = client
                .request(
                    Method::POST,
                    &format!("/v1/webhooks/{}/rotate", segment(&id)),
                )
                .json(&Value::Object(body));
            client.call(request).await?
        }
    };
    if client.json {
        client.print_json(&answer);
    } else {
        fields(&answer, &SHOWN);
    }
    Ok(())
}
