//! `/ui/keys`: API keys for admin sessions. Make one (its secret is shown on the next page, once,
//! and never again), list them, revoke one (its sessions, this one included if it is the key
//! logged in with, end at once). The same functions as `/v1/keys` (`producer::keys::{make, end}`).

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, layout, with_status};
use crate::error::ApiError;
use crate::keys::{self, ApiKey, Scope};
use crate::producer::AppState;
use crate::producer::keys::{end, make};

/// The form that makes a key.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct KeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: String,
}

fn page(session: &Session, keys: &[ApiKey], error: Option<&str>, form: &KeyForm) -> Html<String> {
    layout(
        "API keys",
        Some(session),
        html! {
            h1 { "API keys" }
            div.card {
                h2 { "New key" }
                form.stack method="post" action={ (BASE) "/keys" } {
                    (session.csrf_field())
                    @if let Some(e) = error { p.error #key-error { (e) } }
                    label for="key-name" { "Name" }
                    input #key-name name="name" value=(form.name) required placeholder="e.g. ci-deploy";
                    label for="key-scope" { "Scope" }
                    select #key-scope name="scope" {
                        option value="invoke" selected[form.scope != "admin"] { "invoke: run functions, read invocations by id" }
                        option value="admin" selected[form.scope == "admin"] { "admin: everything" }
                    }
                    button #create-key type="submit" { "Make key" }
                }
            }
            div.scroll {
                table #keys {
                    thead { tr {
                        th { "Name" } th { "Scope" } th { "Key" } th.hide-narrow { "Made" } th { "State" } th {}
                    } }
                    tbody {
                        @for k in keys {
                            tr {
                                td { (k.name) }
                                td { (k.scope) }
                                td { code { (k.prefix) "…" } }
                                td.hide-narrow { (fmt_time(Some(k.created_at))) }
                                td { @if let Some(at) = k.revoked_at { "revoked " (fmt_time(Some(at))) } @else { "live" } }
                                td {
                                    @if k.revoked_at.is_none() {
                                        form.inline.revoke method="post" action={ (BASE) "/keys/" (k.id) "/revoke" } {
                                            (session.csrf_field())
                                            button.small.danger type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The namespace a session's keys are bound to: its own for a namespaced session (it sees and
/// makes only those), none for a global one (every key).
fn own(session: &Session) -> Option<&str> {
    session.bound().then(|| session.namespace().as_str())
}

/// `GET /ui/keys`.
pub(crate) async fn list(
    Admin(session): Admin,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    let keys = keys::list(&app.pool, own(&session)).await?;
    Ok(page(&session, &keys, None, &KeyForm::default()))
}

/// `POST /ui/keys`: makes the key and shows it, once.
pub(crate) async fn create(
    Admin(session): Admin,
    State(app): State<AppState>,
    Form(form): Form<KeyForm>,
) -> Result<Response, UiError> {
    let refused = |message: String, keys: &[ApiKey], form: &KeyForm| {
        with_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            page(&session, keys, Some(&message), form),
        )
    };
    let Some(scope) = Scope::parse(&form.scope) else {
        let keys = keys::list(&app.pool, own(&session)).await?;
        return Ok(refused(
            "scope: must be admin or invoke".into(),
            &keys,
            &form,
        ));
    };
    // A namespaced session makes keys of its namespace, as its key would through the API.
    let (key, secret) = match make(&app, form.name.trim(), scope, own(&session), None).await {
        Ok(made) => made,
        Err(ApiError::Unprocessable(message)) => {
            let keys = keys::list(&app.pool, own(&session)).await?;
            return Ok(refused(message, &keys, &form));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(layout(
        "Key made",
        Some(&session),
        html! {
            h1 { "Key " (key.name) " made" }
            p.notice { "This is the only time the key is shown: copy it now. Granda keeps only its hash." }
            div.card { pre #new-key { (secret.0) } }
            p { "Scope: " (key.scope) ". Use it as " code { "Authorization: Bearer <key>" } "." }
            p { a href={ (BASE) "/keys" } { "Back to the keys" } }
        },
    )
    .into_response())
}

/// `POST /ui/keys/{id}/revoke`.
pub(crate) async fn revoke(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::NotFound(format!("{id:?} is not a key id")))?;
    if let Some(ns) = own(&session) {
        let owner = crate::keys::name_of(&app.pool, id)
            .await?
            .and_then(|(_, n)| n);
        if owner.as_deref() != Some(ns) {
            return Err(ApiError::NotFound("no live key with this id".into()).into());
        }
    }
    end(&app, id).await?;
    Ok(Redirect::to(&format!("{BASE}/keys")).into_response())
}
