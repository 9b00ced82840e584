//! Request extractors that answer bad input with the API's JSON errors instead of plain text:
//! bodies ([`JsonBody`], [`RawBody`]), path parameters ([`Path`]) and query strings ([`Query`]).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: malformed JSON is 400, wrong or missing fields 422, too large 413.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(ApiError::rejected(r.status(), did_you_mean(r.body_text()))),
        }
    }
}

/// Defines `$name<T>`, the parts extractor `axum::extract::$name<T>` (for `T: $bound`) whose
/// rejection is the API's JSON error with axum's status and text.
macro_rules! parts_extractor {
    ($(#[$doc:meta])* $name:ident, $($bound:tt)+) => {
        $(#[$doc])*
        pub(crate) struct $name<T>(pub(crate) T);

        impl<S, T> FromRequestParts<S> for $name<T>
        where
            S: Send + Sync,
            T: $($bound)+,
        {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                match axum::extract::$name::<T>::from_request_parts(parts, state).await {
                    Ok(axum::extract::$name(v)) => Ok($name(v)),
                    Err(r) => Err(ApiError::rejected(r.status(), r.body_text())),
                }
            }
        }
    };
}

parts_extractor!(
    /// Path parameters, as `axum::extract::Path`, but a bad one (not UTF-8 once percent-decoded,
    /// such as `/v1/invocations/%ff%fe`; not a number where one is expected) is a 400 with the
    /// API's JSON error body, not axum's plain text.
    Path,
    DeserializeOwned + Send
);

parts_extractor!(
    /// A query string, as `axum::extract::Query`, but one that doesn't fit (a field given twice,
    /// a value of the wrong kind) is a 400 with the API's JSON error body.
    Query,
    DeserializeOwned
);

/// serde's "unknown field `timeout`, expected one of `name`, `image`, …" as "unknown field
/// `timeout`: did you mean `timeout_ms`?" when one valid field is close; unchanged otherwise.
fn did_you_mean(text: String) -> String {
    let Some(at) = text.find("unknown field `") else {
        return text;
    };
    let rest = &text[at + "unknown field `".len()..];
    let Some((field, rest)) = rest.split_once('`') else {
        return text;
    };
    let Some(expected) = rest.strip_prefix(", expected one of ") else {
        return text;
    };
    let valid = expected
        .split(", ")
        .map(|v| v.split(" at line").next().unwrap_or(v).trim_matches('`'));
    let closest = valid
        .map(|v| (strsim::jaro_winkler(field, v), v))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, v)) => format!(
            "{}unknown field `{field}`: did you mean `{v}`?",
            &text[..at]
        ),
        None => text,
    }
}

/// A raw body of any type, up to the configured size (413 above it).
pub(crate) struct RawBody(pub(crate) Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(r) => Err(ApiError::rejected(r.status(), r.body_text())),
        }
    }
}

/// The `Idempotency-Key` header: `None` when absent; 400 unless 1 to 255 printable ASCII
/// characters (no tab or other control character).
pub(crate) fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && crate::message::header_safe(k))
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn an_unknown_field_names_the_closest_valid_one() {
        let serde = "Failed to deserialize the JSON body into the target type: unknown field \
                     `timeout`, expected one of `name`, `image`, `timeout_ms`, `memory_mb` at line 1 column 30";
        let said = did_you_mean(serde.to_string());
        assert!(
            said.ends_with("unknown field `timeout`: did you mean `timeout_ms`?"),
            "{said}"
        );
        assert!(!said.contains("memory_mb"), "{said}");
        // Nothing close: the list stays.
        let far = "unknown field `zzz`, expected one of `name`, `image`";
        assert_eq!(did_you_mean(far.to_string()), far);
    }
}
