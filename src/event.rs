//! Published events and subscriptions: a service publishes a body on a topic (`orders.created`),
//! and every function whose subscription pattern matches it gets its own invocation.
//!
//! Topics are words of `[A-Za-z0-9_-]`, dot-separated, at most 255 characters. Patterns follow
//! AMQP topic exchanges: `*` is exactly one word, `#` is zero or more words.
//!
//! A function has at most `GRANDA_MAX_SUBSCRIPTIONS_PER_FUNCTION` subscriptions (100). A publish
//! does not scan them: each ingress keeps an [`Index`], a trie over pattern words where a topic
//! walks only the branches its words (or `*`, `#`) name, and rebuilds it when the
//! `subscriptions_version` row moves (a trigger bumps it on every change, in the same
//! transaction), which a publish reads with one single-row query.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

pub(crate) const MAX_TOPIC_LEN: usize = 255;

fn valid_word(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A topic events are published on: `[A-Za-z0-9_-]+` words, dot-separated, at most 255 characters.
pub(crate) fn valid_topic(topic: &str) -> bool {
    topic.len() <= MAX_TOPIC_LEN && topic.split('.').all(valid_word)
}

/// A subscription pattern: like a topic, where a word may also be `*` or `#`.
pub(crate) fn valid_pattern(pattern: &str) -> bool {
    pattern.len() <= MAX_TOPIC_LEN
        && pattern
            .split('.')
            .all(|w| w == "*" || w == "#" || valid_word(w))
}

/// Whether `pattern` matches `topic`, as an AMQP topic exchange decides: `*` is exactly one
/// word, `#` zero or more. Dynamic programming over (pattern word, topic word), so a pattern of
/// many `#` stays linear in its size times the topic's.
pub(crate) fn matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    let (np, nt) = (p.len(), t.len());
    // next[j]: p[i+1..] matches t[j..]; row i is computed from it.
    let mut next = vec![false; nt + 1];
    next[nt] = true;
    for i in (0..np).rev() {
        let mut row = vec![false; nt + 1];
        for j in (0..=nt).rev() {
            row[j] = match p[i] {
                "#" => next[j] || (j < nt && row[j + 1]),
                "*" => j < nt && next[j + 1],
                word => j < nt && t[j] == word && next[j + 1],
            };
        }
        next = row;
    }
    next[0]
}

/// Subscriptions as a trie over pattern words: the functions whose patterns match a topic are
/// found by walking the branches the topic's words, `*` and `#` lead to, never by a scan.
#[derive(Debug, Default)]
pub(crate) struct Index {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    words: HashMap<String, usize>,
    star: Option<usize>,
    hash: Option<usize>,
    /// Functions with a pattern that ends here.
    functions: Vec<String>,
}

impl Index {
    /// An index of `(function, pattern)` pairs.
    pub(crate) fn build<'a>(subscriptions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Index {
        let mut index = Index {
            nodes: vec![Node::default()],
        };
        for (function, pattern) in subscriptions {
            let mut at = 0;
            for word in pattern.split('.') {
                let existing = match word {
                    "*" => index.nodes[at].star,
                    "#" => index.nodes[at].hash,
                    w => index.nodes[at].words.get(w).copied(),
                };
                at = match existing {
                    Some(next) => next,
                    None => {
                        let next = index.nodes.len();
                        index.nodes.push(Node::default());
                        let node = &mut index.nodes[at];
                        match word {
                            "*" => node.star = Some(next),
                            "#" => node.hash = Some(next),
                            w => {
                                node.words.insert(w.to_string(), next);
                            }
                        }
                        next
                    }
                };
            }
            index.nodes[at].functions.push(function.to_string());
        }
        index
    }

    /// The functions with a pattern matching `topic`, each once. Every (node, word position)
    /// is visited at most once, so the work is bounded by the trie's branches the topic can
    /// reach, whatever the number of subscriptions.
    pub(crate) fn matching(&self, topic: &str) -> BTreeSet<String> {
        let t: Vec<&str> = topic.split('.').collect();
        let n = t.len();
        let mut out = BTreeSet::new();
        let mut seen: HashSet<(usize, usize)> = HashSet::new();
        let mut stack = vec![(0usize, 0usize)];
        while let Some((at, j)) = stack.pop() {
            if !seen.insert((at, j)) {
                continue;
            }
            let node = &self.nodes[at];
            if j == n {
                out.extend(node.functions.iter().cloned());
            }
            if let Some(h) = node.hash {
                // `#` takes zero or more words.
                stack.extend((j..=n).map(|k| (h, k)));
            }
            if j < n {
                if let Some(&next) = node.words.get(t[j]) {
                    stack.push((next, j + 1));
                }
                if let Some(s) = node.star {
                    stack.push((s, j + 1));
                }
            }
        }
        out
    }
}

/// This process's [`Index`] and the `subscriptions_version` it was built at.
#[derive(Default)]
pub(crate) struct Cache {
    current: tokio::sync::Mutex<Option<(i64, Arc<Index>)>>,
}

impl Cache {
    /// The index as of now: one single-row read, and a rebuild only when subscriptions changed.
    pub(crate) async fn index(&self, pool: &PgPool) -> Result<Arc<Index>, sqlx::Error> {
        // Read before the subscriptions: a change in between is seen as a newer version next time.
        let (version,): (i64,) = sqlx::query_as("SELECT version FROM subscriptions_version")
            .fetch_one(pool)
            .await?;
        let mut current = self.current.lock().await;
        if let Some((v, index)) = current.as_ref()
            && *v == version
        {
            return Ok(index.clone());
        }
        let all = store::subscriptions(pool, None).await?;
        let index = Arc::new(Index::build(
            all.iter()
                .map(|s| (s.function.as_str(), s.pattern.as_str())),
        ));
        *current = Some((version, index.clone()));
        Ok(index)
    }
}

/// A function's subscription.
#[derive(Clone, Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct Subscription {
    pub(crate) id: Uuid,
    pub(crate) function: String,
    pub(crate) pattern: String,
    pub(crate) created_at: DateTime<Utc>,
}

/// One invocation an event fanned out to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct FannedOut {
    pub(crate) function: String,
    pub(crate) id: Uuid,
}

/// A published event, as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct Event {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) size: i64,
    pub(crate) content_type: Option<String>,
    pub(crate) invocations: Json<Vec<FannedOut>>,
    pub(crate) published_at: DateTime<Utc>,
}

impl Event {
    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "topic": self.topic,
            "size": self.size,
            "content_type": self.content_type,
            "invocations": self.invocations.0,
            "published_at": self.published_at,
        });
        match std::str::from_utf8(&self.payload) {
            Ok(text) => v["payload"] = text.into(),
            Err(_) => {
                use base64::Engine as _;
                v["payload"] = Value::Null;
                v["payload_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(&self.payload)
                    .into();
            }
        }
        v
    }
}

/// A published event without its payload, as the dashboard lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct Published {
    pub(crate) id: Uuid,
    pub(crate) topic: String,
    pub(crate) size: i64,
    pub(crate) invocations: Json<Vec<FannedOut>>,
    pub(crate) published_at: DateTime<Utc>,
}

/// Postgres storage of subscriptions and events.
pub(crate) mod store {
    use super::*;

    /// What [`subscribe`] did.
    #[derive(Debug)]
    pub(crate) enum Subscribed {
        Created(Subscription),
        /// The function has this pattern already.
        Exists,
        /// The function has `cap` subscriptions already.
        Full,
        NoFunction,
    }

    /// Stores a subscription unless the function has `cap` of them. The function's row is
    /// locked meanwhile, so concurrent subscribes can't pass the cap together.
    #[tracing::instrument(skip(pool))]
    pub(crate) async fn subscribe(
        pool: &PgPool,
        function: &str,
        pattern: &str,
        cap: i64,
    ) -> Result<Subscribed, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let locked: Option<(String,)> =
            sqlx::query_as("SELECT name FROM functions WHERE name = $1 FOR NO KEY UPDATE")
                .bind(function)
                .fetch_optional(&mut *tx)
                .await?;
        if locked.is_none() {
            return Ok(Subscribed::NoFunction);
        }
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM subscriptions WHERE function = $1")
                .bind(function)
                .fetch_one(&mut *tx)
                .await?;
        let created = sqlx::query_as::<_, Subscription>(
            "INSERT INTO subscriptions (id, function, pattern)
             SELECT $1, $2, $3 WHERE $4
             ON CONFLICT (function, pattern) DO NOTHING
             RETURNING id, function, pattern, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(function)
        .bind(pattern)
        .bind(count < cap)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match created {
            Some(s) => Subscribed::Created(s),
            None if count >= cap => {
                let (exists,): (bool,) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE function = $1 AND pattern = $2)",
                )
                .bind(function)
                .bind(pattern)
                .fetch_one(&mut *tx)
                .await?;
                if exists {
                    Subscribed::Exists
                } else {
                    Subscribed::Full
                }
            }
            None => Subscribed::Exists,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// One function's subscriptions, or everyone's (`None`), oldest first.
    pub(crate) async fn subscriptions(
        pool: &PgPool,
        function: Option<&str>,
    ) -> Result<Vec<Subscription>, sqlx::Error> {
        sqlx::query_as::<_, Subscription>(
            "SELECT id, function, pattern, created_at FROM subscriptions
             WHERE ($1::text IS NULL OR function = $1) ORDER BY id",
        )
        .bind(function)
        .fetch_all(pool)
        .await
    }

    pub(crate) async fn unsubscribe(
        pool: &PgPool,
        function: &str,
        id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1 AND function = $2")
            .bind(id)
            .bind(function)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a published event. With an idempotency key used before, stores nothing and
    /// returns the first event's id and `false`.
    #[tracing::instrument(skip(pool, payload))]
    pub(crate) async fn insert_event(
        pool: &PgPool,
        namespace: &str,
        topic: &str,
        payload: &[u8],
        size: i64,
        content_type: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<(Uuid, bool), sqlx::Error> {
        let inserted: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO events (id, topic, payload, size, content_type, idempotency_key, namespace)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(topic)
        .bind(payload)
        .bind(size)
        .bind(content_type)
        .bind(idempotency_key)
        .bind(namespace)
        .fetch_optional(pool)
        .await?;
        if let Some((id,)) = inserted {
            return Ok((id, true));
        }
        let (id,): (Uuid,) = sqlx::query_as("SELECT id FROM events WHERE idempotency_key = $1")
            .bind(idempotency_key)
            .fetch_one(pool)
            .await?;
        Ok((id, false))
    }

    pub(crate) async fn set_invocations(
        pool: &PgPool,
        id: Uuid,
        invocations: &[FannedOut],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE events SET invocations = $2 WHERE id = $1")
            .bind(id)
            .bind(Json(invocations))
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The functions of `default` whose subscriptions match `topic`, each once however many
    /// patterns match (the AMQP router's: messages from outside are `default`'s events).
    pub(crate) async fn subscribers(
        pool: &PgPool,
        topic: &str,
    ) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
        Ok(subscriptions(pool, None)
            .await?
            .into_iter()
            .filter(|s| matches(&s.pattern, topic) && !s.function.contains('.'))
            .map(|s| s.function)
            .collect())
    }

    /// Records an event inside the caller's transaction (the AMQP router), with its fan-out
    /// and the AMQP headers it came with; no idempotency key (the caller has its own).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn insert_event_in(
        tx: &mut sqlx::PgConnection,
        id: Uuid,
        topic: &str,
        payload: &[u8],
        size: i64,
        content_type: Option<&str>,
        headers: &serde_json::Map<String, Value>,
        invocations: &[FannedOut],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO events (id, topic, payload, size, content_type, invocations, headers)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(topic)
        .bind(payload)
        .bind(size)
        .bind(content_type)
        .bind(Json(invocations))
        .bind((!headers.is_empty()).then_some(Json(headers)))
        .execute(tx)
        .await?;
        Ok(())
    }

    /// The latest `limit` events of `namespace`, newest first, without payloads: a walk down
    /// `events_namespace_id` (event ids are UUIDv7, so in publishing order).
    pub(crate) async fn recent_events(
        pool: &PgPool,
        namespace: &str,
        limit: i64,
    ) -> Result<Vec<Published>, sqlx::Error> {
        sqlx::query_as::<_, Published>(
            "SELECT id, topic, size, invocations, published_at FROM events
             WHERE namespace = $2 ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .bind(namespace)
        .fetch_all(pool)
        .await
    }

    /// The namespace event `id` was published in, if there is such an event.
    pub(crate) async fn namespace_of(
        pool: &PgPool,
        id: Uuid,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT namespace FROM events WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
    }

    pub(crate) async fn get_event(pool: &PgPool, id: Uuid) -> Result<Option<Event>, sqlx::Error> {
        sqlx::query_as::<_, Event>(
            "SELECT id, topic, payload, size, content_type, invocations, published_at
             FROM events WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_is_exactly_one_word() {
        assert!(matches("orders.*", "orders.created"));
        assert!(!matches("orders.*", "orders"));
        assert!(!matches("orders.*", "orders.created.eu"));
        assert!(matches("*.created", "orders.created"));
        assert!(!matches("*.created", "created"));
        assert!(matches("*.*", "a.b"));
        assert!(!matches("*", "a.b"));
        assert!(matches("*", "a"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.c"));
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        assert!(matches("orders.#", "orders"));
        assert!(matches("orders.#", "orders.created"));
        assert!(matches("orders.#", "orders.created.eu.west"));
        assert!(!matches("orders.#", "payments.created"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("#", "x"));
        assert!(matches("#.created", "created"));
        assert!(matches("#.created", "orders.eu.created"));
        assert!(!matches("#.created", "orders.created.not"));
        assert!(matches("a.#.z", "a.z"));
        assert!(matches("a.#.z", "a.b.c.z"));
        assert!(!matches("a.#.z", "a.b.c"));
        assert!(matches("#.#", "a"));
        assert!(matches("a.#.#.b", "a.b"));
        assert!(matches("*.#", "a"));
        assert!(!matches("*.#.*", "a"));
        assert!(matches("*.#.*", "a.b"));
        assert!(matches("#.*.#", "a.b.c"));
    }

    #[test]
    fn literal_words_match_exactly_and_case_sensitively() {
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "Orders.created"));
        assert!(!matches("orders.created", "orders.created2"));
        assert!(!matches("orders", "orders.created"));
        assert!(!matches("orders.created", "orders"));
    }

    /// The index agrees with [`matches`] on every pattern of these tests and more.
    #[test]
    fn the_index_matches_as_the_patterns_do() {
        let patterns = [
            "orders.*",
            "*.created",
            "*.*",
            "*",
            "a.*.c",
            "orders.#",
            "#",
            "#.created",
            "a.#.z",
            "#.#",
            "a.#.#.b",
            "*.#",
            "*.#.*",
            "#.*.#",
            "orders.created",
            "orders",
            "x.y.z",
        ];
        let subs: Vec<(String, String)> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("f{i}"), p.to_string()))
            .collect();
        let index = Index::build(subs.iter().map(|(f, p)| (f.as_str(), p.as_str())));
        let topics = [
            "orders",
            "orders.created",
            "orders.created.eu",
            "a",
            "a.b",
            "a.b.c",
            "a.c",
            "a.z",
            "a.b.c.z",
            "created",
            "x.y.z",
            "x.y",
            "Orders.created",
            "payments.created",
        ];
        for topic in topics {
            let want: BTreeSet<String> = subs
                .iter()
                .filter(|(_, p)| matches(p, topic))
                .map(|(f, _)| f.clone())
                .collect();
            assert_eq!(index.matching(topic), want, "{topic}");
        }
    }

    #[test]
    fn the_index_finds_one_pattern_among_many_quickly() {
        let subs: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("f{}", i % 100), format!("#.w{i}.*.#.tail{i}")))
            .collect();
        let start = std::time::Instant::now();
        let index = Index::build(subs.iter().map(|(f, p)| (f.as_str(), p.as_str())));
        let built = start.elapsed();
        let start = std::time::Instant::now();
        let got = index.matching("a.b.w4242.c.d.tail4242");
        let matched = start.elapsed();
        assert_eq!(got, BTreeSet::from(["f42".to_string()]));
        eprintln!("10000 patterns: built in {built:?}, matched in {matched:?}");
    }

    #[test]
    fn many_hashes_stay_fast() {
        let pattern = vec!["#"; 120].join(".") + ".z";
        let topic = vec!["a"; 120].join(".");
        let start = std::time::Instant::now();
        assert!(!matches(&pattern, &topic));
        assert!(matches(&pattern, &(topic + ".z")));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn topics_and_patterns_are_checked() {
        for good in ["orders", "orders.created", "a-b_c.D9", &"a".repeat(255)] {
            assert!(valid_topic(good), "{good}");
            assert!(valid_pattern(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a/b",
            "ä",
            "a.*",
            "#",
            &"a".repeat(256),
        ] {
            assert!(!valid_topic(bad), "{bad}");
        }
        for good in ["*", "#", "orders.*", "orders.#", "#.created", "*.*.#"] {
            assert!(valid_pattern(good), "{good}");
        }
        for bad in ["", "a..b", "a.**", "a.#b", "a. b", "a.", &"a".repeat(256)] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }
}
