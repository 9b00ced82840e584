//! Result callbacks: when an invocation with a callback URL is final, the worker that recorded it
//! POSTs the output there, signed under the installation's key, and retries 5xx, 408, 429 and
//! network errors with exponential backoff a bounded number of times.
//!
//! The request: body = the output (stdout) bytes; headers `X-Granda-Invocation-Id`,
//! `X-Granda-Function`, `X-Granda-Status`, `X-Granda-Exit-Code` (when there is one),
//! `X-Granda-Duration-Ms` (when there is one), `X-Granda-Attempt`, `X-Granda-Timestamp` (unix
//! seconds) and `X-Granda-Signature: sha256=<hex HMAC-SHA256(key, "{timestamp}.{invocation id}.{body}")>`,
//! where the key is the installation's callback key (`GET /v1/callbacks/key`) taken as UTF-8 bytes.
//!
//! Delivery state lives on the invocation (`callback_status`: `pending` → `delivering` →
//! `delivered` | `failed`, `callback_attempts`, `callback_error`); a claim in Postgres makes sure
//! that one process delivers it, even when a redelivered message reaches another worker.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;

const KEY_NAME: &str = "callback_signing_key";
/// The longest callback URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Checks a callback URL: absolute `http://` with a host. `https://` needs a TLS-enabled build,
/// which this one is not (see README).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "http" if parsed.host().is_some() => Ok(()),
        "https" => Err(
            "https callbacks are not supported by this build (no TLS); use http, e.g. to a TLS-terminating proxy".into(),
        ),
        _ => Err("must be an absolute http:// URL".into()),
    }
}

/// The installation's callback signing key, created on first use and shared through Postgres by
/// every server and worker.
pub async fn signing_key(pool: &PgPool) -> Result<String, sqlx::Error> {
    let fresh = hex::encode(crate::webhook::random_bytes(32));
    sqlx::query(
        "INSERT INTO installation (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(KEY_NAME)
    .bind(&fresh)
    .execute(pool)
    .await?;
    let (key,): (String,) = sqlx::query_as("SELECT value FROM installation WHERE key = $1")
        .bind(KEY_NAME)
        .fetch_one(pool)
        .await?;
    Ok(key)
}

/// The signature a receiver checks: `sha256=<hex HMAC-SHA256(key, "{timestamp}.{id}.{body}")>`.
pub fn signature(key: &str, timestamp: i64, id: Uuid, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let id = id.to_string();
    let hex = crate::webhook::sign_hex(
        key.as_bytes(),
        &[ts.as_bytes(), b".", id.as_bytes(), b".", body],
    );
    format!("sha256={hex}")
}

/// Marks an invocation's result to be POSTed to `url` when it is final.
pub async fn attach(pool: &PgPool, id: Uuid, url: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE invocations SET callback_url = $2, callback_status = 'pending' WHERE id = $1",
    )
    .bind(id)
    .bind(url)
    .execute(pool)
    .await?;
    Ok(())
}

/// The callback part of an invocation record, for the API (`None`: it has no callback).
pub async fn state(pool: &PgPool, id: Uuid) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<State> = sqlx::query_as(
        "SELECT callback_url, callback_status, callback_attempts, callback_error, callback_done_at
         FROM invocations WHERE id = $1 AND callback_url IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|s| {
        json!({
            "url": s.callback_url,
            "status": s.callback_status,
            "attempts": s.callback_attempts,
            "error": s.callback_error,
            "done_at": s.callback_done_at,
        })
    }))
}

#[derive(sqlx::FromRow)]
struct State {
    callback_url: String,
    callback_status: Option<String>,
    callback_attempts: i32,
    callback_error: Option<String>,
    callback_done_at: Option<DateTime<Utc>>,
}

/// A final invocation whose result is to be POSTed.
#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    function: String,
    status: String,
    exit_code: Option<i32>,
    duration_ms: Option<i64>,
    output: Option<Vec<u8>>,
    callback_url: String,
    callback_attempts: i32,
}

/// How a worker delivers callbacks.
pub struct Callbacks {
    client: reqwest::Client,
    backoff: Duration,
    max_attempts: u32,
    key: tokio::sync::OnceCell<String>,
}

impl Callbacks {
    pub fn new(settings: &Settings) -> Arc<Callbacks> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.callback_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("granda/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client without TLS builds");
        Arc::new(Callbacks {
            client,
            backoff: Duration::from_millis(settings.callback_backoff_ms),
            max_attempts: settings.callback_max_attempts.max(1),
            key: tokio::sync::OnceCell::new(),
        })
    }
}

/// Delivers invocation `id`'s callback in the background, if it has one that is due. The worker
/// calls this once the final record is committed.
pub fn deliver_later(pool: PgPool, callbacks: Arc<Callbacks>, id: Uuid) {
    tokio::spawn(async move {
        if let Err(e) = deliver(&pool, &callbacks, id).await {
            tracing::warn!(%id, error = %e, "callback delivery stopped on a database error");
        }
    });
}

/// Claims the callback (so only one process delivers it), then tries until it is delivered,
/// refused, or out of attempts.
#[tracing::instrument(skip(pool, callbacks))]
pub async fn deliver(pool: &PgPool, callbacks: &Callbacks, id: Uuid) -> Result<(), sqlx::Error> {
    let due: Option<Due> = sqlx::query_as(
        "UPDATE invocations SET callback_status = 'delivering', callback_claimed_at = now()
         WHERE id = $1 AND callback_url IS NOT NULL
           AND status IN ('succeeded', 'failed', 'timed_out', 'dead')
           AND (callback_status = 'pending'
                OR (callback_status = 'delivering' AND callback_claimed_at < now() - interval '15 minutes'))
         RETURNING id, function, status, exit_code, duration_ms, output, callback_url, callback_attempts",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(due) = due else { return Ok(()) };
    let key = callbacks
        .key
        .get_or_try_init(|| signing_key(pool))
        .await?
        .clone();
    let body = due.output.clone().unwrap_or_default();
    let mut attempt = due.callback_attempts.max(0) as u32;
    loop {
        attempt += 1;
        let result = post(callbacks, &key, &due, &body, attempt).await;
        let (final_status, error) = match result {
            Ok(()) => (Some("delivered"), None),
            Err(Failure::Permanent(e)) => (Some("failed"), Some(e)),
            Err(Failure::Retry(e)) if attempt >= callbacks.max_attempts => {
                (Some("failed"), Some(e))
            }
            Err(Failure::Retry(e)) => (None, Some(e)),
        };
        sqlx::query(
            "UPDATE invocations SET callback_attempts = $2, callback_error = $3,
                    callback_status = COALESCE($4, callback_status),
                    callback_done_at = CASE WHEN $4::text IS NULL THEN NULL ELSE now() END,
                    callback_claimed_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(attempt as i32)
        .bind(&error)
        .bind(final_status)
        .execute(pool)
        .await?;
        match final_status {
            Some(status) => {
                tracing::info!(attempt, status, error, "callback done");
                return Ok(());
            }
            None => {
                let wait = callbacks.backoff * 2u32.saturating_pow(attempt - 1);
                tracing::info!(attempt, error, ?wait, "callback failed; retrying");
                tokio::time::sleep(wait.min(Duration::from_secs(300))).await;
            }
        }
    }
}

enum Failure {
    /// Worth another try: 5xx, 408, 429, or no answer.
    Retry(String),
    /// The receiver refused it (another 4xx, a redirect): trying again won't help.
    Permanent(String),
}

async fn post(
    callbacks: &Callbacks,
    key: &str,
    due: &Due,
    body: &[u8],
    attempt: u32,
) -> Result<(), Failure> {
    let timestamp = Utc::now().timestamp();
    let mut request = callbacks
        .client
        .post(&due.callback_url)
        .header("content-type", "application/octet-stream")
        .header("x-granda-invocation-id", due.id.to_string())
        .header("x-granda-function", &due.function)
        .header("x-granda-status", &due.status)
        .header("x-granda-attempt", attempt.to_string())
        .header("x-granda-timestamp", timestamp.to_string())
        .header(
            "x-granda-signature",
            signature(key, timestamp, due.id, body),
        );
    if let Some(code) = due.exit_code {
        request = request.header("x-granda-exit-code", code.to_string());
    }
    if let Some(ms) = due.duration_ms {
        request = request.header("x-granda-duration-ms", ms.to_string());
    }
    match request.body(body.to_vec()).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            let why = format!("the receiver answered {status}");
            if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Err(Failure::Retry(why))
            } else {
                Err(Failure::Permanent(why))
            }
        }
        Err(e) => Err(Failure::Retry(format!("no answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(check_url("http://127.0.0.1:9000/done").is_ok());
        assert!(check_url("http://example.com/cb?x=1").is_ok());
        for bad in [
            "",
            "/relative",
            "ftp://x/y",
            "http://",
            "https://example.com/cb",
            "not a url",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("http://x/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn the_signature_covers_timestamp_id_and_body() {
        let id = Uuid::nil();
        let s = signature("k", 1700000000, id, b"out");
        let expected = crate::webhook::sign_hex(
            b"k",
            &[b"1700000000.00000000-0000-0000-0000-000000000000.out"],
        );
        assert_eq!(s, format!("sha256={expected}"));
        assert_ne!(s, signature("k", 1700000001, id, b"out"));
    }
}
