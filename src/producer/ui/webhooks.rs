//! `/ui/webhooks`: webhooks for admin sessions. Make one for a function with a signature scheme
//! (the URL to give the sender, and a generated secret shown once), rotate its secret (the new
//! one shown once; the old one verifies for `GRANDA_WEBHOOK_ROTATION_GRACE_SECS`), delete it, and
//! open its deliveries (its function's invocations with trigger `webhook`) and the deliveries it
//! refused (`/ui/webhooks/{id}`). The same functions as
//! `/v1/webhooks` (`producer::webhooks::{add, rotate_secret}`).

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::loaded::WebhookAt;
use super::session::{Admin, Session};
use super::{BASE, UiError, fmt_time, layout, titled, with_status};
use crate::error::ApiError;
use crate::producer::AppState;
use crate::producer::webhooks::{NewWebhook, Rotate, add, rotate_secret};
use crate::webhook::store::{self, Webhook};
use crate::webhook::{Scheme, rejections};

const SCHEMES: [(&str, &str); 5] = [
    ("github", "GitHub (X-Hub-Signature-256)"),
    ("stripe", "Stripe (Stripe-Signature)"),
    ("standard", "Standard Webhooks"),
    ("hmac-sha256", "HMAC-SHA256 of the body"),
    ("none", "none (trusted networks only)"),
];

/// The form that makes a webhook.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HookForm {
    #[serde(default)]
    function: String,
    #[serde(default)]
    scheme: String,
    #[serde(default)]
    secret: String,
}

async fn page(
    app: &AppState,
    session: &Session,
    error: Option<&str>,
    form: &HookForm,
) -> Result<Html<String>, UiError> {
    let mut hooks = store::list(&app.pool, None).await?;
    hooks.retain(|h| session.holds(&h.function));
    let functions =
        crate::function::store::list(&app.pool, Some(session.namespace().as_str())).await?;
    let base = app.settings.public_url();
    Ok(layout(
        "Webhooks",
        Some(session),
        html! {
            h1 { "Webhooks" }
            div.card {
                h2 { "New webhook" }
                form.stack method="post" action={ (BASE) "/webhooks" } {
                    (session.csrf_field())
                    @if let Some(e) = error { p.error #hook-error { (e) } }
                    label for="hook-function" { "Function" }
                    select #hook-function name="function" required {
                        @for f in &functions { option value=(f.name) selected[form.function == f.name] { (f.name) } }
                    }
                    label for="hook-scheme" { "Signature scheme" }
                    select #hook-scheme name="scheme" {
                        @for (value, label) in SCHEMES { option value=(value) selected[form.scheme == value] { (label) } }
                    }
                    label for="hook-secret" { "Secret (leave empty to have one generated)" }
                    input #hook-secret name="secret" type="password" autocomplete="off";
                    button #create-hook type="submit" { "Make webhook" }
                }
            }
            @if hooks.is_empty() {
                p.muted { "No webhooks yet." }
            } @else {
                div.scroll {
                    table #webhooks {
                        thead { tr {
                            th { "Function" } th { "Scheme" } th { "URL" } th.hide-narrow { "Made" }
                            th.hide-narrow { "Rotated" } th {}
                        } }
                        tbody { @for h in &hooks { (row(session, h, &base)) } }
                    }
                }
            }
        },
    ))
}

fn row(session: &Session, h: &Webhook, base: &str) -> Markup {
    html! {
        tr data-id=(h.id) {
            td { a href={ (BASE) "/functions/" (h.function) } { (h.function) } }
            td { (h.scheme) }
            td { code.url { (base) "/hooks/" (h.id) } }
            td.hide-narrow { (fmt_time(Some(h.created_at))) }
            td.hide-narrow { (fmt_time(h.rotated_at)) }
            td.actions {
                a href={ (BASE) "/invocations?trigger=webhook&function=" (h.function) } { "Deliveries" }
                " "
                a.rejections href={ (BASE) "/webhooks/" (h.id) } { "Rejections" }
                @if h.scheme() != Scheme::None {
                    form.inline.rotate method="post" action={ (BASE) "/webhooks/" (h.id) "/rotate" } {
                        (session.csrf_field())
                        button.small type="submit" { "Rotate secret" }
                    }
                }
                form.inline.delete method="post" action={ (BASE) "/webhooks/" (h.id) "/delete" } {
                    (session.csrf_field())
                    button.small.danger type="submit" { "Delete" }
                }
            }
        }
    }
}

/// `GET /ui/webhooks`.
pub(crate) async fn list(
    Admin(session): Admin,
    State(app): State<AppState>,
) -> Result<Html<String>, UiError> {
    page(&app, &session, None, &HookForm::default()).await
}

/// `GET /ui/webhooks/{id}`: a webhook, its deliveries (a link) and the newest deliveries it
/// refused, with why.
pub(crate) async fn show(
    Admin(session): Admin,
    State(app): State<AppState>,
    WebhookAt(hook): WebhookAt,
) -> Result<Html<String>, UiError> {
    let refused = rejections::recent(&app.pool, hook.id).await?;
    let base = app.settings.public_url();
    Ok(layout(
        "Webhook",
        Some(&session),
        html! {
            h1 { "Webhook for " a href={ (BASE) "/functions/" (hook.function) } { (hook.function) } }
            p { "Scheme " (hook.scheme) ". The sender posts to " code #hook-url { (base) "/hooks/" (hook.id) } "." }
            p { a href={ (BASE) "/invocations?trigger=webhook&function=" (hook.function) } { "Its deliveries" } }
            h2 { "Refused deliveries" }
            @if refused.is_empty() {
                p.muted #no-rejections { "None refused lately." }
            } @else {
                p.muted { "The newest " (rejections::KEPT) " at most; a flood writes " (rejections::PER_WINDOW) " per " (rejections::WINDOW.as_secs()) " s (the metric counts them all)." }
                div.scroll {
                    table #rejections {
                        thead { tr { th { "When" } th { "Reason" } th { "What the sender was told" } } }
                        tbody {
                            @for r in &refused {
                                tr { td { (fmt_time(Some(r.at))) } td.reason { code { (r.reason) } } td { (r.detail) } }
                            }
                        }
                    }
                }
            }
            p { a href={ (BASE) "/webhooks" } { "Back to the webhooks" } }
        },
    ))
}

/// A page that shows a webhook's URL and, this once, its secret.
fn secret_page(
    session: &Session,
    title: &str,
    hook: &Webhook,
    base: &str,
    secret: Option<&str>,
    note: Markup,
) -> Html<String> {
    titled(
        title,
        session,
        html! {
            p { "Give the sender this URL: " code #hook-url { (base) "/hooks/" (hook.id) } }
            @if let Some(secret) = secret {
                p.notice { "This is the only time the secret is shown: copy it now." }
                div.card { pre #new-secret { (secret) } }
            }
            (note)
            p { a href={ (BASE) "/webhooks" } { "Back to the webhooks" } }
        },
    )
}

/// `POST /ui/webhooks`: makes the webhook and shows its URL and generated secret.
pub(crate) async fn create(
    Admin(session): Admin,
    State(app): State<AppState>,
    Form(form): Form<HookForm>,
) -> Result<Response, UiError> {
    let Some(scheme) = Scheme::parse(&form.scheme) else {
        let body = page(
            &app,
            &session,
            Some("scheme: choose one of the list"),
            &form,
        )
        .await?;
        return Ok(with_status(StatusCode::UNPROCESSABLE_ENTITY, body));
    };
    let body = NewWebhook {
        function: session.function(&form.function),
        scheme,
        secret: Some(form.secret.clone()).filter(|s| !s.is_empty()),
        header: None,
        encoding: None,
        id_header: None,
    };
    let (hook, generated) = match add(&app, body).await {
        Ok(made) => made,
        Err(ApiError::Unprocessable(message)) => {
            let body = page(&app, &session, Some(&message), &form).await?;
            return Ok(with_status(StatusCode::UNPROCESSABLE_ENTITY, body));
        }
        Err(e) => return Err(e.into()),
    };
    let secret = hook.secret.clone().filter(|_| generated);
    Ok(secret_page(
        &session,
        "Webhook made",
        &hook,
        &app.settings.public_url(),
        secret.as_deref(),
        html! { p { "Function " (hook.function) ", scheme " (hook.scheme) "." } },
    )
    .into_response())
}

/// `POST /ui/webhooks/{id}/rotate`: a generated secret, shown once.
pub(crate) async fn rotate(
    Admin(session): Admin,
    State(app): State<AppState>,
    WebhookAt(hook): WebhookAt,
) -> Result<Html<String>, UiError> {
    let (hook, secret) = rotate_secret(&app, hook, Rotate::default()).await?;
    Ok(secret_page(
        &session,
        "Secret rotated",
        &hook,
        &app.settings.public_url(),
        secret.as_deref(),
        html! { p #grace { "The old secret keeps verifying until " (fmt_time(hook.previous_secret_until)) "." } },
    ))
}

/// `POST /ui/webhooks/{id}/delete`.
pub(crate) async fn delete(
    Admin(_): Admin,
    State(app): State<AppState>,
    WebhookAt(hook): WebhookAt,
) -> Result<Response, UiError> {
    if !store::delete(&app.pool, hook.id).await? {
        return Err(ApiError::NotFound(format!("no webhook {}", hook.id)).into());
    }
    Ok(Redirect::to(&format!("{BASE}/webhooks")).into_response())
}
