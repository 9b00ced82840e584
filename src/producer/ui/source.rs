//! `/ui/functions/new/source`: a new function built from source, with the build log shown live.
//! The form names the function, a runtime (`build::RUNTIMES`) and the handler file; its POST goes
//! through the API's own create (`functions::create_from`) asking for the streamed answer, so the
//! page's script (`/ui/static/build.js`, a static file as the CSP wants) appends each
//! `{"log": …}` line as the engine writes it and shows the last line's outcome. Every answer of
//! the POST is NDJSON: a refusal before the build is one line `{"status", "error"}`.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::session::Admin;
use super::{BASE, page};
use crate::build::NDJSON;
use crate::build::{RUNTIMES, Source};
use crate::function::NewFunction;
use crate::producer::AppState;
use crate::producer::functions::create_from;

/// `GET /ui/functions/new/source`.
pub(crate) async fn form(Admin(session): Admin) -> Html<String> {
    page(
        "New function from source",
        Some(&session),
        html! { script src={ (BASE) "/static/build.js" } defer {} },
        html! {
            h1 { "New function from source" }
            p.muted { "Granda builds an image from the runtime's base and your handler, then registers it. The build log appears below as it is written. "
                a href={ (BASE) "/functions/new" } { "From an image instead." } }
            div.card {
                form.stack #source-form method="post" action={ (BASE) "/functions/new/source" } {
                    (session.csrf_field())
                    label for="name" { "Name" }
                    input #name name="name" required placeholder="e.g. upper";
                    label for="runtime" { "Runtime" }
                    select #runtime name="runtime" {
                        @for r in RUNTIMES { option value=(r.name) { (r.name) " (handler " (r.handler) ")" } }
                    }
                    label for="source" { "Handler" }
                    textarea #source name="source" required rows="8" placeholder="tr a-z A-Z" {}
                    button #build type="submit" { "Build and create" }
                }
            }
            p #build-status {}
            pre #build-log hidden {}
        },
    )
}

/// The source form.
#[derive(Debug, Deserialize)]
pub(crate) struct SourceForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    runtime: String,
    #[serde(default)]
    source: String,
}

/// `POST /ui/functions/new/source`: the build, streamed as NDJSON.
pub(crate) async fn build(
    Admin(session): Admin,
    State(app): State<AppState>,
    Form(form): Form<SourceForm>,
) -> Response {
    let body = NewFunction {
        name: form.name.trim().to_string(),
        runtime: Some(form.runtime),
        source: Some(Source::File(form.source)),
        ..NewFunction::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(NDJSON));
    match create_from(app, &session.acting, &headers, body).await {
        Ok(streamed) => streamed,
        Err(e) => {
            let line = json!({"status": e.status().as_u16(), "error": {"code": e.code(), "message": e.to_string()}});
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, NDJSON)],
                format!("{line}\n"),
            )
                .into_response()
        }
    }
}

/// `GET /ui/static/build.js`.
pub(crate) async fn script() -> Response {
    super::static_file("text/javascript; charset=utf-8", BUILD_JS)
}

const BUILD_JS: &str = r#"document.addEventListener('DOMContentLoaded', function () {
  var form = document.getElementById('source-form');
  var log = document.getElementById('build-log');
  var status = document.getElementById('build-status');
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var button = document.getElementById('build');
    button.disabled = true;
    log.hidden = false;
    log.textContent = '';
    status.className = '';
    status.textContent = 'Building…';
    var name = form.elements.name.value.trim();
    var buffer = '';
    function handle(line) {
      if (!line) return;
      var msg = JSON.parse(line);
      if (typeof msg.log === 'string') { log.textContent += msg.log; log.scrollTop = log.scrollHeight; return; }
      button.disabled = false;
      if (msg.status === 201) {
        status.className = 'ok';
        status.textContent = 'Built and created. ';
        var a = document.createElement('a');
        a.href = form.action.replace(/\/new\/source$/, '/') + encodeURIComponent(name);
        a.id = 'open-function';
        a.textContent = 'Open ' + name;
        status.appendChild(a);
      } else {
        status.className = 'error';
        status.textContent = (msg.error && msg.error.message) || ('failed with ' + msg.status);
        if (msg.error && msg.error.log) log.textContent += msg.error.log;
      }
    }
    fetch(form.action, {method: 'POST', credentials: 'same-origin', body: new URLSearchParams(new FormData(form))})
      .then(function (r) {
        var reader = r.body.getReader();
        var decoder = new TextDecoder();
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { handle(buffer.trim()); return; }
            buffer += decoder.decode(chunk.value, {stream: true});
            var lines = buffer.split('\n');
            buffer = lines.pop();
            lines.forEach(handle);
            return pump();
          });
        }
        return pump();
      })
      .catch(function (err) { button.disabled = false; status.className = 'error'; status.textContent = String(err); });
  });
});
"#;
