//! Logging in to the dashboard, switching namespace and logging out (see `session`'s doc).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

use super::session::{COOKIE, SESSION_HOURS, Session, hash, see_other, token, verify_key};
use super::{BASE, UiError, layout, with_status};
use crate::error::ApiError;
use crate::namespace::Namespace;
use crate::producer::AppState;

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
}
