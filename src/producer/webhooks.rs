//! Webhooks over HTTP: `/v1/webhooks` manages them (create, list, read, delete, rotate the secret),
//! and `/hooks/{id}` is where external systems deliver. A delivery is verified over its raw body,
//! deduplicated by its delivery id, and queued as an async invocation (trigger `webhook`): the
//! sender gets 202 with the invocation id as soon as the broker confirmed it.

use super::invoke::Accepted;
use crate::error::{Denied, ErrorBody};
use std::collections::BTreeMap;

use super::extract::{Path, Query};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::auth::Acting;
use super::enqueue::{Job, enqueue};
use super::extract::{JsonBody, RawBody};
use super::functions::load;
use super::invoke::accepted;
use crate::error::ApiError;
use crate::invocation::{Status, Trigger};
use crate::webhook::rejections;
use crate::webhook::store::{self, Webhook};
use crate::webhook::{Encoding, Scheme, WebhookList, WebhookView};
use axum::Extension;

/// The longest delivery id kept for deduplication.
const MAX_DELIVERY_ID: usize = 200;
/// The longest event type passed on (`GRANDA_WEBHOOK_EVENT`).
const MAX_EVENT_TYPE: usize = 200;
/// The longest `Content-Type` passed on (`GRANDA_CONTENT_TYPE`).
const MAX_CONTENT_TYPE: usize = 255;

/// The body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewWebhook {
    pub(crate) function: String,
    pub(crate) scheme: Scheme,
    /// Generated (and shown once, in the 201 answer) when absent.
    pub(crate) secret: Option<String>,
    /// `hmac-sha256`: the signature header (default `x-signature`).
    pub(crate) header: Option<String>,
    /// `hmac-sha256`: `hex` (default) or `base64`.
    pub(crate) encoding: Option<Encoding>,
    /// `hmac-sha256` and `none`: a header carrying a delivery id, for deduplication.
    pub(crate) id_header: Option<String>,
}

/// The body of `POST /v1/webhooks/{id}/rotate` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rotate {
    pub(crate) secret: Option<String>,
    /// How long the old secret keeps verifying (default `GRANDA_WEBHOOK_ROTATION_GRACE_SECS`).
    pub(crate) grace_seconds: Option<i64>,
}

fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(msg.into())
}

fn header_name(field: &str, value: &str) -> Result<String, ApiError> {
    HeaderName::try_from(value)
        .map(|h| h.as_str().to_string())
        .map_err(|_| unprocessable(format!("{field}: {value:?} is not a header name")))
}

/// Checks a secret for `scheme`: a usable key, at most 1024 characters.
fn check_secret(scheme: Scheme, secret: &str) -> Result<(), ApiError> {
    if secret.len() > 1024 || scheme.key(secret).is_none() {
        return Err(unprocessable(match scheme {
            Scheme::Standard => "secret: must be whsec_ followed by the base64 of the key",
            _ => "secret: must be 1 to 1024 characters",
        }));
    }
    Ok(())
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no webhook {id}"))
}

/// Webhook `id` if its function is in the caller's namespace: 404 alike for another's.
pub(crate) async fn load_hook_in(
    app: &AppState,
    acting: &Acting,
    id: &str,
) -> Result<Webhook, ApiError> {
    let hook = load_hook(app, id).await?;
    if acting.holds(&hook.function) {
        Ok(hook)
    } else {
        Err(not_found(id))
    }
}

pub(crate) async fn load_hook(app: &AppState, id: &str) -> Result<Webhook, ApiError> {
    let uuid = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    store::get(&app.pool, uuid)
        .await?
        .ok_or_else(|| not_found(id))
}

/// `POST /v1/webhooks`: 201 with the webhook, its URL and (when Granda made it) its secret.
#[tracing::instrument(skip_all, fields(function = %body.function, scheme = body.scheme.as_str()))]
#[utoipa::path(post, path = "/v1/webhooks", operation_id = "create_webhook", tag = "webhooks", summary = "Bind a webhook to a function",
    description = "Binds an incoming webhook to a function with a verification scheme: `github`, `stripe`, `standard` (Standard Webhooks), `hmac-sha256` (a named header) or `none`. 201 with the webhook, the URL to give the sender (`/hooks/{id}`) and, when Granda made it, its secret.", request_body = NewWebhook, responses((status = 201, body = WebhookView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    JsonBody(mut body): JsonBody<NewWebhook>,
) -> Result<Response, ApiError> {
    body.function = acting.function(&body.function);
    let (hook, generated) = add(&app, body).await?;
    let mut view = WebhookView::new(&hook, &app.settings.public_url());
    if generated {
        view.secret = hook.secret.clone();
    }
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/webhooks/{}", hook.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view)).into_response())
}

/// Checks and stores a new webhook (the API's create and the dashboard's); `true` with it when
/// Granda generated its secret (to be shown this once).
pub(crate) async fn add(app: &AppState, body: NewWebhook) -> Result<(Webhook, bool), ApiError> {
    let scheme = body.scheme;
    if scheme != Scheme::HmacSha256 && (body.header.is_some() || body.encoding.is_some()) {
        return Err(unprocessable(
            "header and encoding apply to the hmac-sha256 scheme only",
        ));
    }
    if !matches!(scheme, Scheme::HmacSha256 | Scheme::None) && body.id_header.is_some() {
        return Err(unprocessable(
            "id_header applies to the hmac-sha256 and none schemes only (the others carry their own delivery id)",
        ));
    }
    let (secret, generated) = match (scheme, body.secret) {
        (Scheme::None, Some(_)) => {
            return Err(unprocessable("secret: the none scheme takes no secret"));
        }
        (_, Some(secret)) => {
            check_secret(scheme, &secret)?;
            (Some(secret), false)
        }
        (_, None) => (scheme.generate_secret(), scheme != Scheme::None),
    };
    let header = body.header.map(|h| header_name("header", &h)).transpose()?;
    let id_header = body
        .id_header
        .map(|h| header_name("id_header", &h))
        .transpose()?;
    if crate::function::store::get(&app.pool, &body.function)
        .await?
        .is_none()
    {
        return Err(unprocessable(format!(
            "function: no function named {:?}",
            crate::namespace::short(&body.function)
        )));
    }
    let hook = Webhook {
        id: Uuid::new_v4(),
        function: body.function,
        scheme: scheme.as_str().to_string(),
        secret,
        previous_secret: None,
        previous_secret_until: None,
        header: header.or_else(|| {
            (scheme == Scheme::HmacSha256).then(|| crate::webhook::DEFAULT_HMAC_HEADER.into())
        }),
        encoding: body
            .encoding
            .or((scheme == Scheme::HmacSha256).then_some(Encoding::Hex))
            .map(|e| e.as_str().to_string()),
        id_header,
        created_at: Utc::now(),
        rotated_at: None,
    };
    store::insert(&app.pool, &hook).await.map_err(|e| match e {
        // The function went away between the check and the insert.
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
            unprocessable("function: no such function")
        }
        other => other.into(),
    })?;
    Ok((hook, generated))
}

/// `GET /v1/webhooks?function=`.
#[utoipa::path(get, path = "/v1/webhooks", operation_id = "list_webhooks", tag = "webhooks", summary = "List webhooks",
    description = "Every webhook, or one function's with `function`.", params(("function" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, body = WebhookList), Denied))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<WebhookList>, ApiError> {
    let function = query.get("function").map(String::as_str);
    // No function has a name outside the pattern: nothing to look up (and nothing such as a NUL
    // byte reaches Postgres).
    if function.is_some_and(|f| !crate::function::valid_name(f)) {
        return Ok(Json(WebhookList { webhooks: vec![] }));
    }
    let base = app.settings.public_url();
    let function = function.map(|f| acting.function(f));
    let webhooks = store::list(&app.pool, function.as_deref())
        .await?
        .iter()
        .filter(|h| acting.holds(&h.function))
        .map(|h| WebhookView::new(h, &base))
        .collect();
    Ok(Json(WebhookList { webhooks }))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/webhooks/{id}", operation_id = "get_webhook", tag = "webhooks", summary = "Read a webhook",
    description = "The webhook's function, scheme and URL; never its secret.", params(("id" = Uuid, Path)), responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let hook = load_hook_in(&app, &acting, &id).await?;
    Ok(Json(WebhookView::new(&hook, &app.settings.public_url())))
}

/// `DELETE /v1/webhooks/{id}`: 204; later deliveries get 404.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", operation_id = "delete_webhook", tag = "webhooks", summary = "Delete a webhook",
    description = "Later deliveries to its URL get 404.", params(("id" = Uuid, Path)), responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hook = load_hook_in(&app, &acting, &id).await?;
    if store::delete(&app.pool, hook.id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

/// `POST /v1/webhooks/{id}/rotate` `{secret?, grace_seconds?}`: a new secret; the old one keeps
/// verifying for the grace period. The answer shows the new secret when Granda made it.
#[tracing::instrument(skip_all, fields(%id))]
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", operation_id = "rotate_webhook", tag = "webhooks", summary = "Rotate a webhook's secret",
    description = "Sets a new secret (given, or made by Granda and shown once); the old one keeps verifying for `grace_seconds`. The body is optional.", params(("id" = Uuid, Path)), request_body(content = Option<Rotate>, content_type = "application/json"), responses((status = 200, body = WebhookView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn rotate(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<WebhookView>, ApiError> {
    let request: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
        Rotate::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => unprocessable(e.to_string()),
            _ => ApiError::BadRequest(format!("bad JSON: {e}")),
        })?
    };
    let hook = load_hook_in(&app, &acting, &id).await?;
    let (hook, secret) = rotate_secret(&app, hook, request).await?;
    let mut view = WebhookView::new(&hook, &app.settings.public_url());
    view.secret = secret;
    Ok(Json(view))
}

/// Gives `hook` a new secret, the old one verifying for the grace period (the API's rotate and
/// the dashboard's); with the new secret when Granda made it.
pub(crate) async fn rotate_secret(
    app: &AppState,
    hook: Webhook,
    request: Rotate,
) -> Result<(Webhook, Option<String>), ApiError> {
    let id = hook.id.to_string();
    let scheme = hook.scheme();
    if scheme == Scheme::None {
        return Err(unprocessable("a webhook of the none scheme has no secret"));
    }
    let grace = request
        .grace_seconds
        .unwrap_or(app.settings.webhook_rotation_grace_secs);
    if !(0..=30 * 86_400).contains(&grace) {
        return Err(unprocessable(
            "grace_seconds: must be 0 to 2592000 (30 days)",
        ));
    }
    let (secret, generated) = match request.secret {
        Some(s) => {
            check_secret(scheme, &s)?;
            (s, false)
        }
        None => (scheme.generate_secret().expect("a signed scheme"), true),
    };
    let until = Utc::now() + chrono::Duration::seconds(grace);
    let hook = store::rotate(&app.pool, hook.id, &secret, until)
        .await?
        .ok_or_else(|| not_found(&id))?;
    tracing::info!(webhook = %hook.id, grace, "webhook secret rotated");
    Ok((hook, generated.then_some(secret)))
}

/// Checks a value a delivery passes on to its function (as env, and to a hot function as a
/// header): 1 to `max` bytes of printable ASCII. Anything else is refused (400), never encoded:
/// these are identifiers, and a function must see them as the sender sent them or not at all.
fn passable(what: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > max || !crate::message::header_safe(value) {
        return Err(ApiError::BadRequest(format!(
            "the {what} must be 1 to {max} printable ASCII characters (no control characters, CR or LF)"
        )));
    }
    Ok(())
}

/// The delivery id, event type and content type a delivery carries, checked; the content type.
fn sender_fields<'h>(
    verified: &crate::webhook::Verified,
    headers: &'h HeaderMap,
) -> Result<Option<&'h str>, ApiError> {
    if let Some(d) = &verified.delivery_id {
        passable("delivery id", d, MAX_DELIVERY_ID)?;
    }
    if let Some(e) = &verified.event {
        passable("event type", e, MAX_EVENT_TYPE)?;
    }
    match headers.get(header::CONTENT_TYPE) {
        None => Ok(None),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Content-Type must be printable ASCII".into()))?;
            passable("Content-Type", v, MAX_CONTENT_TYPE)?;
            Ok(Some(v))
        }
    }
}

/// Logs a refused delivery of `hook` at WARN and writes it down, both within the recorder's rate
/// ([`rejections::Recorder::note`]: a flood of forged deliveries floods neither the log nor the
/// table); a failed write is logged.
async fn note_rejection(app: &AppState, hook: &Webhook, reason: rejections::Reason, detail: &str) {
    let now = std::time::Instant::now();
    if !app
        .rejections
        .note(hook.id, now, &hook.scheme, reason, detail)
    {
        return;
    }
    if let Err(e) = rejections::record(&app.pool, hook.id, reason, detail).await {
        tracing::warn!(webhook = %hook.id, "could not write down a rejected delivery: {e}");
    }
}

/// `GET /v1/webhooks/{id}/rejections`: the newest deliveries it refused, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/rejections", operation_id = "webhook_rejections", tag = "webhooks", summary = "Deliveries a webhook refused",
    description = "The newest deliveries (up to 50) the webhook refused, newest first: when, a stable `reason` (`missing_signature`, `malformed_signature`, `bad_signature`, `stale_timestamp`, `malformed_delivery`) and what the sender was told. At most 10 are written per webhook per 10 s; `granda_webhook_rejections_total` counts them all.", params(("id" = Uuid, Path)), responses((status = 200, body = super::answers::RejectionList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn rejections(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hook = load_hook_in(&app, &acting, &id).await?;
    let rejections = rejections::recent(&app.pool, hook.id).await?;
    Ok(Json(json!({ "rejections": rejections })))
}

/// `POST /hooks/{id}`: a delivery from an external system. The hook is looked up before a byte
/// of the body is read (an unknown id is 404 unread), and the body is read within the budget of
/// unauthenticated bodies (see [`super::budget`]).
#[tracing::instrument(skip_all, fields(webhook = %id))]
#[utoipa::path(post, path = "/hooks/{id}", operation_id = "receive_hook", tag = "webhooks", summary = "Deliver a webhook",
    description = "Where an external system sends its deliveries; give it the `url` of the webhook. No API key: the body is checked against the webhook's scheme, and a bad signature or a stale timestamp gets 401 and runs nothing. 202 at once, with the invocation (the function runs async); a delivery id seen before gets its first invocation back (header `idempotent-replayed: true`), not a second run.",
    params(("id" = Uuid, Path, description = "the webhook's id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody, description = "a bad signature or a stale timestamp"),
    (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(()))]
pub(crate) async fn receive(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Response> {
    let hook = load_hook(&app, &id)
        .await
        .map_err(IntoResponse::into_response)?;
    let (body, _reserved) = app
        .body_budget
        .read(&headers, body, app.settings.max_body_bytes)
        .await
        .map_err(super::budget::with_retry_after)?;
    deliver(&app, &hook, &headers, &body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn deliver(
    app: &AppState,
    hook: &Webhook,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let now = Utc::now();
    let verifier = hook.verifier(now, app.settings.webhook_tolerance_secs);
    let verified = match verifier.verify(headers, body, now.timestamp()) {
        Ok(v) => v,
        Err(rejection) => {
            app.metrics.inc(
                "granda_webhook_rejections_total",
                format!(
                    "scheme=\"{}\",reason=\"{}\"",
                    hook.scheme,
                    rejection.reason()
                ),
            );
            let message = format!("webhook delivery rejected: {rejection}");
            note_rejection(app, hook, rejection.reason(), &message).await;
            return Err(ApiError::Unauthorized(message));
        }
    };
    // Signed or not, what the sender says about itself is checked before it goes anywhere.
    let content_type = match sender_fields(&verified, headers) {
        Ok(content_type) => content_type,
        Err(e) => {
            note_rejection(
                app,
                hook,
                rejections::Reason::MalformedDelivery,
                &e.to_string(),
            )
            .await;
            return Err(e);
        }
    };
    let function = load(app, &hook.function).await?;
    // Stored as `webhook:<hook id>:<delivery id>`: enqueue namespaces keys by trigger.
    let key = verified
        .delivery_id
        .as_ref()
        .map(|d| format!("{}:{d}", hook.id));
    let mut env = BTreeMap::new();
    env.insert("GRANDA_WEBHOOK_ID".to_string(), hook.id.to_string());
    for (name, value) in [
        ("GRANDA_WEBHOOK_EVENT", verified.event.as_deref()),
        ("GRANDA_WEBHOOK_DELIVERY", verified.delivery_id.as_deref()),
        ("GRANDA_CONTENT_TYPE", content_type),
    ] {
        if let Some(v) = value {
            env.insert(name.to_string(), v.to_string());
        }
    }
    let job = Job {
        idempotency_key: key.as_deref(),
        env,
        ..Job::new(Trigger::Webhook, body)
    };
    let queued = enqueue(app, &function, job).await?;
    if queued.new {
        return Ok(accepted(app, queued.id, Status::Queued));
    }
    tracing::info!(invocation = %queued.id, "delivery seen before; answering with its first invocation");
    let status = crate::invocation::store::get(&app.pool, queued.id)
        .await?
        .map(|r| r.status())
        .unwrap_or(Status::Queued);
    let mut response = accepted(app, queued.id, status);
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(response)
}
