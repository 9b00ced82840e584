//! The hot function in the test image `granda-test/hot`. It echoes its input, unless the input is
//! one of these:
//!
//! - `hang`: never answers (the worker must kill it at the deadline)
//! - `crash`: exits with 3 mid-request
//! - `fail`: fails with `asked to fail` (a 500)
//! - `count`: how many requests this process has served, this one included
//! - `pid`: its process id
//! - `headers`: the `Granda-*` headers, a sorted `Name: value` line each, names in Title-Case
//! - `env`: `GRANDA_SOCKET=<value>` and the name of every env var, a line each, sorted
//! - `tmp`: a counter kept in /tmp/count, incremented
//! - `big:<n>`: n bytes of `x`
//! - `nap:<ms>`: sleeps ms, then answers `ran <invocation id> served=<count> host=<hostname>`
//!   (its container's); while it sleeps, an empty `$GRANDA_JOURNAL/napping-<id>` says the call
//!   reached the process (a test reads it through the engine)

use granda_hot::Request;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static SERVED: AtomicU64 = AtomicU64::new(0);

fn main() {
    granda_hot::serve(handle);
}

fn handle(req: Request) -> Result<Vec<u8>, String> {
    let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    let output = match req.body.as_slice() {
        b"hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        b"crash" => std::process::exit(3),
        b"fail" => return Err("asked to fail".into()),
        b"count" => served.to_string(),
        b"pid" => std::process::id().to_string(),
        b"headers" => {
            let granda = req
                .headers
                .iter()
                .filter(|(n, _)| n.to_ascii_lowercase().starts_with("granda-"));
            let lines = granda.map(|(n, v)| format!("{}: {v}", title_case(n)));
            sorted_lines(lines)
        }
        b"env" => {
            let socket = std::env::var(granda_hot::SOCKET_ENV).unwrap_or_default();
            let names = std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned());
            sorted_lines(names.chain([format!("GRANDA_SOCKET={socket}")]))
        }
        b"tmp" => {
            let count: u64 = std::fs::read_to_string("/tmp/count")
                .map(|s| s.trim().parse().unwrap_or(0))
                .unwrap_or(0);
            let count = count + 1;
            std::fs::write("/tmp/count", count.to_string())
                .map_err(|e| format!("/tmp/count: {e}"))?;
            count.to_string()
        }
        body if body.starts_with(b"nap:") => {
            let ms = std::str::from_utf8(&body[4..])
                .ok()
                .and_then(|n| n.parse().ok());
            let ms: u64 = ms.ok_or("nap:<ms> takes a number of milliseconds")?;
            let marker = std::env::var_os(granda_hot::JOURNAL_ENV)
                .map(|dir| std::path::Path::new(&dir).join(format!("napping-{}", req.id)));
            if let Some(marker) = &marker {
                let _ = std::fs::write(marker, b"");
            }
            std::thread::sleep(Duration::from_millis(ms));
            if let Some(marker) = &marker {
                let _ = std::fs::remove_file(marker);
            }
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("ran {} served={served} host={}", req.id, host.trim())
        }
        body => match body.strip_prefix(b"big:") {
            Some(n) => {
                let n = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok());
                let n: usize = n.ok_or("big:<n> takes a number of bytes")?;
                return Ok(vec![b'x'; n]);
            }
            None => return Ok(req.body),
        },
    };
    Ok(output.into_bytes())
}

fn sorted_lines(lines: impl Iterator<Item = String>) -> String {
    let mut lines: Vec<String> = lines.collect();
    lines.sort();
    lines.join("\n")
}

/// `granda-webhook-event` as `Granda-Webhook-Event`, whatever case the client sent.
fn title_case(name: &str) -> String {
    let words = name.split('-').map(|word| {
        let word = word.to_ascii_lowercase();
        let mut chars = word.chars();
        chars
            .next()
            .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    });
    words.collect::<Vec<_>>().join("-")
}
