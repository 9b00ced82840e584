//! `GET /ui/schedules`: every schedule, its pattern and zone, whether it is paused, when it last
//! fired and when it fires next. Read-only: schedules are changed through the API or the CLI.

use axum::extract::State;
use axum::response::Html;
use maud::html;

use super::session::Session;
use super::{BASE, UiError, fmt_time, layout};
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::schedule::store;

/// `GET /ui/schedules`.
pub async fn list(session: Session, State(app): State<AppState>) -> Result<Html<String>, UiError> {
    // Schedules are managed with admin keys through the API: the same policy here.
    session.require(Action::Manage)?;
    let schedules = store::list(&app.pool, None).await?;
    let views: Vec<_> = schedules.iter().map(|s| s.view()).collect();
    Ok(layout(
        "Schedules",
        Some(&session),
        html! {
            h1 { "Schedules" }
            @if views.is_empty() {
                p.notice { "No schedules yet. Create one with " code { "granda schedules create FUNCTION 'CRON'" } " or " code { "POST /v1/schedules" } "." }
            } @else {
                div.scroll {
                    table #schedules {
                        thead { tr {
                            th { "Function" } th { "Cron" } th { "Time zone" } th { "State" }
                            th.hide-narrow { "Catch-up" } th { "Last fired" } th { "Next run" }
                        } }
                        tbody {
                            @for s in &views {
                                tr {
                                    td { a href={ (BASE) "/functions/" (s.function) } { (s.function) } }
                                    td { code { (s.cron) } }
                                    td { (s.timezone) }
                                    td { @if s.enabled { "enabled" } @else { "paused" } }
                                    td.hide-narrow { (s.catch_up.as_str()) }
                                    td { (fmt_time(s.last_fired_at)) }
                                    td { (fmt_time(s.next_runs.first().copied())) }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}
