//! CORS for a function's URL: with a `cors` field, Granda answers a browser's preflight
//! (`OPTIONS` with `Access-Control-Request-Method`) itself, and adds
//! `Access-Control-Allow-Origin` to the function's answers for an allowed `Origin`. Without it,
//! an `OPTIONS` call goes to the function like any other method.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::function::{Cors, Function};

/// What `Access-Control-Allow-Origin` says to the request's origin, if the function's CORS rules
/// allow it: `*` when they allow any origin (so browsers never send credentials: a `*` answer
/// to a credentialed request is refused), else the origin itself.
fn allowed_origin(cors: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    if cors.allow_origins.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    cors.allow_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

/// Granda's answer to a preflight of `function`'s URL: `None` when it is not one (no `cors`
/// field, or no `Access-Control-Request-Method`), for the function to answer.
pub(crate) fn preflight(function: &Function, headers: &HeaderMap) -> Option<Response> {
    let cors = function.cors.as_ref()?;
    let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = allowed_origin(cors, headers) else {
        // Not allowed: no Access-Control-* headers, and the browser refuses the call.
        return Some(response);
    };
    let method_ok = asked
        .to_str()
        .is_ok_and(|m| cors.allow_methods.iter().any(|a| a.eq_ignore_ascii_case(m)));
    if !method_ok {
        return Some(response);
    }
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if let Ok(v) = HeaderValue::from_str(&cors.allow_methods.join(", ")) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !cors.allow_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.allow_headers.join(", "))
    {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age_s.unwrap_or(600)),
    );
    Some(response)
}

/// Adds `Access-Control-Allow-Origin` (and `Vary: Origin`) to an answer of `function`'s URL to
/// an allowed origin. With a `cors` field Granda alone says who may read the answer: the
/// function's own `Access-Control-Allow-Origin` is dropped, and so is its
/// `Access-Control-Allow-Credentials` when any origin is allowed (`*`).
pub(crate) fn allow(function: &Function, headers: &HeaderMap, response: &mut Response) {
    let Some(cors) = function.cors.as_ref() else {
        return;
    };
    let out = response.headers_mut();
    out.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    out.append(header::VARY, HeaderValue::from_static("Origin"));
    let allowed = allowed_origin(cors, headers);
    if allowed.is_none() || cors.allow_origins.iter().any(|o| o == "*") {
        out.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    }
    if let Some(origin) = allowed {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
}
