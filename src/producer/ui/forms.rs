//! The dashboard's forms: create, edit and delete a function, and invoke it from its page.
//!
//! A form only turns its text fields into the API's types ([`NewFunction`], [`FunctionUpdate`]);
//! checking and storing is the API's own code (`validate`, `apply`, `functions::register`,
//! `functions::save`), so both refuse the same things with the same words. A refused form comes
//! back filled in, with the error next to its field.
//!
//! Creating, editing and deleting need a session that may manage functions ([`Admin`]: 403
//! otherwise, before the form is read); every form carries the session's CSRF token.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::loaded::FunctionAt;
use super::pages::{InvokeResult, function_page};
use super::session::{Admin, Session};
use super::{BASE, UiError, layout, titled, with_status};
use crate::error::ApiError;
use crate::function::{
    Cors, Function, FunctionUpdate, InputMode, Invalid, Mode, Network, NewFunction, ResponseMode,
    SecretsPatch, SecretsUpdate, store,
};
use crate::invocation::Trigger;
use crate::producer::AppState;
use crate::producer::enqueue::{Job, enqueue};
use crate::producer::functions::{load, register, save};
use crate::retry::RetryOn;

/// A function's form as posted: every field as typed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FunctionForm {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) description: String,
    pub(crate) timeout_ms: String,
    pub(crate) memory_mb: String,
    pub(crate) cpus: String,
    pub(crate) input: String,
    pub(crate) queue: String,
    pub(crate) max_attempts: String,
    pub(crate) max_concurrency: String,
    pub(crate) retry_error: Option<String>,
    pub(crate) retry_timeout: Option<String>,
    /// `KEY=value`, one a line.
    pub(crate) env: String,
    pub(crate) callback_url: String,
    /// `cold`, `warm` or `hot`.
    pub(crate) mode: String,
    /// `none` or `bridge`.
    pub(crate) network: String,
    /// Present when "public" is ticked.
    pub(crate) public: Option<String>,
    /// `body` or `cgi`.
    pub(crate) response: String,
    pub(crate) user: String,
    /// `NAME=value` sets one, `-NAME` removes one, one a line; never filled in from the store.
    pub(crate) secrets: String,
    /// CORS: origins, methods and headers, separated by commas or spaces; max age in seconds.
    pub(crate) cors_origins: String,
    pub(crate) cors_methods: String,
    pub(crate) cors_headers: String,
    pub(crate) cors_max_age: String,
    /// The names of the stored secrets (editing), shown next to the secrets field.
    #[serde(skip)]
    pub(crate) secret_names: Vec<String>,
}

impl FunctionForm {
    fn from_function(f: &Function) -> FunctionForm {
        FunctionForm {
            name: f.name.clone(),
            image: f.run.image.clone(),
            description: f.description.clone().unwrap_or_default(),
            timeout_ms: f.run.timeout_ms.to_string(),
            memory_mb: f.run.memory_mb.to_string(),
            cpus: f.run.cpus.to_string(),
            input: f.run.input.as_str().into(),
            queue: f.queue.clone(),
            max_attempts: f.run.max_attempts.to_string(),
            max_concurrency: f
                .run
                .max_concurrency
                .map(|m| m.to_string())
                .unwrap_or_default(),
            retry_error: f
                .run
                .retry_on
                .contains(&RetryOn::Error)
                .then(|| "on".into()),
            retry_timeout: f
                .run
                .retry_on
                .contains(&RetryOn::Timeout)
                .then(|| "on".into()),
            env: f
                .run
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect(),
            callback_url: f.callback_url.clone().unwrap_or_default(),
            mode: f.run.mode.as_str().into(),
            network: f.run.network.as_str().into(),
            public: f.public.then(|| "on".into()),
            response: f.run.response.as_str().into(),
            user: f.run.user.clone().unwrap_or_default(),
            secrets: String::new(),
            secret_names: f.secrets.names(),
            cors_origins: f
                .cors
                .as_ref()
                .map(|c| c.allow_origins.join(", "))
                .unwrap_or_default(),
            cors_methods: f
                .cors
                .as_ref()
                .map_or(DEFAULT_CORS_METHODS.into(), |c| c.allow_methods.join(", ")),
            cors_headers: f
                .cors
                .as_ref()
                .map(|c| c.allow_headers.join(", "))
                .unwrap_or_default(),
            cors_max_age: f
                .cors
                .as_ref()
                .and_then(|c| c.max_age_s)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        }
    }

    fn mode(&self) -> Result<Option<Mode>, FormError> {
        match self.mode.trim() {
            "" => Ok(None),
            "cold" => Ok(Some(Mode::Cold)),
            "warm" => Ok(Some(Mode::Warm)),
            "hot" => Ok(Some(Mode::Hot)),
            _ => Err(FormError::at("mode", "must be cold, warm or hot")),
        }
    }

    fn network(&self) -> Result<Option<Network>, FormError> {
        match self.network.trim() {
            "" => Ok(None),
            "none" => Ok(Some(Network::None)),
            "bridge" => Ok(Some(Network::Bridge)),
            _ => Err(FormError::at("network", "must be none or bridge")),
        }
    }

    fn response(&self) -> Result<Option<ResponseMode>, FormError> {
        match self.response.trim() {
            "" => Ok(None),
            "body" => Ok(Some(ResponseMode::Body)),
            "cgi" => Ok(Some(ResponseMode::Cgi)),
            _ => Err(FormError::at("response", "must be body or cgi")),
        }
    }

    /// The CORS policy: none when no origin is given.
    fn cors(&self) -> Result<Option<Cors>, FormError> {
        let origins = words(&self.cors_origins);
        if origins.is_empty() {
            return Ok(None);
        }
        let methods = words(&self.cors_methods);
        Ok(Some(Cors {
            allow_origins: origins,
            allow_methods: if methods.is_empty() {
                words(DEFAULT_CORS_METHODS)
            } else {
                methods
            },
            allow_headers: words(&self.cors_headers),
            max_age_s: number("cors", &self.cors_max_age)?,
        }))
    }

    /// The secrets lines: `NAME=value` to set, `-NAME` to remove.
    fn secret_lines(&self) -> Result<SecretsPatch, FormError> {
        let mut patch = SecretsPatch {
            set: BTreeMap::new(),
            unset: Vec::new(),
        };
        for line in self
            .secrets
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if let Some(name) = line.strip_prefix('-') {
                patch.unset.push(name.trim().to_string());
            } else {
                let (k, v) = line.split_once('=').ok_or_else(|| {
                    FormError::at(
                        "secrets",
                        "write NAME=value to set a secret, or -NAME to remove one",
                    )
                })?;
                patch.set.insert(k.trim().to_string(), v.to_string());
            }
        }
        Ok(patch)
    }

    fn retry_on(&self) -> Vec<RetryOn> {
        let mut r = Vec::new();
        if self.retry_error.is_some() {
            r.push(RetryOn::Error);
        }
        if self.retry_timeout.is_some() {
            r.push(RetryOn::Timeout);
        }
        r
    }

    fn input_mode(&self) -> Result<Option<InputMode>, FormError> {
        match self.input.trim() {
            "" => Ok(None),
            "stdin" => Ok(Some(InputMode::Stdin)),
            "args" => Ok(Some(InputMode::Args)),
            _ => Err(FormError::at("input", "must be stdin or args")),
        }
    }

    fn to_new(&self) -> Result<NewFunction, FormError> {
        Ok(NewFunction {
            name: self.name.trim().to_string(),
            image: non_empty(&self.image),
            description: non_empty(&self.description),
            timeout_ms: number("timeout_ms", &self.timeout_ms)?,
            memory_mb: number("memory_mb", &self.memory_mb)?,
            cpus: number("cpus", &self.cpus)?,
            env: Some(env_lines(&self.env)?).filter(|e| !e.is_empty()),
            input: self.input_mode()?,
            queue: non_empty(&self.queue),
            max_attempts: number("max_attempts", &self.max_attempts)?,
            retry_on: Some(self.retry_on()),
            max_concurrency: number("max_concurrency", &self.max_concurrency)?,
            callback_url: non_empty(&self.callback_url),
            mode: self.mode()?,
            network: self.network()?,
            public: Some(self.public.is_some()),
            response: self.response()?,
            user: non_empty(&self.user),
            secrets: {
                let patch = self.secret_lines()?;
                if !patch.unset.is_empty() {
                    return Err(FormError::at(
                        "secrets",
                        "a new function has no secrets to remove: write NAME=value",
                    ));
                }
                Some(patch.set).filter(|s| !s.is_empty())
            },
            cors: self.cors()?,
            ..NewFunction::default()
        })
    }

    /// Every field replaces the stored one; empty number fields keep theirs.
    fn to_update(&self) -> Result<FunctionUpdate, FormError> {
        Ok(FunctionUpdate {
            image: Some(self.image.trim().to_string()),
            description: Some(self.description.trim().to_string()),
            timeout_ms: number("timeout_ms", &self.timeout_ms)?,
            memory_mb: number("memory_mb", &self.memory_mb)?,
            cpus: number("cpus", &self.cpus)?,
            env: Some(env_lines(&self.env)?),
            input: self.input_mode()?,
            queue: non_empty(&self.queue),
            max_attempts: number("max_attempts", &self.max_attempts)?,
            retry_on: Some(self.retry_on()),
            // An optional bound: empty clears it.
            max_concurrency: Some(number("max_concurrency", &self.max_concurrency)?),
            // Empty removes the default callback, as in the API.
            callback_url: Some(self.callback_url.trim().to_string()),
            mode: self.mode()?,
            network: self.network()?,
            public: Some(self.public.is_some()),
            response: self.response()?,
            // Empty runs as the image's own user, as in the API.
            user: Some(self.user.trim().to_string()),
            // No lines keep the secrets as they are.
            secrets: Some(self.secret_lines()?)
                .filter(|p| !p.set.is_empty() || !p.unset.is_empty())
                .map(SecretsUpdate::Patch),
            // No origin removes the policy.
            cors: Some(self.cors()?),
            ..FunctionUpdate::default()
        })
    }
}

/// What a function's CORS methods are when none are given (as in the API).
const DEFAULT_CORS_METHODS: &str = "GET, HEAD, POST";

/// The words of `s`, split at commas and white space.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

fn number<T: FromStr>(field: &'static str, s: &str) -> Result<Option<T>, FormError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| FormError::at(field, format!("{s:?} is not a number")))
}

fn env_lines(text: &str) -> Result<BTreeMap<String, String>, FormError> {
    let mut env = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| FormError::at("env", format!("{line:?}: write KEY=value")))?;
        env.insert(k.trim().to_string(), v.to_string());
    }
    Ok(env)
}

/// Why a form was refused, and next to which field to say so (`""`: above the form).
#[derive(Debug)]
pub(crate) struct FormError {
    pub(crate) field: &'static str,
    pub(crate) message: String,
    pub(crate) status: StatusCode,
}

impl FormError {
    fn at(field: &'static str, message: impl Into<String>) -> FormError {
        FormError {
            field,
            message: message.into(),
            status: StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl From<Invalid> for FormError {
    fn from(e: Invalid) -> Self {
        FormError::at(e.field, e.reason)
    }
}

impl From<ApiError> for FormError {
    fn from(e: ApiError) -> Self {
        let field = match &e {
            ApiError::Conflict(_) => "name",
            // The only 422 after validation: the image can't be had.
            ApiError::Unprocessable(_) => "image",
            _ => "",
        };
        FormError {
            field,
            message: e.to_string(),
            status: e.status(),
        }
    }
}

/// One labelled field, marked when the error is about it.
fn field(
    name: &'static str,
    label: &str,
    error: Option<&FormError>,
    hint: &str,
    input: Markup,
) -> Markup {
    let bad = error.filter(|e| e.field == name);
    html! {
        div.field.invalid[bad.is_some()] #{ "field-" (name) } {
            label for=(name) { (label) }
            (input)
            @if let Some(e) = bad { p.error role="alert" { (e.message) } }
            @if !hint.is_empty() { p.muted { (hint) } }
        }
    }
}

fn function_form(
    session: &Session,
    action: &str,
    v: &FunctionForm,
    editing: bool,
    error: Option<&FormError>,
) -> Markup {
    let keep = if editing {
        "Empty keeps the current value."
    } else {
        ""
    };
    html! {
        form.stack #function-form method="post" action=(action) novalidate {
            (session.csrf_field())
            @if let Some(e) = error { p.error #form-error role="alert" { "Not saved: " (e.message) } }
            (field("name", "Name", error, if editing { "A function can't be renamed." } else { "Lowercase letters, digits and '-'." },
                html! { input #name name="name" value=(v.name) readonly[editing] required; }))
            (field("image", "Image", error, "Pulled when the engine lacks it.",
                html! { input #image name="image" value=(v.image) required placeholder="e.g. alpine:3.20"; }))
            (field("description", "Description", error, "",
                html! { input #description name="description" value=(v.description); }))
            (field("input", "Input", error, "How the body reaches the container.",
                html! { select #input name="input" {
                    option value="stdin" selected[v.input != "args"] { "stdin: the body on stdin" }
                    option value="args" selected[v.input == "args"] { "args: the body (JSON array or string) as the command" }
                } }))
            (field("timeout_ms", "Timeout (ms)", error, keep,
                html! { input #timeout_ms name="timeout_ms" value=(v.timeout_ms) inputmode="numeric"; }))
            (field("memory_mb", "Memory (MB)", error, keep,
                html! { input #memory_mb name="memory_mb" value=(v.memory_mb) inputmode="numeric"; }))
            (field("cpus", "CPUs", error, keep,
                html! { input #cpus name="cpus" value=(v.cpus) inputmode="decimal"; }))
            (field("queue", "Queue", error, "Empty: default.",
                html! { input #queue name="queue" value=(v.queue); }))
            (field("max_attempts", "Max attempts", error, keep,
                html! { input #max_attempts name="max_attempts" value=(v.max_attempts) inputmode="numeric"; }))
            (field("max_concurrency", "Max concurrency per worker", error, "Empty: no limit (an emptied field clears it).",
                html! { input #max_concurrency name="max_concurrency" value=(v.max_concurrency) inputmode="numeric"; }))
            (field("retry_on", "Retry also on", error, "Platform failures are always retried.",
                html! {
                    label { input.check type="checkbox" name="retry_error" checked[v.retry_error.is_some()]; " non-zero exit" }
                    label { input.check type="checkbox" name="retry_timeout" checked[v.retry_timeout.is_some()]; " timeout" }
                }))
            (field("env", "Environment", error, "KEY=value, one a line.",
                html! { textarea #env name="env" { (v.env) } }))
            (field("callback_url", "Callback URL", error, "Where async results are POSTed. Empty: none.",
                html! { input #callback_url name="callback_url" value=(v.callback_url) type="url"; }))
            (field("mode", "Mode", error, "How a run gets its container.",
                html! { select #mode name="mode" {
                    option value="cold" selected[v.mode != "warm" && v.mode != "hot"] { "cold: a fresh container per run" }
                    option value="warm" selected[v.mode == "warm"] { "warm: an exec in a kept container" }
                    option value="hot" selected[v.mode == "hot"] { "hot: a request to the function's kept process" }
                } }))
            (field("network", "Network", error, "",
                html! { select #network name="network" {
                    option value="none" selected[v.network != "bridge"] { "none: loopback only" }
                    option value="bridge" selected[v.network == "bridge"] { "bridge: may reach the outside world" }
                } }))
            (field("response", "Response", error, "What the caller of its URL gets.",
                html! { select #response name="response" {
                    option value="body" selected[v.response != "cgi"] { "body: the output is the body" }
                    option value="cgi" selected[v.response == "cgi"] { "cgi: header lines, a blank line, then the body" }
                } }))
            (field("public", "Public", error, "",
                html! { div.check {
                    input.check #public type="checkbox" name="public" checked[v.public.is_some()];
                    label for="public" { " anyone may call its URL without a key" }
                } }))
            (field("user", "User", error, "uid or uid:gid, numbers, never root. Empty: the image's own user.",
                html! { input #user name="user" value=(v.user); }))
            (field("secrets", "Secrets", error,
                &(if !editing { "NAME=value, one a line. Values are never shown again.".to_string() }
                  else if v.secret_names.is_empty() { "None stored. NAME=value, one a line, adds one. Values are never shown.".to_string() }
                  else { format!("Stored: {}. NAME=value sets one, -NAME removes one; no lines keep them. Values are never shown.", v.secret_names.join(", ")) }),
                html! { textarea #secrets name="secrets" autocomplete="off" { (v.secrets) } }))
            (field("cors", "CORS: allowed origins", error, "Origins (https://app.example.org) or *, separated by commas. Empty: no CORS.",
                html! {
                    input #cors name="cors_origins" value=(v.cors_origins);
                    label for="cors_methods" { "CORS: methods" }
                    input #cors_methods name="cors_methods" value=(v.cors_methods);
                    label for="cors_headers" { "CORS: request headers" }
                    input #cors_headers name="cors_headers" value=(v.cors_headers);
                    label for="cors_max_age" { "CORS: preflight max age (s)" }
                    input #cors_max_age name="cors_max_age" value=(v.cors_max_age) inputmode="numeric";
                }))
            button #save type="submit" { @if editing { "Save" } @else { "Create" } }
        }
    }
}

fn form_page(
    session: &Session,
    title: &str,
    action: &str,
    v: &FunctionForm,
    editing: bool,
    error: Option<&FormError>,
) -> Html<String> {
    titled(
        title,
        session,
        html! { div.card { (function_form(session, action, v, editing, error)) } },
    )
}

fn refused(
    session: &Session,
    title: &str,
    action: &str,
    v: &FunctionForm,
    editing: bool,
    e: FormError,
) -> Response {
    with_status(
        e.status,
        form_page(session, title, action, v, editing, Some(&e)),
    )
}

/// `GET /ui/functions/new`.
pub(crate) async fn new_form(Admin(session): Admin) -> Result<Html<String>, UiError> {
    let v = FunctionForm {
        input: "stdin".into(),
        mode: "cold".into(),
        network: "none".into(),
        response: "body".into(),
        cors_methods: DEFAULT_CORS_METHODS.into(),
        ..FunctionForm::default()
    };
    Ok(form_page(
        &session,
        "New function",
        &format!("{BASE}/functions/new"),
        &v,
        false,
        None,
    ))
}

/// `POST /ui/functions/new`.
pub(crate) async fn create(
    Admin(session): Admin,
    State(app): State<AppState>,
    Form(v): Form<FunctionForm>,
) -> Result<Response, UiError> {
    let action = format!("{BASE}/functions/new");
    let created = async {
        let mut f = v.to_new()?.validate(&app.settings)?;
        // Made in the session's namespace, as the API makes it in the caller's.
        f.name = session.function(&f.name);
        register(&app, &f).await?;
        Ok::<_, FormError>(f)
    }
    .await;
    Ok(match created {
        Ok(f) => Redirect::to(&format!("{BASE}/functions/{}", f.name)).into_response(),
        Err(e) => refused(&session, "New function", &action, &v, false, e),
    })
}

/// `GET /ui/functions/{name}/edit`.
pub(crate) async fn edit_form(Admin(session): Admin, FunctionAt(f): FunctionAt) -> Html<String> {
    let action = format!("{BASE}/functions/{}/edit", f.name);
    form_page(
        &session,
        &format!("Edit {}", f.name),
        &action,
        &FunctionForm::from_function(&f),
        true,
        None,
    )
}

/// `POST /ui/functions/{name}/edit`.
pub(crate) async fn update(
    Admin(session): Admin,
    State(app): State<AppState>,
    FunctionAt(current): FunctionAt,
    Form(mut v): Form<FunctionForm>,
) -> Result<Response, UiError> {
    let name = current.name.clone();
    v.name = current.name.clone();
    v.secret_names = current.secrets.names();
    let action = format!("{BASE}/functions/{}/edit", current.name);
    let saved = async {
        let old_image = current.run.image.clone();
        let f = v.to_update()?.apply(current, &app.settings)?;
        save(&app, &f, &old_image).await?;
        Ok::<_, FormError>(f)
    }
    .await;
    Ok(match saved {
        Ok(f) => Redirect::to(&format!("{BASE}/functions/{}", f.name)).into_response(),
        Err(e) => refused(&session, &format!("Edit {name}"), &action, &v, true, e),
    })
}

/// `GET /ui/functions/{name}/delete`: asks first.
pub(crate) async fn delete_confirm(
    Admin(session): Admin,
    FunctionAt(f): FunctionAt,
) -> Html<String> {
    layout(
        &format!("Delete {}", f.name),
        Some(&session),
        html! {
            h1 { "Delete " (f.name) "?" }
            div.card {
                p { "The function goes at once; its invocations already queued may still run. This can't be undone." }
                form.inline method="post" action={ (BASE) "/functions/" (f.name) "/delete" } {
                    (session.csrf_field())
                    div.actions {
                        button.danger #confirm-delete type="submit" { "Delete " (f.name) }
                        a.button.secondary href={ (BASE) "/functions/" (f.name) } { "Cancel" }
                    }
                }
            }
        },
    )
}

/// `POST /ui/functions/{name}/delete`.
pub(crate) async fn delete(
    Admin(session): Admin,
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, UiError> {
    let deleted = store::delete(&app.pool, &session.function(&name)).await?;
    app.recent.forget_all();
    if !deleted {
        return Err(ApiError::NotFound(format!("no function named {name:?}")).into());
    }
    Ok(Redirect::to(BASE).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct InvokeForm {
    body: String,
}

/// `POST /ui/functions/{name}/invoke`: a sync run, its answer shown on the function's page.
pub(crate) async fn invoke(
    session: Session,
    State(app): State<AppState>,
    Path(name): Path<String>,
    Form(form): Form<InvokeForm>,
) -> Result<Html<String>, UiError> {
    session.require(crate::producer::auth::Action::Invoke)?;
    let function = load(&app, &session.function(&name)).await?;
    let job = Job {
        reply: Some(app.settings.sync_wait()),
        key_id: session.key_id,
        ..Job::new(Trigger::Sync, form.body.as_bytes())
    };
    let result = match enqueue(&app, &function, job).await {
        Ok(queued) => match queued.reply {
            Some(reply) => InvokeResult::Done {
                id: queued.id,
                reply,
            },
            None => InvokeResult::Pending { id: queued.id },
        },
        Err(e) => InvokeResult::Refused(e.to_string()),
    };
    let span = &super::chart::SPANS[0];
    function_page(&app, &session, &name, Some(result), &form.body, span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_lines_and_numbers() {
        let env = env_lines("A=1\n\n B = x=y \n").unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], " x=y");
        assert_eq!(env_lines("nope").unwrap_err().field, "env");
        assert_eq!(number::<i64>("timeout_ms", " 12 ").unwrap(), Some(12));
        assert_eq!(number::<i64>("timeout_ms", "").unwrap(), None);
        assert_eq!(
            number::<i64>("timeout_ms", "ten").unwrap_err().field,
            "timeout_ms"
        );
    }
}
