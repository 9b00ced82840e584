//! Invoking functions: sync (`/v1/functions/{name}/invoke`, and any method of `/fn/{name}` and
//! `/fn/{name}/{*path}`, whose HTTP request travels to the function: [`crate::web`]), which waits
//! for the result over a reply-to queue, and async (`/v1/functions/{name}/invocations`), which
//! answers 202. A function that gave its own HTTP status and headers (`response: "cgi"`) is
//! answered with them.
//!
//! Both write the `queued` record first, then publish with publisher confirms; neither answers
//! 2xx for an invocation the broker did not confirm.
//!
//! An anonymous caller (a public function's URL without a live key) of a run that did not
//! succeed gets its status, exit code and invocation id, never its stderr tail or the platform's
//! error text (`detail`); a caller with a key keeps them.

use super::extract::Path;
use crate::error::{Denied, ErrorBody};
use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodFilter;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::{Acting, Caller};
use super::enqueue::{Job, enqueue};
use super::extract::RawBody;
use super::functions::load_for_call;
use super::origin::{Origins, guard};
use crate::error::ApiError;
use crate::invocation::{Status, Trigger};
use crate::message::Reply;

/// 202: the invocation was accepted and runs later (or still runs).
#[derive(Serialize, ToSchema)]
pub(crate) struct Accepted {
    pub(crate) id: Uuid,
    pub(crate) status: crate::invocation::Status,
    pub(crate) status_url: String,
}

pub(crate) const HEADER_ID: &str = "x-granda-invocation-id";
pub(crate) const HEADER_STATUS: &str = "x-granda-status";
pub(crate) const HEADER_DURATION: &str = "x-granda-duration-ms";
pub(crate) const HEADER_EXIT_CODE: &str = "x-granda-exit-code";
const CALLBACK_URL: &str = "x-callback-url";

/// `POST /v1/functions/{name}/invoke` and `POST /fn/{name}`.
#[tracing::instrument(skip_all, fields(%name))]
#[utoipa::path(post, path = "/v1/functions/{name}/invoke", operation_id = "invoke_sync", tag = "invocations", summary = "Invoke and wait",
    description = "Runs the function with the request body as its input and waits for the result: 200 with its stdout on exit 0, 502 when it exits non-zero, 504 when it times out, each with the invocation id (headers `X-Granda-Invocation-Id`, `X-Granda-Status`, `X-Granda-Duration-Ms`). Past the sync wait cap the answer is 202 and the invocation goes on running.", params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "the function's stdout", content_type = "application/octet-stream", body = Vec<u8>), (status = 202, body = Accepted, description = "still running after the sync wait"), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 502, body = ErrorBody, description = "the function failed"), (status = 504, body = ErrorBody, description = "the function timed out"), Denied))]
pub(crate) async fn sync(
    State(app): State<AppState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    Extension(acting): Extension<Acting>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    // Without the auth middleware's word, the least: anonymous.
    let detail = caller.is_some_and(|Extension(c)| c.is_authenticated());
    let function = load_for_call(&app, &acting.function(&name)).await?;
    let wait = app.settings.sync_wait();
    let job = Job {
        reply: Some(wait),
        key_id: acting.key_id,
        ..Job::new(Trigger::Sync, &body)
    };
    let queued = enqueue(&app, &function, job).await?;
    let id = queued.id;
    Ok(match queued.reply {
        // The API's origin: a function's answer here is always sandboxed.
        Some(reply) => reply_response(id, reply, detail, true),
        None => accepted(&app, id, Status::Queued),
    })
}

/// The methods of a function's URL.
pub(crate) fn web_methods() -> MethodFilter {
    MethodFilter::GET
        .or(MethodFilter::HEAD)
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT)
        .or(MethodFilter::PATCH)
        .or(MethodFilter::DELETE)
        .or(MethodFilter::OPTIONS)
}

/// Any method of `/fn/{name}` and `/fn/{name}/{*path}`: a sync call that carries the request.
/// Declared once (POST `/fn/{name}`); the OpenAPI document copies it to the other methods and
/// to the path with a tail (`openapi::FunctionUrl`).
#[utoipa::path(post, path = "/fn/{name}", operation_id = "invoke_url", tag = "invocations", summary = "Call a function at its own URL",
    description = "A sync call that carries the HTTP request to the function: its method, the path after `/fn/{name}`, the query and the headers (never the caller's Granda key or dashboard session cookie). Cold and warm runs get them as CGI/1.1 meta-variables (`REQUEST_METHOD`, `PATH_INFO`, `QUERY_STRING`, `HTTP_*`, ...), the body on stdin; hot functions get the request itself. A function with `response: \"cgi\"` answers with its own status and headers; otherwise its output is the body. A `public` function needs no key. With a `cors` field, Granda answers preflight `OPTIONS` itself. `HEAD` answers no body.",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}(\\.[a-z][a-z0-9-]{0,62})?$", description = "the function's name; outside `default`, `{name}.{namespace}`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "the function's output (with `response: \"cgi\"`: its own status, headers and body)", content_type = "application/octet-stream", body = Vec<u8>), (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 502, body = ErrorBody), (status = 504, body = ErrorBody), Denied),
    security((), ("bearer" = [])))]
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(%method))]
pub(crate) async fn web(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    preflight_only: Option<Extension<super::auth::PreflightOnly>>,
    acting: Option<Extension<Acting>>,
    remote: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let detail = caller.is_some_and(|Extension(c)| c.is_authenticated());
    // The raw path: `/fn/<name>` then the function's own path, as sent.
    let rest = uri.path().strip_prefix("/fn/").unwrap_or_default();
    let (name, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let keyless = || {
        ApiError::Unauthorized(
            "an API key is needed: Authorization: Bearer <key> (Granda answers preflights only \
             for functions with a `cors` field)"
                .into(),
        )
    };
    let function = match load_for_call(&app, name).await {
        Ok(function) => function,
        // A keyless preflight learns nothing of functions that are not public.
        Err(_) if preflight_only.is_some() => return Err(keyless()),
        Err(e) => return Err(e),
    };
    if method == Method::OPTIONS
        && let Some(response) = super::cors::preflight(&function, &headers)
    {
        return Ok(response);
    }
    if preflight_only.is_some() {
        return Err(keyless());
    }
    let request = web_request(&app, &method, &uri, version, &headers, remote, name, path)?;
    let wait = app.settings.sync_wait();
    let job = Job {
        reply: Some(wait),
        request: Some(&request),
        key_id: acting.and_then(|Extension(a)| a.key_id),
        ..Job::new(Trigger::Sync, &body)
    };
    let queued = enqueue(&app, &function, job).await?;
    let id = queued.id;
    let mut response = match queued.reply {
        // On the functions' own origin a page may be itself; on a shared one it is sandboxed.
        Some(reply) => reply_response(id, reply, detail, Origins::of(&app.settings).sandboxed()),
        None => accepted(&app, id, Status::Queued),
    };
    super::cors::allow(&function, &headers, &mut response);
    if method == Method::HEAD {
        // The headers a GET would have, no body.
        *response.body_mut() = axum::body::Body::empty();
    }
    Ok(response)
}

/// The request that travels to the function; 400 for one that can't (see [`crate::web`]).
#[allow(clippy::too_many_arguments)]
fn web_request(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    remote: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    name: &str,
    path: &str,
) -> Result<crate::web::WebRequest, ApiError> {
    let sent = headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let passed = crate::web::WebRequest::headers_from(sent).map_err(ApiError::BadRequest)?;
    let public = url::Url::parse(&app.settings.functions_url()).ok();
    let default_port = public
        .as_ref()
        .and_then(|u| u.port_or_known_default())
        .unwrap_or(80);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            public
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_string))
        })
        .unwrap_or_default();
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h.to_string(), p.parse().unwrap_or(default_port)),
        _ => (host, default_port),
    };
    let request = crate::web::WebRequest {
        method: method.as_str().to_string(),
        path: path.to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: passed,
        remote_addr: remote
            .map(|Extension(ConnectInfo(addr))| addr.ip().to_string())
            .unwrap_or_default(),
        server_name,
        server_port,
        protocol: match version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        }
        .to_string(),
        script_name: format!("/fn/{name}"),
    };
    match request.problem() {
        Some(problem) => Err(ApiError::BadRequest(format!(
            "this request can't be passed to the function: {problem}"
        ))),
        None => Ok(request),
    }
}

/// `POST /v1/functions/{name}/invocations`.
#[tracing::instrument(skip_all, fields(%name))]
#[utoipa::path(post, path = "/v1/functions/{name}/invocations", operation_id = "invoke_async", tag = "invocations", summary = "Invoke without waiting",
    description = "202 at once with the invocation id and its status URL. The same `Idempotency-Key` for the same function returns the first invocation, never a second run. With `X-Callback-Url`, the result is POSTed there when done.",
    params(("name" = String, Path, pattern = "^[a-z][a-z0-9-]{0,62}$"), ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; the same key for the same function returns the first invocation"),
        ("X-Callback-Url" = Option<String>, Header, description = "where to POST the result when it is final (signed with the function's callback key)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), Denied))]
pub(crate) async fn no_wait(
    State(app): State<AppState>,
    Extension(acting): Extension<Acting>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let key = super::extract::idempotency_key(&headers)?;
    let callback_url = match headers.get(CALLBACK_URL) {
        None => None,
        Some(v) => {
            let url = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("X-Callback-Url must be visible ASCII".into()))?;
            crate::callback::check_target(url, &app.settings.callback_allow_nets)
                .await
                .map_err(|e| ApiError::BadRequest(format!("X-Callback-Url: {e}")))?;
            Some(url)
        }
    };
    let function = load_for_call(&app, &acting.function(&name)).await?;
    let job = Job {
        idempotency_key: key,
        callback_url,
        key_id: acting.key_id,
        ..Job::new(Trigger::Async, &body)
    };
    let queued = enqueue(&app, &function, job).await?;
    let id = queued.id;
    let mut response = accepted(&app, id, Status::Queued);
    if !queued.new {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// 202 with where to find the invocation's record.
pub(crate) fn accepted(app: &AppState, id: Uuid, status: Status) -> Response {
    let status_url = format!("{}/v1/invocations/{id}", app.settings.public_url());
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id,
            status,
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(HEADER_ID, header_value(&id.to_string()));
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// The HTTP answer for a finished run: stdout on success, a JSON error otherwise; the error's
/// `detail` (stderr tail or platform error) only when `detail` (the caller has a key).
/// A function's own answer is [`guard`]ed: `sandboxed` adds the sandbox CSP (see
/// [`super::origin`]).
fn reply_response(id: Uuid, reply: Reply, detail: bool, sandboxed: bool) -> Response {
    let mut response = match reply.status {
        // The function's own answer: its status and headers, its body.
        // (A status that is no final one, 200 to 599, is no answer: a worker refuses it, and so
        // does this, whoever sent the reply.)
        _ if reply
            .http
            .as_ref()
            .is_some_and(|h| h.final_status().is_some()) =>
        {
            let http = reply.http.as_ref().expect("checked");
            let status = http.final_status().expect("checked");
            // 204, 205 and 304 have no body (RFC 9110 §15.3.5, §15.3.6, §15.4.5).
            let body = if matches!(status, 204 | 205 | 304) {
                axum::body::Body::empty()
            } else {
                axum::body::Body::from(reply.output.clone())
            };
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::from_u16(status).expect("200 to 599");
            let headers = response.headers_mut();
            for (name, value) in http.passed_headers() {
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(n, v);
                }
            }
            guard(headers, sandboxed);
            response
        }
        // Anything else is an error of the run (a success whose HTTP status is no final one
        // included: a `bad_cgi_response`).
        Status::Succeeded => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            reply.output,
        )
            .into_response(),
        status => {
            let (code, http, message) = match status {
                Status::TimedOut => (
                    "function_timed_out",
                    StatusCode::GATEWAY_TIMEOUT,
                    "the function timed out".to_string(),
                ),
                // Someone cancelled it (`POST /v1/invocations/{id}/cancel`) while it ran.
                Status::Cancelled => (
                    "invocation_cancelled",
                    StatusCode::CONFLICT,
                    "the invocation was cancelled".to_string(),
                ),
                _ => match reply.exit_code {
                    // Exited 0, yet failed: its output is no CGI response.
                    Some(0) => (
                        "bad_cgi_response",
                        StatusCode::BAD_GATEWAY,
                        "the function's output is not a valid CGI response (header lines, a \
                         blank line, then the body)"
                            .to_string(),
                    ),
                    Some(code) => (
                        "function_failed",
                        StatusCode::BAD_GATEWAY,
                        format!("the function exited with code {code}"),
                    ),
                    None => (
                        "platform_error",
                        StatusCode::BAD_GATEWAY,
                        "the function could not be run".to_string(),
                    ),
                },
            };
            let mut body = ErrorBody::new(code, message);
            body.error.invocation_id = Some(id);
            body.error.status = Some(status.as_str().to_string());
            body.error.exit_code = reply.exit_code;
            body.error.detail = if detail { reply.error } else { None };
            (http, Json(body)).into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(HEADER_ID, header_value(&id.to_string()));
    headers.insert(HEADER_STATUS, header_value(reply.status.as_str()));
    if let Some(ms) = reply.duration_ms {
        headers.insert(HEADER_DURATION, header_value(&ms.to_string()));
    }
    if let Some(code) = reply.exit_code {
        headers.insert(HEADER_EXIT_CODE, header_value(&code.to_string()));
    }
    response
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
