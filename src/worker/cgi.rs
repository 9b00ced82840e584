//! CGI/1.1 (RFC 3875) for cold and warm runs of a function's URL: the request's meta-variables as
//! the process's env ([`meta_variables`]), and, for functions with `response: "cgi"`, the header
//! block that starts stdout ([`parse_response`]).
//!
//! Choices where the RFC leaves room:
//! - `PATH_INFO` is percent-decoded when the result is printable UTF-8 (else left as sent);
//!   `QUERY_STRING` is as sent. `REQUEST_URI` (not in the RFC, as Apache and nginx set it) is
//!   `SCRIPT_NAME` plus the path and query as sent.
//! - A header whose name holds anything but letters, digits and `-` gets no `HTTP_` variable (as
//!   nginx does): `X_Forwarded_For` could otherwise pose as `X-Forwarded-For`. Repeated headers
//!   are joined with `, ` (cookies with `; `).
//! - A local redirect (`Location: /path`, §6.2.2) is answered as a client redirect: 302 with that
//!   `Location`, for the caller's client to follow.

use std::collections::BTreeMap;

use crate::web::{WebAnswer, WebRequest, valid_name, valid_value};

/// The most bytes a CGI header block may take before its blank line.
pub(super) const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The CGI meta-variables of `request`, whose body is `body_len` bytes.
pub(super) fn meta_variables(request: &WebRequest, body_len: usize) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("GATEWAY_INTERFACE", "CGI/1.1".into());
    set("SERVER_SOFTWARE", "granda".into());
    set("REQUEST_METHOD", request.method.clone());
    set("SCRIPT_NAME", request.script_name.clone());
    set("PATH_INFO", decoded_path(&request.path));
    set("QUERY_STRING", request.query.clone());
    set(
        "REQUEST_URI",
        format!(
            "{}{}{}",
            request.script_name,
            request.path,
            if request.query.is_empty() {
                String::new()
            } else {
                format!("?{}", request.query)
            }
        ),
    );
    set("REMOTE_ADDR", request.remote_addr.clone());
    set("SERVER_NAME", request.server_name.clone());
    set("SERVER_PORT", request.server_port.to_string());
    set("SERVER_PROTOCOL", request.protocol.clone());
    if body_len > 0 || matches!(request.method.as_str(), "POST" | "PUT" | "PATCH") {
        set("CONTENT_LENGTH", body_len.to_string());
    }
    if let Some(t) = request.header("content-type") {
        set("CONTENT_TYPE", t.to_string());
    }
    for (name, value) in &request.headers {
        if matches!(name.as_str(), "content-type" | "content-length")
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            continue;
        }
        let key = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        let joiner = if name == "cookie" { "; " } else { ", " };
        env.entry(key)
            .and_modify(|v: &mut String| {
                v.push_str(joiner);
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    env
}

/// `PATH_INFO`: the path percent-decoded, unless that gives anything but printable UTF-8.
fn decoded_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    match String::from_utf8(out) {
        Ok(s) if !s.chars().any(char::is_control) => s,
        _ => path.to_string(),
    }
}

/// Splits a CGI script's stdout into its answer (status and headers) and the body. An error says
/// what is wrong with the header block, for the function's author.
pub(super) fn parse_response(stdout: &[u8]) -> Result<(WebAnswer, Vec<u8>), String> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut at = 0;
    let mut line_no = 0;
    let body_start = loop {
        if at >= MAX_HEADER_BLOCK {
            return Err(format!(
                "no blank line ends the CGI header block within its first {MAX_HEADER_BLOCK} bytes"
            ));
        }
        let Some(end) = stdout[at..].iter().position(|b| *b == b'\n') else {
            return Err(if stdout.is_empty() {
                "the output is empty: a CGI response starts with header lines (at least \
                 Content-Type, Location or Status) and a blank line"
                    .into()
            } else {
                "no blank line ends the CGI header block (a CGI response starts with header \
                 lines, then a blank line, then the body)"
                    .into()
            });
        };
        line_no += 1;
        let mut line = &stdout[at..at + end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        at += end + 1;
        if line.is_empty() {
            break at;
        }
        let line = std::str::from_utf8(line)
            .ok()
            .filter(|l| valid_value(l))
            .ok_or_else(|| format!("CGI header line {line_no} is not printable ASCII"))?;
        let (name, value) = line.split_once(':').ok_or_else(|| {
            format!("CGI header line {line_no} has no ':' (a header is `Name: value`)")
        })?;
        if !valid_name(name) {
            return Err(format!(
                "CGI header line {line_no}: {name:?} is not a header name"
            ));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    };
    if headers.len() > crate::web::MAX_HEADERS {
        return Err(format!(
            "{} CGI headers; at most {}",
            headers.len(),
            crate::web::MAX_HEADERS
        ));
    }
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    for (name, value) in &headers {
        match name.as_str() {
            "status" => {
                let code = value.split(' ').next().unwrap_or_default();
                let code: u16 = code
                    .parse()
                    .ok()
                    .filter(|c| (200..=599).contains(c) && code.len() == 3)
                    .ok_or_else(|| {
                        format!("Status: {value:?} is not a status code from 200 to 599")
                    })?;
                if status.replace(code).is_some() {
                    return Err("more than one Status header".into());
                }
            }
            "location" => location = true,
            "content-type" => content_type = true,
            _ => {}
        }
    }
    if status.is_none() && !location && !content_type {
        return Err(
            "the CGI header block has none of Content-Type, Location or Status (RFC 3875 §6.2)"
                .into(),
        );
    }
    let status = status.unwrap_or(if location { 302 } else { 200 });
    headers.retain(|(n, _)| n != "status");
    Ok((WebAnswer { status, headers }, stdout[body_start..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_redirects_and_statuses_parse() {
        let (a, body) = parse_response(b"Content-Type: text/html\n\n<p>hi</p>\n").unwrap();
        assert_eq!((a.status, body.as_slice()), (200, &b"<p>hi</p>\n"[..]));
        assert_eq!(a.headers, vec![("content-type".into(), "text/html".into())]);
        let (a, body) = parse_response(b"Location: /fn/x/done\r\n\r\n").unwrap();
        assert_eq!((a.status, body.len()), (302, 0));
        let (a, _) =
            parse_response(b"Status: 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nx")
                .unwrap();
        assert_eq!(a.status, 201);
        assert_eq!(a.headers.len(), 2);
    }

    #[test]
    fn a_malformed_header_block_is_refused_with_words() {
        for (bad, says) in [
            (&b""[..], "empty"),
            (b"just a body", "no blank line"),
            (b"Content-Type text/html\n\n", "no ':'"),
            (b"X-A: 1\n\n", "none of"),
            (b"Status: 99\n\n", "200 to 599"),
            (b"Status: abc\n\n", "200 to 599"),
            (b"Bad Name: 1\n\n", "not a header name"),
            (b"X: \x01\n\n", "printable"),
        ] {
            let e = parse_response(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn meta_variables_follow_rfc_3875() {
        let request = WebRequest {
            method: "POST".into(),
            path: "/a%20b".into(),
            query: "q=1".into(),
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("x-one".into(), "1".into()),
                ("x-one".into(), "2".into()),
                ("x_spoof".into(), "3".into()),
            ],
            remote_addr: "10.0.0.1".into(),
            server_name: "example.org".into(),
            server_port: 8080,
            protocol: "HTTP/1.1".into(),
            script_name: "/fn/f".into(),
        };
        let env = meta_variables(&request, 5);
        assert_eq!(env["PATH_INFO"], "/a b");
        assert_eq!(env["CONTENT_LENGTH"], "5");
        assert_eq!(env["CONTENT_TYPE"], "text/plain");
        assert_eq!(env["HTTP_X_ONE"], "1, 2");
        assert_eq!(env["REQUEST_URI"], "/fn/f/a%20b?q=1");
        assert!(!env.contains_key("HTTP_X_SPOOF") && !env.contains_key("HTTP_CONTENT_TYPE"));
        assert_eq!(decoded_path("/%00x"), "/%00x");
    }
}
