//! A function as the API shows it (its fields, its own URL, the names of its secrets, its builds),
//! and the answer to a name that is taken: what registering, deploying from source, rolling back
//! and reading a function all answer with.

use super::AppState;
use crate::error::ApiError;
use crate::function::Function;

/// A function as the API shows it: its fields, its own URL, and the names of its secrets.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct FunctionView {
    /// (Its `name` is the short one; its namespace is beside it.)
    #[serde(flatten)]
    pub(crate) function: Function,
    /// The namespace the function belongs to ([`crate::namespace`]).
    pub(crate) namespace: String,
    pub(crate) invoke_url: String,
    /// Names only: secrets are write-only.
    pub(crate) secrets: Vec<String>,
    /// Builds from source, newest first (only when one function is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub(crate) versions: Option<serde_json::Value>,
    /// How long its ended invocations are kept, as it applies (only when one function is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retention: Option<crate::retention::Effective>,
}

/// `GET /v1/functions`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct FunctionList {
    pub(crate) functions: Vec<FunctionView>,
}

pub(crate) fn view(app: &AppState, f: &Function) -> FunctionView {
    let (name, namespace) = crate::namespace::split(&f.name);
    let mut function = f.clone();
    function.name = name.to_string();
    FunctionView {
        function,
        namespace: namespace.to_string(),
        // `/fn/{name}` in `default`, `/fn/{name}.{namespace}` elsewhere: the stored name.
        invoke_url: format!("{}/fn/{}", app.settings.functions_url(), f.name),
        secrets: f.secrets.names(),
        versions: None,
        retention: None,
    }
}

/// A function as the API shows it, with its builds (`versions`, newest first; empty for a function
/// registered with an image).
pub(crate) async fn view_with_versions(
    app: &AppState,
    f: &Function,
) -> Result<FunctionView, ApiError> {
    let mut v = view(app, f);
    let builds = crate::build::store::list(&app.pool, &f.name, f.created_at).await?;
    v.versions = Some(serde_json::to_value(builds).expect("builds serialize"));
    let policy = crate::retention::Policy::of(&app.settings);
    v.retention =
        Some(crate::retention::effective(&app.pool, policy, &f.name, f.retention_s).await?);
    Ok(v)
}

pub(crate) fn conflict(name: &str) -> ApiError {
    let name = crate::namespace::short(name);
    ApiError::Conflict(format!("a function named {name:?} exists"))
}
