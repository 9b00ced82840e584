//! The installation's message keys: the HMAC-SHA256 key every work message is signed with, and
//! the ChaCha20-Poly1305 keys function secrets are sealed with, in Postgres and on the wire; and
//! the secrets themselves ([`Secrets`], re-exported by [`crate::function`] that holds them), here
//! below the function so that neither imports the other in a circle.
//!
//! - The signing key is made once per installation and kept in Postgres (`installation_secrets`):
//!   every ingress and worker of the installation reads it at start. A worker runs only a message
//!   whose signature checks ([`crate::message::Work::decode`]), so broker credentials alone
//!   (what event publishers get) can't make a worker run anything.
//! - Secrets are sealed under the operator's `GRANDA_SECRETS_KEY` when given, else under a key
//!   made once and kept in Postgres beside the signing key. `GRANDA_SECRETS_OLD_KEYS` are still
//!   read. Each sealed value names its key's id (`v1.<id>.<base64 nonce‖ciphertext>`); at start
//!   the ingress re-seals stored values under the current key ([`reseal_stored`]).

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

type HmacSha256 = Hmac<Sha256>;

/// The signature of a message, as lowercase hex.
pub(crate) type Signature = String;

/// A secret value sealed under one key: `v1.<key id>.<base64 of nonce and ciphertext>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sealed {
    pub(crate) sealed: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({})", self.key_id().unwrap_or("?"))
    }
}

impl Sealed {
    /// The id of the key it was sealed under.
    pub(crate) fn key_id(&self) -> Option<&str> {
        let mut parts = self.sealed.splitn(3, '.');
        (parts.next() == Some("v1")).then(|| parts.next())?
    }
}

/// Env values a function gets but the API never shows (write-only). Debug shows names only,
/// so a secret can't reach a log line through `{:?}`. Stored and sent sealed
/// (here, below [`crate::function`] that holds them); clear only between the API and the store, and in a worker.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub(crate) BTreeMap<String, SecretValue>);

/// One secret's value: clear (a string in JSON, as stored before sealing), or sealed
/// (`{"sealed": "v1.<key id>.<…>"}`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum SecretValue {
    Clear(String),
    Sealed(Sealed),
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Clear(_) => f.write_str("<redacted>"),
            SecretValue::Sealed(s) => s.fmt(f),
        }
    }
}

impl SecretValue {
    /// The clear value, once opened.
    pub(crate) fn clear(&self) -> Option<&str> {
        match self {
            SecretValue::Clear(s) => Some(s),
            SecretValue::Sealed(_) => None,
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

impl Secrets {
    pub(crate) fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Clear secrets, as the API takes them.
    pub(crate) fn clear(values: BTreeMap<String, String>) -> Secrets {
        Secrets(
            values
                .into_iter()
                .map(|(k, v)| (k, SecretValue::Clear(v)))
                .collect(),
        )
    }

    /// Whether any value is still clear (it must be sealed before it is stored or sent).
    pub(crate) fn has_clear(&self) -> bool {
        self.0.values().any(|v| matches!(v, SecretValue::Clear(_)))
    }

    /// The clear values (sealed ones are left out: a worker opens them first).
    pub fn clear_iter(&self) -> impl Iterator<Item = (&String, &str)> {
        self.0.iter().filter_map(|(k, v)| Some((k, v.clear()?)))
    }
}

/// One secrets key: 32 bytes and its id (the first 8 hex digits of a hash of it).
#[derive(Clone)]
struct SecretKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

impl SecretKey {
    fn new(bytes: &[u8; 32]) -> SecretKey {
        let mut hash = Sha256::new();
        hash.update(b"granda secrets key id\0");
        hash.update(bytes);
        SecretKey {
            id: hex::encode(&hash.finalize()[..4]),
            cipher: ChaCha20Poly1305::new(bytes.into()),
        }
    }
}

/// Why a key given in the settings is not one.
pub(crate) fn parse_key(s: &str) -> anyhow::Result<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| anyhow::anyhow!("a secrets key is 32 bytes, as 64 hex digits or base64"))?
    };
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a secrets key is 32 bytes, as 64 hex digits or base64"))
}

/// The keys of one installation, as every ingress and worker of it holds them.
pub struct Keys {
    mac: HmacSha256,
    current: SecretKey,
    readable: BTreeMap<String, SecretKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("current", &self.current.id)
            .field("readable", &self.readable.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "a secret is sealed under key {0}, which this process does not have (GRANDA_SECRETS_OLD_KEYS)"
    )]
    UnknownKey(String),
    #[error("a sealed secret does not open (altered, or not sealed by this installation)")]
    Corrupt,
}

impl Keys {
    /// The signing key `mac_key`; secrets sealed under `current`, also reading `old`.
    pub(crate) fn new(mac_key: &[u8], current: &[u8; 32], old: &[[u8; 32]]) -> Keys {
        let current = SecretKey::new(current);
        let mut readable: BTreeMap<String, SecretKey> = old
            .iter()
            .map(|k| {
                let k = SecretKey::new(k);
                (k.id.clone(), k)
            })
            .collect();
        readable.insert(current.id.clone(), current.clone());
        Keys {
            mac: HmacSha256::new_from_slice(mac_key).expect("HMAC takes keys of any length"),
            current,
            readable,
        }
    }

    /// Keys made on the spot, for tests and for measuring a sealed message.
    pub fn ephemeral() -> Keys {
        Keys::new(&random::<32>(), &random::<32>(), &[])
    }

    /// The installation's keys: the signing key and the generated secrets key from Postgres
    /// (made on first use), and the operator's `GRANDA_SECRETS_KEY` and `GRANDA_SECRETS_OLD_KEYS`.
    /// The generated key stays readable when the operator gives one, so values sealed before are
    /// re-sealed at start.
    pub async fn load(pool: &PgPool, settings: &crate::config::Settings) -> anyhow::Result<Keys> {
        let mac = installation_secret(pool, "message_signing_key").await?;
        let generated = installation_secret(pool, "secrets_key").await?;
        let mut old = Vec::new();
        for k in settings
            .secrets_old_keys
            .iter()
            .filter(|k| !k.trim().is_empty())
        {
            old.push(parse_key(k).context("GRANDA_SECRETS_OLD_KEYS")?);
        }
        let current = match settings
            .secrets_key
            .as_deref()
            .filter(|k| !k.trim().is_empty())
        {
            Some(k) => {
                old.push(generated);
                parse_key(k).context("GRANDA_SECRETS_KEY")?
            }
            None => generated,
        };
        Ok(Keys::new(&mac, &current, &old))
    }

    /// The id of the key values are sealed under now.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// `value` sealed under the current key, with a fresh random nonce.
    pub(crate) fn seal(&self, value: &str) -> Sealed {
        let nonce = random::<12>();
        let ciphertext = self
            .current
            .cipher
            .encrypt(&Nonce::from(nonce), value.as_bytes())
            .expect("ChaCha20-Poly1305 seals any length we send");
        let mut both = nonce.to_vec();
        both.extend_from_slice(&ciphertext);
        Sealed {
            sealed: format!("v1.{}.{}", self.current.id, B64.encode(both)),
        }
    }

    pub(crate) fn open(&self, sealed: &Sealed) -> Result<String, OpenError> {
        let mut parts = sealed.sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(OpenError::Corrupt);
        };
        let key = self
            .readable
            .get(id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let data = B64.decode(data).map_err(|_| OpenError::Corrupt)?;
        if data.len() < 12 {
            return Err(OpenError::Corrupt);
        }
        let (nonce, ciphertext) = data.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| OpenError::Corrupt)?;
        let clear = key
            .cipher
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| OpenError::Corrupt)?;
        String::from_utf8(clear).map_err(|_| OpenError::Corrupt)
    }

    /// `secrets` with every clear value sealed under the current key (sealed ones stay as they
    /// are).
    pub(crate) fn seal_all(&self, secrets: &Secrets) -> Secrets {
        Secrets(
            secrets
                .0
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        SecretValue::Clear(clear) => SecretValue::Sealed(self.seal(clear)),
                        sealed => sealed.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
    }

    /// Opens every sealed value of `secrets` in place.
    pub fn open_all(&self, secrets: &mut Secrets) -> Result<(), OpenError> {
        for v in secrets.0.values_mut() {
            if let SecretValue::Sealed(sealed) = v {
                *v = SecretValue::Clear(self.open(sealed)?);
            }
        }
        Ok(())
    }

    /// `secrets` with every value sealed under the current key: clear ones sealed, ones sealed
    /// under another key opened and sealed again. `None` when there was nothing to change.
    pub(crate) fn reseal(&self, secrets: &Secrets) -> Result<Option<Secrets>, OpenError> {
        let stale = secrets.0.values().any(|v| match v {
            SecretValue::Clear(_) => true,
            SecretValue::Sealed(s) => s.key_id() != Some(self.current_id()),
        });
        if !stale {
            return Ok(None);
        }
        let mut opened = secrets.clone();
        self.open_all(&mut opened)?;
        Ok(Some(self.seal_all(&opened)))
    }

    /// HMAC-SHA256 of `fields`, each framed by its length (`None` framed apart from empty).
    pub(crate) fn sign(&self, fields: &[Option<&[u8]>]) -> Signature {
        hex::encode(self.mac_of(fields).finalize().into_bytes())
    }

    /// Whether `signature` (hex) is the signature of `fields`, compared in constant time.
    pub(crate) fn verify(&self, fields: &[Option<&[u8]>], signature: &[u8]) -> bool {
        let Ok(bytes) = hex::decode(signature) else {
            return false;
        };
        self.mac_of(fields).verify_slice(&bytes).is_ok()
    }

    fn mac_of(&self, fields: &[Option<&[u8]>]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(b"granda work v1\0");
        for field in fields {
            match field {
                None => mac.update(&[0]),
                Some(bytes) => {
                    mac.update(&[1]);
                    mac.update(&(bytes.len() as u64).to_be_bytes());
                    mac.update(bytes);
                }
            }
        }
        mac
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source");
    bytes
}

/// The installation secret `name`: made once (32 random bytes) by whichever process comes first,
/// then the same for all.
async fn installation_secret(pool: &PgPool, name: &str) -> anyhow::Result<[u8; 32]> {
    sqlx::query("INSERT INTO installation_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .bind(random::<32>().to_vec())
        .execute(pool)
        .await
        .with_context(|| format!("making the installation's {name}"))?;
    let (value,): (Vec<u8>,) =
        sqlx::query_as("SELECT value FROM installation_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await
            .with_context(|| format!("reading the installation's {name}"))?;
    value
        .try_into()
        .map_err(|_| anyhow::anyhow!("installation_secrets.{name} is not 32 bytes"))
}

/// Seals every stored function's secrets under the current key: clear values (stored before
/// sealing existed) and values sealed under an older key. A row changed meanwhile is left to
/// the next start. Returns how many functions were re-sealed.
pub(crate) async fn reseal_stored(pool: &PgPool, keys: &Keys) -> anyhow::Result<usize> {
    let rows: Vec<(String, sqlx::types::Json<Secrets>)> =
        sqlx::query_as("SELECT name, secrets FROM functions WHERE secrets <> '{}'::jsonb")
            .fetch_all(pool)
            .await?;
    let mut done = 0;
    for (name, sqlx::types::Json(secrets)) in rows {
        match keys.reseal(&secrets) {
            Ok(None) => {}
            Ok(Some(new)) => {
                let changed = sqlx::query(
                    "UPDATE functions SET secrets = $2 WHERE name = $1 AND secrets = $3",
                )
                .bind(&name)
                .bind(sqlx::types::Json(&new))
                .bind(sqlx::types::Json(&secrets))
                .execute(pool)
                .await?;
                done += changed.rows_affected() as usize;
            }
            Err(e) => {
                tracing::error!(function = %name, error = %e, "can't re-seal this function's secrets");
            }
        }
    }
    if done > 0 {
        tracing::info!(
            functions = done,
            key = keys.current_id(),
            "re-sealed stored secrets under the current key"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_names_it() {
        let keys = Keys::ephemeral();
        let sealed = keys.seal("s3cret");
        assert!(!sealed.sealed.contains("s3cret"));
        assert_eq!(sealed.key_id(), Some(keys.current_id()));
        assert_eq!(keys.open(&sealed).unwrap(), "s3cret");
        assert_ne!(keys.seal("s3cret"), sealed, "a fresh nonce each time");
        let other = Keys::ephemeral();
        assert!(matches!(other.open(&sealed), Err(OpenError::UnknownKey(_))));
        let mut altered = sealed.clone();
        // Another last character, whatever the last one was.
        let last = altered.sealed.pop().unwrap();
        altered.sealed.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keys.open(&altered).is_err());
    }

    #[test]
    fn rotation_reads_the_old_key_and_reseals_under_the_new() {
        let (mac, old, new) = (random::<32>(), random::<32>(), random::<32>());
        let before = Keys::new(&mac, &old, &[]);
        let secrets = Secrets(
            [("A".to_string(), SecretValue::Sealed(before.seal("x")))]
                .into_iter()
                .collect(),
        );
        let after = Keys::new(&mac, &new, &[old]);
        let resealed = after.reseal(&secrets).unwrap().expect("stale");
        assert!(after.reseal(&resealed).unwrap().is_none());
        let mut opened = resealed.clone();
        Keys::new(&mac, &new, &[]).open_all(&mut opened).unwrap();
        assert_eq!(opened.0["A"], SecretValue::Clear("x".into()));
    }

    #[test]
    fn a_signature_covers_every_field_and_its_framing() {
        let keys = Keys::ephemeral();
        let fields: [Option<&[u8]>; 3] = [Some(b"ab"), None, Some(b"c")];
        let sig = keys.sign(&fields);
        assert!(keys.verify(&fields, sig.as_bytes()));
        assert!(!keys.verify(&[Some(b"a"), Some(b"b"), Some(b"c")], sig.as_bytes()));
        assert!(!keys.verify(&[Some(b"ab"), Some(b""), Some(b"c")], sig.as_bytes()));
        assert!(!Keys::ephemeral().verify(&fields, sig.as_bytes()));
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(parse_key(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).is_ok());
        assert!(parse_key("short").is_err());
    }
}
