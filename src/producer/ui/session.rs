//! Dashboard login: a key typed into `/ui/login` is checked by [`verify_key`] and becomes a
//! random session token in an HttpOnly, SameSite=Strict cookie; Postgres keeps only its SHA-256
//! (`ui_sessions`), so any ingress can serve any session and a leaked table logs nobody in.
//!
//! [`verify_key`] is the one place that decides which keys may log in and with which scope. Until
//! API keys exist it accepts any non-empty key as `admin`; point it at the key store then.

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{BASE, UiError, layout, with_status};
use crate::error::ApiError;
use crate::producer::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "granda_session";
/// How long a session lasts.
const SESSION_HOURS: i64 = 12;

/// What a logged-in key may do: the API key's own scope.
pub use crate::keys::Scope;

/// A key that passed [`verify_key`].
#[derive(Clone, Debug)]
pub struct Verified {
    pub scope: Scope,
    /// The key store's id of the key, to show and to revoke sessions by (none without a store).
    pub key_id: Option<String>,
}

/// Decides whether `key` may log in to the dashboard, and as what.
///
/// There is no key store yet: every non-empty key logs in as `admin`. When API keys land, look
/// the key up there (its hash, its scope, revoked or not) and return `None` for an unknown key.
pub async fn verify_key(app: &AppState, key: &str) -> Result<Option<Verified>, ApiError> {
    let key = key.trim();
    if key.is_empty() {
        return Ok(None);
    }
    if app.settings.auth == crate::config::AuthMode::Off {
        return Ok(Some(Verified {
            scope: Scope::Admin,
            key_id: None,
        }));
    }
    let scope = crate::keys::verify(&app.pool, key).await?;
    Ok(scope.map(|s| Verified {
        scope: match s {
            crate::keys::Scope::Admin => Scope::Admin,
            crate::keys::Scope::Invoke => Scope::Invoke,
        },
        key_id: None,
    }))
}

/// A logged-in dashboard user; as an extractor, pages without one redirect to the login form.
#[derive(Clone, Debug)]
pub struct Session {
    pub scope: Scope,
}

impl Session {
    /// 403 unless the session may change functions.
    pub fn require_admin(&self) -> Result<(), UiError> {
        match self.scope {
            Scope::Admin => Ok(()),
            Scope::Invoke => Err(UiError(ApiError::Unauthorized(
                "this key may look and invoke, not change functions".into(),
            ))),
        }
    }
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The session token in the request's cookies, if any.
fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let to_login = || {
            // Nesting strips the prefix from the URI this sees, and `/ui` arrives as `/`.
            let seen = parts.uri.path_and_query().map_or("", |p| p.as_str());
            let next = match seen.strip_prefix('/') {
                Some(rest) if rest.is_empty() || rest.starts_with('?') => format!("{BASE}{rest}"),
                _ => format!("{BASE}{seen}"),
            };
            let target = format!("{BASE}/login?next={}", urlencode(&next));
            Redirect::to(&target).into_response()
        };
        let Some(token) = token(&parts.headers) else {
            return Err(to_login());
        };
        let scope: Option<String> = sqlx::query_scalar(
            "SELECT scope FROM ui_sessions WHERE token_hash = $1 AND expires_at > now()",
        )
        .bind(hash(&token))
        .fetch_optional(&app.pool)
        .await
        .map_err(|e| UiError::from(e).into_response())?;
        match scope {
            Some(scope) => Ok(Session {
                scope: Scope::parse(&scope).unwrap_or(Scope::Invoke),
            }),
            None => Err(to_login()),
        }
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only same-site dashboard paths are followed after login (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with(BASE) && !n.starts_with("//") && !n.contains("://") => {
            n.to_string()
        }
        _ => BASE.to_string(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
    next: Option<String>,
}

fn login_page(next: &str, error: Option<&str>) -> axum::response::Html<String> {
    layout(
        "Log in",
        false,
        html! {
            h1 { "Log in" }
            div.card {
                form.stack method="post" action={ (BASE) "/login" } {
                    @if let Some(error) = error { p.error { (error) } }
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="current-password" required autofocus;
                    input type="hidden" name="next" value=(next);
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// `GET /ui/login`.
pub async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    login_page(&safe_next(q.next.as_deref()), None).into_response()
}

/// `POST /ui/login`: checks the key, stores a session and sets its cookie.
pub async fn login(
    State(app): State<AppState>,
    Form(form): Form<LoginForm>,
) -> Result<Response, UiError> {
    let next = safe_next(form.next.as_deref());
    let Some(verified) = verify_key(&app, &form.key).await? else {
        return Ok(with_status(
            StatusCode::UNAUTHORIZED,
            login_page(&next, Some("That key is not valid.")),
        ));
    };
    let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    sqlx::query(
        "INSERT INTO ui_sessions (token_hash, scope, key_id, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(hours => $4::int))",
    )
    .bind(hash(&token))
    .bind(verified.scope.as_str())
    .bind(&verified.key_id)
    .bind(SESSION_HOURS as i32)
    .execute(&app.pool)
    .await?;
    // Old sessions go whenever someone logs in: no sweeper needed.
    sqlx::query("DELETE FROM ui_sessions WHERE expires_at < now()")
        .execute(&app.pool)
        .await?;
    let secure = if app.settings.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={token}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// `POST /ui/logout`: forgets the session.
pub async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, UiError> {
    if let Some(token) = token(&headers) {
        sqlx::query("DELETE FROM ui_sessions WHERE token_hash = $1")
            .bind(hash(&token))
            .execute(&app.pool)
            .await?;
    }
    let mut response = Redirect::to(&format!("{BASE}/login")).into_response();
    let cookie = format!("{COOKIE}=; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; granda_session=abc; b=2"),
        );
        assert_eq!(token(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn follows_only_dashboard_paths_after_login() {
        assert_eq!(safe_next(Some("/ui/queues")), "/ui/queues");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui");
        assert_eq!(safe_next(Some("//evil.example/ui")), "/ui");
        assert_eq!(safe_next(None), "/ui");
    }
}
