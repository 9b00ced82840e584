//! Origins: a function's page must never act as the dashboard.
//!
//! A function's answer is content its author wrote (HTML, scripts, `Set-Cookie`), served to
//! whoever opens its URL, the installation's admins included. Two ways keep it from reading or
//! posting to `/ui` with an admin's session:
//!
//! - **Two origins** (`GRANDA_FUNCTIONS_URL` names an origin other than `GRANDA_PUBLIC_URL`'s),
//!   as GitHub serves user content from `githubusercontent.com`: a request for the functions'
//!   host is served only `/fn/*` (and `/healthz`), and a request for any other host is refused
//!   `/fn/*`, so the dashboard's cookie never travels with a function's page and the page's
//!   scripts run in another origin.
//! - **One origin** (the default): every function answer carries
//!   `Content-Security-Policy: sandbox …` without `allow-same-origin` ([`SANDBOX`]), so the
//!   browser runs the page in an opaque origin that can't read `/ui` or send it the session
//!   cookie (which is `SameSite=Strict` besides).
//!
//! Either way, a function's `Set-Cookie` for the session cookie's name is dropped (no session
//! fixation, no forced logout) and its answers are `nosniff`. A function answer reached through
//! the API (`POST /v1/functions/{name}/invoke`) is on the API's origin, so it is always sandboxed.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Settings;
use crate::error::ApiError;
use crate::keys::SESSION_COOKIE;

/// The CSP of a function's answer on a shared origin: scripts, forms, popups and downloads may
/// stay, the page's origin may not (no `allow-same-origin`).
pub(crate) const SANDBOX: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// How the API and the dashboard share the host with the functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origins {
    /// One origin for all: function answers are sandboxed.
    One,
    /// The functions on their own origin; `functions` is its authority (`host[:port]`, the port
    /// only when it is not the scheme's default), lowercase.
    Two { functions: String },
}

impl Origins {
    pub(crate) fn of(settings: &Settings) -> Origins {
        let Some(functions) = settings.functions_url.as_deref() else {
            return Origins::One;
        };
        let origin = |url: &str| url::Url::parse(url).ok().map(|u| u.origin());
        match (origin(functions), origin(&settings.public_url())) {
            (Some(f), Some(p)) if f != p => match url::Url::parse(functions) {
                Ok(u) => Origins::Two {
                    functions: authority(&u),
                },
                Err(_) => Origins::One,
            },
            _ => Origins::One,
        }
    }

    /// Whether function answers must be sandboxed: on a shared origin.
    pub(crate) fn sandboxed(&self) -> bool {
        matches!(self, Origins::One)
    }
}

/// `host[:port]` of `url`, lowercase, the port left out when it is the scheme's default.
fn authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The authority a request asked for: its `Host` (HTTP/1.1) or its URI's (HTTP/2), lowercase,
/// with a default port left out.
fn asked(request: &Request) -> String {
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    match raw.strip_suffix(":80").or_else(|| raw.strip_suffix(":443")) {
        Some(bare) => bare.to_string(),
        None => raw,
    }
}

/// The middleware that keeps each origin to its own paths (a no-op on one origin).
pub(crate) async fn separate(
    State(origins): State<Origins>,
    request: Request,
    next: Next,
) -> Response {
    let Origins::Two { functions } = &origins else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let function_path = path.starts_with("/fn/");
    if asked(&request) == *functions {
        if !function_path && path != "/healthz" {
            return ApiError::NotFound(
                "this origin serves functions only (/fn/{name}); the API and the dashboard are \
                 at the installation's public URL"
                    .into(),
            )
            .into_response();
        }
    } else if function_path {
        return ApiError::NotFound(format!(
            "functions are served on their own origin: http(s)://{functions}/fn/{{name}}"
        ))
        .into_response();
    }
    next.run(request).await
}

/// Makes a function's answer safe to serve: its `Set-Cookie` for the session cookie dropped,
/// `nosniff`, and, when `sandboxed`, the sandbox CSP added to whatever policy it set itself
/// (browsers enforce every policy given, so the function can't loosen it).
pub(crate) fn guard(headers: &mut HeaderMap, sandboxed: bool) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !sets_session(v))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if sandboxed {
        headers.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(SANDBOX),
        );
    }
}

/// Whether a `Set-Cookie` value sets (or clears) the dashboard's session cookie. Browsers match
/// cookie names exactly, but a name in another case or with spaces is dropped as well.
fn sets_session(value: &HeaderValue) -> bool {
    let text = String::from_utf8_lossy(value.as_bytes());
    let name = text.split(['=', ';']).next().unwrap_or_default().trim();
    name.eq_ignore_ascii_case(SESSION_COOKIE)
        || name
            .to_ascii_lowercase()
            .trim_start_matches("__host-")
            .trim_start_matches("__secure-")
            == SESSION_COOKIE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(public: &str, functions: Option<&str>) -> Settings {
        let mut s = Settings::from_env();
        s.public_url = Some(public.into());
        s.functions_url = functions.map(str::to_string);
        s
    }

    #[test]
    fn two_origins_only_when_the_functions_url_names_another_origin() {
        assert_eq!(
            Origins::of(&settings("https://granda.example", None)),
            Origins::One
        );
        assert_eq!(
            Origins::of(&settings(
                "https://granda.example",
                Some("https://granda.example/")
            )),
            Origins::One
        );
        assert_eq!(
            Origins::of(&settings(
                "https://granda.example",
                Some("https://FN.example-content.com")
            )),
            Origins::Two {
                functions: "fn.example-content.com".into()
            }
        );
        assert_eq!(
            Origins::of(&settings(
                "http://127.0.0.1:8080",
                Some("http://127.0.0.1:8081")
            )),
            Origins::Two {
                functions: "127.0.0.1:8081".into()
            }
        );
    }

    #[test]
    fn a_function_can_not_set_the_session_cookie() {
        let mut headers = HeaderMap::new();
        for c in [
            "granda_session=evil; Path=/ui",
            "Granda_Session=x",
            " granda_session =x",
            "__Host-granda_session=x",
            "theme=dark; Path=/",
        ] {
            headers.append(header::SET_COOKIE, HeaderValue::from_str(c).unwrap());
        }
        guard(&mut headers, true);
        let left: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(left, vec!["theme=dark; Path=/"]);
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], SANDBOX);
        assert!(!SANDBOX.contains("allow-same-origin"));
        let mut two = HeaderMap::new();
        guard(&mut two, false);
        assert!(two.get(header::CONTENT_SECURITY_POLICY).is_none());
        assert_eq!(two[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}
