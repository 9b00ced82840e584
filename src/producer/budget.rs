//! The byte budget of unauthenticated request bodies (`/hooks/{id}`, a public function's
//! `/fn/{name}`): anyone on the internet can send them, so together they may hold at most
//! `GRANDA_UNAUTHENTICATED_BODY_BUDGET_BYTES` in memory at once.
//!
//! A request reserves its `Content-Length` (or the body cap when it sends none) before a byte
//! of its body is read, and keeps the reservation until its answer is made. A body over the cap
//! is refused (413) unread; when the budget is spent, a request waits up to
//! [`BUDGET_WAIT`] for room and is then answered 503 with `Retry-After`, unread.
//! The bytes reserved now are the gauge `granda_unauthenticated_body_bytes_in_flight`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// How long a request waits for room in the budget before it is answered 503.
pub const BUDGET_WAIT: Duration = Duration::from_secs(2);

const GAUGE: &str = "granda_unauthenticated_body_bytes_in_flight";
const REFUSED: &str = "granda_unauthenticated_body_refusals_total";

/// Bytes of unauthenticated bodies that may be held at once.
pub struct BodyBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
    metrics: Arc<Metrics>,
}

/// A reservation: its bytes go back to the budget when it is dropped.
pub struct Reserved {
    _permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Semaphore>,
    total: usize,
    metrics: Arc<Metrics>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        drop(self._permit.take());
        self.metrics.set(
            GAUGE,
            String::new(),
            (self.total - self.budget.available_permits()) as f64,
        );
    }
}

impl BodyBudget {
    pub fn new(total: usize, metrics: Arc<Metrics>) -> BodyBudget {
        // A semaphore holds at most `Semaphore::MAX_PERMITS`; a budget is far below it.
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        metrics.describe(
            GAUGE,
            "Bytes of unauthenticated request bodies (webhooks, public functions) reserved now",
        );
        metrics.set(GAUGE, String::new(), 0.0);
        BodyBudget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
            metrics,
        }
    }

    /// Bytes reserved now.
    pub fn in_flight(&self) -> usize {
        self.total - self.semaphore.available_permits()
    }

    /// Reserves room for a body of the size `headers` announce (at most `cap`), before reading it.
    pub async fn reserve(&self, headers: &HeaderMap, cap: usize) -> Result<Reserved, ApiError> {
        let announced = declared_length(headers)?;
        if announced.is_some_and(|n| n > cap) {
            self.refused("too_large");
            return Err(ApiError::PayloadTooLarge(format!(
                "the body is larger than {cap} bytes"
            )));
        }
        let bytes = announced.unwrap_or(cap).min(self.total);
        let permit = if bytes == 0 {
            None
        } else {
            let wanted = u32::try_from(bytes).unwrap_or(u32::MAX);
            let acquire = self.semaphore.clone().acquire_many_owned(wanted);
            match tokio::time::timeout(BUDGET_WAIT, acquire).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    self.refused("budget");
                    return Err(ApiError::Unavailable(
                        "too many unauthenticated request bodies in flight; try again shortly"
                            .into(),
                    ));
                }
            }
        };
        self.metrics
            .set(GAUGE, String::new(), self.in_flight() as f64);
        Ok(Reserved {
            _permit: permit,
            budget: self.semaphore.clone(),
            total: self.total,
            metrics: self.metrics.clone(),
        })
    }

    /// Reserves room, then reads the body (at most `cap` bytes, and no more than it announced).
    /// Keep the reservation as long as the bytes are held.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
        cap: usize,
    ) -> Result<(Bytes, Reserved), ApiError> {
        let reserved = self.reserve(headers, cap).await?;
        let limit = declared_length(headers)?.unwrap_or(cap).min(cap);
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge(format!("the body is larger than {limit} bytes"))
            } else {
                ApiError::BadRequest(format!("could not read the body: {e}"))
            }
        })?;
        Ok((bytes, reserved))
    }

    fn refused(&self, reason: &str) {
        self.metrics.inc(REFUSED, format!("reason=\"{reason}\""));
    }
}

/// The `Content-Length` a request announces; 400 when it is not a number.
fn declared_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
            .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into())),
    }
}

/// Middleware for a public function's URL (`/fn/{name}`) called without credentials: the
/// request holds a reservation for its body until it is answered. Calls with a live key (the
/// auth middleware, which runs first, says so) pass; an `Authorization` header of another kind
/// (a function's own Basic credentials) does not make a call authenticated.
pub async fn unauthenticated(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION)
        && request
            .extensions()
            .get::<super::auth::Caller>()
            .is_some_and(|c| c.is_authenticated())
    {
        return next.run(request).await;
    }
    match app
        .body_budget
        .reserve(request.headers(), app.settings.max_body_bytes)
        .await
    {
        Ok(reserved) => {
            let response = next.run(request).await;
            drop(reserved);
            response
        }
        Err(e) => with_retry_after(e),
    }
}

/// An error answer; a spent budget says when to try again.
pub fn with_retry_after(e: ApiError) -> Response {
    let unavailable = matches!(e, ApiError::Unavailable(_));
    let mut response = e.into_response();
    if unavailable {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}
