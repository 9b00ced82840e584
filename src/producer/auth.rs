//! Who may call what: bearer API keys checked by a middleware in front of every route.
//!
//! | routes | need |
//! |---|---|
//! | `/healthz`, `/readyz`, `/openapi.json` | nothing |
//! | `/hooks/*` | nothing here: each webhook checks its own signature |
//! | `POST /fn/{name}` | nothing if the function is `public`, else an `invoke` or `admin` key |
//! | `POST /v1/functions/{name}/invoke`, `POST /v1/functions/{name}/invocations`, `GET /v1/invocations/{id}`, `POST /v1/events/{topic}` | an `invoke` or `admin` key |
//! | everything else (`/v1/*` management, `/metrics`, unknown paths) | an `admin` key |
//!
//! No key, a malformed one, an unknown or a revoked one: 401 with `WWW-Authenticate: Bearer`.
//! A live key whose scope is not enough: 403.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::keys::{self, Scope};

/// What a request needs before it reaches its handler.
#[derive(Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    Key(Scope),
    /// A function's own URL: open if the function is public, else an `invoke` key.
    FunctionUrl(String),
}

/// The class of a route, from its method and raw path. Anything not listed needs `admin`.
pub fn needs(method: &Method, path: &str) -> Needs {
    // `/ui` has its own login and session cookie (a browser sends no bearer header).
    if matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/ui")
        || path.starts_with("/hooks/")
        || path.starts_with("/ui/")
    {
        return Needs::Nothing;
    }
    if let Some(name) = path.strip_prefix("/fn/")
        && !name.is_empty()
        && !name.contains('/')
    {
        return Needs::FunctionUrl(name.to_string());
    }
    let segments: Vec<&str> = path.split('/').collect();
    let invoke = match segments.as_slice() {
        ["", "v1", "functions", _, "invoke"] => true,
        ["", "v1", "functions", _, "invocations"] => method == Method::POST,
        ["", "v1", "invocations", _] => true,
        ["", "v1", "events", _] => method == Method::POST,
        _ => false,
    };
    Needs::Key(if invoke { Scope::Invoke } else { Scope::Admin })
}

/// The bearer token of a request: `Ok(None)` without an `Authorization` header.
fn bearer(request: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <API key>`".into(),
        )),
    }
}

/// The middleware: lets a request through or answers 401/403. Never logs or echoes the key.
pub async fn require(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if app.settings.auth == AuthMode::Off {
        return Ok(next.run(request).await);
    }
    let needed = match needs(request.method(), request.uri().path()) {
        Needs::Nothing => return Ok(next.run(request).await),
        Needs::FunctionUrl(name) => {
            if is_public(&app, &name).await? {
                return Ok(next.run(request).await);
            }
            Scope::Invoke
        }
        Needs::Key(scope) => scope,
    };
    let token = bearer(&request)?.ok_or_else(|| {
        ApiError::Unauthorized("an API key is needed: Authorization: Bearer <key>".into())
    })?;
    let scope = verify(&app, token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API key".into()))?;
    if !scope.allows(needed) {
        return Err(ApiError::Forbidden(format!(
            "this key's scope is {}; this route needs {}",
            scope.as_str(),
            needed.as_str()
        )));
    }
    Ok(next.run(request).await)
}

/// The scope of a live key, from what this process read in the last second or from Postgres.
async fn verify(app: &AppState, token: &str) -> Result<Option<keys::Scope>, sqlx::Error> {
    let hash = keys::hash(token);
    if let Some(scope) = app.recent.key(&hash) {
        return Ok(Some(scope));
    }
    let scope = keys::verify(&app.pool, token).await?;
    if let Some(scope) = scope {
        app.recent.remember_key(hash, scope);
    }
    Ok(scope)
}

async fn is_public(app: &AppState, name: &str) -> Result<bool, ApiError> {
    match super::functions::load_for_call(app, name).await {
        Ok(f) => Ok(f.public),
        Err(ApiError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fall_into_their_classes() {
        let admin = Needs::Key(Scope::Admin);
        let invoke = Needs::Key(Scope::Invoke);
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needs(&get, "/healthz"), Needs::Nothing);
        assert_eq!(needs(&get, "/readyz"), Needs::Nothing);
        assert_eq!(needs(&get, "/openapi.json"), Needs::Nothing);
        assert_eq!(needs(&post, "/hooks/abc"), Needs::Nothing);
        assert_eq!(needs(&post, "/fn/echo"), Needs::FunctionUrl("echo".into()));
        assert_eq!(needs(&post, "/fn/echo/x"), admin);
        assert_eq!(needs(&post, "/v1/functions/echo/invoke"), invoke);
        assert_eq!(needs(&post, "/v1/functions/echo/invocations"), invoke);
        assert_eq!(needs(&get, "/v1/functions/echo/invocations"), admin);
        assert_eq!(needs(&get, "/v1/invocations/x"), invoke);
        assert_eq!(needs(&post, "/v1/events/orders.new"), invoke);
        assert_eq!(needs(&get, "/v1/functions"), admin);
        assert_eq!(needs(&post, "/v1/functions"), admin);
        assert_eq!(needs(&get, "/v1/keys"), admin);
        assert_eq!(needs(&get, "/metrics"), admin);
        assert_eq!(needs(&get, "/v1/functions/echo/invoke/"), admin);
        assert_eq!(needs(&get, "/nowhere"), admin);
    }
}
