//! A function's builds from source in the dashboard: the versions on its page, each build's page
//! with its log (`/ui/functions/{name}/builds/{version}`, refreshing while it builds), and a
//! "Roll back" button on every other successful build, which goes through the API's own
//! rollback (`builds::roll_back`).

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, page, status_badge};
use crate::build::{BuildRecord, store};
use crate::error::ApiError;
use crate::function::Function;
use crate::producer::AppState;
use crate::producer::auth::Action;
use crate::producer::builds::{find, roll_back};
use crate::producer::functions::load;

fn rollback_button(session: &Session, f: &Function, b: &BuildRecord) -> Markup {
    html! {
        @if session.may(Action::Manage) && b.status == crate::build::BuildStatus::Succeeded && b.image != f.run.image {
            form.inline.rollback method="post" action={ (BASE) "/functions/" (f.name) "/rollback" } {
                (session.csrf_field())
                input type="hidden" name="version" value=(b.version);
                button.small type="submit" { "Roll back to v" (b.version) }
            }
        }
    }
}

/// The "Versions" section of a function's page (nothing for a function given an image).
pub(crate) async fn section(
    app: &AppState,
    session: &Session,
    f: &Function,
) -> Result<Markup, UiError> {
    let builds = store::list(&app.pool, &f.name, f.created_at).await?;
    if builds.is_empty() {
        return Ok(html! {});
    }
    Ok(html! {
        h2 { "Versions" }
        div.scroll {
            table #versions {
                thead { tr {
                    th { "Version" } th { "Build" } th.hide-narrow { "Runtime" } th.hide-narrow { "Built" } th { "" }
                } }
                tbody {
                    @for b in &builds {
                        tr {
                            td { a href={ (BASE) "/functions/" (f.name) "/builds/" (b.version) } { "v" (b.version) } }
                            td { (status_badge(b.status.as_str())) }
                            td.hide-narrow { (b.runtime) }
                            td.hide-narrow { (fmt_time(b.finished_at.or(Some(b.created_at)))) }
                            td {
                                @if b.image == f.run.image { strong.current { "running" } }
                                (rollback_button(session, f, b))
                            }
                        }
                    }
                }
            }
        }
    })
}

/// `GET /ui/functions/{name}/builds/{version}`: one build and its log.
pub(crate) async fn build(
    session: Session,
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Html<String>, UiError> {
    session.require(Action::ReadFunctions)?;
    let f = load(&app, &session.function(&name)).await?;
    let version = parse_version(&version)?;
    let b = find(&app, &f, version).await?;
    let live = b.status == crate::build::BuildStatus::Building;
    Ok(page(
        &format!("{} v{}", f.name, b.version),
        Some(&session),
        super::live::head(live),
        html! {
            h1 { a href={ (BASE) "/functions/" (f.name) } { (f.name) } " v" (b.version) }
            div #live-region data-live=(super::live::marker(live)) {
                div.scroll {
                    table.kv #build {
                        tr { th { "Status" } td { (status_badge(b.status.as_str())) @if b.image == f.run.image { " " strong.current { "running" } } } }
                        tr { th { "Runtime" } td { (b.runtime) } }
                        tr { th { "Image" } td { code { (b.image) } } }
                        tr { th { "Started" } td { (fmt_time(Some(b.created_at))) } }
                        tr { th { "Finished" } td { (fmt_time(b.finished_at)) } }
                    }
                }
                div.actions { (rollback_button(&session, &f, &b)) }
                h2 { "Build log" }
                @if b.log.is_empty() { p.muted { "empty" } } @else { pre #build-log { (b.log) } }
            }
        },
    ))
}

fn parse_version(v: &str) -> Result<i32, UiError> {
    v.trim()
        .strip_prefix('v')
        .unwrap_or(v.trim())
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            UiError(ApiError::BadRequest(format!(
                "{v:?} is not a version (1, 2, …)"
            )))
        })
}

#[derive(Debug, Deserialize)]
pub(crate) struct RollbackForm {
    #[serde(default)]
    version: String,
}

/// `POST /ui/functions/{name}/rollback` with `version`: then to the function's page.
pub(crate) async fn rollback(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Result<Response, UiError> {
    let version = parse_version(&form.version)?;
    let f = roll_back(&app, &session.function(&name), version).await?;
    Ok(Redirect::to(&format!("{BASE}/functions/{}", f.name)).into_response())
}
