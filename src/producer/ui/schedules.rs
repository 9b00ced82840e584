//! `/ui/schedules`: every schedule, its pattern and zone, whether it is paused, when it last
//! fired and when it fires next; a form that makes one (function, cron, time zone, payload,
//! catch-up, paused or not), and Pause, Resume and Delete buttons, for admin sessions, through
//! the API's own functions (`schedules::{add, change, remove}`).

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, layout, with_status};
use crate::error::ApiError;
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::cron::{CatchUp, store};
use crate::producer::schedules::{NewSchedule, ScheduleUpdate, add, change, load_in, remove};

/// The form that makes a schedule.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ScheduleForm {
    #[serde(default)]
    function: String,
    #[serde(default)]
    cron: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    catch_up: String,
    /// Present when "start paused" is ticked.
    #[serde(default)]
    paused: Option<String>,
}

/// `GET /ui/schedules`.
pub(crate) async fn list(
    session: Session,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    // Schedules are managed with admin keys through the API: the same policy here.
    session.require(Action::Manage)?;
    page(&app, &session, None, &ScheduleForm::default()).await
}

async fn page(
    app: &AppState,
    session: &Session,
    error: Option<&str>,
    form: &ScheduleForm,
) -> Result<Html<String>, UiError> {
    let schedules = store::list(&app.pool, None).await?;
    let views: Vec<_> = schedules
        .iter()
        .filter(|s| session.holds(&s.function))
        .map(|s| s.view())
        .collect();
    let functions =
        crate::function::store::list(&app.pool, Some(session.namespace().as_str())).await?;
    let timezone = if form.timezone.is_empty() {
        "UTC"
    } else {
        form.timezone.as_str()
    };
    Ok(layout(
        "Schedules",
        Some(session),
        html! {
            h1 { "Schedules" }
            div.card {
                h2 { "New schedule" }
                form.stack method="post" action={ (BASE) "/schedules" } {
                    (session.csrf_field())
                    @if let Some(e) = error { p.error #schedule-error { (e) } }
                    label for="schedule-function" { "Function" }
                    select #schedule-function name="function" required {
                        @for f in &functions { option value=(f.name) selected[form.function == f.name] { (f.name) } }
                    }
                    label for="schedule-cron" { "Cron: 5 fields (m h dom mon dow), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly" }
                    input #schedule-cron name="cron" required value=(form.cron) placeholder="*/5 * * * *";
                    label for="schedule-timezone" { "Time zone (IANA, e.g. Europe/Berlin)" }
                    input #schedule-timezone name="timezone" value=(timezone);
                    label for="schedule-payload" { "Payload each run gets (optional)" }
                    textarea #schedule-payload name="payload" rows="3" { (form.payload) }
                    label for="schedule-catch-up" { "Ticks missed while every server was down" }
                    select #schedule-catch-up name="catch_up" {
                        option value="none" selected[form.catch_up != "latest"] { "skip them" }
                        option value="latest" selected[form.catch_up == "latest"] { "fire the latest once" }
                    }
                    div.check {
                        input.check #schedule-paused type="checkbox" name="paused" value="1" checked[form.paused.is_some()];
                        label for="schedule-paused" { " start paused" }
                    }
                    button #create-schedule type="submit" { "Make schedule" }
                }
            }
            @if views.is_empty() {
                p.notice { "No schedules yet. Make one above, with " code { "granda schedules create FUNCTION 'CRON'" } " or with " code { "POST /v1/schedules" } "." }
            } @else {
                div.scroll {
                    table #schedules {
                        caption.muted { "Schedules: " (views.len()) }
                        thead { tr {
                            th { "Schedule" } th { "Function" } th { "Cron" } th.hide-narrow { "Time zone" } th { "State" }
                            th.hide-narrow { "Catch-up" } th.hide-narrow { "Last fired" } th { "Next run" } th {}
                        } }
                        tbody {
                            @for s in &views {
                                tr id={ "schedule-" (s.id) } {
                                    // A schedule is known by its id (`granda schedules`, the API).
                                    td.name { code title=(s.id) { (super::invocations::short_id(s.id)) } }
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

/// `POST /ui/schedules`: makes the schedule; a refused one is shown next to the form with why.
pub(crate) async fn create(
    Admin(session): Admin,
    State(app): State<AppState>,
    Form(form): Form<ScheduleForm>,
) -> Result<Response, UiError> {
    let catch_up = match form.catch_up.as_str() {
        "latest" => CatchUp::Latest,
        _ => CatchUp::None,
    };
    let body = NewSchedule {
        function: session.function(&form.function),
        cron: form.cron.clone(),
        timezone: Some(form.timezone.trim().to_string()).filter(|t| !t.is_empty()),
        payload: Some(Value::String(form.payload.clone())).filter(|_| !form.payload.is_empty()),
        content_type: None,
        enabled: Some(form.paused.is_none()),
        catch_up: Some(catch_up),
    };
    match add(&app, body).await {
        Ok(_) => Ok(Redirect::to(&format!("{BASE}/schedules")).into_response()),
        Err(ApiError::Unprocessable(message)) => {
            let body = page(&app, &session, Some(&message), &form).await?;
            Ok(with_status(StatusCode::UNPROCESSABLE_ENTITY, body))
        }
        Err(e) => Err(e.into()),
    }
}

async fn set_enabled(
    app: &AppState,
    session: &Session,
    id: &str,
    enabled: bool,
) -> Result<Response, UiError> {
    load_in(app, &session.acting, id).await?;
    let body = ScheduleUpdate {
        enabled: Some(enabled),
        ..ScheduleUpdate::default()
    };
    change(app, id, body).await?;
    Ok(Redirect::to(&format!("{BASE}/schedules")).into_response())
}

/// `POST /ui/schedules/{id}/pause`.
pub(crate) async fn pause(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    set_enabled(&app, &session, &id, false).await
}

/// `POST /ui/schedules/{id}/resume`.
pub(crate) async fn resume(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    set_enabled(&app, &session, &id, true).await
}

/// `POST /ui/schedules/{id}/delete`.
pub(crate) async fn delete(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    load_in(&app, &session.acting, &id).await?;
    remove(&app, &id).await?;
    Ok(Redirect::to(&format!("{BASE}/schedules")).into_response())
}
