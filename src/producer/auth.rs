//! Who may call what: bearer API keys checked by a middleware in front of every route.
//!
//! | routes | need |
//! |---|---|
//! | `/` (an index, or a redirect to `/ui`), `/healthz`, `/readyz`, `/openapi.json` | nothing |
//! | `/hooks/*` | nothing here: each webhook checks its own signature |
//! | `/fn/{name}`, `/fn/{name}/{*path}` (any method) | nothing if the function is `public`, else an `invoke` or `admin` key |
//! | `POST /v1/functions/{name}/invoke`, `POST /v1/functions/{name}/invocations`, `GET /v1/invocations/{id}`, `POST /v1/events/{topic}`, `GET /v1/events/{id}` | an `invoke` or `admin` key |
//! | everything else (`/v1/*` management, `/metrics`, unknown paths) | an `admin` key |
//!
//! No key, a malformed one, an unknown or a revoked one: 401 with `WWW-Authenticate: Bearer`.
//! A live key whose scope is not enough: 403.
//!
//! What each scope may do is decided in one place, [`permits`], over [`Action`]s. The API maps
//! each route to an action ([`needs`]); the dashboard (`ui`) maps each page, form and link to one
//! and asks the same function, so an `invoke` session sees what an `invoke` key sees: it may run
//! functions and read an invocation by its id, never a function's definition (image, env,
//! callback URL), history, queues or metrics.
//!
//! The middleware leaves a [`Caller`] in the request's extensions: who the handler is answering
//! (an anonymous caller of a public function gets less detail of a failed run than a key does).

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::keys::{self, Scope};

/// What a caller asks to do. [`permits`] says which scopes may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run a function (sync, async, its own URL) or publish an event.
    Invoke,
    /// Read one invocation record, or one event (what publishing answered with: its `status_url`),
    /// by its id.
    ReadInvocation,
    /// Read functions' definitions (image, env, callback URL, limits), list them, their
    /// invocation history and statistics.
    ReadFunctions,
    /// Create, change or delete functions, keys, webhooks, subscriptions; retry invocations.
    Manage,
    /// Queues, workers, metrics, dead letters.
    Operate,
}

/// The one scope policy, for the API and the dashboard alike.
pub fn permits(scope: Scope, action: Action) -> bool {
    match scope {
        Scope::Admin => true,
        Scope::Invoke => matches!(action, Action::Invoke | Action::ReadInvocation),
    }
}

/// The smallest scope that may do `action`, to say so in a 403.
pub fn least_scope(action: Action) -> Scope {
    if permits(Scope::Invoke, action) {
        Scope::Invoke
    } else {
        Scope::Admin
    }
}

/// A CORS preflight of a function's URL that is not public, let through without a key: its
/// handler may answer it from the function's `cors` field, and must run nothing.
#[derive(Clone, Copy, Debug)]
pub struct PreflightOnly;

/// Who a handler is answering, as the middleware found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No key, or a wrong one on a route that needs none (a public function's URL).
    Anonymous,
    /// A live key of this scope (`admin` for everyone with `GRANDA_AUTH=off`).
    Key(Scope),
}

impl Caller {
    /// Whether this caller presented a live key.
    pub fn is_authenticated(self) -> bool {
        matches!(self, Caller::Key(_))
    }
}

/// What a request needs before it reaches its handler.
#[derive(Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    Key(Action),
    /// A function's own URL: open if the function is public, else an `invoke` key.
    FunctionUrl(String),
}

/// The class of a route, from its method and raw path. Anything not listed needs `admin`.
pub fn needs(method: &Method, path: &str) -> Needs {
    // `/ui` has its own login and session cookie (a browser sends no bearer header).
    if matches!(path, "/" | "/healthz" | "/readyz" | "/openapi.json" | "/ui")
        || path.starts_with("/hooks/")
        || path.starts_with("/ui/")
    {
        return Needs::Nothing;
    }
    if let Some(rest) = path.strip_prefix("/fn/") {
        let name = rest.split('/').next().unwrap_or_default();
        if !name.is_empty() {
            return Needs::FunctionUrl(name.to_string());
        }
    }
    let segments: Vec<&str> = path.split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    Needs::Key(match segments.as_slice() {
        ["", "v1", "functions", _, "invoke"] => Action::Invoke,
        ["", "v1", "functions", _, "invocations"] if method == Method::POST => Action::Invoke,
        ["", "v1", "invocations", _] => Action::ReadInvocation,
        ["", "v1", "events", _] if method == Method::POST => Action::Invoke,
        // The `status_url` publishing answers with: an invoke key that published may read it.
        ["", "v1", "events", _] if get => Action::ReadInvocation,
        ["", "v1", "functions"] | ["", "v1", "functions", _] if get => Action::ReadFunctions,
        ["", "v1", "functions", _, "invocations"] if get => Action::ReadFunctions,
        ["", "metrics"] | ["", "v1", "dead-letters"] if get => Action::Operate,
        // Everything else, known or not.
        _ => Action::Manage,
    })
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
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if app.settings.auth == AuthMode::Off {
        request.extensions_mut().insert(Caller::Key(Scope::Admin));
        return Ok(next.run(request).await);
    }
    // `GRANDA_METRICS_AUTH=none`: `/metrics` is open, on the ingress as on a worker.
    let open_metrics = app.settings.metrics_auth == crate::config::MetricsAuth::None
        && request.uri().path() == "/metrics";
    if open_metrics {
        request.extensions_mut().insert(Caller::Anonymous);
        return Ok(next.run(request).await);
    }
    let needed = match needs(request.method(), request.uri().path()) {
        Needs::Nothing => {
            request.extensions_mut().insert(Caller::Anonymous);
            return Ok(next.run(request).await);
        }
        Needs::FunctionUrl(name) => {
            if is_public(&app, &name).await? {
                // Open to all; a live key still gets a key's view of the answer.
                let caller = match bearer(&request) {
                    Ok(Some(token)) => verify(&app, token).await?.map(Caller::Key),
                    _ => None,
                };
                request
                    .extensions_mut()
                    .insert(caller.unwrap_or(Caller::Anonymous));
                return Ok(next.run(request).await);
            }
            // A browser's CORS preflight carries no credentials: the handler answers it from the
            // function's `cors` field, and refuses it (401) when there is none.
            if request.method() == Method::OPTIONS
                && request
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
                && bearer(&request).ok().flatten().is_none()
            {
                request.extensions_mut().insert(Caller::Anonymous);
                request.extensions_mut().insert(PreflightOnly);
                return Ok(next.run(request).await);
            }
            Action::Invoke
        }
        Needs::Key(action) => action,
    };
    let token = bearer(&request)?.ok_or_else(|| {
        ApiError::Unauthorized("an API key is needed: Authorization: Bearer <key>".into())
    })?;
    let scope = verify(&app, token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API key".into()))?;
    if !permits(scope, needed) {
        return Err(ApiError::Forbidden(format!(
            "this key's scope is {}; this route needs {}",
            scope.as_str(),
            least_scope(needed).as_str()
        )));
    }
    request.extensions_mut().insert(Caller::Key(scope));
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

/// Whether `name` is a public function. A private function and a name that is no function are
/// told apart the same way (one indexed read of one column, remembered for [`super::recent::TTL`]
/// either way), so the time a keyless refusal takes does not say which private functions exist.
/// A name no function can have (not [`crate::function::valid_name`]) is not looked up: that it
/// can't exist is no secret.
async fn is_public(app: &AppState, name: &str) -> Result<bool, ApiError> {
    if !crate::function::valid_name(name) {
        return Ok(false);
    }
    if let Some(public) = app.recent.public(name) {
        return Ok(public);
    }
    let public: Option<bool> = sqlx::query_scalar("SELECT public FROM functions WHERE name = $1")
        .bind(name)
        .fetch_optional(&app.pool)
        .await?;
    let public = public.unwrap_or(false);
    app.recent.remember_public(name, public);
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fall_into_their_classes() {
        let admin = Needs::Key(Action::Manage);
        let invoke = Needs::Key(Action::Invoke);
        let read = Needs::Key(Action::ReadFunctions);
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needs(&get, "/healthz"), Needs::Nothing);
        assert_eq!(needs(&get, "/readyz"), Needs::Nothing);
        assert_eq!(needs(&get, "/openapi.json"), Needs::Nothing);
        assert_eq!(needs(&post, "/hooks/abc"), Needs::Nothing);
        assert_eq!(needs(&post, "/fn/echo"), Needs::FunctionUrl("echo".into()));
        assert_eq!(
            needs(&Method::GET, "/fn/echo/x/y"),
            Needs::FunctionUrl("echo".into())
        );
        assert_eq!(needs(&post, "/fn/"), admin);
        assert_eq!(needs(&post, "/v1/functions/echo/invoke"), invoke);
        assert_eq!(needs(&post, "/v1/functions/echo/invocations"), invoke);
        assert_eq!(needs(&get, "/v1/functions/echo/invocations"), read);
        assert_eq!(
            needs(&get, "/v1/invocations/x"),
            Needs::Key(Action::ReadInvocation)
        );
        assert_eq!(needs(&post, "/v1/events/orders.new"), invoke);
        assert_eq!(
            needs(&get, "/v1/events/0190e0a0-0000-7000-8000-000000000000"),
            Needs::Key(Action::ReadInvocation)
        );
        assert_eq!(needs(&Method::DELETE, "/v1/events/x"), admin);
        assert_eq!(needs(&get, "/v1/functions"), read);
        assert_eq!(needs(&get, "/v1/functions/echo"), read);
        assert_eq!(needs(&post, "/v1/functions"), admin);
        assert_eq!(needs(&Method::PUT, "/v1/functions/echo"), admin);
        assert_eq!(needs(&get, "/v1/keys"), admin);
        assert_eq!(needs(&get, "/metrics"), Needs::Key(Action::Operate));
        assert_eq!(needs(&get, "/v1/functions/echo/invoke/"), admin);
        assert_eq!(needs(&get, "/nowhere"), admin);
    }

    #[test]
    fn invoke_keys_run_and_read_records_only() {
        for action in [Action::Invoke, Action::ReadInvocation] {
            assert!(permits(Scope::Invoke, action));
            assert_eq!(least_scope(action), Scope::Invoke);
        }
        for action in [Action::ReadFunctions, Action::Manage, Action::Operate] {
            assert!(!permits(Scope::Invoke, action), "{action:?}");
            assert!(permits(Scope::Admin, action));
            assert_eq!(least_scope(action), Scope::Admin);
        }
    }
}
