//! Webhooks: external systems (GitHub, Stripe, anything that speaks Standard Webhooks or signs with
//! a plain HMAC) POST to `/hooks/{id}`, and Granda verifies the request over its raw body before it
//! invokes the bound function.
//!
//! Every scheme compares signatures in constant time (`Mac::verify_slice`), and accepts any of the
//! secrets that verify now: the current one, and the previous one during its grace period after a
//! rotation. Timestamps (Stripe, Standard Webhooks) must be within the tolerance both ways.

// `store`: the rows; `view`: a webhook as the API shows it; `rejections`: refused deliveries.
pub(crate) mod rejections;
pub(crate) mod store;
mod view;
pub(crate) use view::{WebhookList, WebhookView};

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The default timestamp tolerance of Stripe and Standard Webhooks, in seconds.
#[cfg(test)]
pub(crate) const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// The header `hmac-sha256` webhooks read their signature from unless told otherwise.
pub(crate) const DEFAULT_HMAC_HEADER: &str = "x-signature";

/// How a webhook's requests are verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) enum Scheme {
    /// `X-Hub-Signature-256: sha256=<hex>` over the body.
    #[serde(rename = "github")]
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]` over `"{t}.{body}"`.
    #[serde(rename = "stripe")]
    Stripe,
    /// Standard Webhooks: `webhook-signature: v1,<base64> …` over `"{id}.{timestamp}.{body}"`.
    #[serde(rename = "standard")]
    Standard,
    /// `<header>: [sha256=]<hex|base64>` over the body.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// No verification, for trusted networks.
    #[serde(rename = "none")]
    None,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Standard => "standard",
            Scheme::HmacSha256 => "hmac-sha256",
            Scheme::None => "none",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Scheme> {
        Some(match s {
            "github" => Scheme::Github,
            "stripe" => Scheme::Stripe,
            "standard" => Scheme::Standard,
            "hmac-sha256" => Scheme::HmacSha256,
            "none" => Scheme::None,
            _ => return None,
        })
    }

    /// A fresh secret in the scheme's usual form.
    pub(crate) fn generate_secret(self) -> Option<String> {
        match self {
            Scheme::None => None,
            Scheme::Standard => Some(format!("whsec_{}", B64.encode(random_bytes(32)))),
            Scheme::Stripe => Some(format!("whsec_{}", hex::encode(random_bytes(24)))),
            Scheme::Github | Scheme::HmacSha256 => Some(hex::encode(random_bytes(32))),
        }
    }

    /// The HMAC key a secret stands for: its bytes, except for Standard Webhooks, whose secret
    /// is `whsec_` + base64 of the key. `None`: not a usable secret for this scheme.
    pub(crate) fn key(self, secret: &str) -> Option<Vec<u8>> {
        match self {
            Scheme::None => None,
            Scheme::Standard => {
                let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
                B64.decode(b64).ok().filter(|k| !k.is_empty())
            }
            _ => (!secret.is_empty()).then(|| secret.as_bytes().to_vec()),
        }
    }
}

/// How an `hmac-sha256` signature is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    #[default]
    Hex,
    Base64,
}

impl Encoding {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Encoding> {
        match s {
            "hex" => Some(Encoding::Hex),
            "base64" => Some(Encoding::Base64),
            _ => None,
        }
    }

    fn decode(self, s: &str) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => hex::decode(s).ok(),
            Encoding::Base64 => B64.decode(s).ok(),
        }
    }
}

/// What verifying a request needs.
#[derive(Clone, Debug)]
pub(crate) struct Verifier {
    pub(crate) scheme: Scheme,
    /// The HMAC keys that verify now: the current one, then the previous one in its grace period.
    pub(crate) keys: Vec<Vec<u8>>,
    /// `hmac-sha256`: the signature header.
    pub(crate) header: String,
    pub(crate) encoding: Encoding,
    /// `hmac-sha256` and `none`: the header carrying a delivery id, if any.
    pub(crate) id_header: Option<String>,
    pub(crate) tolerance_secs: i64,
}

/// What a verified request tells about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The sender's id of this delivery, the same on its retries (dedup key).
    pub(crate) delivery_id: Option<String>,
    /// The sender's name for the kind of event (`push`, `invoice.paid`, …).
    pub(crate) event: Option<String>,
}

/// Why a request was refused (401). Never carries a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Rejection {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("no signature matches")]
    BadSignature,
    #[error("timestamp outside the {0} s tolerance")]
    Stale(i64),
}

impl Rejection {
    /// The `reason` label of `granda_webhook_rejections_total`.
    pub(crate) fn reason(&self) -> rejections::Reason {
        match self {
            Rejection::MissingHeader(_) => rejections::Reason::MissingSignature,
            Rejection::Malformed(_) => rejections::Reason::MalformedSignature,
            Rejection::BadSignature => rejections::Reason::BadSignature,
            Rejection::Stale(_) => rejections::Reason::StaleTimestamp,
        }
    }
}

impl Verifier {
    /// Verifies a request over its raw `body`; `now` is the current unix time in seconds.
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, Rejection> {
        match self.scheme {
            Scheme::Github => self.github(headers, body),
            Scheme::Stripe => self.stripe(headers, body, now),
            Scheme::Standard => self.standard(headers, body, now),
            Scheme::HmacSha256 => self.hmac(headers, body),
            Scheme::None => Ok(Verified {
                delivery_id: self.delivery_from_header(headers),
                event: None,
            }),
        }
    }

    fn github(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, Rejection> {
        const H: &str = "x-hub-signature-256";
        let value = header(headers, H).ok_or(Rejection::MissingHeader(H))?;
        let signature = value
            .strip_prefix("sha256=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(Rejection::Malformed(H))?;
        self.check_any(&[body], &[signature])?;
        Ok(Verified {
            delivery_id: sender_header(headers, "x-github-delivery"),
            event: sender_header(headers, "x-github-event"),
        })
    }

    fn stripe(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Verified, Rejection> {
        const H: &str = "stripe-signature";
        let value = header(headers, H).ok_or(Rejection::MissingHeader(H))?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for item in value.split(',') {
            match item.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", s)) => signatures.extend(hex::decode(s).ok()),
                _ => {}
            }
        }
        let t = timestamp.ok_or(Rejection::Malformed(H))?;
        if signatures.is_empty() {
            return Err(Rejection::Malformed(H));
        }
        let t_text = t.to_string();
        self.check_any(&[t_text.as_bytes(), b".", body], &signatures)?;
        self.check_time(t, now)?;
        let (delivery_id, event) = body_id_and_type(body);
        Ok(Verified { delivery_id, event })
    }

    fn standard(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Verified, Rejection> {
        const ID: &str = "webhook-id";
        const TS: &str = "webhook-timestamp";
        const SIG: &str = "webhook-signature";
        let id = header(headers, ID).ok_or(Rejection::MissingHeader(ID))?;
        let ts = header(headers, TS).ok_or(Rejection::MissingHeader(TS))?;
        let sig = header(headers, SIG).ok_or(Rejection::MissingHeader(SIG))?;
        let t: i64 = ts.parse().map_err(|_| Rejection::Malformed(TS))?;
        let signatures: Vec<Vec<u8>> = sig
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b| B64.decode(b).ok())
            .collect();
        if signatures.is_empty() {
            return Err(Rejection::Malformed(SIG));
        }
        self.check_any(
            &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
            &signatures,
        )?;
        self.check_time(t, now)?;
        Ok(Verified {
            delivery_id: Some(id.to_string()),
            event: body_id_and_type(body).1,
        })
    }

    fn hmac(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, Rejection> {
        let value = headers
            .get(self.header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or(Rejection::MissingHeader("signature"))?;
        let value = value.strip_prefix("sha256=").unwrap_or(value);
        let signature = self
            .encoding
            .decode(value)
            .ok_or(Rejection::Malformed("signature"))?;
        self.check_any(&[body], &[signature])?;
        Ok(Verified {
            delivery_id: self.delivery_from_header(headers),
            event: None,
        })
    }

    fn delivery_from_header(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.id_header.as_deref()?;
        sender_header(headers, name).filter(|v| !v.is_empty())
    }

    /// Succeeds when any key signs `parts` (concatenated) to any of `signatures`.
    fn check_any(&self, parts: &[&[u8]], signatures: &[Vec<u8>]) -> Result<(), Rejection> {
        for key in &self.keys {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
            for part in parts {
                mac.update(part);
            }
            if signatures
                .iter()
                .any(|s| mac.clone().verify_slice(s).is_ok())
            {
                return Ok(());
            }
        }
        Err(Rejection::BadSignature)
    }

    fn check_time(&self, t: i64, now: i64) -> Result<(), Rejection> {
        if (now - t).abs() > self.tolerance_secs {
            return Err(Rejection::Stale(self.tolerance_secs));
        }
        Ok(())
    }
}

/// HMAC-SHA256 of `parts` (concatenated) under `key`, as lowercase hex.
pub fn sign_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// What a sender says about its delivery (its id, its event type), as sent: bytes that are not
/// visible ASCII are kept (lossily, as UTF-8) rather than read as no header, so the delivery is
/// refused for them (see `producer::webhooks`) instead of running without its event type or
/// escaping deduplication.
fn sender_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `id` and `type` of a JSON body (Stripe events and Standard Webhooks payloads carry them).
fn body_id_and_type(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Envelope {
        id: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) => (
            e.id.and_then(|v| v.as_str().map(str::to_string)),
            e.kind.and_then(|v| v.as_str().map(str::to_string)),
        ),
        Err(_) => (None, None),
    }
}

/// `n` bytes from the OS's random source (by way of UUIDv4, which draws from it).
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn verifier(scheme: Scheme, secrets: &[&str]) -> Verifier {
        Verifier {
            scheme,
            keys: secrets.iter().map(|s| scheme.key(s).unwrap()).collect(),
            header: DEFAULT_HMAC_HEADER.into(),
            encoding: Encoding::Hex,
            id_header: None,
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        }
    }

    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_docs_test_vector_verifies() {
        let v = verifier(Scheme::Github, &[GITHUB_SECRET]);
        let h = headers(&[
            ("x-hub-signature-256", GITHUB_SIGNATURE),
            ("x-github-event", "push"),
            ("x-github-delivery", "d-1"),
        ]);
        let got = v.verify(&h, b"Hello, World!", 0).unwrap();
        assert_eq!(got.event.as_deref(), Some("push"));
        assert_eq!(got.delivery_id.as_deref(), Some("d-1"));
        assert_eq!(
            v.verify(&h, b"Hello, World?", 0),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            v.verify(&headers(&[]), b"Hello, World!", 0),
            Err(Rejection::MissingHeader("x-hub-signature-256"))
        );
        let sha1 = headers(&[("x-hub-signature-256", "sha1=00")]);
        assert_eq!(
            v.verify(&sha1, b"", 0),
            Err(Rejection::Malformed("x-hub-signature-256"))
        );
    }

    /// Issue 26: a delivery id or event type that isn't visible ASCII is reported as sent (for
    /// the ingress to refuse), not as no header at all.
    #[test]
    fn sender_headers_that_arent_ascii_are_kept_for_refusal() {
        let v = verifier(Scheme::Github, &[GITHUB_SECRET]);
        let mut h = headers(&[("x-hub-signature-256", GITHUB_SIGNATURE)]);
        h.append(
            "x-github-event",
            HeaderValue::from_bytes("p\u{fc}sh".as_bytes()).unwrap(),
        );
        h.append(
            "x-github-delivery",
            HeaderValue::from_bytes(b"d-\xff").unwrap(),
        );
        let got = v.verify(&h, b"Hello, World!", 0).unwrap();
        assert_eq!(got.event.as_deref(), Some("p\u{fc}sh"));
        assert_eq!(got.delivery_id.as_deref(), Some("d-\u{fffd}"));
        let mut hmac = verifier(Scheme::None, &[]);
        hmac.id_header = Some("x-id".into());
        let h = [("x-id", HeaderValue::from_bytes(b"\xe9").unwrap())].into_iter();
        let h: HeaderMap = h
            .map(|(k, v)| (axum::http::HeaderName::from_static(k), v))
            .collect();
        assert_eq!(
            hmac.verify(&h, b"", 0).unwrap().delivery_id.as_deref(),
            Some("\u{fffd}")
        );
    }

    #[test]
    fn a_previous_secret_still_verifies() {
        let v = verifier(Scheme::Github, &["new secret", GITHUB_SECRET]);
        let h = headers(&[("x-hub-signature-256", GITHUB_SIGNATURE)]);
        assert!(v.verify(&h, b"Hello, World!", 0).is_ok());
    }

    // The test vector of the Standard Webhooks reference libraries.
    const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STANDARD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const STANDARD_TS: i64 = 1614265330;
    const STANDARD_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const STANDARD_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn standard_webhooks_test_vector_verifies_within_tolerance() {
        let v = verifier(Scheme::Standard, &[STANDARD_SECRET]);
        let ts = STANDARD_TS.to_string();
        let several = format!("v1,Zm9v {STANDARD_SIGNATURE} v2,abc");
        let h = headers(&[
            ("webhook-id", STANDARD_ID),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &several),
        ]);
        let got = v.verify(&h, STANDARD_BODY, STANDARD_TS + 10).unwrap();
        assert_eq!(got.delivery_id.as_deref(), Some(STANDARD_ID));
        assert_eq!(
            v.verify(&h, STANDARD_BODY, STANDARD_TS + 301),
            Err(Rejection::Stale(300))
        );
        assert_eq!(
            v.verify(&h, STANDARD_BODY, STANDARD_TS - 301),
            Err(Rejection::Stale(300))
        );
        assert_eq!(
            v.verify(&h, br#"{"test": 1}"#, STANDARD_TS),
            Err(Rejection::BadSignature)
        );
        // The secret without its prefix is the same key.
        let bare = verifier(Scheme::Standard, &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert!(bare.verify(&h, STANDARD_BODY, STANDARD_TS).is_ok());
    }

    #[test]
    fn stripe_signature_header_with_several_v1() {
        let secret = "whsec_test";
        let v = verifier(Scheme::Stripe, &[secret]);
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let t = 1_700_000_000i64;
        let good = sign_hex(secret.as_bytes(), &[t.to_string().as_bytes(), b".", body]);
        let value = format!("t={t},v1={},v1={good},v0=ignored", "00".repeat(32));
        let h = headers(&[("stripe-signature", &value)]);
        let got = v.verify(&h, body, t + 299).unwrap();
        assert_eq!(got.delivery_id.as_deref(), Some("evt_1"));
        assert_eq!(got.event.as_deref(), Some("invoice.paid"));
        assert_eq!(v.verify(&h, body, t + 301), Err(Rejection::Stale(300)));
        let no_t = headers(&[("stripe-signature", "v1=00")]);
        assert_eq!(
            v.verify(&no_t, body, t),
            Err(Rejection::Malformed("stripe-signature"))
        );
    }

    #[test]
    fn plain_hmac_in_hex_or_base64_with_an_optional_prefix() {
        let body = b"payload";
        let sig = sign_hex(b"k", &[body]);
        let mut v = verifier(Scheme::HmacSha256, &["k"]);
        v.id_header = Some("x-request-id".into());
        let h = headers(&[("x-signature", &sig), ("x-request-id", "r1")]);
        assert_eq!(
            v.verify(&h, body, 0).unwrap().delivery_id.as_deref(),
            Some("r1")
        );
        let prefixed = headers(&[("x-signature", &format!("sha256={sig}"))]);
        assert!(v.verify(&prefixed, body, 0).is_ok());
        v.encoding = Encoding::Base64;
        v.header = "x-sig".into();
        let b64 = B64.encode(hex::decode(&sig).unwrap());
        assert!(v.verify(&headers(&[("x-sig", &b64)]), body, 0).is_ok());
        assert_eq!(
            v.verify(&headers(&[("x-sig", &b64)]), b"other", 0),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn generated_secrets_are_usable_keys() {
        for scheme in [
            Scheme::Github,
            Scheme::Stripe,
            Scheme::Standard,
            Scheme::HmacSha256,
        ] {
            let s = scheme.generate_secret().unwrap();
            assert!(scheme.key(&s).is_some_and(|k| k.len() >= 24), "{s}");
            assert_ne!(s, scheme.generate_secret().unwrap());
        }
        assert!(Scheme::None.generate_secret().is_none());
        assert!(Scheme::Standard.key("whsec_!!!").is_none());
    }
}
