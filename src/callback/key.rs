//! Callback keys (`whsec_…`, one per function, rotatable) and the Standard Webhooks signature.

use super::*;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;

/// A fresh callback key: `whsec_` and the base64 of 32 random bytes.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    format!("{KEY_PREFIX}{}", BASE64.encode(bytes))
}

/// The HMAC key bytes of a callback key (the base64 after `whsec_`).
pub(super) fn key_bytes(key: &str) -> Vec<u8> {
    let b64 = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    BASE64
        .decode(b64)
        .unwrap_or_else(|_| key.as_bytes().to_vec())
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub(crate) fn signature(key: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key_bytes(key)).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// A function's callback key (`None`: no such function).
pub(crate) async fn function_key(
    pool: &PgPool,
    function: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT callback_key FROM functions WHERE name = $1")
            .bind(function)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(k,)| k))
}

/// Gives a function a fresh callback key and returns it (`None`: no such function). Deliveries
/// that start after this are signed with the new key.
pub(crate) async fn rotate_key(
    pool: &PgPool,
    function: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE functions SET callback_key = $2 WHERE name = $1 RETURNING callback_key",
    )
    .bind(function)
    .bind(new_key())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(k,)| k))
}
