//! `/ui/namespaces`: what each namespace stores. Its invocation records, the bytes of their
//! inputs, outputs and logs (what `max_stored_bytes` caps), its quotas, and the database's size
//! on disk, measured when the page is read ([`crate::producer::records_size::sample`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Html;
use maud::html;

use super::session::Session;
use super::{UiError, fmt_bytes, layout};
use crate::producer::AppState;
use crate::producer::auth::Action;

/// `GET /ui/namespaces`.
pub(crate) async fn list(
    session: Session,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    session.require(Action::Operate)?;
    let sizes = crate::producer::records_size::sample(&app.pool).await?;
    let quotas: BTreeMap<String, crate::namespace::Stored> = crate::namespace::list(&app.pool)
        .await?
        .into_iter()
        .map(|ns| (ns.name.clone(), ns))
        .collect();
    // Every namespace with records or quotas, by name.
    let mut rows: BTreeMap<&str, (i64, i64)> =
        quotas.keys().map(|n| (n.as_str(), (0, 0))).collect();
    for ns in &sizes.namespaces {
        rows.insert(&ns.namespace, (ns.records, ns.stored_bytes));
    }
    let total: i64 = sizes.namespaces.iter().map(|n| n.stored_bytes).sum();
    let none = || "no limit".to_string();
    Ok(layout(
        "Namespaces",
        Some(&session),
        html! {
            h1 { "Namespaces" }
            p #database-size {
                "The database takes " strong { (fmt_bytes(sizes.database_bytes)) } " on disk; "
                "records' inputs, outputs and logs hold " (fmt_bytes(total)) "."
            }
            div.scroll {
                table #namespaces {
                    thead { tr {
                        th { "Namespace" } th { "Records" } th { "Stored bytes" }
                        th { "max_stored_bytes" } th { "max_concurrency" } th { "invocations_per_minute" }
                    } }
                    tbody {
                        @for (name, (records, stored)) in &rows {
                            @let q = quotas.get(*name);
                            tr data-namespace=(name) {
                                td { (name) }
                                td { (records) }
                                td.stored { (fmt_bytes(*stored)) }
                                td { (q.and_then(|q| q.max_stored_bytes).map_or_else(none, fmt_bytes)) }
                                td { (q.and_then(|q| q.max_concurrency).map_or_else(none, |m| m.to_string())) }
                                td { (q.and_then(|q| q.invocations_per_minute).map_or_else(none, |m| m.to_string())) }
                            }
                        }
                    }
                }
            }
            p.muted { "A success of a function with store_output: on_failure keeps no input, output or logs, and counts nothing here." }
        },
    ))
}
