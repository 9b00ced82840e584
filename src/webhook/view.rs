//! A webhook as the API shows it: never with its stored secret; with a secret only in the
//! answer that made one (create and rotate, when Granda generated it).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::Webhook;
use super::{DEFAULT_HMAC_HEADER, Scheme};

/// A webhook bound to a function.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookView {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    /// `github`, `stripe`, `standard`, `hmac-sha256` or `none`.
    pub(crate) scheme: String,
    /// The URL to give the sender: `{public URL}/hooks/{id}`.
    pub(crate) url: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) rotated_at: Option<DateTime<Utc>>,
    /// After a rotation, until when the previous secret still verifies (null once it does not).
    pub(crate) previous_secret_valid_until: Option<DateTime<Utc>>,
    /// `hmac-sha256`: the header that carries the signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) header: Option<String>,
    /// `hmac-sha256`: how the signature is written (`hex` or `base64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encoding: Option<String>,
    /// The header that carries the sender's delivery id, when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id_header: Option<String>,
    /// Only in the answer that made it, when Granda generated it: shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secret: Option<String>,
}

impl WebhookView {
    /// `hook` as the API shows it, its URL under `public_url`; with no secret.
    pub(crate) fn new(hook: &Webhook, public_url: &str) -> Self {
        let hmac = hook.scheme() == Scheme::HmacSha256;
        WebhookView {
            id: hook.id,
            function: hook.function.clone(),
            scheme: hook.scheme.clone(),
            url: format!("{public_url}/hooks/{}", hook.id),
            created_at: hook.created_at,
            rotated_at: hook.rotated_at,
            previous_secret_valid_until: hook.previous_secret_until.filter(|u| *u > Utc::now()),
            header: hmac.then(|| {
                hook.header
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HMAC_HEADER.into())
            }),
            encoding: hmac.then(|| hook.encoding.clone().unwrap_or_else(|| "hex".into())),
            id_header: hook.id_header.clone(),
            secret: None,
        }
    }
}

/// Every webhook, or one function's.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookList {
    pub(crate) webhooks: Vec<WebhookView>,
}
