//! Dashboard login and the dashboard's web safety.
//!
//! A key typed into `/ui/login` is checked by [`verify_key`] and becomes a random session token
//! in an HttpOnly, SameSite=Strict cookie; Postgres keeps only its SHA-256 (`ui_sessions`), so any
//! ingress can serve any session and a leaked table logs nobody in.
//!
//! - **Bound to its key.** A session row carries the id of the API key that made it (`key_id`);
//!   every lookup joins the key and refuses the session once the key is revoked, and revoking
//!   deletes the key's sessions in the same transaction (`keys::revoke`). `GRANDA_ADMIN_KEY` is a
//!   stored key like any other (named `GRANDA_ADMIN_KEY`), so its sessions are bound to its row.
//!   With `GRANDA_AUTH=off` a session has no key and is valid only while auth stays off.
//! - **Namespace.** A session acts in one namespace ([`crate::namespace`]), as an API request
//!   does (`auth::Acting`): a session of a key bound to a namespace acts only there (another
//!   namespace's function, record, webhook or schedule is 404, as in the API); a global key's
//!   session acts in the one it chose with the switcher (`POST /ui/namespace`, kept on its row,
//!   `default` until then). A function's name in a dashboard path is resolved in the session's
//!   namespace ([`Session::function`]).
//! - **Scope.** A session has its key's scope, and pages ask the API's policy
//!   (`auth::permits`) what it may see and do; a page or form beyond it is 403.
//! - **CSRF.** Every form of a session carries a hidden `csrf` token: the SHA-256 of a fixed label
//!   and the session token, so it is per session, needs no storage, and can't be made without the
//!   HttpOnly cookie. [`super::guard::protect`] checks it on every POST but the login form, and refuses any POST
//!   (login included) that a browser marks as cross-site (`Sec-Fetch-Site`) or whose `Origin` is
//!   not this server: 403, nothing done.
//! - **Bodies.** No form body is read before its session is known: a cookie of no live session
//!   goes to the login form unread; a session's forms are read up to [`super::guard::FORM_CAP`] (64 KiB), but
//!   for the function, invoke and source forms its scope may use (up to `GRANDA_MAX_BODY_BYTES`).
//!   The login form is read within [`super::guard::FORM_CAP`] and the shared budget of unauthenticated bodies
//!   ([`crate::producer::budget`]).
//! - **Where to after login.** `next` is followed only when it is a plain local dashboard path
//!   (`/ui…`, visible ASCII, no `//`, `\`, dot segments); anything else lands on `/ui`.
//!
//! Layout: the session itself here; the guard of form posts in `guard`, logging in and out in
//! `login`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{BASE, UiError};
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::namespace::Namespace;
use crate::producer::AppState;
use crate::producer::auth::{Acting, Action, permits};

/// The session cookie's name.
pub(crate) const COOKIE: &str = crate::keys::SESSION_COOKIE;
/// The hidden form field that carries the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";
/// How long a session lasts.
pub(super) const SESSION_HOURS: i64 = 12;

/// What a logged-in key may do: the API key's own scope.
pub(crate) use crate::keys::Scope;

/// A key that passed [`verify_key`].
#[derive(Clone, Debug)]
pub(crate) struct Verified {
    pub(crate) scope: Scope,
    /// The key store's id of the key; none only with `GRANDA_AUTH=off`.
    pub(crate) key_id: Option<Uuid>,
}

/// Decides whether `key` may log in to the dashboard, and as what: a live API key, with its
/// scope; with `GRANDA_AUTH=off`, any non-empty key, as `admin`.
pub(crate) async fn verify_key(app: &AppState, key: &str) -> Result<Option<Verified>, ApiError> {
    let key = key.trim();
    if key.is_empty() {
        return Ok(None);
    }
    if app.settings.auth == AuthMode::Off {
        return Ok(Some(Verified {
            scope: Scope::Admin,
            key_id: None,
        }));
    }
    // A key bound to a namespace logs in too: its session acts only in its namespace. A key
    // bound to functions does not (its pages would show the namespace's other functions).
    Ok(crate::keys::lookup(&app.pool, key)
        .await?
        .filter(|live| live.functions.is_none())
        .map(|live| Verified {
            scope: live.scope,
            key_id: Some(live.id),
        }))
}

/// A logged-in dashboard user; as an extractor, pages without one redirect to the login form.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) scope: Scope,
    /// The key the session was made with (none with `GRANDA_AUTH=off`).
    pub(crate) key_id: Option<Uuid>,
    /// This session's CSRF token, for the hidden field of its forms.
    pub(crate) csrf: String,
    /// Where the session acts: its key's namespace, or the one a global session chose; the key
    /// (kept on the records of the calls it makes).
    pub(crate) acting: Acting,
    /// A global session's choice of namespaces for the switcher (empty for a bound one).
    pub(crate) namespaces: Vec<String>,
}

impl Session {
    /// The namespace this session acts in.
    pub(crate) fn namespace(&self) -> &Namespace {
        &self.acting.namespace
    }

    /// Whether the session's key is bound to its namespace (it sees no other, nor the
    /// installation's queues and workers).
    pub(crate) fn bound(&self) -> bool {
        self.acting.bound
    }

    /// The stored name of the function a dashboard path or form names, in this session's
    /// namespace: a short name (`echo`), or a stored name already in it (`echo.team-b`, as the
    /// dashboard's links name functions). A name of another namespace resolves to a name no
    /// function has.
    pub(crate) fn function(&self, name: &str) -> String {
        if name.contains('.') && self.acting.holds(name) {
            name.to_string()
        } else {
            self.acting.function(name)
        }
    }

    /// Whether the stored function name `qualified` is in this session's namespace.
    pub(crate) fn holds(&self, qualified: &str) -> bool {
        self.acting.holds(qualified)
    }

    /// 404 unless the session's key is global (for installation-wide pages).
    pub(crate) fn global_only(&self) -> Result<(), UiError> {
        self.acting.global_only().map_err(UiError)
    }

    /// Whether the API's policy lets this session's scope do `action`.
    pub(crate) fn may(&self, action: Action) -> bool {
        permits(self.scope, action)
    }

    /// 403 unless the session may do `action`.
    pub(crate) fn require(&self, action: Action) -> Result<(), UiError> {
        if self.may(action) {
            Ok(())
        } else {
            Err(UiError(ApiError::Forbidden(format!(
                "this key's scope is {}; this page needs an admin key",
                self.scope.as_str()
            ))))
        }
    }

    /// The hidden field every form of this session carries.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name=(CSRF_FIELD) value=(self.csrf); }
    }
}

/// A session that may manage functions; as an extractor, 403 for any other session, before the
/// body is read.
#[derive(Clone, Debug)]
pub(crate) struct Admin(pub(crate) Session);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let session = Session::from_request_parts(parts, app).await?;
        session
            .require(Action::Manage)
            .map_err(IntoResponse::into_response)?;
        Ok(Admin(session))
    }
}

pub(super) fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The CSRF token of the session whose cookie holds `token`.
pub(super) fn csrf_token(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"granda dashboard csrf\0");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// The session token in the request's cookies, if any.
pub(super) fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Where a request without a live session goes: the login form, coming back to `uri` after.
pub(super) fn to_login(uri: &axum::http::Uri) -> Response {
    // Nesting strips the prefix from the URI this sees, and `/ui` arrives as `/`.
    let seen = uri.path_and_query().map_or("", |p| p.as_str());
    let next = match seen.strip_prefix('/') {
        Some(rest) if rest.is_empty() || rest.starts_with('?') => format!("{BASE}{rest}"),
        _ => format!("{BASE}{seen}"),
    };
    see_other(&format!("{BASE}/login?next={}", urlencode(&next)))
}

/// A live session as stored: its key's scope, the key, where it acts and, for a global one,
/// the namespaces it may switch to.
pub(super) struct Found {
    pub(super) scope: Scope,
    acting: Acting,
    namespaces: Vec<String>,
}

/// The live session whose cookie holds `token`.
pub(super) async fn lookup(app: &AppState, token: &str) -> Result<Option<Found>, UiError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        scope: String,
        key_id: Option<Uuid>,
        /// The key's namespace (bound), else the one the session chose.
        bound_to: Option<String>,
        chosen: Option<String>,
        namespaces: Vec<String>,
    }
    // The key must still be live; a session without a key only while auth is off.
    let row: Option<Row> = sqlx::query_as(
        "SELECT COALESCE(k.scope, s.scope) AS scope, s.key_id, k.namespace AS bound_to,
                s.namespace AS chosen,
                CASE WHEN k.namespace IS NULL
                     THEN ARRAY(SELECT name FROM namespaces ORDER BY name)
                     ELSE ARRAY[]::text[] END AS namespaces
         FROM ui_sessions s
         LEFT JOIN api_keys k ON k.id = s.key_id AND k.revoked_at IS NULL
         WHERE s.token_hash = $1 AND s.expires_at > now()
           AND (k.id IS NOT NULL OR (s.key_id IS NULL AND $2))",
    )
    .bind(hash(token))
    .bind(app.settings.auth == AuthMode::Off)
    .fetch_optional(&app.pool)
    .await?;
    Ok(row.map(|row| {
        let bound = row.bound_to.is_some();
        let namespace = row
            .bound_to
            .or(row.chosen)
            .and_then(|n| Namespace::parse(&n))
            .unwrap_or_else(Namespace::default_ns);
        Found {
            scope: Scope::parse(&row.scope).unwrap_or(Scope::Invoke),
            acting: Acting {
                namespace,
                bound,
                key_id: row.key_id,
                functions: None,
            },
            namespaces: row.namespaces,
        }
    }))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        // Once per request: the page's loaders (`loaded`) ask for it again.
        if let Some(session) = parts.extensions.get::<Session>() {
            return Ok(session.clone());
        }
        let Some(token) = token(&parts.headers) else {
            return Err(to_login(&parts.uri));
        };
        match lookup(app, &token)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Some(found) => {
                let session = Session {
                    scope: found.scope,
                    key_id: found.acting.key_id,
                    csrf: csrf_token(&token),
                    acting: found.acting,
                    namespaces: found.namespaces,
                };
                parts.extensions.insert(session.clone());
                Ok(session)
            }
            None => Err(to_login(&parts.uri)),
        }
    }
}

/// A 303 to `location`, or to the dashboard when it can't be a header (never a panic).
pub(super) fn see_other(location: &str) -> Response {
    let value = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static(BASE));
    (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response()
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
    fn csrf_tokens_are_per_session_and_not_the_session() {
        let (a, b) = (csrf_token("one"), csrf_token("two"));
        assert_ne!(a, b);
        assert_eq!(a, csrf_token("one"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, hex::encode(hash("one")));
    }
}
