//! The byte budget of unauthenticated request bodies (`/hooks/{id}`, a public function's
//! `/fn/{name}`, the dashboard's login form): anyone on the internet can send them, so together
//! they may hold at most `GRANDA_UNAUTHENTICATED_BODY_BUDGET_BYTES` in memory at once.
//!
//! A body announced over its cap is refused (413) unread. Otherwise a request reserves the bytes
//! it has actually read, growing its reservation as each chunk arrives, and keeps it until its
//! answer is made: announcing a large body, or sending none of it, holds nothing. When a chunk
//! finds the budget spent, the read waits up to [`BUDGET_WAIT`] for room and the request is then
//! answered 503 with `Retry-After`. The whole body must arrive within
//! `GRANDA_BODY_READ_TIMEOUT_MS`, or the request is answered 408 (and its connection closed,
//! since its body is left unread).
//! The bytes reserved now are the gauge `granda_unauthenticated_body_bytes_in_flight`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// How long a read waits for room in the budget before its request is answered 503.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(2);

const GAUGE: &str = "granda_unauthenticated_body_bytes_in_flight";
const REFUSED: &str = "granda_unauthenticated_body_refusals_total";

/// Bytes of unauthenticated bodies that may be held at once.
pub(crate) struct BodyBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Held while the gauge is read and set, so a stale reading is never written last.
    gauge: Arc<Mutex<()>>,
}

/// Why a body's read was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Spent,
    TooSlow,
}

/// A request's reservation: it grows as the request's body is read, and its bytes go back to the
/// budget when its last clone is dropped.
#[derive(Clone)]
pub(crate) struct Reserved(Arc<Share>);

struct Share {
    held: Mutex<Option<OwnedSemaphorePermit>>,
    failure: Mutex<Option<Failure>>,
    semaphore: Arc<Semaphore>,
    total: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    gauge: Arc<Mutex<()>>,
}

impl Share {
    fn gauge(&self) {
        let _setting = self.gauge.lock().expect("lock");
        let in_flight = self.total - self.semaphore.available_permits();
        self.metrics.set(GAUGE, String::new(), in_flight as f64);
    }

    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.held.lock().expect("lock");
        match held.as_mut() {
            Some(p) => p.merge(permit),
            None => *held = Some(permit),
        }
        drop(held);
        self.gauge();
    }

    fn fail(&self, failure: Failure) -> BodyRefused {
        self.failure.lock().expect("lock").get_or_insert(failure);
        let reason = match failure {
            Failure::Spent => "budget",
            Failure::TooSlow => "timeout",
        };
        self.metrics.inc(REFUSED, format!("reason=\"{reason}\""));
        BodyRefused(failure)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        drop(self.held.lock().expect("lock").take());
        self.gauge();
    }
}

impl Reserved {
    /// The answer for a body whose read the budget stopped (spent: 503; too slow: 408).
    pub(crate) fn failure(&self) -> Option<ApiError> {
        let failure = *self.0.failure.lock().expect("lock");
        failure.map(|f| match f {
            Failure::Spent => ApiError::Unavailable(
                "too many unauthenticated request bodies in flight; try again shortly".into(),
            ),
            Failure::TooSlow => ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} ms",
                self.0.timeout.as_millis()
            )),
        })
    }
}

/// The error a metered body ends with when the budget stops it.
#[derive(Debug)]
struct BodyRefused(Failure);

impl std::fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Failure::Spent => f.write_str("the budget of unauthenticated bodies is spent"),
            Failure::TooSlow => f.write_str("the body did not arrive in time"),
        }
    }
}

impl std::error::Error for BodyRefused {}

type Grow = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A body read within the budget and before a deadline.
struct Metered {
    inner: Body,
    share: Arc<Share>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// A chunk read, waiting for room in the budget.
    waiting: Option<(Frame<Bytes>, Grow)>,
    done: bool,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(this.share.fail(Failure::TooSlow).into())));
        }
        loop {
            if let Some((_, grow)) = this.waiting.as_mut() {
                let grown = ready!(grow.as_mut().poll(cx));
                let (frame, _) = this.waiting.take().expect("a waiting chunk");
                return Poll::Ready(Some(match grown {
                    Some(permit) => {
                        this.share.add(permit);
                        Ok(frame)
                    }
                    None => {
                        this.done = true;
                        Err(this.share.fail(Failure::Spent).into())
                    }
                }));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                // A broken connection: the reader hears of it.
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            };
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n == 0 {
                return Poll::Ready(Some(Ok(frame)));
            }
            if n > this.share.total {
                this.done = true;
                return Poll::Ready(Some(Err(this.share.fail(Failure::Spent).into())));
            }
            let wanted = n as u32;
            match this.share.semaphore.clone().try_acquire_many_owned(wanted) {
                Ok(permit) => {
                    this.share.add(permit);
                    return Poll::Ready(Some(Ok(frame)));
                }
                Err(_) => {
                    let semaphore = this.share.semaphore.clone();
                    let grow: Grow = Box::pin(async move {
                        let acquire = semaphore.acquire_many_owned(wanted);
                        tokio::time::timeout(BUDGET_WAIT, acquire).await.ok()?.ok()
                    });
                    this.waiting = Some((frame, grow));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.waiting.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl BodyBudget {
    pub(crate) fn new(total: usize, timeout: Duration, metrics: Arc<Metrics>) -> BodyBudget {
        // A semaphore holds at most `Semaphore::MAX_PERMITS`; a budget is far below it.
        let total = total.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        metrics.describe(
            GAUGE,
            "Bytes of unauthenticated request bodies (webhooks, public functions) read and held now",
        );
        metrics.set(GAUGE, String::new(), 0.0);
        BodyBudget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
            timeout,
            metrics,
            gauge: Arc::default(),
        }
    }

    /// Opens a reservation for a body of at most `cap` bytes: 413 when it announces more, or 400
    /// when its `Content-Length` is not a number. It holds no bytes until [`BodyBudget::meter`]ed
    /// ones are read.
    pub(crate) fn reserve(&self, headers: &HeaderMap, cap: usize) -> Result<Reserved, ApiError> {
        if declared_length(headers)?.is_some_and(|n| n > cap) {
            self.metrics.inc(REFUSED, "reason=\"too_large\"".into());
            return Err(ApiError::PayloadTooLarge(format!(
                "the body is larger than {cap} bytes"
            )));
        }
        Ok(Reserved(Arc::new(Share {
            held: Mutex::new(None),
            failure: Mutex::new(None),
            semaphore: self.semaphore.clone(),
            total: self.total,
            timeout: self.timeout,
            metrics: self.metrics.clone(),
            gauge: self.gauge.clone(),
        })))
    }

    /// `body`, read within `reserved` and before the body read timeout (from now). When the
    /// budget stops it, the body ends in an error and [`Reserved::failure`] says the answer.
    pub(crate) fn meter(&self, reserved: &Reserved, body: Body) -> Body {
        Body::new(Metered {
            inner: body,
            share: reserved.0.clone(),
            deadline: Box::pin(tokio::time::sleep(self.timeout)),
            waiting: None,
            done: false,
        })
    }

    /// Reads a body within the budget (at most `cap` bytes, and no more than it announced).
    /// Keep the reservation as long as the bytes are held.
    pub(crate) async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
        cap: usize,
    ) -> Result<(Bytes, Reserved), ApiError> {
        let reserved = self.reserve(headers, cap)?;
        let limit = declared_length(headers)?.unwrap_or(cap).min(cap);
        let body = self.meter(&reserved, body);
        match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => Ok((bytes, reserved)),
            Err(e) => Err(reserved.failure().unwrap_or_else(|| {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_large {
                    ApiError::PayloadTooLarge(format!("the body is larger than {limit} bytes"))
                } else {
                    ApiError::BadRequest(format!("could not read the body: {e}"))
                }
            })),
        }
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

/// Middleware for a public function's URL (`/fn/{name}`) called without credentials: its body
/// is read within the budget and before the body read timeout, and the reservation is kept until
/// the request is answered. Calls with a live key (the auth middleware, which runs first, says
/// so) pass; an `Authorization` header of another kind (a function's own Basic credentials) does
/// not make a call authenticated.
pub(crate) async fn unauthenticated(
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
    let reserved = match app
        .body_budget
        .reserve(request.headers(), app.settings.max_body_bytes)
    {
        Ok(reserved) => reserved,
        Err(e) => return with_retry_after(e),
    };
    let request = request.map(|body| app.body_budget.meter(&reserved, body));
    let response = next.run(request).await;
    // The handler could not read the body: the budget's answer, not the reader's.
    if let Some(e) = reserved.failure() {
        return with_retry_after(e);
    }
    drop(reserved);
    response
}

/// An error answer; a spent budget says when to try again.
pub(crate) fn with_retry_after(e: ApiError) -> Response {
    let unavailable = matches!(e, ApiError::Unavailable(_));
    let mut response = e.into_response();
    if unavailable {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}
