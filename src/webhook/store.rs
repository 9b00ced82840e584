//! Postgres storage of webhooks. The secret is kept as given, since verifying needs it; it leaves
//! this module only inside a [`Verifier`], never in a view.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{DEFAULT_HMAC_HEADER, Encoding, Scheme, Verifier};

/// A webhook, as stored.
#[derive(Clone, sqlx::FromRow)]
pub(crate) struct Webhook {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) scheme: String,
    pub(crate) secret: Option<String>,
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_secret_until: Option<DateTime<Utc>>,
    pub(crate) header: Option<String>,
    pub(crate) encoding: Option<String>,
    pub(crate) id_header: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) rotated_at: Option<DateTime<Utc>>,
}

/// Without the secrets, so that a logged webhook shows none.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("function", &self.function)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub(crate) fn scheme(&self) -> Scheme {
        // The table's CHECK admits only known schemes.
        Scheme::parse(&self.scheme).unwrap_or(Scheme::None)
    }

    /// What verifies this webhook's requests at `now`: the current secret, and the previous one
    /// until its grace period ends.
    pub(crate) fn verifier(&self, now: DateTime<Utc>, tolerance_secs: i64) -> Verifier {
        let scheme = self.scheme();
        let mut keys: Vec<Vec<u8>> = self.secret.iter().filter_map(|s| scheme.key(s)).collect();
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && now < until
        {
            keys.extend(scheme.key(previous));
        }
        Verifier {
            scheme,
            keys,
            header: self
                .header
                .clone()
                .unwrap_or_else(|| DEFAULT_HMAC_HEADER.into()),
            encoding: self
                .encoding
                .as_deref()
                .and_then(Encoding::parse)
                .unwrap_or_default(),
            id_header: self.id_header.clone(),
            tolerance_secs,
        }
    }
}

macro_rules! select {
    () => {
        "SELECT id, function, scheme, secret, previous_secret, previous_secret_until, header, encoding, id_header, created_at, rotated_at FROM webhooks"
    };
}

#[tracing::instrument(skip_all, fields(id = %w.id, function = %w.function))]
pub(crate) async fn insert(pool: &PgPool, w: &Webhook) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhooks (id, function, scheme, secret, header, encoding, id_header, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(w.id)
    .bind(&w.function)
    .bind(&w.scheme)
    .bind(&w.secret)
    .bind(&w.header)
    .bind(&w.encoding)
    .bind(&w.id_header)
    .bind(w.created_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Webhook>, sqlx::Error> {
    sqlx::query_as::<_, Webhook>(concat!(select!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// All webhooks, or those of one function, oldest first.
pub(crate) async fn list(
    pool: &PgPool,
    function: Option<&str>,
) -> Result<Vec<Webhook>, sqlx::Error> {
    sqlx::query_as::<_, Webhook>(concat!(
        select!(),
        " WHERE ($1::text IS NULL OR function = $1) ORDER BY created_at, id"
    ))
    .bind(function)
    .fetch_all(pool)
    .await
}

pub(crate) async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Makes `secret` the current secret; the old one keeps verifying until `previous_until`.
#[tracing::instrument(skip(pool, secret))]
pub(crate) async fn rotate(
    pool: &PgPool,
    id: Uuid,
    secret: &str,
    previous_until: DateTime<Utc>,
) -> Result<Option<Webhook>, sqlx::Error> {
    sqlx::query_as::<_, Webhook>(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_until = $3,
                secret = $2, rotated_at = now()
         WHERE id = $1
         RETURNING id, function, scheme, secret, previous_secret, previous_secret_until, header, encoding, id_header, created_at, rotated_at",
    )
    .bind(id)
    .bind(secret)
    .bind(previous_until)
    .fetch_optional(pool)
    .await
}
