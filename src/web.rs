//! Functions as web endpoints: the HTTP request a call of `/fn/{name}[/{path}]` carries to the
//! function ([`WebRequest`], in the work message), and the HTTP status and headers a function
//! answers with (`WebAnswer`, in the reply).
//!
//! Everything here comes from strangers (the caller) or from the function: names and values are
//! checked where they are made (the ingress) and again where they are used (the worker), and a
//! bad one is refused with words, never a panic.
//!
//! What never reaches a function: an `Authorization` header of the `Bearer` scheme (the one
//! Granda reads its keys from, whatever the token), the dashboard's session cookie (the other cookies pass), `Granda-*` request
//! headers (a hot function's own headers of that name are the worker's), hop-by-hop headers, and
//! `Proxy` (it would become `HTTP_PROXY`, which many programs take as their proxy: "httpoxy").

use serde::{Deserialize, Serialize};

use crate::keys::SESSION_COOKIE;

/// The most request headers that travel to a function (hyper's own limit on a request).
pub const MAX_HEADERS: usize = 100;
/// The most bytes of request header names and values, together, that travel to a function (half
/// of what the `granda-hot` server takes in a request head, leaving room for the `Granda-*` ones).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// The longest request path or query string that travels to a function.
pub(crate) const MAX_TARGET_BYTES: usize = 8 * 1024;

/// The methods `/fn/{name}` takes.
pub(crate) const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Headers of one connection, not of the message (RFC 9110 §7.6.1), never passed on either way.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An HTTP request to a function's URL, as it travels in the work message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebRequest {
    pub(crate) method: String,
    /// What follows `/fn/{name}` (empty, or starting with `/`), percent-encoded as sent.
    pub(crate) path: String,
    /// What follows `?`, as sent (empty without one).
    pub(crate) query: String,
    /// Names in lowercase, in the order sent; a name may repeat.
    pub(crate) headers: Vec<(String, String)>,
    /// The caller's address (its IP), as the ingress saw it.
    pub(crate) remote_addr: String,
    /// The host the caller asked for (without the port) and the port, from the public URL.
    pub(crate) server_name: String,
    pub(crate) server_port: u16,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2.0`.
    pub(crate) protocol: String,
    /// `/fn/{name}`.
    pub(crate) script_name: String,
}

/// A function's HTTP answer: status and headers (the body travels as the output).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebAnswer {
    pub(crate) status: u16,
    /// Names in lowercase, in the order given; a name may repeat (`set-cookie`).
    pub(crate) headers: Vec<(String, String)>,
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` is a header value that travels as a header and as an env value: printable
/// ASCII and tab, nothing else (no CR, LF, NUL or other control character).
pub(crate) fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..=0x7e).contains(&b))
}

/// Whether a request header may reach a function (see the module's doc); `name` is lowercase.
fn passes(name: &str, value: &str) -> bool {
    if HOP_BY_HOP.contains(&name) || name == "proxy" || name.starts_with("granda-") {
        return false;
    }
    if name == "authorization" {
        return !carries_granda_key(value);
    }
    true
}

/// `Bearer …`: the scheme Granda reads its keys from, so whatever it carries (a `gk_` key, the
/// operator's `GRANDA_ADMIN_KEY` of any shape, a wrong or revoked key) may be a credential of
/// Granda's, and is never given to a function. A function's own credentials travel in another
/// scheme (`Basic`, …) or header.
fn carries_granda_key(value: &str) -> bool {
    let scheme = value.trim().split([' ', '\t']).next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("bearer")
}

/// A `Cookie` value without the dashboard's session cookie; `None` when nothing is left.
fn without_session(cookies: &str) -> Option<String> {
    let kept: Vec<&str> = cookies
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| c.split('=').next().map(str::trim) != Some(SESSION_COOKIE))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

impl WebRequest {
    /// The request headers that reach a function, from what the caller sent: the credentials,
    /// hop-by-hop and `Granda-*` headers left out. An error names the header that can't travel
    /// (its value is never echoed) or the limit passed.
    pub(crate) fn headers_from<'a>(
        sent: impl Iterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Vec<(String, String)>, String> {
        let mut headers = Vec::new();
        let mut bytes = 0usize;
        for (name, value) in sent {
            let name = name.to_ascii_lowercase();
            let value = std::str::from_utf8(value)
                .ok()
                .filter(|v| valid_value(v))
                .ok_or_else(|| {
                    format!(
                        "the value of the header {name:?} holds bytes a function can't be given \
                         (only printable ASCII and tab)"
                    )
                })?;
            if !passes(&name, value) {
                continue;
            }
            let value = if name == "cookie" {
                match without_session(value) {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                value.to_string()
            };
            bytes += name.len() + value.len();
            headers.push((name, value));
        }
        if headers.len() > MAX_HEADERS {
            return Err(format!(
                "{} request headers; a function takes at most {MAX_HEADERS}",
                headers.len()
            ));
        }
        if bytes > MAX_HEADER_BYTES {
            return Err(format!(
                "the request headers hold {bytes} bytes; a function takes at most {MAX_HEADER_BYTES}"
            ));
        }
        Ok(headers)
    }

    /// Checks what a worker is given (the message may come from anyone who can publish): `None`
    /// when it is fine, else why not.
    pub(crate) fn problem(&self) -> Option<String> {
        if !METHODS.contains(&self.method.as_str()) {
            return Some(format!(
                "method {:?} is not one a function takes",
                self.method
            ));
        }
        let target_ok =
            |s: &str| s.len() <= MAX_TARGET_BYTES && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !(self.path.is_empty() || self.path.starts_with('/')) || !target_ok(&self.path) {
            return Some("the request path is not a visible-ASCII path".into());
        }
        if !target_ok(&self.query) {
            return Some("the query string is not visible ASCII".into());
        }
        if self.headers.len() > MAX_HEADERS {
            return Some(format!("more than {MAX_HEADERS} request headers"));
        }
        let bytes: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if bytes > MAX_HEADER_BYTES {
            return Some(format!("request headers over {MAX_HEADER_BYTES} bytes"));
        }
        for (name, value) in &self.headers {
            if !valid_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Some("a request header name that is no lowercase token".into());
            }
            if !valid_value(value) {
                return Some(format!(
                    "the value of the request header {name:?} is not printable ASCII"
                ));
            }
        }
        for (what, value) in [
            ("remote address", &self.remote_addr),
            ("server name", &self.server_name),
            ("protocol", &self.protocol),
            ("script name", &self.script_name),
        ] {
            if value.len() > 256 || !value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Some(format!("the {what} is not visible ASCII"));
            }
        }
        None
    }

    /// The request target as sent: path (at least `/`) and query.
    pub(crate) fn target(&self) -> String {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        if self.query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", self.query)
        }
    }

    /// The first value of header `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl WebAnswer {
    /// The status, when it is a final one a caller may be given (200 to 599): never an
    /// informational 1xx (`101 Switching Protocols` would hand the caller's connection over),
    /// nor a number past 599.
    pub(crate) fn final_status(&self) -> Option<u16> {
        (200..=599).contains(&self.status).then_some(self.status)
    }

    /// The headers a caller may be given: valid names and values, hop-by-hop ones and framing
    /// (`content-length`: the body's own is set) left out.
    pub(crate) fn passed_headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().filter_map(|(n, v)| {
            let keep = valid_name(n)
                && valid_value(v)
                && !HOP_BY_HOP.contains(&n.as_str())
                && n != "content-length"
                && n != "status";
            keep.then_some((n.as_str(), v.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(sent: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        WebRequest::headers_from(sent.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_never_pass() {
        let got = headers(&[
            ("Authorization", "Bearer gk_secret"),
            ("Cookie", "a=1; granda_session=tok; b=2"),
            ("Connection", "keep-alive"),
            ("Proxy", "http://evil"),
            ("Granda-Trigger", "spoofed"),
            ("X-Thing", "yes"),
        ])
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("cookie".to_string(), "a=1; b=2".to_string()),
                ("x-thing".to_string(), "yes".to_string())
            ]
        );
        let basic = headers(&[("authorization", "Basic dTpw")]).unwrap();
        assert_eq!(basic.len(), 1, "a function's own credentials pass");
        // The operator's admin key may be any string: every bearer token is withheld.
        for bearer in [
            "Bearer my-operator-admin-key-0123",
            "bearer x",
            "BEARER\tx",
            "  Bearer gk_x",
            "Bearer",
        ] {
            assert!(
                headers(&[("authorization", bearer)]).unwrap().is_empty(),
                "{bearer}"
            );
        }
        assert!(
            headers(&[("cookie", "granda_session=t")])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn hostile_values_and_too_many_headers_are_refused() {
        assert!(headers(&[("x", "a\u{1}b")]).is_err());
        assert!(WebRequest::headers_from([("x", &[0xffu8][..])].into_iter()).is_err());
        let many: Vec<(String, String)> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-{i}"), "v".to_string()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert!(headers(&many).is_err());
        let big = "v".repeat(MAX_HEADER_BYTES);
        assert!(headers(&[("x", &big)]).is_err());
    }

    #[test]
    fn a_worker_refuses_a_request_it_can_not_pass_on() {
        let ok = WebRequest {
            method: "GET".into(),
            path: "/a/b".into(),
            query: "x=1".into(),
            headers: vec![("x".into(), "y".into())],
            remote_addr: "127.0.0.1".into(),
            server_name: "localhost".into(),
            server_port: 80,
            protocol: "HTTP/1.1".into(),
            script_name: "/fn/f".into(),
        };
        assert_eq!(ok.problem(), None);
        assert_eq!(ok.target(), "/a/b?x=1");
        for bad in [
            WebRequest {
                method: "BREW".into(),
                ..ok.clone()
            },
            WebRequest {
                path: "a\nb".into(),
                ..ok.clone()
            },
            WebRequest {
                headers: vec![("X".into(), "y".into())],
                ..ok.clone()
            },
            WebRequest {
                headers: vec![("x".into(), "y\r\nz: 1".into())],
                ..ok.clone()
            },
            WebRequest {
                headers: vec![("a b".into(), "y".into())],
                ..ok.clone()
            },
        ] {
            assert!(bad.problem().is_some(), "{bad:?}");
        }
    }
}
