//! The dashboard's guard of every form post: cross-site posts refused, no body read before its
//! session is known, bodies capped, and each session's CSRF token checked (see `session`'s doc).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::session::{CSRF_FIELD, csrf_token, lookup, to_login, token};
use super::{BASE, UiError};
use crate::error::ApiError;
use crate::producer::AppState;
use crate::producer::auth::{Action, permits};

/// Whether a browser says this request comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none`, or an `Origin` that is neither this request's host nor the public URL.
/// Requests without either header (not from a browser) pass.
fn cross_site(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    if origin.eq_ignore_ascii_case(public_url.trim_end_matches('/')) {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (origin_host, host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

fn forbidden(message: &str) -> Response {
    UiError(ApiError::Forbidden(message.into())).into_response()
}

/// The largest body of a dashboard form but [`large_form`]s, and of the login form.
pub(crate) const FORM_CAP: usize = 64 * 1024;

/// The forms that carry a function's env, an invocation's payload or a handler's source: up to
/// `GRANDA_MAX_BODY_BYTES`, for a session that may use them.
fn large_form(path: &str) -> Option<Action> {
    let path = path
        .strip_prefix(BASE)
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["functions", "new"] | ["functions", "new", "source"] | ["functions", _, "edit"] => {
            Some(Action::Manage)
        }
        ["functions", _, "invoke"] => Some(Action::Invoke),
        _ => None,
    }
}

/// A refusal as a dashboard page; a spent byte budget says when to try again.
fn refused(e: ApiError) -> Response {
    let unavailable = matches!(e, ApiError::Unavailable(_));
    let mut response = UiError(e).into_response();
    if unavailable {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Reads a form body of at most `cap` bytes; one announced larger is refused 413 unread.
async fn read_form(headers: &HeaderMap, body: Body, cap: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("the form is larger than {cap} bytes"));
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, cap)
        .await
        .map_err(|_| too_large())
}

/// The dashboard's guard for every POST under `/ui` (see the module doc). No body is read before
/// the session is known: the login form's (at most [`FORM_CAP`]) within the budget of
/// unauthenticated bodies, any other form's only for a live session, at most [`FORM_CAP`] but for
/// the [`large_form`]s its scope may use.
pub(crate) async fn protect(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        // Pages are reads; no other method is routed.
        return next.run(request).await;
    }
    if cross_site(request.headers(), &app.settings.public_url()) {
        return forbidden("a cross-site form post is refused");
    }
    // Nesting strips `/ui` from the path this sees.
    let path = request.uri().path().to_string();
    if path == "/login" || path == "/ui/login" {
        let (parts, body) = request.into_parts();
        let (bytes, reserved) = match app.body_budget.read(&parts.headers, body, FORM_CAP).await {
            Ok(read) => read,
            Err(e) => return refused(e),
        };
        let response = next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
        drop(reserved);
        return response;
    }
    let Some(token) = token(request.headers()) else {
        // No session: the handler sends the browser to the login form, unread.
        return next.run(request).await;
    };
    let scope = match lookup(&app, &token).await {
        Ok(Some(found)) => found.scope,
        // A cookie of no live session is no session: to the login form, unread.
        Ok(None) => return to_login(request.uri()),
        Err(e) => return e.into_response(),
    };
    let cap = match large_form(&path) {
        Some(action) if permits(scope, action) => app.settings.max_body_bytes,
        _ => FORM_CAP,
    };
    let expected = csrf_token(&token);
    let (parts, body) = request.into_parts();
    let bytes = match read_form(&parts.headers, body, cap).await {
        Ok(b) => b,
        Err(e) => return refused(e),
    };
    let presented = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !crate::keys::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return forbidden(
            "the form's CSRF token is missing or not this session's; reload the page",
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_site_posts_are_told_apart() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let public = "http://granda.example:8080";
        assert!(!cross_site(&h(&[]), public));
        assert!(!cross_site(
            &h(&[("sec-fetch-site", "same-origin")]),
            public
        ));
        assert!(!cross_site(&h(&[("sec-fetch-site", "none")]), public));
        assert!(cross_site(&h(&[("sec-fetch-site", "same-site")]), public));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")]), public));
        let local = [("host", "127.0.0.1:9"), ("origin", "http://127.0.0.1:9")];
        assert!(!cross_site(&h(&local), public));
        assert!(!cross_site(
            &h(&[
                ("host", "10.0.0.1"),
                ("origin", "http://granda.example:8080")
            ]),
            public
        ));
        assert!(cross_site(
            &h(&[("host", "127.0.0.1:9"), ("origin", "https://evil.example")]),
            public
        ));
        assert!(cross_site(
            &h(&[("host", "127.0.0.1:9"), ("origin", "null")]),
            public
        ));
    }
}
