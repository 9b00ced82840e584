//! The hot function in the test image `granda-test/hot-web`: a small web app answering calls of
//! its URL by path (deploy it with `response: "cgi"` so its status and headers reach the caller):
//!
//! - `/request`: the method, the target and every header but `Granda-*` ones (a line each,
//!   `name: value`, names in lowercase, sorted), then the `Granda-*` header names
//! - `/echo`: the body, as `text/plain`
//! - `/created`: 201, JSON, `X-Custom: yes`, two cookies and a hop-by-hop header
//! - `/redirect`: 302 to `https://example.org/elsewhere`
//! - `/teapot`: 418
//! - `/fail`: 500
//! - `/status/<n>`: status `n` (`101` and `999` included: what no caller may be given), a body
//! - `/nocontent`: 204 with a 13-byte body, which no 204 may carry
//! - `/session`: sets the dashboard's session cookie (fixation) and a cookie of its own
//! - anything else: a small HTML page naming the method

use granda_hot::{Reply, Request};

fn main() {
    granda_hot::serve(handle);
}

fn handle(req: Request) -> Result<Reply, String> {
    let path = req.target.split('?').next().unwrap_or_default();
    Ok(match path {
        "/request" => {
            let mut lines: Vec<String> = req
                .headers
                .iter()
                .filter(|(n, _)| !n.to_ascii_lowercase().starts_with("granda-"))
                .map(|(n, v)| format!("{}: {v}", n.to_ascii_lowercase()))
                .collect();
            lines.sort();
            let mut granda: Vec<String> = req
                .headers
                .iter()
                .filter(|(n, _)| n.to_ascii_lowercase().starts_with("granda-"))
                .map(|(n, _)| n.to_ascii_lowercase())
                .collect();
            granda.sort();
            let body = format!(
                "method: {}\ntarget: {}\n{}\ngranda: {}\n",
                req.method,
                req.target,
                lines.join("\n"),
                granda.join(",")
            );
            Reply::new(200, body).header("Content-Type", "text/plain")
        }
        "/echo" => Reply::new(200, req.body).header("Content-Type", "text/plain"),
        "/created" => Reply::new(201, r#"{"ok":true}"#)
            .header("Content-Type", "application/json")
            .header("X-Custom", "yes")
            .header("Set-Cookie", "a=1; Path=/")
            .header("Set-Cookie", "b=2")
            .header("Keep-Alive", "timeout=5"),
        "/redirect" => Reply::new(302, "").header("Location", "https://example.org/elsewhere"),
        "/teapot" => Reply::new(418, "short and stout").header("Content-Type", "text/plain"),
        "/fail" => return Err("asked to fail".into()),
        "/nocontent" => Reply::new(204, "thirteen byte").header("Content-Type", "text/plain"),
        "/session" => Reply::new(200, "set")
            .header("Set-Cookie", "granda_session=fixed-by-a-function; Path=/ui")
            .header("Set-Cookie", "own=1; Path=/"),
        _ if path.starts_with("/status/") => {
            let status = path["/status/".len()..].parse().unwrap_or(200);
            Reply::new(status, "a body")
        }
        _ => Reply::new(200, format!("<h1>Hello from {}</h1>\n", req.method))
            .header("Content-Type", "text/html"),
    })
}
