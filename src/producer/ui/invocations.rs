//! Invocations in the dashboard: `/ui/invocations` lists those of every function with the API's
//! filters as query parameters (`?status=&function=&trigger=&range=&before=`, `id=` opens one), 30 to a
//! page; `/ui/invocations/{id}` shows one record whole; a failed, timed out or dead invocation
//! has a Retry button (a POST form with the session's CSRF token) that goes through the API's
//! own retry (`invocations::retry_one`); a queued or running one has a Cancel button (the same,
//! through the API's own cancel, `cancel::cancel_one`). The dead letters are in `dead_letters`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use uuid::Uuid;

use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_ms, fmt_time, page, status_badge};
use crate::error::ApiError;
use crate::function::Mode;
use crate::invocation::{Record, search};
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::invocations::{filters, load_in, parse_id, retry_one};

/// Invocations to a page of the lists.
pub(super) const PAGE: i64 = 30;
/// Bytes of input, output or logs shown on a page before it says "more not shown".
const SHOWN_BYTES: usize = 64 * 1024;
/// The statuses and triggers offered by the filter form.
const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "dead",
    "cancelled",
];
const TRIGGERS: [&str; 5] = ["sync", "async", "webhook", "event", "schedule"];
/// The time ranges offered by the filter form (`?range=`): queued within the last hour, day or
/// week.
const RANGES: [(&str, &str, i64); 3] = [
    ("1h", "last hour", 3600),
    ("24h", "last 24 hours", 86_400),
    ("7d", "last 7 days", 7 * 86_400),
];

/// The start of `?range=` (`1h`, `24h`, `7d`; empty: any time) before `now`.
pub(crate) fn range_start(
    range: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    match range.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) => RANGES
            .iter()
            .find(|(key, _, _)| *key == r)
            .map(|(_, _, secs)| Some(now - chrono::Duration::seconds(*secs)))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("range must be one of 1h, 24h, 7d; not {r:?}"))
            }),
    }
}

/// Whether an invocation in `status` may be retried (the API says the rest: input kept whole).
pub(crate) fn retryable(status: &str) -> bool {
    matches!(status, "failed" | "timed_out" | "dead")
}

/// How a run got its container, in a word: `hot` (a request to the function's kept process),
/// `warm` (an exec in a kept container), `cold` (a container started for it); a hot run whose
/// container was started for it is `hot, cold start`. Records from before the mode was kept say
/// only cold or warm.
pub(crate) fn run_label(r: &Record) -> &'static str {
    match (r.mode, r.cold) {
        (Some(Mode::Hot), Some(true)) => "hot, cold start",
        (Some(Mode::Hot), _) => "hot",
        (_, Some(true)) => "cold",
        (_, Some(false)) => "warm",
        (_, None) => "—",
    }
}

/// The last 12 hex digits: unique enough within a page, short enough for a phone.
pub(crate) fn short_id(id: Uuid) -> String {
    let s = id.simple().to_string();
    format!("…{}", &s[s.len() - 12..])
}

/// The Retry button of invocation `id`: a form posting the session's CSRF token.
fn retry_button(session: &Session, id: Uuid) -> Markup {
    html! {
        form.inline.retry method="post" action={ (BASE) "/invocations/" (id) "/retry" } {
            (session.csrf_field())
            button.small type="submit" { "Retry" }
        }
    }
}

/// The Cancel button of a queued or running invocation `id`: a form posting the session's CSRF
/// token.
fn cancel_button(session: &Session, id: Uuid) -> Markup {
    html! {
        form.inline.cancel method="post" action={ (BASE) "/invocations/" (id) "/cancel" } {
            (session.csrf_field())
            button.small #cancel type="submit" { "Cancel" }
        }
    }
}

/// A link to this list with `query` and `before`, for the next page.
fn page_link(query: &HashMap<String, String>, before: Uuid) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for key in ["status", "function", "trigger", "key_id", "range"] {
        if let Some(v) = query.get(key).filter(|v| !v.is_empty()) {
            q.append_pair(key, v);
        }
    }
    q.append_pair("before", &before.to_string());
    format!("{BASE}/invocations?{}", q.finish())
}

/// `GET /ui/invocations`: every function's invocations, filtered, newest first.
pub(crate) async fn list(
    session: Session,
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    session.require(Action::Manage)?;
    if let Some(id) = query.get("id").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let id: Uuid = id
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("{id:?} is not an invocation id")))?;
        return Ok(Redirect::to(&format!("{BASE}/invocations/{id}")).into_response());
    }
    let mut f = filters(&query)?;
    // The session's namespace only; a function named in it.
    f.function = f.function.map(|name| session.function(&name));
    f.namespace = Some(session.namespace().to_string());
    if let Some(since) = range_start(query.get("range").map(String::as_str), chrono::Utc::now())? {
        // The later of the two, when `since` is given as well.
        f.since = Some(f.since.map_or(since, |given| given.max(since)));
    }
    let records = search::list(&app.pool, &f, PAGE).await?;
    let next = (records.len() as i64 == PAGE)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    let chosen = |key: &str| query.get(key).cloned().unwrap_or_default();
    let live = f.status.is_none_or(|s| !s.is_final());
    Ok(page(
        "Invocations",
        Some(&session),
        super::live::head(live),
        html! {
            h1 { "Invocations" }
            form.filters method="get" action={ (BASE) "/invocations" } {
                label { "Status "
                    select #status name="status" {
                        option value="" { "any" }
                        @for s in STATUSES { option value=(s) selected[chosen("status") == s] { (s) } }
                    }
                }
                label { "Trigger "
                    select #trigger name="trigger" {
                        option value="" { "any" }
                        @for t in TRIGGERS { option value=(t) selected[chosen("trigger") == t] { (t) } }
                    }
                }
                label { "Function " input #function name="function" value=(chosen("function")); }
                label { "Queued "
                    select #range name="range" {
                        option value="" { "any time" }
                        @for (key, words, _) in RANGES { option value=(key) selected[chosen("range") == key] { (words) } }
                    }
                }
                button #filter type="submit" { "Filter" }
            }
            form.filters method="get" action={ (BASE) "/invocations" } {
                label { "Invocation id " input #search-id name="id" placeholder="0190…"; }
                button #search type="submit" { "Open" }
            }
            div #live-region data-live=(super::live::marker(live)) {
                @if records.is_empty() {
                    p.muted { "No invocations match." }
                } @else {
                    div.scroll { (table(&session, &records, true)) }
                }
            }
            @if let Some(before) = next {
                p { a #older href=(page_link(&query, before)) { "Older →" } }
            }
        },
    )
    .into_response())
}

/// The table of `records`; `function` adds their function's column.
pub(crate) fn table(session: &Session, records: &[Record], function: bool) -> Markup {
    let retry = session.may(Action::Manage);
    html! {
        table #invocations {
            thead { tr {
                th { "Invocation" }
                @if function { th { "Function" } }
                th { "Status" } th.num.hide-narrow[function] { "Duration" } th.hide-narrow { "Run" }
                th.hide-narrow { "Trigger" } th.hide-narrow { "Queued" }
                @if retry { th {} }
            } }
            tbody {
                @for r in records {
                    tr {
                        td { a href={ (BASE) "/invocations/" (r.id) } { code { (short_id(r.id)) } } }
                        @if function { td { a href={ (BASE) "/functions/" (r.function) } { (r.function) } } }
                        td { (status_badge(r.status.as_str())) }
                        td.num.hide-narrow[function] { (fmt_ms(r.duration_ms.map(|d| d as f64))) }
                        td.hide-narrow.run { (run_label(r)) }
                        td.hide-narrow { (r.trigger) }
                        td.hide-narrow { (fmt_time(Some(r.queued_at))) }
                        @if retry { td { @if retryable(r.status.as_str()) { (retry_button(session, r.id)) } } }
                    }
                }
            }
        }
    }
}

/// `GET /ui/invocations/{id}`: every field of the record; while it is queued or running the
/// record refreshes itself; a Retry button when it failed, timed out or is dead.
pub(crate) async fn invocation(
    session: Session,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Html<String>, UiError> {
    session.require(Action::ReadInvocation)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("{id:?} is not an invocation id")))?;
    // Another namespace's record is missing, as in the API.
    let r = load_in(&app, &session.acting, id).await?;
    let attempts = crate::invocation::attempts::load(&app.pool, &r).await?;
    let input_truncated = r
        .input
        .as_ref()
        .is_some_and(|i| (i.len() as i64) < r.input_size);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let live = !r.status().is_final();
    let kept_until =
        crate::retention::kept_until(&app.pool, crate::retention::Policy::of(&app.settings), id)
            .await?;
    let retry = session.may(Action::Manage) && retryable(r.status.as_str());
    let cancellable = session.may(Action::Invoke) && !r.status().is_final();
    Ok(page(
        "Invocation",
        Some(&session),
        super::live::head(live),
        html! {
            h1 { "Invocation " code { (r.id) } }
            div #live-region data-live=(super::live::marker(live)) {
                @if retry { div.actions { (retry_button(&session, r.id)) } }
                @if cancellable { div.actions { (cancel_button(&session, r.id)) } }
                div.scroll {
                    table.kv #record {
                        tr { th { "Function" } td { a href={ (BASE) "/functions/" (r.function) } { (r.function) } } }
                        tr { th { "Status" } td #status { (status_badge(r.status.as_str())) } }
                        tr { th { "Trigger" } td { (r.trigger) } }
                        tr { th { "Made with key" } td #key {
                            @if let Some(key) = r.key_id {
                                (r.key_name.as_deref().unwrap_or("(a deleted key)")) " "
                                @if session.may(Action::Manage) {
                                    a.muted href={ (BASE) "/invocations?key_id=" (key) } { "its calls" }
                                }
                            } @else { "—" }
                        } }
                        tr { th { "Attempt" } td { (r.attempt) } }
                        tr { th { "Exit code" } td { (opt(r.exit_code.map(|c| c.to_string()))) } }
                        tr { th { "Error" } td { @if let Some(e) = &r.error { span.error { (e) } } @else { "—" } } }
                        tr { th { "Queued at" } td { (fmt_time(Some(r.queued_at))) } }
                        tr { th { "Started at" } td { (fmt_time(r.started_at)) } }
                        tr { th { "Finished at" } td { (fmt_time(r.finished_at)) } }
                        @if let Some(until) = kept_until {
                            tr { th { "Kept until" } td #kept-until { (fmt_time(Some(until))) } }
                        }
                        tr { th { "Duration" } td { (fmt_ms(r.duration_ms.map(|d| d as f64))) } }
                        tr { th { "Time in queue" } td { (fmt_ms(r.queue_ms.map(|d| d as f64))) } }
                        tr { th { "Cold start" } td { (opt(r.cold.map(|c| c.to_string()))) } }
                        tr { th { "Run" } td #run { (run_label(&r)) } }
                        tr { th { "Worker" } td { (opt(r.worker.clone())) } }
                        @if let Some(by) = &r.cancelled_by {
                            tr { th { "Cancelled by" } td #cancelled-by { (by) } }
                        }
                        @if let Some(method) = &r.http_method {
                            tr { th { "HTTP request" } td { (method) " " (r.http_path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/")) } }
                            tr { th { "HTTP status" } td { (opt(r.http_status.map(|s| s.to_string()))) } }
                        }
                        tr { th { "Input size" } td { (super::fmt_bytes(r.input_size)) } }
                    }
                }
                (waterfall_markup(&r, &attempts, chrono::Utc::now()))
                @if r.unstored() {
                    h2 { "Input, output and logs" }
                    p.muted #not-stored { (crate::invocation::NOT_STORED) }
                } @else {
                    (bytes_block("Input", r.input.as_deref(), input_truncated, "input"))
                    (bytes_block("Output", r.output.as_deref(), r.output_truncated, "output"))
                    (bytes_block("Logs (stderr)", r.logs.as_ref().map(|l| l.as_bytes()), r.logs_truncated, "logs"))
                }
            }
        },
    ))
}

use super::waterfall::waterfall_markup;

/// Bytes as text when they are UTF-8, else as hex; marked when the record or the page cut them.
pub(crate) fn bytes_block(label: &str, bytes: Option<&[u8]>, truncated: bool, id: &str) -> Markup {
    html! {
        h2 { (label)
            @if truncated { " " span.truncated { "(truncated when stored)" } }
        }
        @match bytes {
            None => p.muted { "none" },
            Some(b) if b.is_empty() => p.muted { "empty" },
            Some(b) => {
                @let shown = &b[..b.len().min(SHOWN_BYTES)];
                @match std::str::from_utf8(shown) {
                    Ok(text) => { p.muted { "text, " (super::fmt_bytes(b.len() as i64)) } pre #(id) { (text) } },
                    Err(_) => { p.muted { "binary, " (super::fmt_bytes(b.len() as i64)) ", as hex" } pre #(id) { (hex_lines(shown)) } },
                }
                @if b.len() > shown.len() { p.truncated { (super::fmt_bytes((b.len() - shown.len()) as i64)) " more not shown" } }
            }
        }
    }
}

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `POST /ui/invocations/{id}/retry`: the API's retry, then to the invocation's page.
pub(crate) async fn retry(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = parse_id(&id)?;
    load_in(&app, &session.acting, id).await?;
    retry_one(&app, id).await?;
    Ok(Redirect::to(&format!("{BASE}/invocations/{id}")).into_response())
}

/// `POST /ui/invocations/{id}/cancel`: the API's cancel (by the session's key), then to the
/// invocation's page. A session that may invoke may cancel, as with the API.
pub(crate) async fn cancel(
    session: Session,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    session.require(Action::Invoke)?;
    let id = parse_id(&id)?;
    let by = crate::producer::cancel::who(&app, session.key_id, true).await;
    crate::producer::cancel::cancel_one(&app, id, &by)
        .await
        .map_err(ApiError::from)?;
    Ok(Redirect::to(&format!("{BASE}/invocations/{id}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::super::waterfall::waterfall;
    use super::*;

    fn record(attempt: i32) -> Record {
        let queued_at = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let ms = chrono::Duration::milliseconds;
        Record {
            id: Uuid::nil(),
            function: "f".into(),
            status: crate::invocation::Status::Succeeded,
            trigger: crate::invocation::Trigger::Async,
            attempt,
            input: None,
            input_size: 0,
            output: None,
            output_truncated: false,
            logs: None,
            logs_truncated: false,
            exit_code: Some(0),
            error: None,
            queued_at,
            started_at: Some(queued_at + ms(1500)),
            finished_at: Some(queued_at + ms(1820)),
            duration_ms: Some(300),
            queue_ms: Some(40),
            cold: Some(true),
            worker: None,
            http_method: None,
            http_path: None,
            http_status: None,
            key_id: None,
            key_name: None,
            cancelled_by: None,
            mode: Some(Mode::Cold),
            discarded_at: None,
        }
    }

    #[test]
    fn runs_are_labelled_by_how_they_got_their_container() {
        let mut r = record(1);
        let label = |r: &Record| run_label(r);
        r.mode = Some(Mode::Hot);
        r.cold = Some(false);
        assert_eq!(label(&r), "hot");
        r.cold = Some(true);
        assert_eq!(label(&r), "hot, cold start");
        r.mode = Some(Mode::Warm);
        r.cold = Some(false);
        assert_eq!(label(&r), "warm");
        r.mode = None;
        r.cold = Some(true);
        assert_eq!(label(&r), "cold");
        r.cold = None;
        assert_eq!(label(&r), "—");
    }

    #[test]
    fn time_ranges_start_before_now() {
        let now = chrono::Utc::now();
        assert_eq!(range_start(None, now).unwrap(), None);
        assert_eq!(range_start(Some(""), now).unwrap(), None);
        assert_eq!(
            range_start(Some("24h"), now).unwrap(),
            Some(now - chrono::Duration::hours(24))
        );
        assert_eq!(
            range_start(Some("7d"), now).unwrap(),
            Some(now - chrono::Duration::days(7))
        );
        assert!(range_start(Some("1y"), now).is_err());
    }

    #[test]
    fn the_waterfall_shows_where_the_time_went_and_earlier_attempts() {
        let steps = waterfall(&record(3), &[], chrono::Utc::now());
        let got: Vec<(&str, i64, i64)> = steps
            .iter()
            .map(|s| (s.what.as_str(), s.start_ms, s.took_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                ("queued", 0, 40),
                (
                    "attempts 1–2 and their backoff, then claimed and started again",
                    40,
                    1460
                ),
                ("ran (attempt 3)", 1500, 300),
                ("recorded", 1800, 20),
            ]
        );
        let first = waterfall(&record(1), &[], chrono::Utc::now());
        assert_eq!(first[0].took_ms, 40);
        assert_eq!(
            (first[1].what.as_str(), first[1].start_ms, first[1].took_ms),
            ("claimed, image, container created and started", 40, 1460)
        );
        assert!(!first.iter().any(|s| s.what.contains("backoff")));
    }

    #[test]
    fn each_stored_attempt_is_a_row_of_its_own() {
        let r = record(2);
        let ms = chrono::Duration::milliseconds;
        let earlier = vec![crate::invocation::attempts::Attempt {
            attempt: 1,
            worker: Some("w1".into()),
            started_at: Some(r.queued_at + ms(40)),
            finished_at: Some(r.queued_at + ms(540)),
            status: crate::invocation::attempts::AttemptStatus::Retried,
            exit_code: Some(3),
            error: Some("exit 3".into()),
            duration_ms: Some(480),
        }];
        let steps = waterfall(&r, &earlier, chrono::Utc::now());
        let got: Vec<(&str, i64, i64)> = steps
            .iter()
            .map(|s| (s.what.as_str(), s.start_ms, s.took_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                ("queued", 0, 40),
                ("attempt 1 on w1, retried: exit 3", 40, 500),
                ("waited (backoff), then claimed and started again", 540, 960),
                ("ran (attempt 2)", 1500, 300),
                ("recorded", 1800, 20),
            ]
        );
        // The record's own attempt is never a row twice.
        let all = crate::invocation::attempts::of(&r, earlier.clone());
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].attempt, 2);
        assert_eq!(
            all[1].status,
            crate::invocation::attempts::AttemptStatus::Succeeded
        );
        assert_eq!(waterfall(&r, &all, chrono::Utc::now()).len(), steps.len());
    }
}
