//! The dashboard's dead letters: `/ui/dead-letters` lists dead invocations, each with why (the
//! platform's error, else its exit code and the last line of its stderr), with checkboxes for a
//! bulk retry through the API's own retry; one can be discarded, after a page that asks first.

use std::collections::HashMap;

use axum::extract::{Path, Query, RawForm, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;

use super::invocations::{PAGE, short_id};
use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, layout};
use crate::error::ApiError;
use crate::invocation::store;
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::invocations::{discard_one, load_in, parse_id, retry_one};

/// Why a dead invocation failed, in one line: the platform's error, else its exit code and the
/// last line of its stderr.
fn why_dead(r: &crate::invocation::Record) -> String {
    if let Some(e) = &r.error {
        return e.clone();
    }
    let tail = r
        .logs
        .as_deref()
        .and_then(|l| l.lines().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.chars().take(160).collect::<String>());
    match (r.exit_code, tail) {
        (Some(code), Some(tail)) => format!("exit {code}: {tail}"),
        (Some(code), None) => format!("exit {code}"),
        (None, Some(tail)) => tail,
        (None, None) => "—".into(),
    }
}

/// `GET /ui/dead-letters?before=`: invocations whose retries are spent, to retry in bulk.
pub(crate) async fn dead_letters(
    session: Session,
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    session.require(Action::Operate)?;
    let before = query
        .get("before")
        .filter(|b| !b.is_empty())
        .map(|b| parse_id(b))
        .transpose()?;
    let records =
        store::list_dead(&app.pool, Some(session.namespace().as_str()), before, PAGE).await?;
    let next = (records.len() as i64 == PAGE)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    // The broker's queue is the installation's: only global sessions see its depth.
    let depth = match session.bound() {
        true => None,
        false => app.publisher.dead_letter_depth().await.ok(),
    };
    let retry = session.may(Action::Manage);
    Ok(layout(
        "Dead letters",
        Some(&session),
        html! {
            h1 { "Dead letters" }
            p.muted {
                "Invocations whose retries are spent. Messages in the broker's dead-letter queue: "
                (depth.map_or("—".to_string(), |d| d.to_string()))
            }
            @if records.is_empty() {
                p.notice { "No dead invocations." }
            } @else {
                form #bulk method="post" action={ (BASE) "/dead-letters/retry" } {
                    (session.csrf_field())
                    div.scroll {
                        table #dead {
                            thead { tr {
                                @if retry { th { "Retry" } }
                                th { "Invocation" } th { "Function" } th.hide-narrow { "Attempts" }
                                th { "Error" } th.hide-narrow { "Queued" }
                                @if retry { th {} }
                            } }
                            tbody {
                                @for r in &records {
                                    tr {
                                        @if retry { td { input.check type="checkbox" name="id" value=(r.id) aria-label="retry"; } }
                                        td { a href={ (BASE) "/invocations/" (r.id) } { code { (short_id(r.id)) } } }
                                        td { a href={ (BASE) "/functions/" (r.function) } { (r.function) } }
                                        td.hide-narrow { (r.attempt) }
                                        td { span.error { (why_dead(r)) } }
                                        td.hide-narrow { (fmt_time(Some(r.queued_at))) }
                                        // A link, not a form: forms can't nest in the bulk form.
                                        @if retry { td { a.discard href={ (BASE) "/dead-letters/" (r.id) "/discard" } { "Discard" } } }
                                    }
                                }
                            }
                        }
                    }
                    @if retry { button #retry-selected type="submit" { "Retry selected" } }
                }
            }
            @if let Some(before) = next {
                p { a #older href={ (BASE) "/dead-letters?before=" (before) } { "Older →" } }
            }
        },
    ))
}

/// `GET /ui/dead-letters/{id}/discard`: asks first, showing why it died.
pub(crate) async fn discard_confirm(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, UiError> {
    let id = parse_id(&id)?;
    let r = store::get(&app.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no invocation {id}")))?;
    Ok(layout(
        "Discard",
        Some(&session),
        html! {
            h1 { "Discard invocation " code { (short_id(id)) } "?" }
            div.card {
                p { "Of " a href={ (BASE) "/functions/" (r.function) } { (r.function) } ", "
                    (r.attempt) " attempts: " span.error #why { (why_dead(&r)) } }
                p { "It leaves the dead letters for good and can't be retried; its record stays. This can't be undone." }
                form.inline method="post" action={ (BASE) "/dead-letters/" (id) "/discard" } {
                    (session.csrf_field())
                    div.actions {
                        button.danger #confirm-discard type="submit" { "Discard" }
                        a.button.secondary href={ (BASE) "/dead-letters" } { "Cancel" }
                    }
                }
            }
        },
    ))
}

/// `POST /ui/dead-letters/{id}/discard`: the API's discard, then back to the dead letters.
pub(crate) async fn discard(
    Admin(_): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = parse_id(&id)?;
    discard_one(&app, id).await?;
    Ok(Redirect::to(&format!("{BASE}/dead-letters")).into_response())
}

/// `POST /ui/dead-letters/retry` with `id=…` once per invocation: retries each, and says how
/// each went.
pub(crate) async fn retry_dead(
    Admin(session): Admin,
    State(app): State<AppState>,
    RawForm(form): RawForm,
) -> Result<Html<String>, UiError> {
    let mut ids = Vec::new();
    for (k, v) in form_urlencoded::parse(&form) {
        if k == "id" {
            ids.push(parse_id(&v)?);
        }
    }
    if ids.is_empty() {
        return Err(
            ApiError::Unprocessable("choose at least one invocation to retry".into()).into(),
        );
    }
    if ids.len() as i64 > PAGE {
        return Err(ApiError::Unprocessable(format!("at most {PAGE} at once")).into());
    }
    let mut outcomes = Vec::with_capacity(ids.len());
    for id in ids {
        let outcome = match load_in(&app, &session.acting, id).await {
            Ok(_) => retry_one(&app, id).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        outcomes.push((id, outcome));
    }
    let done = outcomes.iter().filter(|(_, o)| o.is_ok()).count();
    Ok(layout(
        "Retried",
        Some(&session),
        html! {
            h1 { "Retried " (done) " of " (outcomes.len()) }
            ul #outcomes {
                @for (id, outcome) in &outcomes {
                    li {
                        a href={ (BASE) "/invocations/" (id) } { code { (id) } } " — "
                        @match outcome {
                            Ok(()) => span.ok { "queued again" },
                            Err(e) => span.error { (e) },
                        }
                    }
                }
            }
            p { a href={ (BASE) "/dead-letters" } { "Back to the dead letters" } " · "
                a href={ (BASE) "/invocations?status=queued" } { "Queued invocations" } }
        },
    ))
}
