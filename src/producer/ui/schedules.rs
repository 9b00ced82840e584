//! `/ui/schedules`: every schedule, its pattern and zone, whether it is paused, when it last
//! fired and when it fires next; Pause, Resume and Delete buttons for admin sessions, through the
//! API's own functions (`schedules::{change, remove}`). Schedules are made with the API or the CLI.

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, layout};
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::schedules::{ScheduleUpdate, change, remove};
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
                            th { "Function" } th { "Cron" } th.hide-narrow { "Time zone" } th { "State" }
                            th.hide-narrow { "Catch-up" } th.hide-narrow { "Last fired" } th { "Next run" } th {}
                        } }
                        tbody {
                            @for s in &views {
                                tr {
                                    td { a href={ (BASE) "/functions/" (s.function) } { (s.function) } }
                                    td { code { (s.cron) } }
                                    td.hide-narrow { (s.timezone) }
                                    td.state { @if s.enabled { "enabled" } @else { "paused" } }
                                    td.hide-narrow { (s.catch_up.as_str()) }
                                    td.hide-narrow { (fmt_time(s.last_fired_at)) }
                                    td { (fmt_time(s.next_runs.first().copied())) }
                                    td.actions {
                                        @let (action, label) = if s.enabled { ("pause", "Pause") } else { ("resume", "Resume") };
                                        form class={ "inline " (action) } method="post" action={ (BASE) "/schedules/" (s.id) "/" (action) } {
                                            (session.csrf_field())
                                            button.small type="submit" { (label) }
                                        }
                                        form.inline.delete method="post" action={ (BASE) "/schedules/" (s.id) "/delete" } {
                                            (session.csrf_field())
                                            button.small.danger type="submit" { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

async fn set_enabled(app: &AppState, id: &str, enabled: bool) -> Result<Response, UiError> {
    let body = ScheduleUpdate {
        enabled: Some(enabled),
        ..ScheduleUpdate::default()
    };
    change(app, id, body).await?;
    Ok(Redirect::to(&format!("{BASE}/schedules")).into_response())
}

/// `POST /ui/schedules/{id}/pause`.
pub async fn pause(
    Admin(_): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    set_enabled(&app, &id, false).await
}

/// `POST /ui/schedules/{id}/resume`.
pub async fn resume(
    Admin(_): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    set_enabled(&app, &id, true).await
}

/// `POST /ui/schedules/{id}/delete`.
pub async fn delete(
    Admin(_): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    remove(&app, &id).await?;
    Ok(Redirect::to(&format!("{BASE}/schedules")).into_response())
}
