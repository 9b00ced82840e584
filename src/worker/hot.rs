//! Hot functions (`mode: "hot"`): the function's own process stays up in a kept container and
//! serves each invocation as one HTTP/1.1 request over a unix socket. No network is involved.
//!
//! The protocol (the `granda-hot` crate in `hot/` implements the function's side):
//! - The container runs the image's own entrypoint and command, with `GRANDA_SOCKET` set to
//!   `SOCKET_PATH`, in a directory the worker bind-mounts from `<state_dir>/hot/`. The function
//!   listens there; the container is ready when a connection is accepted.
//! - Each invocation is `POST /invoke` with the input as the body and the headers
//!   `Granda-Invocation-Id`, `Granda-Deadline-Ms` (ms since the epoch), `Granda-Function`,
//!   `Granda-Trigger`, `Granda-Attempt`, and one header per per-invocation variable
//!   (`GRANDA_WEBHOOK_EVENT` travels as `Granda-Webhook-Event`). One request at a time per
//!   container, on a kept-alive connection.
//! - A call of the function's URL (`/fn/{name}[/{path}]`) is the caller's request itself instead:
//!   its method, its path after `/fn/{name}` (`/` when none) and query, and the caller's headers
//!   ([`crate::web`] says which pass), plus the `Granda-*` ones and `Granda-Web: 1`. Its `Host`
//!   is the caller's.
//! - A 2xx answer is success, its body the output. Any other status is a failure of the
//!   function, its body the error. With `response: "cgi"`, every answer is the function's own:
//!   its status and headers pass to the caller, and only a 5xx is a failure. No answer by the
//!   deadline: the container is killed.
//!
//! - A container gets a journal directory too (`GRANDA_JOURNAL`, [`super::container::JOURNAL_DIR`],
//!   a tmpfs owned by the function's user, of [`JOURNAL_KEPT`] + 1 answers within the output cap).
//!   Before it sends its answer to invocation `<id>`, the process may write that answer to
//!   `$GRANDA_JOURNAL/<id>` (atomically: a temporary file renamed), as [`JournalEntry`] reads it;
//!   on each new request it removes what it wrote for other ids but the last [`JOURNAL_KEPT`].
//!   When the worker dies during a call, a survivor records the journaled answer as the call's
//!   outcome instead of running it again ([`super::dead_run`]); a call with no answer in the
//!   journal (one still going, or a process that does not journal) is run again (at least once).
//!   `granda_hot` journals every invocation's answer.
//!
//! The socket directory is the container's, and the worker trusts nothing in it: it is a tmpfs
//! of [`SOCKET_DIR_BYTES`] the worker mounts on the host (so a function filling it fills memory
//! it is capped in, never the host's disk), owned by the function's uid and gid, mode 0700. The
//! worker connects only to a socket there, owned by that uid: it opens the path with
//! `O_PATH | O_NOFOLLOW`, checks what it got (a symlink or anything but a socket is refused with
//! a clear error), and connects through `/proc/self/fd/N`, so the path can't be swapped between
//! the check and the connect. A worker that may not mount (not root) falls back to a plain
//! directory, chowned and 0700, without the size cap, and says so in its log.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use uuid::Uuid;

use crate::function::Snapshot;
use crate::invocation::Trigger;

/// Where the socket directory is mounted in a hot container.
pub(crate) const SOCKET_DIR: &str = "/run/granda";
/// `GRANDA_SOCKET`: where a hot function listens.
pub(crate) const SOCKET_PATH: &str = "/run/granda/granda.sock";
const SOCKET_NAME: &str = "granda.sock";

/// The size of a hot container's socket directory: room for its socket and little else.
pub const SOCKET_DIR_BYTES: u64 = 64 * 1024;

/// How many answers to earlier invocations a hot process keeps in its journal at most (besides
/// the one it is answering).
pub(crate) const JOURNAL_KEPT: u64 = 2;

/// An answer as a hot process journals it at `$GRANDA_JOURNAL/<id>`:
///
/// ```text
/// <status> <started_ms> <finished_ms>\n     ms since the epoch: when the request came, when answered
/// <name>: <value>\n                         the answer's headers, as sent (none or more)
/// \n
/// <body>
/// ```
#[derive(Debug, PartialEq)]
pub(crate) struct JournalEntry {
    pub(crate) started_ms: i64,
    pub(crate) finished_ms: i64,
    pub(crate) answer: Answer,
}

impl JournalEntry {
    /// The entry in `bytes`, its body kept within `cap` (`None`: not one).
    pub(crate) fn parse(bytes: &[u8], cap: usize) -> Option<JournalEntry> {
        let line_end = |from: usize| {
            bytes[from..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| from + i)
        };
        let first = line_end(0)?;
        let line = std::str::from_utf8(&bytes[..first]).ok()?;
        let mut f = line.split_ascii_whitespace();
        let status: u16 = f.next()?.parse().ok()?;
        let started_ms: i64 = f.next()?.parse().ok()?;
        let finished_ms: i64 = f.next()?.parse().ok()?;
        let mut headers = vec![];
        let mut at = first + 1;
        loop {
            let end = line_end(at)?;
            if end == at {
                at += 1;
                break;
            }
            let line = String::from_utf8_lossy(&bytes[at..end]);
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if crate::web::valid_value(value) {
                    headers.push((name.trim().to_ascii_lowercase(), value.to_string()));
                }
            }
            at = end + 1;
        }
        let body = &bytes[at..];
        Some(JournalEntry {
            started_ms,
            finished_ms: finished_ms.max(started_ms),
            answer: Answer {
                status,
                headers,
                body: body[..body.len().min(cap)].to_vec(),
                truncated: body.len() > cap,
            },
        })
    }
}

/// The least time a hot container gets to listen, whatever the function's timeout.
pub(crate) const MIN_STARTUP_MS: i64 = 5_000;
/// How often a starting container is looked at while it has not listened yet.
const READY_POLL: Duration = Duration::from_millis(2);
/// How often the engine is asked whether a starting container is still running.
const ALIVE_POLL: Duration = Duration::from_millis(250);

/// Why a hot call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The connection was closed before the request went out: the container is gone or stale.
    #[error("the hot container is not accepting requests: {0}")]
    Stale(String),
    /// The request went out but no full answer came back (the process died or hung up).
    #[error("the function hung up without answering: {0}")]
    HungUp(hyper::Error),
    /// What is at the socket path is not a socket the function made: never connected to.
    #[error(transparent)]
    Refused(Refused),
    /// The invocation can't be put into a request (a per-invocation value that is no valid
    /// header value): nothing was sent, the container is untouched.
    #[error("{0}")]
    BadInput(String),
}

/// The request headers of `call`; an error names the value that can't be a header (never its
/// content, which may be anything a caller sent).
pub(crate) fn request_headers(call: &Call<'_>) -> Result<hyper::HeaderMap, String> {
    use hyper::header::{HeaderName, HeaderValue};
    let mut headers = hyper::HeaderMap::new();
    let mut put = |name: &str, value: &str| -> Result<(), String> {
        if name.starts_with("granda-") && headers.contains_key(name) {
            return Ok(());
        }
        let header = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{name:?} can't be the name of a header for a hot call"))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            format!(
                "the value of {name:?} holds characters a header can't carry (control characters \
                 or line breaks); the hot call was not sent"
            )
        })?;
        headers.append(header, value);
        Ok(())
    };
    match call.request {
        Some(request) => {
            for (name, value) in &request.headers {
                // The body's own length is sent; `Expect` would ask for an interim answer.
                // The run span's trace context goes in place of the caller's.
                if matches!(
                    name.as_str(),
                    "content-length" | "expect" | "traceparent" | "tracestate"
                ) || name.starts_with("granda-")
                {
                    continue;
                }
                put(name, value)?;
            }
            if !request.headers.iter().any(|(n, _)| n == "host") {
                put("host", "granda")?;
            }
            put("granda-web", "1")?;
        }
        None => put("host", "granda")?,
    }
    for (name, value) in crate::telemetry::trace_headers() {
        put(name, &value)?;
    }
    put("granda-invocation-id", &call.id.to_string())?;
    put("granda-deadline-ms", &call.deadline_ms.to_string())?;
    put("granda-function", &call.function.name)?;
    put("granda-trigger", call.trigger.as_str())?;
    put("granda-attempt", &call.attempt.to_string())?;
    for (name, value) in call
        .function
        .run
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("GRANDA_"))
    {
        put(&name.replace('_', "-"), value)?;
    }
    Ok(headers)
}

/// Why a hot container could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the function exited (code {0}) before it listened on GRANDA_SOCKET")]
    Exited(i64),
    #[error("the function did not listen on GRANDA_SOCKET within {0} ms; is it a hot function?")]
    NotListening(u64),
    #[error(transparent)]
    Refused(Refused),
    /// A user the worker can't know the uid of: its socket directory can't be made its own.
    #[error(
        "a hot function runs as a numeric user (uid or uid:gid, in the function or its image), not {0:?}"
    )]
    User(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Something other than the function's own socket at `GRANDA_SOCKET`.
#[derive(Debug, thiserror::Error)]
#[error("refused to connect to GRANDA_SOCKET: {0}")]
pub struct Refused(String);

/// Who a hot container's process runs as: the owner of its socket directory and socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Owner {
    /// The owner a container of `user` (`uid` or `uid:gid`; none: root) runs as.
    pub(crate) fn of(user: Option<&str>) -> Result<Owner, StartError> {
        let Some(user) = user else {
            return Ok(Owner { uid: 0, gid: 0 });
        };
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let bad = || StartError::User(user.to_string());
        let uid: u32 = uid.parse().map_err(|_| bad())?;
        let gid: u32 = match gid {
            Some(g) => g.parse().map_err(|_| bad())?,
            None => uid,
        };
        Ok(Owner { uid, gid })
    }
}

/// Why the socket could not be opened: not there yet, or refused.
enum Opened {
    NotYet,
    Refused(Refused),
}

/// The function's socket in `dir`, opened without following anything (`O_PATH | O_NOFOLLOW`) and
/// checked: a socket, owned by `uid`. The fd pins what was checked.
fn checked_socket(dir: &Path, uid: u32) -> Result<std::fs::File, Opened> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(dir.join(SOCKET_NAME));
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Opened::NotYet),
        Err(e) => return Err(Opened::Refused(Refused(format!("can't open it: {e}")))),
    };
    let meta = file
        .metadata()
        .map_err(|e| Opened::Refused(Refused(format!("can't look at it: {e}"))))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(Opened::Refused(Refused(
            "it is a symlink, not a socket the function made".into(),
        )));
    }
    if !kind.is_socket() {
        return Err(Opened::Refused(Refused("it is not a socket".into())));
    }
    if meta.uid() != uid {
        return Err(Opened::Refused(Refused(format!(
            "it belongs to uid {}, not the function's uid {uid}",
            meta.uid()
        ))));
    }
    Ok(file)
}

/// Connects to the checked socket in `dir` through its fd.
async fn connect(dir: &Path, uid: u32) -> Result<UnixStream, Opened> {
    use std::os::fd::AsRawFd;
    let file = checked_socket(dir, uid)?;
    let pinned = format!("/proc/self/fd/{}", file.as_raw_fd());
    let stream = UnixStream::connect(&pinned).await;
    drop(file);
    stream.map_err(|e| match e.kind() {
        // Not listening yet (or no more).
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => Opened::NotYet,
        _ => Opened::Refused(Refused(format!("can't connect: {e}"))),
    })
}

/// The I/O half of a [`Connection`]: it must be polled for requests to go out and answers in.
type Driver = Pin<Box<http1::Connection<TokioIo<UnixStream>, Full<Bytes>>>>;

/// A kept-alive HTTP/1.1 connection to a hot container. Its I/O is driven by the call that uses
/// it (one at a time), not by a task of its own: a call costs no task hops.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once the connection ended.
    driver: Option<Driver>,
    /// The socket directory, and the uid the socket must belong to.
    dir: PathBuf,
    uid: u32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("dir", &self.dir)
            .field("open", &self.driver.is_some())
            .finish()
    }
}

/// Awaits `work` while driving the connection's I/O (`driver`), which `work` needs to finish.
async fn driving<T>(driver: &mut Option<Driver>, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    loop {
        let Some(connection) = driver.as_mut() else {
            return work.await;
        };
        tokio::select! {
            biased;
            done = &mut work => return done,
            _ = connection.as_mut() => *driver = None,
        }
    }
}

/// One invocation, as a hot call carries it.
pub struct Call<'a> {
    pub id: Uuid,
    pub function: &'a Snapshot,
    pub trigger: Trigger,
    pub attempt: i32,
    /// When the answer is due, in ms since the epoch.
    pub deadline_ms: i64,
    pub input: &'a [u8],
    /// A call of the function's URL: sent as the request itself.
    pub request: Option<&'a crate::web::WebRequest>,
}

/// One answer of a hot function.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// Names in lowercase; values that are no printable ASCII are left out.
    pub(crate) headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub(crate) truncated: bool,
}

/// The per-container socket directory under `root`: a tmpfs of [`SOCKET_DIR_BYTES`] owned by
/// `owner`, mode 0700 (only this container mounts it). Where the worker may not mount, a plain
/// directory, owned by `owner`, mode 0700.
pub fn socket_dir(root: &Path, owner: Owner) -> std::io::Result<PathBuf> {
    owned_dir(root, owner, SOCKET_DIR_BYTES)
}

/// A directory under `root` for one kept container: a tmpfs of `bytes` owned by `owner`, mode
/// 0700; where the worker may not mount, a plain directory, owned by `owner`, mode 0700. Removed
/// with [`remove_socket_dir`], cleared with [`clear_socket_dirs`].
pub fn owned_dir(root: &Path, owner: Owner, bytes: u64) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = root.join(Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(root)?;
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    match mount_tmpfs(&dir, owner, bytes) {
        Ok(()) => return Ok(dir),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %e, "can't mount a tmpfs for hot socket directories; they are not size-capped")
            });
        }
    }
    std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

fn mount_tmpfs(dir: &Path, owner: Owner, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let data = std::ffi::CString::new(format!(
        "size={bytes},nr_inodes=16,mode=0700,uid={},gid={}",
        owner.uid, owner.gid
    ))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let done = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts (if it is a mount) and removes a socket directory.
pub fn remove_socket_dir(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path that outlives the call. Not a mount: EINVAL, ignored.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes every socket directory under `root` (an earlier self's), unmounting each.
pub(crate) fn clear_socket_dirs(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            remove_socket_dir(&entry.path());
        }
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Waits until the function in `container` listens in `dir`, for at most `within`.
pub async fn wait_ready(
    docker: &bollard::Docker,
    container: &str,
    dir: &Path,
    owner: Owner,
    within: Duration,
) -> Result<Connection, StartError> {
    let started = Instant::now();
    let mut looked = Instant::now();
    loop {
        match Connection::open(dir, owner.uid).await {
            Ok(connection) => return Ok(connection),
            Err(Opened::Refused(refused)) => return Err(StartError::Refused(refused)),
            Err(Opened::NotYet) => {}
        }
        if started.elapsed() >= within {
            return Err(StartError::NotListening(within.as_millis() as u64));
        }
        if looked.elapsed() >= ALIVE_POLL {
            looked = Instant::now();
            if let Some(code) = exited(docker, container).await {
                return Err(StartError::Exited(code));
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// How a container's process ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct End {
    pub(crate) exit_code: i64,
    pub(crate) oom_killed: bool,
}

/// How `container` ended, if it no longer runs (gone: code -1).
async fn state(docker: &bollard::Docker, container: &str) -> Option<End> {
    match docker.inspect_container(container, None).await {
        Ok(c) => {
            let state = c.state?;
            (state.running != Some(true)).then(|| End {
                exit_code: state.exit_code.unwrap_or(-1),
                oom_killed: state.oom_killed.unwrap_or(false),
            })
        }
        Err(_) => Some(End {
            exit_code: -1,
            oom_killed: false,
        }),
    }
}

async fn exited(docker: &bollard::Docker, container: &str) -> Option<i64> {
    state(docker, container).await.map(|e| e.exit_code)
}

/// After a call that got no answer: how the container ended, waiting up to a second for the
/// engine to see it (`None`: it still runs, the function only hung up).
pub(crate) async fn ended(docker: &bollard::Docker, container: &str) -> Option<End> {
    let give_up = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(end) = state(docker, container).await {
            return Some(end);
        }
        if Instant::now() >= give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Connection {
    async fn open(dir: &Path, uid: u32) -> Result<Connection, Opened> {
        let stream = connect(dir, uid).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Opened::NotYet)?;
        Ok(Connection {
            sender,
            driver: Some(Box::pin(connection)),
            dir: dir.to_path_buf(),
            uid,
        })
    }

    /// Sends one invocation and reads the answer, keeping at most `cap` bytes of its body (the
    /// rest is read and dropped, so the connection stays usable).
    pub async fn call(&mut self, call: Call<'_>, cap: usize) -> Result<Answer, CallError> {
        // Let the connection see what happened since the last call (the function may have closed
        // its side), without waiting.
        if let Some(driver) = self.driver.as_mut()
            && std::future::poll_fn(|cx| Poll::Ready(driver.as_mut().poll(cx).is_ready())).await
        {
            self.driver = None;
        }
        if self.driver.is_none() || self.sender.is_closed() {
            // The function closed its side between calls: one fresh connection, then give up.
            *self = match Connection::open(&self.dir.clone(), self.uid).await {
                Ok(connection) => connection,
                Err(Opened::Refused(refused)) => return Err(CallError::Refused(refused)),
                Err(Opened::NotYet) => {
                    return Err(CallError::Stale("the function no longer listens".into()));
                }
            };
        }
        driving(&mut self.driver, self.sender.ready())
            .await
            .map_err(|e| CallError::Stale(e.to_string()))?;
        let headers = request_headers(&call).map_err(CallError::BadInput)?;
        let (method, target) = match call.request {
            Some(r) => (r.method.as_str(), r.target()),
            None => ("POST", "/invoke".to_string()),
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(target)
            .body(Full::new(Bytes::copy_from_slice(call.input)))
            .map_err(|e| CallError::BadInput(e.to_string()))?;
        request.headers_mut().extend(headers);
        let response = driving(&mut self.driver, self.sender.send_request(request))
            .await
            .map_err(CallError::HungUp)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| {
                let v = v.to_str().ok().filter(|v| crate::web::valid_value(v))?;
                Some((n.as_str().to_string(), v.to_string()))
            })
            .collect();
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut truncated = false;
        while let Some(frame) = driving(&mut self.driver, body.frame()).await {
            let frame = frame.map_err(CallError::HungUp)?;
            if let Ok(data) = frame.into_data() {
                let room = cap.saturating_sub(kept.len());
                if data.len() > room {
                    truncated = true;
                }
                kept.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok(Answer {
            status,
            headers,
            body: kept,
            truncated,
        })
    }
}
