//! Events over HTTP: `POST /v1/events/{topic}` records an event, fans it out to every function
//! whose subscription matches (one async invocation each, trigger `event`), publishes it on the
//! events exchange for outside observers, and answers 202 with the event id and the invocations.
//! `/v1/functions/{name}/subscriptions` manages what a function subscribes to.

use crate::error::{Denied, ErrorBody};
use std::collections::BTreeSet;

use super::extract::Path;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::auth::Acting;
use super::enqueue::{Job, enqueue};
use super::extract::{JsonBody, RawBody};
use super::functions::load;
use crate::error::ApiError;
use crate::event::store::Subscribed;
use crate::event::{FannedOut, Subscription, store, valid_pattern, valid_topic};
use crate::invocation::Trigger;
use axum::Extension;

/// The body of `POST /v1/functions/{name}/subscriptions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSubscription {
    pub(crate) pattern: String,
}

/// `POST /v1/functions/{name}/subscriptions` `{pattern}`: 201; 409 if the function has it already.
#[tracing::instrument(skip_all, fields(%name))]
#[utoipa::path(post, path = "/v1/functions/{name}/subscriptions", operation_id = "subscribe", tag = "events", summary = "Subscribe a function to a topic pattern",
    description = "Body `{pattern}`: `*` matches one word, `#` zero or more (`orders.*`). Events published on a matching topic each start an invocation of the function. 409 if the function has the pattern already.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    request_body = NewSubscription, responses((status = 201, body = crate::event::Subscription), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn subscribe(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<NewSubscription>,
) -> Result<Response, ApiError> {
    let subscription = add_subscription(&app, &acting.function(&name), &body.pattern).await?;
    Ok((StatusCode::CREATED, Json(subscription)).into_response())
}

/// Subscribes function `name` to `pattern` (the API's `POST` and the dashboard's form): 422 for
/// a bad pattern or a full function, 404 for no such function, 409 if it has the pattern.
pub(crate) async fn add_subscription(
    app: &AppState,
    name: &str,
    pattern: &str,
) -> Result<Subscription, ApiError> {
    if !valid_pattern(pattern) {
        return Err(ApiError::Unprocessable(
            "pattern: dot-separated words of [A-Za-z0-9_-], '*' (one word) or '#' (zero or more words), at most 255 characters".into(),
        ));
    }
    load(app, name).await?;
    let cap = app.settings.max_subscriptions_per_function;
    match store::subscribe(&app.pool, name, pattern, cap).await? {
        Subscribed::Created(s) => Ok(s),
        Subscribed::Exists => Err(ApiError::Conflict(format!(
            "{name:?} already subscribes to {pattern:?}"
        ))),
        Subscribed::Full => Err(ApiError::Unprocessable(format!(
            "{name:?} has {cap} subscriptions, the most a function may have (GRANDA_MAX_SUBSCRIPTIONS_PER_FUNCTION); remove one first"
        ))),
        Subscribed::NoFunction => Err(ApiError::NotFound(format!("no function named {name:?}"))),
    }
}

/// `GET /v1/functions/{name}/subscriptions`.
#[utoipa::path(get, path = "/v1/functions/{name}/subscriptions", operation_id = "list_subscriptions", tag = "events", summary = "List a function's subscriptions",
    description = "The patterns the function is subscribed to.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, body = super::answers::SubscriptionList), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn subscriptions(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let name = acting.function(&name);
    load(&app, &name).await?;
    let list = store::subscriptions(&app.pool, Some(&name)).await?;
    Ok(Json(json!({ "subscriptions": list })))
}

/// `DELETE /v1/functions/{name}/subscriptions/{id}`: 204.
#[utoipa::path(delete, path = "/v1/functions/{name}/subscriptions/{id}", operation_id = "unsubscribe", tag = "events", summary = "Remove a subscription",
    description = "Events published after this no longer start the function.",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("id" = Uuid, Path)), responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn unsubscribe(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove_subscription(&app, &acting.function(&name), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes function `name`'s subscription `id` (the API's `DELETE` and the dashboard's button):
/// 404 when it has none by that id.
pub(crate) async fn remove_subscription(
    app: &AppState,
    name: &str,
    id: &str,
) -> Result<(), ApiError> {
    let missing = || {
        let name = crate::namespace::short(name);
        ApiError::NotFound(format!("{name:?} has no subscription {id}"))
    };
    let uuid = Uuid::parse_str(id).map_err(|_| missing())?;
    if store::unsubscribe(&app.pool, name, uuid).await? {
        Ok(())
    } else {
        Err(missing())
    }
}

/// `POST /v1/events/{topic}`: 202 `{id, topic, invocations: [{function, id}]}`.
///
/// With an `Idempotency-Key` seen before, the same event id comes back and only the fan-out that
/// is missing (after a failure half-way) is done; every invocation is keyed by the event id, so
/// none runs twice.
#[tracing::instrument(name = "publish event", skip_all, fields(%topic))]
#[utoipa::path(post, path = "/v1/events/{topic}", operation_id = "publish_event", tag = "events", summary = "Publish an event",
    description = "Publishes the body on the topic named in the path (for example `orders.created`): every function subscribed with a matching pattern gets its own invocation. 202 with the event id, its invocations and a status URL. An `Idempotency-Key` seen before returns the same event and runs nothing twice.", params(("topic" = String, Path, description = "the topic, dot-separated words (`orders.created`)"),
           ("Idempotency-Key" = Option<String>, Header)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = super::answers::EventPublished, headers(("idempotent-replayed" = String, description = "`true` when the `Idempotency-Key` was seen before: the first event, nothing run twice"))), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), Denied))]
pub(crate) async fn publish(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    if !valid_topic(&topic) {
        return Err(ApiError::BadRequest(
            "topic: dot-separated words of [A-Za-z0-9_-], at most 255 characters".into(),
        ));
    }
    let key = super::extract::idempotency_key(&headers)?;
    // It becomes the event's AMQP content type and the functions' `GRANDA_CONTENT_TYPE`:
    // refused unless printable ASCII that fits an AMQP short string.
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.len() <= 255 && crate::message::header_safe(v))
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Content-Type must be 1 to 255 printable ASCII characters".into(),
                    )
                })?,
        ),
    };
    let stored = &body[..body.len().min(app.settings.max_stored_input_bytes)];
    // Idempotency keys are unique per namespace: stored as `<namespace>:<key>` outside `default`.
    let key = key.map(|k| {
        if acting.namespace.is_default() {
            k.to_string()
        } else {
            format!("{}:{k}", acting.namespace)
        }
    });
    let key = key.as_deref();
    let (event_id, new) = store::insert_event(
        &app.pool,
        acting.namespace.as_str(),
        &topic,
        stored,
        body.len() as i64,
        content_type,
        key,
    )
    .await?;
    if !new
        && let Some(event) = store::get_event(&app.pool, event_id).await?
        && event.topic != topic
    {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used for an event on another topic".into(),
        ));
    }

    // The functions whose patterns match, each once however many of its patterns match.
    // Only the publisher's namespace's functions hear it.
    let functions: BTreeSet<String> = app
        .subscriptions
        .index(&app.pool)
        .await?
        .matching(&topic)
        .into_iter()
        .filter(|f| acting.holds(f))
        .collect();
    // Stored as `event:<event id>` (enqueue puts each trigger in its own namespace).
    let idempotency = event_id.to_string();
    let mut invocations = Vec::with_capacity(functions.len());
    let mut failure = None;
    for name in &functions {
        // Unsubscribed or deleted meanwhile: nothing to run.
        let Some(function) = crate::function::store::get(&app.pool, name).await? else {
            continue;
        };
        let mut env = std::collections::BTreeMap::new();
        env.insert("GRANDA_EVENT_TOPIC".to_string(), topic.clone());
        env.insert("GRANDA_EVENT_ID".to_string(), event_id.to_string());
        if let Some(ct) = content_type {
            env.insert("GRANDA_CONTENT_TYPE".to_string(), ct.to_string());
        }
        let job = Job {
            idempotency_key: Some(&idempotency),
            env,
            ..Job::new(Trigger::Event, &body)
        };
        match enqueue(&app, &function, job).await {
            Ok(queued) => invocations.push(FannedOut {
                function: name.clone(),
                id: queued.id,
            }),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    store::set_invocations(&app.pool, event_id, &invocations).await?;
    if let Some(e) = failure {
        tracing::warn!(%event_id, done = invocations.len(), of = functions.len(), "fan-out failed half-way");
        return Err(e);
    }
    app.publisher
        .publish_event(&topic, &body, event_properties(event_id, content_type))
        .await
        .map_err(super::enqueue::publish_error)?;
    app.metrics
        .inc("granda_events_published_total", String::new());
    app.metrics.add(
        "granda_event_invocations_total",
        String::new(),
        invocations.len() as u64,
    );
    tracing::info!(%event_id, invocations = invocations.len(), "event published");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "id": event_id,
            "topic": topic,
            "invocations": invocations,
            "status_url": format!("{}/v1/events/{event_id}", app.settings.public_url()),
        })),
    )
        .into_response();
    if !new {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// `GET /v1/events/{id}`: the event, its payload (capped like inputs) and its invocations.
#[utoipa::path(get, path = "/v1/events/{topic}", operation_id = "get_event", tag = "events", summary = "Read an event",
    description = "Here the path segment is the event's id, as publishing returned it (the path is shared with publishing, whose segment is a topic). The event: its topic, its payload (capped like inputs) and the invocations it fanned out to.", params(("topic" = Uuid, Path, description = "the event's id (the `id` that publishing returned)")), responses((status = 200, body = super::answers::EventView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let missing = || ApiError::NotFound(format!("no event {id}"));
    let uuid = Uuid::parse_str(&id).map_err(|_| missing())?;
    // Another namespace's event is missing.
    if store::namespace_of(&app.pool, uuid).await?.as_deref() != Some(acting.namespace.as_str()) {
        return Err(missing());
    }
    let event = store::get_event(&app.pool, uuid)
        .await?
        .ok_or_else(missing)?;
    Ok(Json(event.to_json()))
}

/// AMQP properties of an event on the events exchange: `message_id` = event id.
fn event_properties(id: Uuid, content_type: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-granda-event-id".into(),
        AMQPValue::LongString(LongString::from(id.to_string().into_bytes())),
    );
    BasicProperties::default()
        .with_message_id(ShortString::from(id.to_string()))
        .with_delivery_mode(2)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_content_type(ShortString::from(
            content_type.unwrap_or("application/octet-stream"),
        ))
        .with_headers(headers)
}
