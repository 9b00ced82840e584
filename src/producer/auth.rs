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
//! A live key whose scope is not enough: 403. A `read` key may read what an `admin` key reads
//! (records, settings, dead letters, metrics) and call and change nothing.
//!
//! Namespaces ([`crate::namespace`]): the middleware also leaves an [`Acting`], the namespace the
//! request acts in. A key bound to a namespace acts only there: a request naming another
//! (`Granda-Namespace`), another namespace's function URL, or another namespace's record is 404,
//! never 403, so nothing says it exists. A global key acts in `default` unless the request names
//! another namespace that exists (404 if it does not).
//!
//! An `invoke` key bound to functions (`functions` on the key) invokes those only and reads
//! only their records: any other function, record or route is 404 to it ([`within_functions`]).
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
use crate::keys::{self, LiveKey, Scope};
use crate::namespace::{self, Namespace};

/// The header a global key names another namespace than `default` with.
pub(crate) const NAMESPACE_HEADER: &str = "granda-namespace";

/// What a caller asks to do. [`permits`] says which scopes may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
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
pub(crate) fn permits(scope: Scope, action: Action) -> bool {
    match scope {
        Scope::Admin => true,
        Scope::Invoke => matches!(action, Action::Invoke | Action::ReadInvocation),
        Scope::Read => matches!(
            action,
            Action::ReadInvocation | Action::ReadFunctions | Action::Operate
        ),
    }
}

/// The smallest scope that may do `action`, to say so in a 403.
pub(crate) fn least_scope(action: Action) -> Scope {
    if permits(Scope::Invoke, action) {
        Scope::Invoke
    } else if permits(Scope::Read, action) {
        Scope::Read
    } else {
        Scope::Admin
    }
}

/// The namespace a request acts in, and the key making it: left in the request's extensions by
/// [`require`] for every request. A key bound to a namespace acts there; a global key (and
/// everyone with `GRANDA_AUTH=off`) acts in `default` unless the `Granda-Namespace` header names
/// another that exists.
#[derive(Clone, Debug)]
pub(crate) struct Acting {
    pub(crate) namespace: Namespace,
    /// Whether the key is bound to the namespace: it can see no other, nor the installation's
    /// namespaces, keys of other namespaces, workers or metrics.
    pub(crate) bound: bool,
    /// The key that made the request (kept on the records it makes).
    pub(crate) key_id: Option<uuid::Uuid>,
    /// A key bound to functions: their stored names. Records and things of other functions are
    /// not [`Acting::holds`]'s, so they are 404 to it. None: every function.
    pub(crate) functions: Option<Vec<String>>,
}

impl Acting {
    pub(crate) fn default_global() -> Acting {
        Acting {
            namespace: Namespace::default_ns(),
            bound: false,
            key_id: None,
            functions: None,
        }
    }

    /// The stored name of this namespace's function `name` ([`namespace::qualify`]).
    pub(crate) fn function(&self, name: &str) -> String {
        self.namespace.qualify(name)
    }

    /// Whether the stored function name `qualified` is in this request's namespace (and one of
    /// the key's functions, for a key bound to functions).
    pub(crate) fn holds(&self, qualified: &str) -> bool {
        self.namespace.holds(qualified)
            && self
                .functions
                .as_ref()
                .is_none_or(|fs| fs.iter().any(|f| f == qualified))
    }

    /// 404 unless the caller's key is global (for installation-wide routes).
    pub(crate) fn global_only(&self) -> Result<(), ApiError> {
        if self.bound {
            Err(ApiError::NotFound("no such route".into()))
        } else {
            Ok(())
        }
    }
}

/// The `Granda-Namespace` header of a request, as sent (`Err` if it is not text).
fn namespace_header(request: &Request) -> Result<Option<String>, ()> {
    match request.headers().get(NAMESPACE_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().map(|v| Some(v.to_string())).map_err(|_| ()),
    }
}

/// The namespace a request of a global caller names (`Granda-Namespace`): 400 if malformed, 404
/// if there is no such namespace.
async fn named_namespace(
    app: &AppState,
    header: Result<Option<String>, ()>,
) -> Result<Namespace, ApiError> {
    let Ok(Some(value)) = header else {
        return match header {
            Ok(_) => Ok(Namespace::default_ns()),
            Err(()) => Err(ApiError::BadRequest(
                "Granda-Namespace: a namespace name (lowercase letters, digits, '-')".into(),
            )),
        };
    };
    let ns = Namespace::parse(&value).ok_or_else(|| {
        ApiError::BadRequest(
            "Granda-Namespace: a namespace name (lowercase letters, digits, '-')".into(),
        )
    })?;
    if !ns.is_default() && !namespace::exists(&app.pool, ns.as_str()).await? {
        return Err(ApiError::NotFound(format!(
            "no namespace named {:?}",
            ns.as_str()
        )));
    }
    Ok(ns)
}

/// Where a live key acts: its own namespace (404 if the request names another), or for a global
/// key the one the request names.
async fn acting_of(
    app: &AppState,
    key: &LiveKey,
    named: Result<Option<String>, ()>,
) -> Result<Acting, ApiError> {
    let namespace = match &key.namespace {
        Some(own) => {
            let own = Namespace::parse(own).unwrap_or_else(Namespace::default_ns);
            if named.is_err() || named.is_ok_and(|n| n.is_some_and(|n| n != own.as_str())) {
                return Err(ApiError::NotFound("no such namespace".into()));
            }
            own
        }
        None => named_namespace(app, named).await?,
    };
    Ok(Acting {
        namespace,
        bound: key.namespace.is_some(),
        key_id: Some(key.id),
        functions: bound_functions(key),
    })
}

/// The stored names of the functions `key` is bound to (none: every function).
fn bound_functions(key: &LiveKey) -> Option<Vec<String>> {
    let ns = key.namespace.as_deref().unwrap_or(namespace::DEFAULT);
    key.functions
        .as_ref()
        .map(|fs| fs.iter().map(|f| namespace::qualify(ns, f)).collect())
}

/// For a key bound to functions: 404 unless the request invokes one of them
/// (`POST /v1/functions/{name}/invoke`, `POST /v1/functions/{name}/invocations`) or reads an
/// invocation record (whose handler finds only its functions' records, [`Acting::holds`]).
/// Everything else, event publishing included (it would run other functions), is missing.
fn within_functions(
    key: &LiveKey,
    acting: &Acting,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    if key.functions.is_none() {
        return Ok(());
    }
    let segments: Vec<&str> = path.split('/').collect();
    let allowed = match segments.as_slice() {
        ["", "v1", "functions", name, "invoke"] => key.allows(&acting.function(name)),
        ["", "v1", "functions", name, "invocations"] if method == Method::POST => {
            key.allows(&acting.function(name))
        }
        ["", "v1", "invocations", _] => method == Method::GET || method == Method::HEAD,
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::NotFound(
            "no such route or function for this key".into(),
        ))
    }
}

/// A CORS preflight of a function's URL that is not public, let through without a key: its
/// handler may answer it from the function's `cors` field, and must run nothing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreflightOnly;

/// Who a handler is answering, as the middleware found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No key, or a wrong one on a route that needs none (a public function's URL).
    Anonymous,
    /// A live key of this scope (`admin` for everyone with `GRANDA_AUTH=off`).
    Key(Scope),
}

impl Caller {
    /// Whether this caller presented a live key.
    pub(crate) fn is_authenticated(self) -> bool {
        matches!(self, Caller::Key(_))
    }
}

/// What a request needs before it reaches its handler.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    Nothing,
    Key(Action),
    /// A function's own URL: open if the function is public, else an `invoke` key.
    FunctionUrl(String),
}

/// The class of a route, from its method and raw path. Anything not listed needs `admin`.
pub(crate) fn needs(method: &Method, path: &str) -> Needs {
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
        // Whoever may start a run may stop one (in the key's namespace).
        ["", "v1", "invocations", _, "cancel"] if method == Method::POST => Action::Invoke,
        ["", "v1", "events", _] if method == Method::POST => Action::Invoke,
        // The `status_url` publishing answers with: an invoke key that published may read it.
        ["", "v1", "events", _] if get => Action::ReadInvocation,
        ["", "v1", "functions"] | ["", "v1", "functions", _] if get => Action::ReadFunctions,
        ["", "v1", "functions", _, "invocations"] if get => Action::ReadFunctions,
        ["", "metrics"] | ["", "v1", "dead-letters"] if get => Action::Operate,
        ["", "v1", "usage"] if get => Action::ReadFunctions,
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

/// The middleware: lets a request through or answers 401/403 (404 for another namespace's
/// things). Never logs or echoes the key.
pub(crate) async fn require(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if app.settings.auth == AuthMode::Off {
        let namespace = named_namespace(&app, namespace_header(&request)).await?;
        request.extensions_mut().insert(Caller::Key(Scope::Admin));
        request.extensions_mut().insert(Acting {
            namespace,
            ..Acting::default_global()
        });
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
            request.extensions_mut().insert(Acting::default_global());
            return Ok(next.run(request).await);
        }
        Needs::FunctionUrl(name) => {
            // The URL names the function and its namespace (`/fn/{name}.{namespace}`).
            let function_ns = Namespace::parse(namespace::split(&name).1);
            let in_function_ns = |acting: Acting| match &function_ns {
                Some(ns) => Acting {
                    namespace: ns.clone(),
                    ..acting
                },
                None => acting,
            };
            if is_public(&app, &name).await? {
                // Open to all; a live key still gets a key's view of the answer.
                let key = match bearer(&request) {
                    Ok(Some(token)) => verify(&app, token).await?,
                    _ => None,
                };
                let acting = Acting {
                    key_id: key.as_ref().map(|k| k.id),
                    ..Acting::default_global()
                };
                request.extensions_mut().insert(
                    key.map(|k| Caller::Key(k.scope))
                        .unwrap_or(Caller::Anonymous),
                );
                request.extensions_mut().insert(in_function_ns(acting));
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
                request
                    .extensions_mut()
                    .insert(in_function_ns(Acting::default_global()));
                return Ok(next.run(request).await);
            }
            let key = live_key(&app, bearer(&request)?).await?;
            check_scope(&key, Action::Invoke)?;
            // A namespaced key reaches only its own namespace's functions, a key bound to
            // functions only those: others' are missing.
            if let Some(own) = &key.namespace
                && function_ns.as_ref().is_none_or(|ns| ns.as_str() != own)
            {
                return Err(ApiError::NotFound(format!("no function named {name:?}")));
            }
            if !key.allows(&name) {
                return Err(ApiError::NotFound(format!("no function named {name:?}")));
            }
            let acting = Acting {
                bound: key.namespace.is_some(),
                key_id: Some(key.id),
                functions: bound_functions(&key),
                ..Acting::default_global()
            };
            request.extensions_mut().insert(Caller::Key(key.scope));
            request.extensions_mut().insert(in_function_ns(acting));
            return Ok(next.run(request).await);
        }
        Needs::Key(action) => action,
    };
    let key = live_key(&app, bearer(&request)?).await?;
    // Where the key acts first: a namespaced key naming another namespace learns nothing more.
    let acting = acting_of(&app, &key, namespace_header(&request)).await?;
    within_functions(&key, &acting, request.method(), request.uri().path())?;
    check_scope(&key, needed)?;
    request.extensions_mut().insert(Caller::Key(key.scope));
    request.extensions_mut().insert(acting);
    Ok(next.run(request).await)
}

/// The live key a request presents, or 401.
async fn live_key(app: &AppState, token: Option<&str>) -> Result<LiveKey, ApiError> {
    let token = token.ok_or_else(|| {
        ApiError::Unauthorized("an API key is needed: Authorization: Bearer <key>".into())
    })?;
    verify(app, token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API key".into()))
}

/// 403 unless `key`'s scope permits `needed`.
fn check_scope(key: &LiveKey, needed: Action) -> Result<(), ApiError> {
    if permits(key.scope, needed) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "this key's scope is {}; this route needs {}",
        key.scope.as_str(),
        least_scope(needed).as_str()
    )))
}

/// A live key, from what this process read in the last second or from Postgres.
async fn verify(app: &AppState, token: &str) -> Result<Option<LiveKey>, sqlx::Error> {
    let hash = keys::hash(token);
    if let Some(key) = app.recent.key(&hash) {
        return Ok(Some(key));
    }
    let key = keys::lookup(&app.pool, token).await?;
    if let Some(key) = &key {
        app.recent.remember_key(hash, key.clone());
    }
    Ok(key)
}

/// Whether `name` is a public function. A private function and a name that is no function are
/// told apart the same way (one indexed read of one column, remembered for [`super::recent::TTL`]
/// either way), so the time a keyless refusal takes does not say which private functions exist.
/// A name no function can have (not [`crate::function::valid_name`]) is not looked up: that it
/// can't exist is no secret.
async fn is_public(app: &AppState, name: &str) -> Result<bool, ApiError> {
    if !namespace::valid_stored(name) {
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
        assert_eq!(needs(&post, "/v1/invocations/x/cancel"), invoke);
        assert_eq!(needs(&get, "/v1/invocations/x/cancel"), admin);
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
        }
        assert_eq!(least_scope(Action::Manage), Scope::Admin);
    }

    #[test]
    fn read_keys_read_and_change_nothing() {
        for action in [
            Action::ReadInvocation,
            Action::ReadFunctions,
            Action::Operate,
        ] {
            assert!(permits(Scope::Read, action), "{action:?}");
        }
        for action in [Action::Invoke, Action::Manage] {
            assert!(!permits(Scope::Read, action), "{action:?}");
        }
        assert_eq!(least_scope(Action::ReadFunctions), Scope::Read);
    }
}
