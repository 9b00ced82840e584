//! `granda keys create|ls|revoke`: API keys, over the API (an admin key is needed).

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::{CliError, Client, cell, fields, segment};

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum KeysCommand {
    /// Make a key and print it once (only its hash is stored).
    Create {
        /// What the key is for, e.g. `ci`.
        #[arg(long)]
        name: String,
        /// `admin` (everything), `invoke` (call functions, read invocations) or `read` (read
        /// records and settings).
        #[arg(long, value_parser = ["admin", "invoke", "read"], default_value = "invoke")]
        scope: String,
        /// Bind the key to this namespace: it acts only there.
        #[arg(long = "bind")]
        bind: Option<String>,
        /// Bind an `invoke` key to these functions (repeat, or comma-separated): it calls those
        /// only.
        #[arg(long = "function", value_delimiter = ',')]
        functions: Vec<String>,
    },
    /// List keys (never the keys themselves).
    #[command(alias = "list")]
    Ls,
    /// Revoke a key by its id; its dashboard sessions end with it.
    #[command(alias = "rm")]
    Revoke { id: String },
}

pub(crate) async fn run(client: &Client, command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Create {
            name,
            scope,
            bind,
            functions,
        } => {
            let mut body = json!({"name": name, "scope": scope});
            if let Some(ns) = bind {
                body["namespace"] = json!(ns);
            }
            if !functions.is_empty() {
                body["functions"] = json!(functions);
            }
            let request = client.request(Method::POST, "/v1/keys").json(&body);
            let made = client.call(request).await?;
            if client.json {
                client.print_json(&made);
            } else {
                eprintln!(
                    "made {} key {} (id {}); it is shown only now:",
                    cell(&made["scope"]),
                    cell(&made["name"]),
                    cell(&made["id"])
                );
                println!("{}", cell(&made["key"]));
            }
        }
        KeysCommand::Ls => {
            let list = client.get("/v1/keys").await?;
            super::print_list(
                client,
                &list,
                "keys",
                &["ID", "SCOPE", "NAME", "PREFIX", "STATE"],
                |k| {
                    let state = match &k["revoked_at"] {
                        serde_json::Value::Null => "live".to_string(),
                        at => format!("revoked {}", super::time_cell(at)),
                    };
                    vec![
                        cell(&k["id"]),
                        cell(&k["scope"]),
                        cell(&k["name"]),
                        format!("{}…", cell(&k["prefix"])),
                        state,
                    ]
                },
            );
        }
        KeysCommand::Revoke { id } => {
            let request = client.request(Method::DELETE, &format!("/v1/keys/{}", segment(&id)));
            client.call(request).await?;
            let answer = json!({"revoked": id});
            if client.json {
                client.print_json(&answer);
            } else {
                fields(&answer, &["revoked"]);
            }
        }
    }
    Ok(())
}
