//! The ingress's accept loop: HTTP/1.1 connections served by hyper, each bounded in time and
//! all of them in number, so silent or idle connections can't use up the process's file
//! descriptors.
//!
//! - A new connection must send its first request's headers within
//!   `GRANDA_HEADER_READ_TIMEOUT_MS`; a kept-alive one, once its next request has begun, too.
//! - A kept-alive connection with no request in flight is closed after `GRANDA_IDLE_TIMEOUT_MS`
//!   without a byte (answer bytes it is still being sent count as activity).
//! - At most `GRANDA_MAX_CONNECTIONS` connections are held. At the cap a new connection makes the
//!   one that has waited longest without a request in flight close at once; when every
//!   connection has a request in flight, new ones wait in the listen backlog.
//!
//! A request in flight is never cut by these bounds (its body has its own: `super::budget`).
//! On shutdown the loop stops accepting, idle connections close, and it returns when the last
//! request in flight is answered. Connections held now are the gauge `granda_http_connections`;
//! the ones closed by a bound, `granda_http_connections_closed_total{reason}`.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower_service::Service;

use crate::metrics::Metrics;

const OPEN: &str = "granda_http_connections";
const CLOSED: &str = "granda_http_connections_closed_total";

/// The bounds on connections, from the settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    pub(crate) max_connections: usize,
}

impl Limits {
    pub(crate) fn from_settings(settings: &crate::config::Settings) -> Limits {
        Limits {
            header_read: Duration::from_millis(settings.header_read_timeout_ms),
            idle: Duration::from_millis(settings.idle_timeout_ms),
            max_connections: settings.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        }
    }
}

/// What a connection is waiting for when no request is in flight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The rest of a request's headers (a new connection, or a request that has begun).
    Headers,
    /// The first byte of the next request.
    NextRequest,
}

struct State {
    in_flight: usize,
    waiting: Waiting,
    since: Instant,
    evict: bool,
}

/// One connection's clock, shared by its I/O, its requests and its watcher.
struct Conn {
    state: Mutex<State>,
    wake: Notify,
    limits: Limits,
}

/// Why a connection was closed by the ingress.
#[derive(Clone, Copy)]
enum Closed {
    HeaderTimeout,
    Idle,
    Evicted,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
        }
    }
}

impl Conn {
    fn new(limits: Limits) -> Conn {
        Conn {
            state: Mutex::new(State {
                in_flight: 0,
                waiting: Waiting::Headers,
                since: Instant::now(),
                evict: false,
            }),
            wake: Notify::new(),
            limits,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("connection state lock")
    }

    fn read(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.waiting == Waiting::NextRequest {
            s.waiting = Waiting::Headers;
            s.since = Instant::now();
            self.wake.notify_one();
        }
    }

    fn wrote(&self) {
        let mut s = self.state();
        if s.in_flight == 0 && s.waiting == Waiting::NextRequest {
            s.since = Instant::now();
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.state().in_flight += 1;
        InFlight(self.clone())
    }

    /// Since when it has waited with no request in flight; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let s = self.state();
        (s.in_flight == 0).then_some(s.since)
    }

    fn evict(&self) {
        self.state().evict = true;
        self.wake.notify_one();
    }

    /// Completes when a bound says the connection must close.
    async fn expired(&self) -> Closed {
        loop {
            let deadline = {
                let s = self.state();
                if s.evict {
                    return Closed::Evicted;
                }
                (s.in_flight == 0).then(|| match s.waiting {
                    Waiting::Headers => (s.since + self.limits.header_read, Closed::HeaderTimeout),
                    Waiting::NextRequest => (s.since + self.limits.idle, Closed::Idle),
                })
            };
            let Some((at, why)) = deadline else {
                self.wake.notified().await;
                continue;
            };
            if at <= Instant::now() {
                return why;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// A request in flight on a connection; its end starts the idle clock.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.waiting = Waiting::NextRequest;
            s.since = Instant::now();
            self.0.wake.notify_one();
        }
    }
}

/// A connection's socket, telling its clock about the bytes that pass.
struct Watched {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connections held now, to pick one to close at the cap.
#[derive(Default)]
struct Held {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Held {
    fn add(&self, conn: Arc<Conn>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("lock").insert(id, conn);
        id
    }

    fn remove(&self, id: u64) -> usize {
        let mut conns = self.conns.lock().expect("lock");
        conns.remove(&id);
        conns.len()
    }

    fn len(&self) -> usize {
        self.conns.lock().expect("lock").len()
    }

    /// Tells the connection that has waited longest with no request in flight to close;
    /// `false` when every one has a request in flight.
    fn evict_longest_waiting(&self) -> bool {
        let conns = self.conns.lock().expect("lock");
        let oldest = conns
            .values()
            .filter_map(|c| Some((c.idle_since()?, c)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, c)) => {
                c.evict();
                true
            }
            None => false,
        }
    }
}

/// Serves `app` on `listener` within `limits` until told to stop, then finishes the requests in
/// flight, however long they take, and returns. Each connection holds a handle of a phase of
/// `shutdown` ([`crate::shutdown::Shutdown::phase`]), told to stop when accepting stops.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut shutdown: crate::shutdown::Shutdown,
) {
    metrics.describe(OPEN, "HTTP connections the ingress holds now");
    metrics.describe(
        CLOSED,
        "HTTP connections the ingress closed: headers too slow, idle too long, or closed at the connection cap for a new one",
    );
    metrics.set(OPEN, String::new(), 0.0);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let held = Arc::new(Held::default());
    let closing = shutdown.phase();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: the connections held go on; retry shortly.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                held.evict_longest_waiting();
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                    _ = shutdown.recv() => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn::new(limits));
        let id = held.add(conn.clone());
        metrics.set(OPEN, String::new(), held.len() as f64);
        let (app, held, metrics) = (app.clone(), held.clone(), metrics.clone());
        let mut told = closing.handle("http connection");
        tokio::spawn(async move {
            let _slot = slot;
            let io = TokioIo::new(Watched {
                io: stream,
                conn: conn.clone(),
            });
            let service = {
                let conn = conn.clone();
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    let in_flight = conn.begin();
                    request.extensions_mut().insert(ConnectInfo(remote));
                    let mut app = app.clone();
                    async move {
                        let response = app.call(request).await;
                        drop(in_flight);
                        response
                    }
                })
            };
            let served = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .serve_connection(io, service);
            tokio::pin!(served);
            let closed = tokio::select! {
                done = served.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, %remote, "connection ended");
                    }
                    None
                }
                why = conn.expired() => Some(why),
                _ = told.recv() => {
                    // Finish the request in hand, if any; an idle connection closes now.
                    served.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = served.as_mut() => None,
                        why = conn.expired() => Some(why),
                    }
                }
            };
            if let Some(why) = closed {
                tracing::debug!(%remote, reason = why.as_str(), "connection closed");
                metrics.inc(CLOSED, format!("reason=\"{}\"", why.as_str()));
            }
            let left = held.remove(id);
            metrics.set(OPEN, String::new(), left as f64);
        });
    }
    drop(listener);
    closing.finish(Duration::MAX).await;
}

/// Raises this process's soft limit of open files to its hard limit (a busy ingress holds a
/// descriptor per connection, and the usual soft limit is 1024). Returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_fd_limit_is_raised_to_the_hard_one() {
        let now = raise_fd_limit().expect("getrlimit");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert_eq!(now, limit.rlim_cur);
    }
}
