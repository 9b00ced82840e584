//! The dashboard's read-only pages: the functions, one function, one invocation, the queues.
//!
//! Each page asks the API's scope policy (`auth::permits`, through [`Session::may`]) what its
//! session may see: an `invoke` session gets what an `invoke` key gets from the API, the invoke box
//! of a function it names and an invocation's record by id; never a function list, its settings
//! (image, env, callback URL), its history, or the queues.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::invocations::bytes_block;
use super::session::Session;
use super::stats::{self, FunctionStats};
use super::{BASE, UiError, chart, fmt_ms, fmt_pct, fmt_time, layout, page, status_badge};
use crate::error::ApiError;
use crate::function::store;
use crate::invocation::{Status, store as invocations};
use crate::message::Reply;
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::functions::load;

/// How many recent invocations a function's page lists and charts.
const RECENT: i64 = 30;

/// `GET /ui/`: every function with its last hour; for a session that may not list functions,
/// a box to open a function or an invocation by name or id.
pub(crate) async fn functions(
    session: Session,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    if !session.may(Action::ReadFunctions) {
        return Ok(finder(&session));
    }
    let functions = store::list(&app.pool, Some(session.namespace().as_str())).await?;
    let stats: HashMap<String, FunctionStats> = stats::last_hour(&app.pool, None)
        .await?
        .into_iter()
        .map(|s| (s.function.clone(), s))
        .collect();
    let empty = FunctionStats::default();
    let pending = crate::function::pending::names(&app.pool).await?;
    Ok(layout(
        "Functions",
        Some(&session),
        html! {
            div.actions {
                h1 { "Functions" }
                @if session.may(Action::Manage) {
                    a.button href={ (BASE) "/functions/new" } { "New function" }
                    a.button.secondary #from-source href={ (BASE) "/functions/new/source" } { "From source" }
                }
            }
            @if functions.is_empty() {
                p.notice { "No functions yet. "
                    @if session.may(Action::Manage) { a href={ (BASE) "/functions/new" } { "Create one." } }
                }
            } @else {
                p.muted { "Numbers cover the invocations queued in the last hour." }
                div.scroll {
                    table #functions {
                        thead { tr {
                            th { "Name" } th { "Image" } th.hide-narrow { "Input" }
                            th.num { "Last hour" } th.num { "Success" } th.num { "p50" } th.num { "p95" }
                            th.num.hide-narrow { "Cold" }
                        } }
                        tbody {
                            @for f in &functions {
                                @let s = stats.get(&f.name).unwrap_or(&empty);
                                tr {
                                    td {
                                        a href={ (BASE) "/functions/" (f.name) } { (f.name) }
                                        @if pending.contains(&f.name) { " " (pending_badge()) }
                                    }
                                    td { code { (f.run.image) } }
                                    td.hide-narrow { (f.run.input.as_str()) }
                                    td.num { (s.invocations) }
                                    td.num { (fmt_pct(s.success_rate())) }
                                    td.num { (fmt_ms(s.p50_ms)) }
                                    td.num { (fmt_ms(s.p95_ms)) }
                                    td.num.hide-narrow { (fmt_pct(s.cold_share)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// The mark of a function no worker has checked yet ([`crate::function::pending`]).
fn pending_badge() -> Markup {
    html! {
        span.badge.pending title="registered with defer_check: no worker has checked its image yet" { "pending" }
    }
}

/// The home page of a session that may run functions and read invocations, but not list them.
fn finder(session: &Session) -> Html<String> {
    layout(
        "Functions",
        Some(session),
        html! {
            h1 { "Functions" }
            p.muted { "This key may run functions and read invocations by id. Listing functions and their settings needs an admin key." }
            div.card {
                form.stack method="get" action={ (BASE) "/find" } {
                    label for="function" { "Function name" }
                    input #function name="function" required;
                    button type="submit" { "Open" }
                }
            }
            div.card {
                form.stack method="get" action={ (BASE) "/find" } {
                    label for="invocation" { "Invocation id" }
                    input #invocation name="invocation" required;
                    button type="submit" { "Open" }
                }
            }
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FindQuery {
    function: Option<String>,
    invocation: Option<String>,
}

/// `GET /ui/find?function=` or `?invocation=`: to that function's or invocation's page.
pub(crate) async fn find(
    session: Session,
    Query(q): Query<FindQuery>,
) -> Result<Response, UiError> {
    if let Some(id) = q
        .invocation
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let id: Uuid = id
            .parse()
            .map_err(|_| ApiError::NotFound(format!("{id:?} is not an invocation id")))?;
        return Ok(Redirect::to(&format!("{BASE}/invocations/{id}")).into_response());
    }
    let name = q.function.as_deref().map(str::trim).unwrap_or("");
    // Only names a function of the session's namespace can have, so the redirect is always a
    // plain path.
    let stored = session.function(name);
    if name.is_empty() || !crate::namespace::valid_stored(&stored) {
        return Err(ApiError::NotFound(format!("no function named {name:?}")).into());
    }
    Ok(Redirect::to(&format!("{BASE}/functions/{stored}")).into_response())
}

/// The answer to a run from the invoke box, shown on the function's page.
pub(crate) enum InvokeResult {
    /// The reply came in time.
    Done { id: Uuid, reply: Reply },
    /// The sync wait ran out; the invocation goes on.
    Pending { id: Uuid },
    /// It could not be queued.
    Refused(String),
}

/// `GET /ui/functions/{name}`.
pub(crate) async fn function(
    session: Session,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let span = chart_span(query.get("range").map(String::as_str))?;
    function_page(&app, &session, &name, None, "", span).await
}

/// The chart's span for `?range=` (`1h`, the default, `24h`, `7d`).
fn chart_span(range: Option<&str>) -> Result<&'static chart::Span, ApiError> {
    match range.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(&chart::SPANS[0]),
        Some(r) => chart::SPANS.iter().find(|s| s.key == r).ok_or_else(|| {
            ApiError::BadRequest(format!("range must be one of 1h, 24h, 7d; not {r:?}"))
        }),
    }
}

/// A function's page; `result` and `input` after a run from its invoke box. A session that may
/// not read functions' definitions gets the invoke box alone.
pub(crate) async fn function_page(
    app: &AppState,
    session: &Session,
    name: &str,
    result: Option<InvokeResult>,
    input: &str,
    span: &chart::Span,
) -> Result<Html<String>, UiError> {
    session.require(Action::Invoke)?;
    let f = load(app, &session.function(name)).await?;
    let retention = crate::retention::effective(
        &app.pool,
        crate::retention::Policy::of(&app.settings),
        &f.name,
        f.retention_s,
    )
    .await?;
    let url = format!("{}/fn/{}", app.settings.functions_url(), f.name);
    let invoke_box = html! {
        h2 { "Invoke" }
        div.card {
            p { "URL: " code #invoke-url { (url) } }
            form.stack method="post" action={ (BASE) "/functions/" (f.name) "/invoke" } {
                (session.csrf_field())
                label for="body" { "Body" }
                textarea #body name="body" { (input) }
                button #invoke type="submit" { "Invoke" }
            }
            @if let Some(result) = &result { (invoke_result(result)) }
        }
    };
    if !session.may(Action::ReadFunctions) {
        return Ok(layout(
            &f.name,
            Some(session),
            html! {
                h1 { "Function " (f.name) }
                (invoke_box)
            },
        ));
    }
    let recent = invocations::list(&app.pool, &f.name, None, None, RECENT).await?;
    let stats = stats::last_hour(&app.pool, Some(&f.name))
        .await?
        .pop()
        .unwrap_or_default();
    let buckets = stats::buckets_over(&app.pool, &f.name, span.buckets, span.bucket_secs).await?;
    let runs: Vec<chart::Point> = recent
        .iter()
        .filter_map(|r| {
            Some(chart::Point {
                duration_ms: r.duration_ms? as f64,
                failed: !matches!(r.status(), Status::Succeeded),
                at: r.finished_at?,
            })
        })
        .collect();
    let versions = super::builds::section(app, session, &f).await?;
    // Webhooks (their URLs), schedules and subscriptions are admin matters, as in the API.
    let triggers = if session.may(Action::Manage) {
        Some(super::triggers::section(app, &f).await?)
    } else {
        None
    };
    let pending = crate::function::pending::names(&app.pool)
        .await?
        .contains(&f.name);
    // The recent invocations follow running work without a reload.
    let live = recent.iter().any(|r| !r.status().is_final());
    Ok(page(
        &f.name,
        Some(session),
        super::live::head(live),
        html! {
            h1 { "Function " (f.name) @if pending { " " (pending_badge()) } }
            @if pending {
                p.notice #pending {
                    "Pending: registered while no worker of queue " code { (f.queue) }
                    " answered (defer_check), so its image is not checked yet. Its first run pulls it, or fails with the engine's reason."
                }
            }
            @if session.may(Action::Manage) {
                div.actions {
                    a.button.secondary href={ (BASE) "/functions/" (f.name) "/edit" } { "Edit" }
                    a.button.danger href={ (BASE) "/functions/" (f.name) "/delete" } { "Delete" }
                }
            }
            (invoke_box)
            h2 #chart { (span.words) }
            div.card {
                p.actions #spans {
                    @for s in &chart::SPANS {
                        @if s.key == span.key { strong.current { (s.words) } }
                        @else { a href={ (BASE) "/functions/" (f.name) "?range=" (s.key) "#chart" } { (s.words) } }
                    }
                }
                p {
                    "Last hour: " (stats.invocations) " invocations · success " (fmt_pct(stats.success_rate()))
                    " · p50 " (fmt_ms(stats.p50_ms)) " · p95 " (fmt_ms(stats.p95_ms))
                    " · cold " (fmt_pct(stats.cold_share))
                }
                (chart::render_span(span, &buckets, span.bucket_secs / 60, &runs, chrono::Utc::now()))
            }
            h2 { "Recent invocations" }
            div #live-region data-live=(super::live::marker(live)) {
                @if recent.is_empty() {
                    p.muted { "None yet." }
                } @else {
                    div.scroll { (super::invocations::table(session, &recent, false)) }
                }
            }
            @if let Some(triggers) = triggers { (triggers) }
            (versions)
            h2 { "Settings" }
            div.scroll { (super::settings::table(&f, &retention)) }
        },
    ))
}

fn invoke_result(result: &InvokeResult) -> Markup {
    html! {
        div #result {
            @match result {
                InvokeResult::Done { id, reply } => {
                    p {
                        (status_badge(reply.status.as_str()))
                        @if let Some(ms) = reply.duration_ms { " in " (fmt_ms(Some(ms as f64))) }
                        @if let Some(code) = reply.exit_code { " · exit code " (code) }
                        " · " a href={ (BASE) "/invocations/" (id) } { "invocation " (id) }
                    }
                    @if let Some(error) = &reply.error { p.error { (error) } }
                    (bytes_block("Output", Some(&reply.output), false, "output"))
                }
                InvokeResult::Pending { id } => {
                    p.notice {
                        "Still running after the sync wait; see "
                        a href={ (BASE) "/invocations/" (id) } { "invocation " (id) } "."
                    }
                }
                InvokeResult::Refused(message) => { p.error { (message) } }
            }
        }
    }
}

/// `GET /ui/queues`: the live view; its table reloads itself from `/ui/queues/live`.
pub(crate) async fn queues(
    session: Session,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    session.require(Action::Operate)?;
    // The installation's queues and workers: not a namespaced session's.
    session.global_only()?;
    let live = queues_markup(&app).await?;
    Ok(page(
        "Queues",
        Some(&session),
        html! {
            noscript { meta http-equiv="refresh" content="5"; }
            script src={ (BASE) "/static/queues.js" } defer {}
        },
        html! {
            h1 { "Queues" }
            p.muted { "Refreshes every 2 s." }
            div #live { (live) }
        },
    ))
}

/// `GET /ui/queues/live`: the queues page's tables alone.
pub(crate) async fn queues_live(
    session: Session,
    State(app): State<AppState>,
) -> Result<Response, UiError> {
    session.require(Action::Operate)?;
    session.global_only()?;
    Ok(Html(queues_markup(&app).await?.into_string()).into_response())
}

async fn queues_markup(app: &AppState) -> Result<Markup, UiError> {
    let names = stats::queue_names(&app.pool).await?;
    let mut queues = Vec::with_capacity(names.len());
    for name in names {
        let full = app.publisher.topology().work_queue(&name);
        let info = app.publisher.queue_info(&full).await?;
        queues.push((name, full, info));
    }
    // The inbound queues (AMQP publishers' events, and what the routers could not accept).
    let topology = app.publisher.topology();
    for (name, full) in [
        ("inbound", topology.inbound_queue()),
        ("inbound dead letters", topology.inbound_dead_queue()),
    ] {
        let info = app.publisher.queue_info(&full).await?;
        queues.push((name.to_string(), full, info));
    }
    let dead = app.publisher.dead_letter_depth().await.ok();
    let workers = stats::workers(&app.pool).await?;
    let now = chrono::Utc::now();
    Ok(html! {
        h2 { "Work queues" }
        div.scroll {
            table #queues {
                thead { tr { th { "Queue" } th.hide-narrow { "Broker name" } th.num { "Ready" } th.num { "Consumers" } } }
                tbody {
                    @for (name, full, info) in &queues {
                        tr {
                            td { (name) }
                            td.hide-narrow { code { (full) } }
                            @match info {
                                // Messages wait and nothing consumes them: say so (a dead-letter
                                // queue has no consumer by design).
                                Some((depth, 0)) if *depth > 0 && !full.ends_with(".dead") => {
                                    td.num { (depth) }
                                    td.num { span.error.stalled title="messages wait and no worker consumes this queue" { "0 — none consuming" } }
                                }
                                Some((depth, consumers)) => { td.num { (depth) } td.num { (consumers) } }
                                None => { td.num.muted colspan="2" { "not declared yet" } }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Dead letters: " (dead.map_or("—".to_string(), |d| d.to_string())) }
        h2 { "Workers" }
        @if workers.is_empty() {
            p.muted { "No worker heard from in the last hour." }
        } @else {
            div.scroll {
                table #workers {
                    thead { tr {
                        th { "Worker" } th.num { "Target" } th.num { "In flight" } th { "Queues" }
                        th.num { "Heartbeat" } th.hide-narrow { "Up since" }
                    } }
                    tbody {
                        @for w in &workers {
                            tr {
                                td { code { (w.id) } }
                                td.num { (w.concurrency) }
                                td.num { (w.in_flight) }
                                td { (w.queues.join(", ")) }
                                td.num {
                                    @if w.silent_secs > 30.0 { span.error { (format!("{:.0} s ago", w.silent_secs)) } }
                                    @else { (format!("{:.0} s ago", w.silent_secs)) }
                                }
                                td.hide-narrow { (fmt_time(Some(w.started_at))) }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "As of " (fmt_time(Some(now))) }
    })
}
