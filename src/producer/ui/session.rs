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
//!   HttpOnly cookie. [`protect`] checks it on every POST but the login form, and refuses any POST
//!   (login included) that a browser marks as cross-site (`Sec-Fetch-Site`) or whose `Origin` is
//!   not this server: 403, nothing done.
//! - **Bodies.** No form body is read before its session is known: a cookie of no live session
//!   goes to the login form unread; a session's forms are read up to [`FORM_CAP`] (64 KiB), but
//!   for the function, invoke and source forms its scope may use (up to `GRANDA_MAX_BODY_BYTES`).
//!   The login form is read within [`FORM_CAP`] and the shared budget of unauthenticated bodies
//!   ([`crate::producer::budget`]).
//! - **Where to after login.** `next` is followed only when it is a plain local dashboard path
//!   (`/ui…`, visible ASCII, no `//`, `\`, dot segments); anything else lands on `/ui`.

use axum::Form;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{BASE, UiError, layout, with_status};
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
const SESSION_HOURS: i64 = 12;

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

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The CSRF token of the session whose cookie holds `token`.
fn csrf_token(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"granda dashboard csrf\0");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
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

/// Where a request without a live session goes: the login form, coming back to `uri` after.
fn to_login(uri: &axum::http::Uri) -> Response {
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
struct Found {
    scope: Scope,
    acting: Acting,
    namespaces: Vec<String>,
}

/// The live session whose cookie holds `token`.
async fn lookup(app: &AppState, token: &str) -> Result<Option<Found>, UiError> {
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
fn see_other(location: &str) -> Response {
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

/// Only plain local dashboard paths are followed after login (no open redirect, no header
/// injection); anything else is replaced with [`BASE`].
fn safe_next(next: Option<&str>) -> String {
    let Some(n) = next else {
        return BASE.to_string();
    };
    let Some(rest) = n.strip_prefix(BASE) else {
        return BASE.to_string();
    };
    let path = n.split(['?', '#']).next().unwrap_or("");
    let ok = (rest.is_empty() || rest.starts_with(['/', '?', '#']))
        && n.bytes().all(|b| b.is_ascii_graphic())
        && !n.contains('\\')
        && !n.contains("//")
        && !path.to_ascii_lowercase().contains("%2e")
        && !path.split('/').any(|seg| seg == "." || seg == "..");
    if ok { n.to_string() } else { BASE.to_string() }
}

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

#[derive(Debug, Default, Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    key: String,
    next: Option<String>,
}

fn login_page(next: &str, error: Option<&str>) -> axum::response::Html<String> {
    layout(
        "Log in",
        None,
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
pub(crate) async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    login_page(&safe_next(q.next.as_deref()), None).into_response()
}

/// `POST /ui/login`: checks the key, stores a session bound to it and sets its cookie.
pub(crate) async fn login(
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
    let secure = if app.settings.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={token}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    // Everything that could fail without a database is settled before the session is stored.
    let cookie = HeaderValue::from_str(&cookie).map_err(|_| {
        UiError(ApiError::Internal(anyhow::anyhow!(
            "a session cookie that is no header"
        )))
    })?;
    let mut response = see_other(&next);
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    // The key must still be live when the session is stored (a revoke in between ends it).
    let stored = sqlx::query(
        "INSERT INTO ui_sessions (token_hash, scope, key_id, expires_at)
         SELECT $1, $2, $3, now() + make_interval(hours => $4::int)
         WHERE $3::uuid IS NULL
            OR EXISTS (SELECT 1 FROM api_keys WHERE id = $3 AND revoked_at IS NULL)",
    )
    .bind(hash(&token))
    .bind(verified.scope.as_str())
    .bind(verified.key_id)
    .bind(SESSION_HOURS as i32)
    .execute(&app.pool)
    .await?;
    if stored.rows_affected() != 1 {
        return Ok(with_status(
            StatusCode::UNAUTHORIZED,
            login_page(&next, Some("That key is not valid.")),
        ));
    }
    // Old sessions go whenever someone logs in: no sweeper needed.
    sqlx::query("DELETE FROM ui_sessions WHERE expires_at < now()")
        .execute(&app.pool)
        .await?;
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SwitchForm {
    namespace: String,
}

/// `POST /ui/namespace`: a global session acts in another namespace from now on (kept on its
/// row); every page then shows that namespace's functions and records. 404 for a session bound
/// to a namespace (it has no other) and for a namespace that does not exist.
pub(crate) async fn switch(
    session: Session,
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SwitchForm>,
) -> Result<Response, UiError> {
    session.global_only()?;
    let missing = || {
        UiError(ApiError::NotFound(format!(
            "no namespace named {:?}",
            form.namespace
        )))
    };
    let ns = Namespace::parse(form.namespace.trim()).ok_or_else(missing)?;
    if !crate::namespace::exists(&app.pool, ns.as_str()).await? {
        return Err(missing());
    }
    let token = token(&headers).unwrap_or_default();
    sqlx::query("UPDATE ui_sessions SET namespace = $2 WHERE token_hash = $1")
        .bind(hash(&token))
        .bind((!ns.is_default()).then(|| ns.as_str()))
        .execute(&app.pool)
        .await?;
    Ok(see_other(BASE))
}

/// `POST /ui/logout`: forgets the session.
pub(crate) async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    if let Some(token) = token(&headers) {
        sqlx::query("DELETE FROM ui_sessions WHERE token_hash = $1")
            .bind(hash(&token))
            .execute(&app.pool)
            .await?;
    }
    let mut response = see_other(&format!("{BASE}/login"));
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
        assert_eq!(safe_next(Some("/ui")), "/ui");
        assert_eq!(safe_next(Some("/ui?x=1")), "/ui?x=1");
        assert_eq!(
            safe_next(Some("/ui/functions/a?b=c")),
            "/ui/functions/a?b=c"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/ui",
            "/\\evil.example",
            "/ui\\evil",
            "/ui/\\evil",
            "/ui\r\nX-Injected: 1",
            "/ui/\tx",
            "/ui x",
            "/uix",
            "/ui/../v1/keys",
            "/ui/%2e%2e/v1/keys",
            "/ui/./x",
            "/ui//evil",
            "/ui?u=http://evil",
            "/ui/é",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn csrf_tokens_are_per_session_and_not_the_session() {
        let (a, b) = (csrf_token("one"), csrf_token("two"));
        assert_ne!(a, b);
        assert_eq!(a, csrf_token("one"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, hex::encode(hash("one")));
    }

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
