//! Recent reads of what every call looks up (its API key, its function, whether a function's URL
//! is public), kept for a moment so an
//! invocation costs Postgres only the writes that record it. This process forgets everything at
//! once when it changes a function or a key; a change made through another ingress process is
//! seen within [`TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::function::Function;
use crate::keys::LiveKey;

/// How long a read is trusted.
pub(crate) const TTL: Duration = Duration::from_secs(1);
/// Entries kept at most per kind; past it the kind starts over (a flood of names can't grow it).
const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub(crate) struct Recent {
    functions: Mutex<HashMap<String, (Instant, Function)>>,
    /// Whether a name is a public function: `false` for private ones and missing ones alike.
    public: Mutex<HashMap<String, (Instant, bool)>>,
    /// By the SHA-256 of the key, never the key itself.
    keys: Mutex<HashMap<[u8; 32], (Instant, LiveKey)>>,
    /// Namespaces' quotas ([`crate::namespace::QuotaCache`]).
    pub(crate) quotas: crate::namespace::QuotaCache,
    /// Bytes of records each namespace with a `max_stored_bytes` holds, summed at most every
    /// [`STORED_TTL`].
    stored: Mutex<HashMap<String, (Instant, i64)>>,
}

/// How long a sum of a namespace's stored bytes is trusted.
pub(crate) const STORED_TTL: Duration = Duration::from_secs(5);

impl Recent {
    pub(crate) fn function(&self, name: &str) -> Option<Function> {
        fresh(&self.functions, name)
    }

    pub(crate) fn remember_function(&self, f: &Function) {
        remember(&self.functions, f.name.clone(), f.clone());
    }

    /// Whether `name` is a public function, as read in the last [`TTL`] (a name that is no
    /// function is remembered as `false`, like a private one).
    pub(crate) fn public(&self, name: &str) -> Option<bool> {
        fresh(&self.public, name)
    }

    pub(crate) fn remember_public(&self, name: &str, public: bool) {
        remember(&self.public, name.to_string(), public);
    }

    pub(crate) fn key(&self, hash: &[u8; 32]) -> Option<LiveKey> {
        fresh(&self.keys, hash)
    }

    pub(crate) fn remember_key(&self, hash: [u8; 32], key: LiveKey) {
        remember(&self.keys, hash, key);
    }

    /// Bytes of records namespace `name` holds, summed at most every [`STORED_TTL`].
    pub(crate) async fn stored_bytes(
        &self,
        pool: &sqlx::PgPool,
        name: &str,
    ) -> Result<i64, sqlx::Error> {
        if let Some((at, n)) = self.stored.lock().expect("lock").get(name)
            && at.elapsed() < STORED_TTL
        {
            return Ok(*n);
        }
        let n = crate::namespace::stored_bytes(pool, name).await?;
        remember(&self.stored, name.to_string(), n);
        Ok(n)
    }

    /// After this process changed a function or a key.
    pub(crate) fn forget_all(&self) {
        self.functions.lock().expect("lock").clear();
        self.public.lock().expect("lock").clear();
        self.keys.lock().expect("lock").clear();
    }
}

fn fresh<K, Q, V>(map: &Mutex<HashMap<K, (Instant, V)>>, key: &Q) -> Option<V>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    let map = map.lock().expect("lock");
    let (at, value) = map.get(key)?;
    (at.elapsed() < TTL).then(|| value.clone())
}

fn remember<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, (Instant, V)>>, key: K, value: V) {
    let mut map = map.lock().expect("lock");
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, (Instant::now(), value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_remembered_until_forgotten() {
        let recent = Recent::default();
        let hash = crate::keys::hash("gk_some-key");
        assert_eq!(recent.key(&hash), None);
        let key = LiveKey {
            id: uuid::Uuid::nil(),
            scope: crate::keys::Scope::Invoke,
            namespace: None,
            functions: None,
        };
        recent.remember_key(hash, key.clone());
        assert_eq!(recent.key(&hash), Some(key));
        recent.forget_all();
        assert_eq!(recent.key(&hash), None);
    }

    #[test]
    fn a_missing_function_is_remembered_as_not_public() {
        let recent = Recent::default();
        assert_eq!(recent.public("nothing"), None);
        recent.remember_public("nothing", false);
        assert_eq!(recent.public("nothing"), Some(false));
        recent.forget_all();
        assert_eq!(recent.public("nothing"), None);
    }
}
