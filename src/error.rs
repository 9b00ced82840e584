//! The API's error type: every failure a client can see, with its HTTP status and a stable code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every error: `{"error": {"code", "message", ...}}`. The one shape every error answer is
/// written from, and the schema the API document gives for it.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

impl ErrorBody {
    /// An error with only a code and a message (the other fields absent, not `null`).
    pub(crate) fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                invocation_id: None,
                status: None,
                exit_code: None,
                detail: None,
                log: None,
                build_id: None,
            },
        }
    }
}

/// The answers of every operation that needs a key, besides its own: 401 without a valid key
/// (or dashboard session), 403 when the key's scope does not allow the operation.
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "an OpenAPI response set: described, never built")]
pub(crate) enum Denied {
    #[response(status = 401, description = "Unauthorized")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Forbidden")]
    Forbidden(ErrorBody),
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    pub(crate) code: String,
    pub(crate) message: String,
    /// Failed or timed-out sync calls: the invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) invocation_id: Option<Uuid>,
    #[schema(value_type = Option<crate::invocation::Status>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exit_code: Option<i32>,
    /// Failed sync calls: the platform error or the tail of stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    /// `build_failed`: the tail of the build log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log: Option<String>,
    /// `build_failed`: the failed build (`GET /v1/functions/{name}/builds/{version}` has it all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) build_id: Option<Uuid>,
}

/// An error answered to an HTTP client as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// No credentials, or ones that are not a live key: 401 with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// A live key whose scope does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request's body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A dependency (Postgres, RabbitMQ, Docker) could not do its part; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Over a namespace's quota: 429 with `Retry-After` (seconds).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable(_) => "invalid",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ApiError {
    /// An extractor's rejection (bad JSON, body too large, …) as an API error with the same status.
    pub(crate) fn rejected(status: StatusCode, text: String) -> ApiError {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(text),
            _ => ApiError::BadRequest(text),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => {
                ApiError::Unavailable(format!("database unavailable: {e}"))
            }
            // The server is going away or can't take more (SQLSTATE classes 08, 53, 57): a
            // connection from before a restart fails its first query this way.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57")
                }) =>
            {
                ApiError::Unavailable(format!("database unavailable: {db}"))
            }
            sqlx::Error::Protocol(_) => ApiError::Unavailable(format!("database unavailable: {e}")),
            // Text Postgres can't hold (a NUL byte, bad encoding) came from the client: its fault.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                ApiError::BadRequest(
                    "the request holds text that can't be stored (e.g. a NUL byte)".into(),
                )
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<crate::broker::BrokerError> for ApiError {
    fn from(e: crate::broker::BrokerError) -> Self {
        ApiError::Unavailable(format!("message broker unavailable: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        let body = ErrorBody::new(self.code(), self.to_string());
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"granda\""),
            );
        }
        response
    }
}
