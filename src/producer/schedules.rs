//! `/v1/schedules`: cron schedules that run a function (see [`crate::producer::cron`]).
//!
//! `POST` `{function, cron, timezone?, payload?, content_type?, enabled?, catch_up?}` → 201;
//! `GET` lists (`?function=`), `GET/PUT/DELETE /v1/schedules/{id}`. `PUT` changes the fields it
//! names. Every answer carries `next_runs`. Enabling a schedule, or changing its pattern or zone,
//! starts it from now: ticks while it was disabled never fire.

use super::extract::{Path, Query};
use crate::error::{Denied, ErrorBody};
use crate::producer::cron::ScheduleView;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::Acting;
use super::extract::JsonBody;
use crate::error::ApiError;
use crate::producer::cron::{CatchUp, CronTz, Schedule, ScheduleError, store};
use axum::Extension;

#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduleList {
    pub(crate) schedules: Vec<ScheduleView>,
}

/// Declares a request body about a schedule: its own fields, then the ones `POST` and `PUT`
/// both take, written once here.
macro_rules! schedule_body {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        $vis struct $name {
            $($own)*
            /// An IANA time zone the pattern is read in; `UTC` by default.
            pub(crate) timezone: Option<String>,
            /// Each run's input: a string as its bytes, any other JSON value as JSON text.
            #[schema(value_type = Option<Value>)]
            pub(crate) payload: Option<Value>,
            pub(crate) content_type: Option<String>,
            /// `true` by default.
            pub(crate) enabled: Option<bool>,
            /// Ticks missed while every server was down: `none` (default) or `latest`.
            pub(crate) catch_up: Option<CatchUp>,
        }
    };
}

schedule_body! {
    /// The body of `POST /v1/schedules`.
    #[derive(Debug, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct NewSchedule {
        /// The function to run.
        pub(crate) function: String,
        /// 5 fields (`m h dom mon dow`), 6 with seconds first, or `@hourly`, `@daily`,
        /// `@weekly`, `@monthly`, `@yearly`.
        pub(crate) cron: String,
    }
}

schedule_body! {
    /// The body of `PUT /v1/schedules/{id}`: the fields to change.
    #[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct ScheduleUpdate {
        pub(crate) function: Option<String>,
        pub(crate) cron: Option<String>,
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        ApiError::Unprocessable(e.to_string())
    }
}

/// A payload as the bytes each run gets, and the content type it implies.
fn payload_bytes(
    app: &AppState,
    payload: Value,
) -> Result<(Vec<u8>, Option<&'static str>), ApiError> {
    let (bytes, implied) = match payload {
        Value::String(s) => (s.into_bytes(), None),
        Value::Null => (Vec::new(), None),
        other => (other.to_string().into_bytes(), Some("application/json")),
    };
    if bytes.len() > app.settings.max_stored_input_bytes {
        return Err(ApiError::Unprocessable(format!(
            "payload: at most {} bytes",
            app.settings.max_stored_input_bytes
        )));
    }
    Ok((bytes, implied))
}

/// It becomes each run's `GRANDA_CONTENT_TYPE` (env, and a header to a hot function).
fn content_type(ct: &str) -> Result<String, ApiError> {
    if ct.is_empty() || ct.len() > 255 || !crate::message::header_safe(ct) {
        return Err(ApiError::Unprocessable(
            "content_type: 1 to 255 printable ASCII characters (no control characters)".into(),
        ));
    }
    Ok(ct.to_string())
}

async fn check_function(app: &AppState, name: &str) -> Result<(), ApiError> {
    if crate::function::store::get(&app.pool, name)
        .await?
        .is_none()
    {
        let name = crate::namespace::short(name);
        return Err(ApiError::Unprocessable(format!(
            "function: no function named {name:?}"
        )));
    }
    Ok(())
}

/// The first fire time from now: the cursor of a schedule (re)started now.
fn start(cron: &CronTz) -> Result<chrono::DateTime<Utc>, ApiError> {
    cron.next_after(Utc::now())
        .ok_or_else(|| ApiError::Unprocessable("cron: never fires".into()))
}

/// `POST /v1/schedules`: 201 with the schedule and its `next_runs`.
#[tracing::instrument(skip_all)]
#[utoipa::path(post, path = "/v1/schedules", operation_id = "create_schedule", tag = "schedules", summary = "Make a schedule",
    description = "Runs a function on a cron pattern (5 or 6 fields, or `@hourly` and the like) in a time zone. Each tick fires once across all servers; the invocation's trigger is `schedule`.", request_body = NewSchedule, responses((status = 201, body = ScheduleView), (status = 400, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody, description = "a bad cron pattern or time zone, or no such function"), Denied))]
pub(crate) async fn create(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    JsonBody(mut body): JsonBody<NewSchedule>,
) -> Result<Response, ApiError> {
    body.function = acting.function(&body.function);
    let stored = add(&app, body).await?;
    Ok((StatusCode::CREATED, Json(stored.view())).into_response())
}

/// Makes a schedule (the API's create and the dashboard's form).
pub(crate) async fn add(app: &AppState, body: NewSchedule) -> Result<Schedule, ApiError> {
    let timezone = body.timezone.unwrap_or_else(|| "UTC".into());
    let cron = CronTz::parse(&body.cron, &timezone)?;
    let (payload, implied) = payload_bytes(app, body.payload.unwrap_or(Value::Null))?;
    let content_type = match body.content_type {
        Some(ct) => Some(content_type(&ct)?),
        None => implied.map(str::to_string),
    };
    check_function(app, &body.function).await?;
    let now = Utc::now();
    let schedule = Schedule {
        id: Uuid::now_v7(),
        function: body.function,
        cron: body.cron.trim().to_string(),
        timezone,
        payload,
        content_type,
        enabled: body.enabled.unwrap_or(true),
        catch_up: body.catch_up.unwrap_or_default().as_str().to_string(),
        next_fire_at: start(&cron)?,
        last_fired_at: None,
        created_at: now,
        updated_at: now,
    };
    let stored = store::insert(&app.pool, &schedule)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => ApiError::Unprocessable(
                format!("function: no function named {:?}", schedule.function),
            ),
            other => other.into(),
        })?;
    tracing::info!(schedule = %stored.id, function = %stored.function, cron = %stored.cron, "schedule created");
    Ok(stored)
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    pub(crate) function: Option<String>,
}

/// `GET /v1/schedules[?function=]`: `{schedules: [...]}`, oldest first.
#[utoipa::path(get, path = "/v1/schedules", operation_id = "list_schedules", tag = "schedules", summary = "List schedules",
    description = "Every schedule, or one function's with `function`.", params(("function" = Option<String>, Query, pattern = "^[a-z][a-z0-9-]{0,62}$")), responses((status = 200, body = ScheduleList), Denied))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let function = q.function.map(|f| acting.function(&f));
    let list = store::list(&app.pool, function.as_deref()).await?;
    let views: Vec<_> = list
        .iter()
        .filter(|s| acting.holds(&s.function))
        .map(Schedule::view)
        .collect();
    Ok(Json(json!({ "schedules": views })))
}

/// Schedule `id` if its function is in the caller's namespace: 404 alike for another's.
pub(crate) async fn load_in(
    app: &AppState,
    acting: &Acting,
    id: &str,
) -> Result<Schedule, ApiError> {
    let s = load(app, id).await?;
    if acting.holds(&s.function) {
        Ok(s)
    } else {
        Err(ApiError::NotFound(format!("no schedule {id}")))
    }
}

async fn load(app: &AppState, id: &str) -> Result<Schedule, ApiError> {
    let missing = || ApiError::NotFound(format!("no schedule {id}"));
    let uuid = Uuid::parse_str(id).map_err(|_| missing())?;
    store::get(&app.pool, uuid).await?.ok_or_else(missing)
}

/// `GET /v1/schedules/{id}`.
#[utoipa::path(get, path = "/v1/schedules/{id}", operation_id = "get_schedule", tag = "schedules", summary = "Read a schedule",
    description = "The schedule, with its next fire times.", params(("id" = Uuid, Path)), responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<Json<crate::producer::cron::ScheduleView>, ApiError> {
    Ok(Json(load_in(&app, &acting, &id).await?.view()))
}

/// `PUT /v1/schedules/{id}`: changes the fields named; 200 with the schedule.
#[tracing::instrument(skip_all, fields(%id))]
#[utoipa::path(put, path = "/v1/schedules/{id}", operation_id = "update_schedule", tag = "schedules", summary = "Update a schedule",
    description = "Changes the fields the body names; the others keep their values.", params(("id" = Uuid, Path)), request_body = ScheduleUpdate,
    responses((status = 200, body = ScheduleView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), Denied))]
pub(crate) async fn update(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody<ScheduleUpdate>,
) -> Result<Json<crate::producer::cron::ScheduleView>, ApiError> {
    load_in(&app, &acting, &id).await?;
    body.function = body.function.map(|f| acting.function(&f));
    Ok(Json(change(&app, &id, body).await?.view()))
}

/// Changes the fields `body` names of schedule `id` (the API's update and the dashboard's pause
/// and resume).
pub(crate) async fn change(
    app: &AppState,
    id: &str,
    body: ScheduleUpdate,
) -> Result<crate::producer::cron::Schedule, ApiError> {
    let mut s = load(app, id).await?;
    let restarts = body.cron.is_some()
        || body.timezone.is_some()
        || (body.enabled == Some(true) && !s.enabled);
    if let Some(cron) = body.cron {
        s.cron = cron.trim().to_string();
    }
    if let Some(tz) = body.timezone {
        s.timezone = tz;
    }
    let cron = CronTz::parse(&s.cron, &s.timezone)?;
    if let Some(payload) = body.payload {
        let (bytes, implied) = payload_bytes(app, payload)?;
        s.payload = bytes;
        if body.content_type.is_none() {
            s.content_type = implied.map(str::to_string);
        }
    }
    if let Some(ct) = body.content_type {
        s.content_type = Some(content_type(&ct)?);
    }
    if let Some(catch_up) = body.catch_up {
        s.catch_up = catch_up.as_str().to_string();
    }
    if let Some(function) = body.function {
        check_function(app, &function).await?;
        s.function = function;
    }
    if let Some(enabled) = body.enabled {
        s.enabled = enabled;
    }
    let restart = if restarts { Some(start(&cron)?) } else { None };
    let saved = store::save(&app.pool, &s, restart)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no schedule {id}")))?;
    Ok(saved)
}

/// `DELETE /v1/schedules/{id}`: 204.
#[utoipa::path(delete, path = "/v1/schedules/{id}", operation_id = "delete_schedule", tag = "schedules", summary = "Delete a schedule",
    description = "No tick fires after this.", params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = ErrorBody), Denied))]
pub(crate) async fn delete(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    load_in(&app, &acting, &id).await?;
    remove(&app, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes schedule `id` (the API's and the dashboard's): 404 when there is none.
pub(crate) async fn remove(app: &AppState, id: &str) -> Result<(), ApiError> {
    let s = load(app, id).await?;
    if store::delete(&app.pool, s.id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no schedule {id}")))
    }
}
