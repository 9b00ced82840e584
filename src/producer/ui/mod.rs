//! The web dashboard under `/ui`: server-rendered HTML (maud, checked at compile time), charts as
//! hand-written SVG, a few lines of JavaScript only to refresh live views (`live`, the queues).
//!
//! One module per page or concept: `pages` (functions, a function, queues), `invocations` (the
//! list, one record, retry, dead letters), `builds` (versions, build logs, rollback), `settings`,
//! `keys`, `webhooks`, `schedules`, `events` (subscriptions, published events), `namespaces`
//! (records and stored bytes per namespace), `triggers` (a function's webhooks, schedules and
//! subscriptions), `forms` (function forms, the invoke box), `chart`, `stats`,
//! `live`, `session` (login, scopes, CSRF).
//!
//! Every route lives in the one [`Router`] returned by [`routes`]; the ingress nests it under
//! `/ui`. Pages need a session ([`session::Session`]): a key typed into `/ui/login` becomes an
//! HttpOnly, SameSite=Strict cookie bound to that key. What a session sees and may do is the
//! API's own scope policy (`auth::permits`). Forms go through the same validation and storage
//! functions as the JSON API (`NewFunction::validate`, `FunctionUpdate::apply`,
//! `functions::register`, `functions::save`), and the invoke box through the same sync path
//! (`enqueue`).
//!
//! Web safety: every form carries the session's CSRF token, checked with the Origin of every POST
//! by [`guard::protect`]; every answer under `/ui` (pages, errors, redirects, the static files)
//! carries [`CSP`], `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer`. Nothing is inline: the CSS and the scripts of the live views are
//! static files under `/ui/static/`, so the CSP allows scripts and styles from this origin only.

mod builds;
mod chart;
mod dead_letters;
mod events;
mod forms;
mod guard;
mod invocations;
mod keys;
mod live;
mod loaded;
mod login;
mod namespaces;
mod pages;
mod schedules;
mod session;
mod settings;
mod source;
mod stats;
mod triggers;
mod usage;
mod waterfall;
mod webhooks;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::AppState;
use super::auth::Action;
use crate::error::ApiError;
use session::Session;

/// Where the ingress mounts the dashboard; every link in it starts with this.
pub(crate) const BASE: &str = "/ui";

/// The Content-Security-Policy of every dashboard answer: scripts, styles, images and fetches
/// from this origin only, nothing inline, forms post only here, never framed.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Every dashboard route, relative to [`BASE`], with the CSRF guard and the security headers.
pub(crate) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::functions))
        .route("/find", get(pages::find))
        .route("/static/granda.css", get(stylesheet))
        .route("/static/queues.js", get(queues_script))
        .route("/login", get(login::login_form).post(login::login))
        .route("/logout", post(login::logout))
        .route("/namespace", post(login::switch))
        .route("/usage", get(usage::page))
        .route("/functions/new", get(forms::new_form).post(forms::create))
        .route(
            "/functions/new/source",
            get(source::form).post(source::build),
        )
        .route("/static/build.js", get(source::script))
        .route("/functions/{name}", get(pages::function))
        .route(
            "/functions/{name}/edit",
            get(forms::edit_form).post(forms::update),
        )
        .route(
            "/functions/{name}/delete",
            get(forms::delete_confirm).post(forms::delete),
        )
        .route("/functions/{name}/invoke", post(forms::invoke))
        .route("/functions/{name}/builds/{version}", get(builds::build))
        .route("/functions/{name}/rollback", post(builds::rollback))
        .route("/static/live.js", get(live::script))
        .route("/invocations", get(invocations::list))
        .route("/invocations/{id}", get(invocations::invocation))
        .route("/invocations/{id}/retry", post(invocations::retry))
        .route("/invocations/{id}/cancel", post(invocations::cancel))
        .route("/dead-letters", get(dead_letters::dead_letters))
        .route("/dead-letters/retry", post(dead_letters::retry_dead))
        .route(
            "/dead-letters/{id}/discard",
            get(dead_letters::discard_confirm).post(dead_letters::discard),
        )
        .route("/queues", get(pages::queues))
        .route("/queues/live", get(pages::queues_live))
        .route("/namespaces", get(namespaces::list))
        .route("/schedules", get(schedules::list).post(schedules::create))
        .route("/schedules/{id}/pause", post(schedules::pause))
        .route("/schedules/{id}/resume", post(schedules::resume))
        .route("/schedules/{id}/delete", post(schedules::delete))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}/revoke", post(keys::revoke))
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/webhooks/{id}", get(webhooks::show))
        .route("/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/webhooks/{id}/delete", post(webhooks::delete))
        .route("/events", get(events::list).post(events::subscribe))
        .route(
            "/functions/{name}/subscriptions/{id}/delete",
            post(events::delete),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state, guard::protect))
        .layer(axum::middleware::map_response(security_headers))
}

/// Adds the dashboard's security headers to an answer.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Pages show secrets of their session; static files say their own caching.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn not_found() -> UiError {
    UiError(ApiError::NotFound("no such dashboard page".into()))
}

pub(crate) fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui/static/granda.css`.
async fn stylesheet() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}

/// `GET /ui/static/queues.js`: reloads the queues page's tables in place every 2 s.
async fn queues_script() -> Response {
    static_file("text/javascript; charset=utf-8", QUEUES_JS)
}

const QUEUES_JS: &str = r#"setInterval(function () {
  fetch(location.pathname.replace(/\/$/, '') + '/live', {credentials: 'same-origin'})
    .then(function (r) { if (r.ok && r.headers.get('content-type').indexOf('text/html') === 0 && !r.redirected) return r.text(); throw r; })
    .then(function (t) { document.getElementById('live').innerHTML = t; })
    .catch(function () {});
}, 2000);
"#;

/// A failure shown as an HTML page with the API's status code.
#[derive(Debug)]
pub(crate) struct UiError(pub(crate) ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<sqlx::Error> for UiError {
    fn from(e: sqlx::Error) -> Self {
        UiError(e.into())
    }
}

impl From<crate::broker::BrokerError> for UiError {
    fn from(e: crate::broker::BrokerError) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = ?self.0, "dashboard request failed");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let body = layout(
            title,
            None,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p.error { (self.0.to_string()) }
                p { a href=(BASE) { "Back to the functions" } }
            },
        );
        (status, body).into_response()
    }
}

/// An HTML page: the shared head, CSS and, for a session, the navigation it may use, around
/// `content`.
pub(crate) fn layout(title: &str, nav: Option<&Session>, content: Markup) -> Html<String> {
    page(title, nav, PreEscaped(String::new()), content)
}

/// A [`layout`] page for a session whose heading is its title.
pub(crate) fn titled(title: &str, session: &Session, content: Markup) -> Html<String> {
    layout(
        title,
        Some(session),
        html! {
            h1 { (title) }
            (content)
        },
    )
}

/// Like [`layout`], with extra markup in `<head>`.
pub(crate) fn page(
    title: &str,
    nav: Option<&Session>,
    head: Markup,
    content: Markup,
) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Granda" }
                link rel="stylesheet" href={ (BASE) "/static/granda.css" };
                (head)
            }
            body {
                header {
                    a.brand href=(BASE) { "Granda" }
                    @if let Some(session) = nav {
                        nav {
                            a href=(BASE) { "Functions" }
                            @if session.may(Action::Manage) {
                                a href={ (BASE) "/functions/new" } { "New function" }
                            }
                            @if session.may(Action::Manage) {
                                a href={ (BASE) "/invocations" } { "Invocations" }
                            }
                            @if session.may(Action::Operate) {
                                @if !session.bound() {
                                    a href={ (BASE) "/queues" } { "Queues" }
                                }
                                a href={ (BASE) "/dead-letters" } { "Dead letters" }
                                a href={ (BASE) "/namespaces" } { "Namespaces" }
                            }
                            @if session.may(Action::ReadFunctions) {
                                a href={ (BASE) "/usage" } { "Usage" }
                            }
                            @if session.may(Action::Manage) {
                                a href={ (BASE) "/schedules" } { "Schedules" }
                                a href={ (BASE) "/webhooks" } { "Webhooks" }
                                a href={ (BASE) "/events" } { "Events" }
                                a href={ (BASE) "/keys" } { "Keys" }
                            }
                            (namespace_switcher(session))
                            form.inline method="post" action={ (BASE) "/logout" } {
                                (session.csrf_field())
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (content) }
            }
        }
    };
    Html(markup.into_string())
}

/// The namespace a session acts in: for a global session a switcher (a form, no script), for a
/// session bound to a namespace its name.
fn namespace_switcher(session: &Session) -> Markup {
    let current = session.namespace().as_str();
    html! {
        @if session.bound() {
            span #namespace.ns { "Namespace " strong { (current) } }
        } @else {
            form.inline #namespace-switcher method="post" action={ (BASE) "/namespace" } {
                (session.csrf_field())
                label.ns { "Namespace "
                    select #namespace name="namespace" {
                        @for ns in &session.namespaces {
                            option value=(ns) selected[ns == current] { (ns) }
                        }
                    }
                }
                " "
                button.small type="submit" { "Switch" }
            }
        }
    }
}

/// A plain HTML answer with `status`.
pub(crate) fn with_status(status: StatusCode, body: Html<String>) -> Response {
    (status, body).into_response()
}

/// Milliseconds for people: `850 ms`, `1.25 s`, `—` when unknown.
pub(crate) fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "—".into(),
        // A hot run takes well under a millisecond: not "0 ms".
        Some(ms) if ms < 1.0 => "<1 ms".into(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
    }
}

/// A size in bytes, in words: `1 byte`, `2 bytes`.
pub(crate) fn fmt_bytes(n: impl Into<i64>) -> String {
    match n.into() {
        1 => "1 byte".into(),
        n => format!("{n} bytes"),
    }
}

/// A share as a percentage, `—` when unknown.
pub(crate) fn fmt_pct(share: Option<f64>) -> String {
    share.map_or("—".into(), |s| format!("{:.0}%", s * 100.0))
}

/// A timestamp to the second, UTC.
pub(crate) fn fmt_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or("—".into(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// A status as a coloured badge.
pub(crate) fn status_badge(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status) } }
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;background:#f5f6f8}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.4rem 1.2rem;padding:.6rem 1rem;background:#1d2733;color:#fff}
header a,header button.link{color:#dfe7f1;text-decoration:none;font:inherit}
header a.brand{font-weight:700;color:#fff;font-size:1.1rem}
nav{display:flex;flex-wrap:wrap;gap:.3rem 1rem;align-items:center}
main{max-width:1000px;margin:0 auto;padding:1rem}
h1{font-size:1.35rem;margin:.3rem 0 1rem;word-break:break-all}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.8rem 1rem;margin-bottom:1rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.35rem .55rem;border-bottom:1px solid #e6e9ed;vertical-align:top}
th{font-weight:600;color:#4a5562;white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap}
table.kv th{width:11rem}
pre{background:#f0f2f5;border:1px solid #dde1e6;border-radius:4px;padding:.5rem;margin:.3rem 0;white-space:pre-wrap;word-break:break-all;max-height:24rem;overflow:auto;font-size:13px}
code{font-size:13px;word-break:break-all}
a{color:#1f5fbf}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:12px;font-weight:600;background:#e3e6ea;color:#333}
.badge.succeeded{background:#d5f2dc;color:#17642c}.badge.failed,.badge.dead{background:#fbdcdc;color:#8a1c1c}
.badge.pending{background:#fdebc8;color:#7a4b00}
.badge.timed_out{background:#fdebc8;color:#7a4b00}.badge.running{background:#d9e7fb;color:#1f4f96}
.badge.cancelled{background:#ece6f5;color:#4b3a6b}
.error{color:#a11;font-weight:600}
.muted{color:#6b7580;font-size:13px}
.truncated{color:#7a4b00;font-weight:600;font-size:13px}
form.stack label{display:block;margin:.6rem 0 .15rem;font-weight:600}
form.stack button{display:block}
form.stack .field.invalid input,form.stack .field.invalid textarea,form.stack .field.invalid select{border-color:#c22;background:#fff5f5}
form.stack .field .error{font-size:13px;margin:.15rem 0}
input,textarea,select{font:inherit;width:100%;max-width:36rem;padding:.35rem .45rem;border:1px solid #b9c0c8;border-radius:4px;background:#fff}
textarea{min-height:4.5rem;font-family:ui-monospace,monospace;font-size:13px}
button,.button{font:inherit;display:inline-block;padding:.4rem .9rem;border:1px solid #1f5fbf;border-radius:4px;background:#1f5fbf;color:#fff;cursor:pointer;text-decoration:none;margin-top:.6rem}
button.danger,.button.danger{background:#b42323;border-color:#b42323}
.button.secondary{background:#fff;color:#1f5fbf}
button.link{background:none;border:0;padding:0;margin:0;cursor:pointer}
form.inline{display:inline}
.actions{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}
.notice{background:#fff8e1;border:1px solid #f0d98a;border-radius:4px;padding:.5rem .8rem}
svg.chart{width:100%;height:auto;max-height:240px;background:#fff}svg.chart.narrow{display:none}
.legend{font-size:13px;color:#4a5562}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .25rem 0 .8rem;vertical-align:middle}
.legend span.bars{background:#c9d6e8}.legend span.fails{background:#e59a9a}.legend span.line{background:#1f5fbf}
input.check{width:auto}
form.stack div.check{margin:.6rem 0}form.stack div.check label{display:inline;margin:0 0 0 .3rem}
caption{text-align:left;padding:.3rem .55rem}
form.filters{display:flex;flex-wrap:wrap;gap:.4rem .8rem;align-items:flex-end;margin-bottom:.6rem}
form.filters label{font-size:13px;font-weight:600}
form.filters input,form.filters select{width:auto;max-width:14rem;display:block}
form.filters button{margin-top:0}
button.small{padding:.1rem .5rem;margin:0;font-size:13px}
.ok{color:#17642c;font-weight:600}
strong.current{color:#17642c;margin-right:.5rem}
header .ns{font-size:13px;color:#dfe7f1}header select{width:auto;display:inline;padding:.1rem .3rem;font-size:13px}
@media (max-width:600px){svg.chart.wide{display:none}svg.chart.narrow{display:block}main{padding:.6rem}table.kv th{width:auto}th,td{padding:.3rem .35rem;font-size:14px}.hide-narrow{display:none}}
"#;

#[cfg(test)]
mod tests {
    /// "1 byte", never "1 bytes".
    #[test]
    fn sizes_in_words() {
        assert_eq!(super::fmt_bytes(1), "1 byte");
        assert_eq!(super::fmt_bytes(0), "0 bytes");
        assert_eq!(super::fmt_bytes(2048i64), "2048 bytes");
    }

    /// A sub-millisecond run (hot) is "<1 ms", not "0 ms".
    #[test]
    fn durations_in_words() {
        assert_eq!(super::fmt_ms(Some(0.0)), "<1 ms");
        assert_eq!(super::fmt_ms(Some(12.0)), "12 ms");
        assert_eq!(super::fmt_ms(Some(1500.0)), "1.50 s");
        assert_eq!(super::fmt_ms(None), "—");
    }
}
