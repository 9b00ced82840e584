//! Write a Granda hot function: one process that stays up and serves invocations.
//!
//! ```no_run
//! fn main() {
//!     granda_hot::serve(|req: granda_hot::Request| -> Result<Vec<u8>, String> {
//!         Ok(req.body)
//!     });
//! }
//! ```
//!
//! # The protocol
//!
//! A function with `mode: "hot"` runs its image's own ENTRYPOINT/CMD with
//! `GRANDA_SOCKET=/run/granda/granda.sock` in its env. The process listens on a unix stream socket
//! at that path (the directory is a writable bind mount) and the worker speaks HTTP/1.1 to it. The
//! root filesystem is read-only, there is no network, the user is unprivileged and `/tmp` is a
//! small tmpfs.
//!
//! The worker connects (a readiness probe may connect and close without sending anything) and
//! sends one request per invocation, waiting for the answer before it sends the next one on that
//! connection (keep-alive, no pipelining). It may close a connection and open another at any time.
//!
//! ```text
//! POST /invoke HTTP/1.1
//! Host: granda
//! Content-Length: <n>                   the body is the invocation's input; n may be 0
//! Granda-Invocation-Id: <uuid>
//! Granda-Deadline-Ms: <unix epoch ms>   the answer is due by then
//! Granda-Function: <function name>
//! Granda-Trigger: sync|async|webhook|event
//! Granda-Attempt: <n>                   1 for the first attempt
//! Granda-Webhook-Event: push            per-invocation env: GRANDA_WEBHOOK_EVENT, `_` made `-`
//! ```
//!
//! The answer always has a `Content-Length` body. Status 200 means success and the body is the
//! output; any other status means the function failed and the body is the error, in words.
//! `GET /health` answers 200 with an empty body. A client's `Connection: close` is honoured: the
//! server answers, then closes. The server does not enforce the deadline (the worker kills the
//! container once it passes); [`Request::remaining`] tells the handler how much time is left.
//!
//! Besides, this server answers: a handler's `Err` with 500 and the error as the body; a handler's
//! panic with 500 and `the function panicked: <message>`, and goes on serving; a request it can't
//! parse with 400, a chunked body with 411 (send `Content-Length`), a body over 1 GiB with 413,
//! headers over 64 KiB with 431, and closes the connection after those; another path with 404,
//! another method with 405. `HTTP/1.0` requests are served one per connection, and
//! `Expect: 100-continue` is answered.
//!
//! # The journal
//!
//! The worker also gives the container a directory of its own, `GRANDA_JOURNAL=/granda/journal`
//! (a small tmpfs). Before it sends its answer to an invocation, this server writes that answer
//! to `$GRANDA_JOURNAL/<Granda-Invocation-Id>`, atomically (a temporary file, renamed):
//!
//! ```text
//! <status> <started_ms> <finished_ms>\n   ms since the epoch: when the request came, when answered
//! <name>: <value>\n                       the answer's own headers (none or more)
//! \n
//! <body>
//! ```
//!
//! and once it gets a new request, removes the answers it wrote before but the last two. If the
//! worker dies during a call, a surviving worker reads the answer from the dead worker's engine and
//! records it as the call's outcome: a call that ended is not run again. A call that had not ended
//! when the worker's lease ran out is stopped and run again, and so is every call of a process
//! that does not journal (one not using this crate, or speaking the protocol itself without
//! writing the journal): those are run at least once, not exactly once. A write that fails (a full
//! journal) is skipped: that call too is at least once.
//!
//! # Calls of the function's URL
//!
//! A call of the function's URL (`/fn/{name}/{path}?{query}`, any method) arrives as the caller's
//! own request: its method, `/{path}?{query}` as the target, the caller's headers (never its
//! Granda credentials), the `Granda-*` headers above and `Granda-Web: 1`. Such a request always
//! goes to the handler, whatever its method and path ([`Request::method`], [`Request::target`]).
//! A handler may answer with its own status and headers by returning a [`Reply`]; with the
//! function's `response: "cgi"` they reach the caller.

// The example above is a whole program, `main` included.
#![allow(clippy::needless_doctest_main)]

use std::fmt::Display;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

/// The env var holding the socket's path.
pub const SOCKET_ENV: &str = "GRANDA_SOCKET";
/// The env var holding the journal directory's path.
pub const JOURNAL_ENV: &str = "GRANDA_JOURNAL";
/// How many answers to earlier invocations the journal keeps.
const JOURNAL_KEPT: usize = 2;
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: u64 = 1 << 30;

/// One invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `Granda-Invocation-Id` (empty if missing).
    pub id: String,
    /// `Granda-Function` (empty if missing).
    pub function: String,
    /// `Granda-Trigger`: `sync`, `async`, `webhook` or `event` (empty if missing).
    pub trigger: String,
    /// `Granda-Attempt`: 1 for the first attempt (1 if missing).
    pub attempt: u32,
    /// `Granda-Deadline-Ms`: the answer is due by then.
    pub deadline: Option<SystemTime>,
    /// The input.
    pub body: Vec<u8>,
    /// Every header, in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The method: `POST` for an invocation, the caller's for a call of the function's URL.
    pub method: String,
    /// The target: `/invoke`, or the path after `/fn/{name}` (at least `/`) and the query.
    pub target: String,
    /// Whether this is a call of the function's URL (`Granda-Web: 1`).
    pub web: bool,
}

/// An answer with its own status and headers (a handler may also return just a body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (one with CR, LF or another control character is not sent).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What a handler may return on success: a body (status 200), or a whole [`Reply`].
pub trait IntoReply {
    fn into_reply(self) -> Reply;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl IntoReply for Vec<u8> {
    fn into_reply(self) -> Reply {
        Reply::new(200, self)
    }
}

impl IntoReply for String {
    fn into_reply(self) -> Reply {
        Reply::new(200, self)
    }
}

impl IntoReply for &str {
    fn into_reply(self) -> Reply {
        Reply::new(200, self)
    }
}

impl IntoReply for &[u8] {
    fn into_reply(self) -> Reply {
        Reply::new(200, self)
    }
}

impl Request {
    /// The value of the first header of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The time left until the deadline (zero once it has passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.deadline?;
        Some(
            deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }

    /// Builds the request from a parsed head; an error names a malformed Granda header.
    fn new(headers: Vec<(String, String)>, body: Vec<u8>) -> Result<Request, String> {
        let mut req = Request {
            attempt: 1,
            body,
            ..Request::default()
        };
        for (name, value) in &headers {
            let name = name.to_ascii_lowercase();
            let bad = || format!("{name}: not a number: {value:?}");
            match name.as_str() {
                "granda-invocation-id" => req.id = value.clone(),
                "granda-web" => req.web = value == "1",
                "granda-function" => req.function = value.clone(),
                "granda-trigger" => req.trigger = value.clone(),
                "granda-attempt" => req.attempt = value.parse().map_err(|_| bad())?,
                "granda-deadline-ms" => {
                    let ms = value.parse().map_err(|_| bad())?;
                    req.deadline = SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms));
                }
                _ => {}
            }
        }
        req.headers = headers;
        Ok(req)
    }
}

/// Serves at `$GRANDA_SOCKET` forever. Panics if it is unset or the socket can't be bound.
///
/// It also makes SIGTERM and SIGINT end the process: in a container it is PID 1, which the kernel
/// only delivers those to if it handles them.
pub fn serve<F, O, E>(handler: F) -> !
where
    F: Fn(Request) -> Result<O, E> + Send + Sync + 'static,
    O: IntoReply,
    E: Display,
{
    let Some(path) = std::env::var_os(SOCKET_ENV) else {
        panic!(
            "{SOCKET_ENV} is not set: this is a Granda hot function, deploy it with mode \"hot\""
        );
    };
    exit_on_signals();
    match serve_at(&path, handler) {
        Err(e) => panic!(
            "can't listen at {SOCKET_ENV}={}: {e}",
            Path::new(&path).display()
        ),
    }
}

/// Serves at `path` forever, a connection per thread. A file already at `path` is replaced.
/// Returns only if the socket can't be bound.
pub fn serve_at<F, O, E>(path: impl AsRef<Path>, handler: F) -> io::Result<std::convert::Infallible>
where
    F: Fn(Request) -> Result<O, E> + Send + Sync + 'static,
    O: IntoReply,
    E: Display,
{
    // Bound under another name and renamed, the socket appears ready, with its permissions (the
    // worker may run as another user, and connecting takes write permission). The rename replaces
    // a stale file.
    let path = path.as_ref();
    let mut bound = path.as_os_str().to_owned();
    bound.push(format!(".{}", std::process::id()));
    match std::fs::remove_file(&bound) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&bound)?;
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o666))?;
    std::fs::rename(&bound, path)?;
    let handler = Arc::new(handler);
    let journal = Arc::new(Journal::from_env());
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait for some connections to close.
                eprintln!("granda-hot: accept: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let journal = Arc::clone(&journal);
        let spawned = thread::Builder::new()
            .name("granda-hot".into())
            .spawn(move || connection(stream, &*handler, &journal));
        if let Err(e) = spawned {
            eprintln!("granda-hot: can't start a thread for a connection: {e}");
        }
    }
}

fn exit_on_signals() {
    use std::ffi::c_int;
    unsafe extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn _exit(status: c_int) -> !;
    }
    extern "C" fn exit(signum: c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(128 + signum) }
    }
    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    // SAFETY: the handler only calls _exit.
    unsafe {
        signal(SIGINT, exit);
        signal(SIGTERM, exit);
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    /// Close the connection after this answer.
    close: bool,
    allow: Option<&'static str>,
    /// The handler's own headers.
    headers: Vec<(String, String)>,
    /// An answer to `HEAD`: its headers (`Content-Length` included), no body.
    bodiless: bool,
}

impl Response {
    fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            body: body.into(),
            close: false,
            allow: None,
            headers: Vec::new(),
            bodiless: false,
        }
    }

    /// An answer after which the connection is out of step, so closed.
    fn fatal(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            close: true,
            ..Response::new(status, body)
        }
    }
}

/// A request's first line and headers.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body's length: 0 without a `Content-Length`, `None` if it is malformed or several
    /// disagree.
    fn content_length(&self) -> Option<u64> {
        let mut lengths = self
            .values("Content-Length")
            .flat_map(|v| v.split(','))
            .map(str::trim);
        let Some(first) = lengths.next() else {
            return Some(0);
        };
        let all_digits = first.bytes().all(|b| b.is_ascii_digit());
        let n = first.parse().ok().filter(|_| all_digits)?;
        lengths.all(|l| l == first).then_some(n)
    }

    /// Whether a comma-separated header (`Connection`, `Expect`) has this token.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

enum Next {
    Request(Head, Vec<u8>),
    Refused(Response),
    /// The client closed the connection between requests.
    Closed,
}

/// The answers this process keeps in `$GRANDA_JOURNAL` (see the crate's doc).
struct Journal {
    dir: Option<std::path::PathBuf>,
    /// The ids answered, oldest first.
    written: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Journal {
    fn from_env() -> Journal {
        Journal::at(std::env::var_os(JOURNAL_ENV).map(Into::into))
    }

    fn at(dir: Option<std::path::PathBuf>) -> Journal {
        Journal {
            dir: dir.filter(|d: &std::path::PathBuf| d.is_dir()),
            written: Default::default(),
        }
    }

    /// A new request for `id`: the answers written before but the last [`JOURNAL_KEPT`] go.
    fn begin(&self, id: &str) {
        let Some(dir) = &self.dir else { return };
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.retain(|w| w != id);
        while written.len() > JOURNAL_KEPT {
            if let Some(old) = written.pop_front() {
                let _ = std::fs::remove_file(dir.join(old));
            }
        }
    }

    /// Keeps the answer `r` to `id`, to a request that came at `started_ms`, before it is sent.
    fn write(&self, id: &str, started_ms: u128, r: &Response) {
        let Some(dir) = &self.dir else { return };
        // Only a name of one path component: an id is a UUID.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return;
        }
        let mut head = format!("{} {started_ms} {}\n", r.status, epoch_ms());
        for (name, value) in &r.headers {
            if is_token(name) && !value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                head += &format!("{name}: {value}\n");
            }
        }
        head += "\n";
        let tmp = dir.join(format!(".{id}.tmp"));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(head.as_bytes())?;
            f.write_all(&r.body)
        });
        if written
            .and_then(|()| std::fs::rename(&tmp, dir.join(id)))
            .is_err()
        {
            // A full journal: this call is not journaled (at least once).
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let mut kept = self.written.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|w| w != id);
        kept.push_back(id.to_string());
    }
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn connection<F, O, E>(stream: UnixStream, handler: &F, journal: &Journal)
where
    F: Fn(Request) -> Result<O, E>,
    O: IntoReply,
    E: Display,
{
    let Ok(mut output) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    loop {
        let response = match read_request(&mut input, &mut output) {
            Ok(Next::Request(head, body)) => {
                let close = head.http10 || head.has_token("Connection", "close");
                let bodiless = head.method == "HEAD";
                let id = head
                    .values("Granda-Invocation-Id")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let started_ms = epoch_ms();
                if !id.is_empty() {
                    journal.begin(&id);
                }
                let mut response = answer(head, body, handler);
                response.close |= close;
                response.bodiless = bodiless;
                if !id.is_empty() {
                    journal.write(&id, started_ms, &response);
                }
                response
            }
            Ok(Next::Refused(response)) => response,
            // A readiness probe, or a client done with the connection.
            Ok(Next::Closed) => return,
            // The client went away mid-request: there is nobody to answer.
            Err(_) => return,
        };
        if write_response(&mut output, &response).is_err() || response.close {
            return;
        }
    }
}

fn answer<F, O, E>(head: Head, body: Vec<u8>, handler: &F) -> Response
where
    F: Fn(Request) -> Result<O, E>,
    O: IntoReply,
    E: Display,
{
    let path = head.target.split('?').next().unwrap_or_default();
    let web = head.values("Granda-Web").any(|v| v == "1");
    let allowed = match path {
        _ if web => "",
        "/invoke" => "POST",
        "/health" => "GET",
        _ => return Response::new(404, format!("no such path: {path}")),
    };
    if !web && head.method != allowed {
        let body = format!("{path} takes {allowed}, not {}", head.method);
        return Response {
            allow: Some(allowed),
            ..Response::new(405, body)
        };
    }
    if !web && path == "/health" {
        return Response::new(200, "");
    }
    let (method, target) = (head.method.clone(), head.target.clone());
    let mut req = match Request::new(head.headers, body) {
        Ok(req) => req,
        Err(e) => return Response::new(400, e),
    };
    req.method = method;
    req.target = target;
    let result = panic::catch_unwind(AssertUnwindSafe(|| match handler(req) {
        Ok(output) => Ok(output.into_reply()),
        Err(e) => Err(e.to_string()),
    }));
    match result {
        Ok(Ok(reply)) => Response {
            headers: reply.headers,
            ..Response::new(reply.status, reply.body)
        },
        Ok(Err(e)) => Response::new(500, e),
        Err(panic) => {
            let message = (panic.downcast_ref::<&str>().copied())
                .or(panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a message)");
            Response::new(500, format!("the function panicked: {message}"))
        }
    }
}

fn read_request(input: &mut impl BufRead, output: &mut impl Write) -> io::Result<Next> {
    let refuse = |status, why: &str| Ok(Next::Refused(Response::fatal(status, why)));
    let head = match read_head(input)? {
        Some(head) if head.len() > MAX_HEAD => return refuse(431, "the headers are over 64 KiB"),
        Some(head) => head,
        None => return Ok(Next::Closed),
    };
    let head = match parse_head(&head) {
        Ok(head) => head,
        Err(e) => return Ok(Next::Refused(e)),
    };
    if head.values("Transfer-Encoding").next().is_some() {
        return refuse(
            411,
            "chunked request bodies are not supported: send Content-Length",
        );
    }
    let Some(length) = head.content_length() else {
        return refuse(400, "a bad request: a bad Content-Length");
    };
    if length > MAX_BODY {
        return refuse(413, "the request body is over 1 GiB");
    }
    if length > 0 && !head.http10 && head.has_token("Expect", "100-continue") {
        output.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        output.flush()?;
    }
    let mut body = Vec::with_capacity(length.min(1 << 20) as usize);
    input.by_ref().take(length).read_to_end(&mut body)?;
    if (body.len() as u64) < length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Next::Request(head, body))
}

/// Reads a request's head up to its empty line, or to just over [`MAX_HEAD`] bytes. `None` if the
/// client closed the connection before a request.
fn read_head(input: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let room = (MAX_HEAD + 1 - start) as u64;
        if input.by_ref().take(room).read_until(b'\n', &mut head)? == 0 {
            return if start == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() > MAX_HEAD {
            return Ok(Some(head));
        }
        match &head[start..] {
            // Empty lines before a request line are ignored (RFC 9112, 2.2).
            b"\n" | b"\r\n" if start == 0 => head.clear(),
            b"\n" | b"\r\n" => return Ok(Some(head)),
            line if !line.ends_with(b"\n") => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {}
        }
    }
}

fn parse_head(head: &[u8]) -> Result<Head, Response> {
    let bad = |why: &str| Response::fatal(400, format!("a bad request: {why}"));
    let text = std::str::from_utf8(head).map_err(|_| bad("the head is not UTF-8"))?;
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(&format!("not a request line: {request_line:?}")));
    };
    if !is_token(method) || !target.starts_with('/') {
        return Err(bad(&format!("not a request line: {request_line:?}")));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ if version.starts_with("HTTP/") => {
            return Err(Response::fatal(
                505,
                format!("HTTP/1.1 only, not {version}"),
            ));
        }
        _ => return Err(bad(&format!("not a request line: {request_line:?}"))),
    };
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, value)) if is_token(name) => {
                headers.push((
                    name.to_string(),
                    value.trim_matches([' ', '\t']).to_string(),
                ));
            }
            _ => return Err(bad(&format!("not a header line: {line:?}"))),
        }
    }
    let (method, target) = (method.to_string(), target.to_string());
    Ok(Head {
        method,
        target,
        http10,
        headers,
    })
}

/// An HTTP token (RFC 9110, 5.6.2): a method or a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn write_response(output: &mut impl Write, r: &Response) -> io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "",
    };
    let kind = if r.status == 200 {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", r.status);
    let mut typed = false;
    for (name, value) in &r.headers {
        let framing = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("connection");
        if framing || !is_token(name) || value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            continue;
        }
        typed |= name.eq_ignore_ascii_case("content-type");
        head += &format!("{name}: {value}\r\n");
    }
    if !typed {
        head += &format!("Content-Type: {kind}\r\n");
    }
    head += &format!("Content-Length: {}\r\n", r.body.len());
    if let Some(allow) = r.allow {
        head += &format!("Allow: {allow}\r\n");
    }
    if r.close {
        head += "Connection: close\r\n";
    }
    head += "\r\n";
    // One write for a small answer: the worker wakes once to read it, not twice.
    if r.bodiless {
        output.write_all(head.as_bytes())?;
    } else if r.body.len() <= 64 * 1024 {
        let mut all = head.into_bytes();
        all.extend_from_slice(&r.body);
        output.write_all(&all)?;
    } else {
        output.write_all(head.as_bytes())?;
        output.write_all(&r.body)?;
    }
    output.flush()
}

#[cfg(test)]
mod tests;
