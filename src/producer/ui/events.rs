//! `/ui/events`: events for admin sessions. Every function's subscriptions (topic pattern,
//! function, when made), a form that subscribes a function to a pattern, a Delete button per
//! subscription, and the latest published events with the invocations each fanned out to. The
//! same functions as `/v1/functions/{name}/subscriptions`
//! (`producer::events::{add_subscription, remove_subscription}`); events are published with
//! `POST /v1/events/{topic}`.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, layout, with_status};
use crate::error::ApiError;
use crate::event::store;
use crate::producer::AppState;
use crate::producer::events::{add_subscription, remove_subscription};

/// How many published events the page lists, newest first.
pub(crate) const RECENT_EVENTS: i64 = 20;

/// The form that subscribes a function to a topic pattern.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SubscribeForm {
    #[serde(default)]
    function: String,
    #[serde(default)]
    pattern: String,
}

async fn page(
    app: &AppState,
    session: &Session,
    error: Option<&str>,
    form: &SubscribeForm,
) -> Result<Html<String>, UiError> {
    let mut subscriptions = store::subscriptions(&app.pool, None).await?;
    subscriptions.retain(|s| session.holds(&s.function));
    let ns = session.namespace().as_str();
    let functions = crate::function::store::list(&app.pool, Some(ns)).await?;
    let events = store::recent_events(&app.pool, ns, RECENT_EVENTS).await?;
    Ok(layout(
        "Events",
        Some(session),
        html! {
            h1 { "Events" }
            div.card {
                h2 { "Subscribe a function" }
                form.stack method="post" action={ (BASE) "/events" } {
                    (session.csrf_field())
                    @if let Some(e) = error { p.error #sub-error { (e) } }
                    label for="sub-function" { "Function" }
                    select #sub-function name="function" required {
                        @for f in &functions { option value=(f.name) selected[form.function == f.name] { (f.name) } }
                    }
                    label for="sub-pattern" { "Topic pattern (" code { "*" } " one word, " code { "#" } " zero or more)" }
                    input #sub-pattern name="pattern" value=(form.pattern) placeholder="orders.*" required;
                    button #subscribe type="submit" { "Subscribe" }
                }
            }
            h2 { "Subscriptions" }
            @if subscriptions.is_empty() {
                p.muted { "No subscriptions yet." }
            } @else {
                div.scroll {
                    table #subscriptions {
                        thead { tr { th { "Topic pattern" } th { "Function" } th.hide-narrow { "Made" } th {} } }
                        tbody {
                            @for s in &subscriptions {
                                tr data-id=(s.id) id={ "subscription-" (s.id) } {
                                    td { code { (s.pattern) } }
                                    td { a href={ (BASE) "/functions/" (s.function) } { (s.function) } }
                                    td.hide-narrow { (fmt_time(Some(s.created_at))) }
                                    td.actions {
                                        a href={ (BASE) "/invocations?trigger=event&function=" (s.function) } { "Invocations" }
                                        form.inline.delete method="post" action={ (BASE) "/functions/" (s.function) "/subscriptions/" (s.id) "/delete" } {
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
            h2 { "Recent events" }
            @if events.is_empty() {
                p.muted { "No events published yet. Publish one with " code { "POST /v1/events/{topic}" } "." }
            } @else {
                div.scroll {
                    table #events {
                        thead { tr { th { "Topic" } th.hide-narrow { "Published" } th.num.hide-narrow { "Bytes" } th { "Invocations" } } }
                        tbody {
                            @for e in &events {
                                tr data-id=(e.id) {
                                    td { code { (e.topic) } }
                                    td.hide-narrow { (fmt_time(Some(e.published_at))) }
                                    td.num.hide-narrow { (e.size) }
                                    td {
                                        @if e.invocations.0.is_empty() { span.muted { "none" } }
                                        @for i in &e.invocations.0 {
                                            a href={ (BASE) "/invocations/" (i.id) } { (i.function) } " "
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

/// `GET /ui/events`.
pub(crate) async fn list(
    Admin(session): Admin,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    page(&app, &session, None, &SubscribeForm::default()).await
}

/// `POST /ui/events`: subscribes the function; a refused form comes back with the API's words.
pub(crate) async fn subscribe(
    Admin(session): Admin,
    State(app): State<AppState>,
    Form(form): Form<SubscribeForm>,
) -> Result<Response, UiError> {
    match add_subscription(&app, &session.function(&form.function), &form.pattern).await {
        Ok(_) => Ok(Redirect::to(&format!("{BASE}/events")).into_response()),
        Err(e @ (ApiError::Unprocessable(_) | ApiError::Conflict(_) | ApiError::NotFound(_))) => {
            let status = e.status();
            let body = page(&app, &session, Some(&e.to_string()), &form).await?;
            Ok(with_status(status, body))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /ui/functions/{name}/subscriptions/{id}/delete`.
pub(crate) async fn delete(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, UiError> {
    remove_subscription(&app, &session.function(&name), &id).await?;
    Ok(Redirect::to(&format!("{BASE}/events")).into_response())
}
