//! Result callbacks: when an invocation with a callback URL is final, the worker that recorded it
//! POSTs the result there, signed under the function's callback key, and retries 5xx, 408, 429 and
//! network errors with exponential backoff a bounded number of times.
//!
//! **Targets.** A callback URL is `http://` or `https://` with a host and no user name or
//! password. Its host must not be, or resolve to, a loopback, private (RFC 1918, ULA),
//! link-local, unspecified, multicast, shared (CGNAT), documentation, benchmark or reserved
//! address, in any spelling (`2130706433`, `0x7f000001`, `[::ffff:127.0.0.1]`, `localhost`, ...),
//! unless the operator allows its range (`GRANDA_CALLBACK_ALLOW_NETS`). This is checked where a
//! URL enters (`check_target`: registration answers 422, an invoke's `X-Callback-Url` 400) and
//! again at connect time: the client resolves names through `GuardedResolver`, which drops
//! refused addresses, so a name that changes its answer (DNS rebinding) or a URL stored before
//! the rule can't reach them. Redirects are not followed and no proxy is used. https goes through
//! rustls (ring) with the system's roots plus `GRANDA_CALLBACK_CA_FILE`.
//!
//! **The request** is Standard Webhooks: a JSON body
//! `{"type":"invocation.finished","timestamp",data:{id,function,status,exit_code,duration_ms,
//! attempt,output,output_encoding}}` and headers `webhook-id` (the invocation id),
//! `webhook-timestamp` (unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")>`, where the key is the base64 after `whsec_` in the
//! function's callback key (`GET`/`POST /v1/functions/{name}/callback-key`). So the signature
//! covers the id, status, exit code, function, attempt, output and time. `X-Granda-*` headers
//! repeat some fields for convenience; they are not signed. `traceparent` (and `tracestate`)
//! carry the trace the invocation was accepted in (stored with it): each POST is a `callback`
//! span of that trace, so a receiver's own spans join it.
//!
//! **What a caller reads.** Delivery state lives on the invocation (`callback_status`: `pending` →
//! `delivering` → `delivered` | `failed`, `callback_attempts`, `callback_error`); the error is a
//! reason class ("receiver answered 5xx", "refused: private address"), never the receiver's
//! body. A claim in Postgres makes sure that one process delivers it, even when a redelivered
//! message reaches another worker.
//!
//! **Bounded.** A worker holds at most `GRANDA_CALLBACK_MAX_INFLIGHT` callbacks and
//! `GRANDA_CALLBACK_MAX_INFLIGHT_BYTES` of their outputs at once (a single larger output goes
//! alone). Past that a callback stays `pending` in Postgres and is claimed when a slot frees up.
//!
//! Layout: `target` decides which URLs a callback may reach (where a URL enters and at connect
//! time), `key` holds the signing keys and the signature, `store` the delivery state on the
//! invocation; this file delivers.

mod key;
mod store;
mod target;

pub use key::new_key;
pub(crate) use key::{function_key, rotate_key, signature};
use store::{CLAIM_NEXT, CLAIM_ONE, Due};
pub(crate) use store::{attach, state};
pub use target::AllowNets;
use target::{GuardedResolver, Refused};
pub(crate) use target::{check_target, check_url, refusal};

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// The longest callback URL accepted.
pub(crate) const MAX_URL_LEN: usize = 2048;
/// The prefix of a callback key, as in Standard Webhooks.
pub(crate) const KEY_PREFIX: &str = "whsec_";

/// What [`Callbacks`] is made from (the `GRANDA_CALLBACK_*` settings, as
/// `config::Settings::callbacks` gives them).
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) allow_nets: AllowNets,
    pub(crate) timeout: Duration,
    pub(crate) ca_file: Option<std::path::PathBuf>,
    pub(crate) backoff: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_inflight: u32,
    pub(crate) max_inflight_bytes: u32,
}

/// How a worker delivers callbacks.
pub(crate) struct Callbacks {
    client: reqwest::Client,
    backoff: Duration,
    max_attempts: u32,
    allow: Arc<Vec<IpNet>>,
    /// One permit per callback held for delivery.
    slots: Arc<Semaphore>,
    /// One permit per output byte held for delivery.
    bytes: Arc<Semaphore>,
    max_bytes: u32,
    /// Some callback found no free slot and waits in Postgres.
    deferred: AtomicBool,
    /// Where deliveries are counted, once the worker shares its metrics.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl Callbacks {
    /// # Panics
    /// When `GRANDA_CALLBACK_CA_FILE` can't be read as PEM certificates, or no TLS client can be
    /// built: a start-up misconfiguration.
    pub(crate) fn new(options: &Options) -> Arc<Callbacks> {
        crate::tls::install_provider();
        let allow = Arc::new(options.allow_nets.0.clone());
        let builder = || {
            reqwest::Client::builder()
                .timeout(options.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver {
                    allow: allow.clone(),
                }))
                .user_agent(concat!("granda/", env!("CARGO_PKG_VERSION")))
        };
        let mut extra = Vec::new();
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).unwrap_or_else(|e| {
                panic!(
                    "GRANDA_CALLBACK_CA_FILE: can't read {}: {e}",
                    path.display()
                )
            });
            extra = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_else(|e| {
                panic!(
                    "GRANDA_CALLBACK_CA_FILE: {} holds no PEM certificates: {e}",
                    path.display()
                )
            });
        }
        let client = builder()
            .tls_certs_merge(extra.clone())
            .build()
            .or_else(|e| {
                // No system roots (no ca-certificates): http and the operator's CA still work.
                tracing::warn!(error = %e, "no system CA roots: https callbacks trust only GRANDA_CALLBACK_CA_FILE");
                builder().tls_certs_only(extra).build()
            })
            .unwrap_or_else(|e| panic!("the callback HTTP client can't be built: {e}"));
        let max_bytes = options.max_inflight_bytes.max(1);
        Arc::new(Callbacks {
            client,
            backoff: options.backoff,
            max_attempts: options.max_attempts.max(1),
            allow,
            slots: Arc::new(Semaphore::new(options.max_inflight.max(1) as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
            deferred: AtomicBool::new(false),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts deliveries in `metrics` from now on.
    pub(crate) fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Delivers invocation `id`'s callback in the background, if it has one that is due. The worker
/// calls this once the final record is committed. With every slot taken, the callback stays
/// `pending` in Postgres and the next slot to free up claims it.
pub(crate) fn deliver_later(pool: PgPool, callbacks: Arc<Callbacks>, id: Uuid) {
    match callbacks.slot() {
        Some(slot) => {
            tokio::spawn(run(pool, callbacks, Some(id), slot));
        }
        None => {
            // Set before trying again, so that a slot freed in between finds the flag.
            callbacks.deferred.store(true, Ordering::SeqCst);
            if let Some(slot) = callbacks.slot() {
                callbacks.deferred.store(false, Ordering::SeqCst);
                tokio::spawn(run(pool, callbacks, None, slot));
            }
        }
    }
}

/// Delivers `first` (or, with `None`, due callbacks from Postgres) while holding `slot`; then
/// keeps the slot for callbacks that were deferred, until there are none.
async fn run(
    pool: PgPool,
    callbacks: Arc<Callbacks>,
    first: Option<Uuid>,
    slot: OwnedSemaphorePermit,
) {
    let mut next = first;
    let mut slot = Some(slot);
    loop {
        let sweeping = next.is_none();
        match deliver(&pool, &callbacks, next).await {
            Ok(delivered) if sweeping && !delivered => {}
            Ok(_) if sweeping => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id = ?next, error = %e, "callback delivery stopped on a database error")
            }
        }
        // Release first, then look at the flag: a callback deferred meanwhile is seen by us or
        // finds this slot free.
        drop(slot.take());
        if !callbacks.deferred.swap(false, Ordering::SeqCst) {
            return;
        }
        match callbacks.slot() {
            Some(s) => {
                slot = Some(s);
                next = None;
            }
            None => {
                callbacks.deferred.store(true, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Claims callback `id` (or the oldest due one) so only one process delivers it, then tries until
/// it is delivered, refused, or out of attempts. `Ok(false)`: there was nothing to claim.
#[tracing::instrument(skip(pool, callbacks))]
async fn deliver(
    pool: &PgPool,
    callbacks: &Callbacks,
    id: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let due: Option<Due> = match id {
        Some(id) => {
            sqlx::query_as(CLAIM_ONE)
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
        None => sqlx::query_as(CLAIM_NEXT).fetch_optional(pool).await?,
    };
    let Some(due) = due else { return Ok(false) };
    let need = due.output_len.clamp(0, i64::from(callbacks.max_bytes)) as u32;
    let _bytes = callbacks
        .bytes
        .acquire_many(need)
        .await
        .expect("the byte semaphore is never closed");
    let (output,): (Option<Vec<u8>>,) =
        sqlx::query_as("SELECT output FROM invocations WHERE id = $1")
            .bind(due.id)
            .fetch_one(pool)
            .await?;
    let output = output.unwrap_or_default();
    let mut attempt = due.callback_attempts.max(0) as u32;
    loop {
        attempt += 1;
        let result = match &due.callback_key {
            Some(key) => post(callbacks, key, &due, &output, attempt).await,
            None => Err(Failure::Permanent("refused: the function no longer exists")),
        };
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
        .bind(due.id)
        .bind(attempt as i32)
        .bind(error)
        .bind(final_status)
        .execute(pool)
        .await?;
        if let Some(m) = callbacks.metrics.get() {
            match final_status {
                Some(status) => m.callback_finished(status),
                None => m.inc("granda_callback_retries_total", String::new()),
            }
        }
        match final_status {
            Some(status) => {
                tracing::info!(id = %due.id, attempt, status, error, "callback done");
                return Ok(true);
            }
            None => {
                let wait = callbacks.backoff * 2u32.saturating_pow(attempt - 1);
                tracing::info!(id = %due.id, attempt, error, ?wait, "callback failed; retrying");
                tokio::time::sleep(wait.min(Duration::from_secs(300))).await;
            }
        }
    }
}

enum Failure {
    /// Worth another try: 5xx, 408, 429, or no answer.
    Retry(&'static str),
    /// Refused by us or by the receiver (another 4xx, a redirect): trying again won't help.
    Permanent(&'static str),
}

/// The JSON body of one attempt.
fn body(due: &Due, output: &[u8], attempt: u32, now: DateTime<Utc>) -> Vec<u8> {
    let (output, encoding) = match std::str::from_utf8(output) {
        Ok(text) => (text.to_string(), "utf-8"),
        Err(_) => (BASE64.encode(output), "base64"),
    };
    serde_json::to_vec(&json!({
        "type": "invocation.finished",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "id": due.id,
            "function": due.function,
            "status": due.status,
            "exit_code": due.exit_code,
            "duration_ms": due.duration_ms,
            "attempt": attempt,
            "output": output,
            "output_encoding": encoding,
        }
    }))
    .expect("a JSON value serializes")
}

async fn post(
    callbacks: &Callbacks,
    key: &str,
    due: &Due,
    output: &[u8],
    attempt: u32,
) -> Result<(), Failure> {
    // The connect-time check of an address in the URL itself (names go through the resolver).
    let target = reqwest::Url::parse(&due.callback_url)
        .map_err(|_| Failure::Permanent("refused: not a URL"))?;
    if !target.username().is_empty() || target.password().is_some() {
        return Err(Failure::Permanent("refused: the URL carries credentials"));
    }
    let literal = match target.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(why) = literal.and_then(|ip| refusal(ip, &callbacks.allow)) {
        return Err(Failure::Permanent(refused_class(why)));
    }
    let now = Utc::now();
    let timestamp = now.timestamp();
    let body = body(due, output, attempt, now);
    let id = due.id.to_string();
    let mut request = callbacks
        .client
        .post(target)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature(key, &id, timestamp, &body))
        .header("x-granda-invocation-id", &id)
        .header("x-granda-function", &due.function)
        .header("x-granda-status", &due.status)
        .header("x-granda-attempt", attempt.to_string());
    if let Some(code) = due.exit_code {
        request = request.header("x-granda-exit-code", code.to_string());
    }
    // A span of the invocation's trace, its context in the POST's `traceparent`.
    let span = tracing::info_span!(
        "callback",
        otel.kind = "client",
        id = %due.id,
        attempt,
        http.response.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(crate::telemetry::context_from(|k| match k {
        "traceparent" => due.traceparent.as_deref(),
        _ => due.tracestate.as_deref(),
    }));
    for (name, value) in crate::telemetry::headers_of(&span.context()) {
        request = request.header(name, value);
    }
    let sent = request.body(body).send().instrument(span.clone()).await;
    if let Ok(r) = &sent {
        span.record("http.response.status_code", r.status().as_u16() as i64);
    }
    drop(span);
    match sent {
        Ok(r) => classify(r.status()),
        Err(e) => Err(match refused_in(&e) {
            Some(why) => Failure::Permanent(refused_class(why)),
            None if e.is_timeout() => Failure::Retry("no answer: timed out"),
            None if e.is_connect() => Failure::Retry("no answer: could not connect"),
            None => Failure::Retry("no answer: the request failed"),
        }),
    }
}

/// The reason class recorded for a receiver's status (its body is never read).
fn classify(status: reqwest::StatusCode) -> Result<(), Failure> {
    match status.as_u16() {
        200..=299 => Ok(()),
        408 => Err(Failure::Retry("receiver answered 408")),
        429 => Err(Failure::Retry("receiver answered 429")),
        500..=599 => Err(Failure::Retry("receiver answered 5xx")),
        300..=399 => Err(Failure::Permanent(
            "receiver answered 3xx (redirects are not followed)",
        )),
        400..=499 => Err(Failure::Permanent("receiver answered 4xx")),
        _ => Err(Failure::Permanent("receiver answered an unexpected status")),
    }
}

/// The resolver's refusal somewhere in a client error's chain.
fn refused_in(e: &reqwest::Error) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(Refused(why)) = err.downcast_ref::<Refused>() {
            return Some(why);
        }
        source = err.source();
    }
    None
}

fn refused_class(why: &'static str) -> &'static str {
    match why {
        "loopback address" => "refused: loopback address",
        "private address" => "refused: private address",
        "link-local address" => "refused: link-local address",
        "unspecified address" => "refused: unspecified address",
        "multicast address" => "refused: multicast address",
        "shared (CGNAT) address" => "refused: shared (CGNAT) address",
        "documentation address" => "refused: documentation address",
        "benchmark address" => "refused: benchmark address",
        "the host does not resolve" => "refused: the host does not resolve",
        _ => "refused: reserved address",
    }
}

#[cfg(test)]
mod tests {
    use super::key::key_bytes;
    use super::target::parse_net;
    use super::*;

    fn refused(url: &str) -> bool {
        check_url(url, &[]).is_err()
    }

    #[test]
    fn urls_must_be_absolute_http_or_https_without_credentials() {
        assert!(check_url("http://93.184.215.14:9000/done", &[]).is_ok());
        assert!(check_url("http://example.com/cb?x=1", &[]).is_ok());
        assert!(check_url("https://example.com/cb", &[]).is_ok());
        for bad in [
            "",
            "/relative",
            "ftp://x/y",
            "http://",
            "not a url",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "https://:pw@example.com/",
        ] {
            assert!(refused(bad), "{bad}");
        }
        assert!(refused(&format!("http://x/{}", "a".repeat(MAX_URL_LEN))));
    }

    #[test]
    fn every_spelling_of_an_internal_address_is_refused() {
        for bad in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            // Issue 26: IPv4-translated (SIIT), local-use NAT64 and Teredo forms.
            "http://[::ffff:0:127.0.0.1]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[::ffff:0:10.0.0.1]/",
            "http://[::ffff:0:169.254.169.254]/",
            "http://[64:ff9b:1::7f00:1]/",
            "http://[64:ff9b:1:7f00:1::]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://[fd00::1]/",
            "http://[fc00::1]/",
            "http://100.64.0.1/",
            "http://100.127.255.255/",
            "http://192.0.2.1/",
            "http://198.51.100.1/",
            "http://203.0.113.1/",
            "http://198.18.0.1/",
            "http://[2001:db8::1]/",
            "http://224.0.0.1/",
            "http://[ff02::1]/",
            "http://255.255.255.255/",
        ] {
            assert!(refused(bad), "{bad}");
        }
        for good in [
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://8.8.8.8/",
            "http://[2606:4700::1111]/",
            "http://[::ffff:8.8.8.8]/",
            "http://[::ffff:0:8.8.8.8]/",
            "http://[64:ff9b::8.8.8.8]/",
        ] {
            assert!(!refused(good), "{good}");
        }
    }

    #[test]
    fn allowed_nets_let_their_addresses_through_in_any_spelling() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(check_url("http://127.0.0.1:9/", &allow).is_ok());
        assert!(check_url("http://2130706433/", &allow).is_ok());
        assert!(check_url("http://[::ffff:127.0.0.1]/", &allow).is_ok());
        // `localhost` may also mean ::1, which is not allowed.
        assert!(check_url("http://localhost/", &allow).is_err());
        assert!(check_url("http://10.0.0.1/", &allow).is_err());
        assert!(check_url("http://u:p@127.0.0.1/", &allow).is_err());
    }

    #[test]
    fn allowed_nets_are_cidrs_or_addresses() {
        assert_eq!(parse_net(" 10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_net("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(parse_net("ten").is_err());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert_eq!(AllowNets::parse("").unwrap(), AllowNets::default());
        assert_eq!(AllowNets::parse("127.0.0.0/8, ::1,").unwrap().len(), 2);
        assert!(AllowNets::parse("127.0.0.0/8,nope").is_err());
    }

    #[test]
    fn the_signature_is_standard_webhooks() {
        // The test vector of the Standard Webhooks reference libraries.
        let key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(key, id, 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_ne!(
            signature(key, id, 1614265331, body),
            signature(key, id, 1614265330, body)
        );
        let fresh = new_key();
        assert!(fresh.starts_with(KEY_PREFIX));
        assert_eq!(key_bytes(&fresh).len(), 32);
        assert_ne!(fresh, new_key());
    }
}
