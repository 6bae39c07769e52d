//! The HTTP/1.1 listener under the embedded router and the admin endpoints: a deep backlog, a connection cap, a header-read timeout and size limit, and counts of what it refused.
//!
//! Both listeners face clients canaryd does not control, so neither may be held open by a
//! client that sends nothing, nor grow without bound on a huge request head:
//!
//! - the socket listens with a backlog of [`ListenerLimits::backlog`] (the kernel caps it at
//!   `net.core.somaxconn`), so a burst of connections waits in the queue rather than losing
//!   SYNs;
//! - past [`ListenerLimits::max_connections`] open connections a new one is closed at once
//!   (counted as `refused`), never left to stall;
//! - a client must send a whole request head within [`ListenerLimits::header_read_timeout`];
//!   hyper starts that clock whenever it waits for a head, so an idle keep-alive connection is
//!   closed after the same time (HAProxy's `timeout http-keep-alive` likewise defaults to its
//!   `timeout http-request`);
//! - a request head larger than [`ListenerLimits::max_header_bytes`] is answered 431 by hyper
//!   and the connection closed; a head that does not parse, 400.
//!
//! Only HTTP/1.1 (and 1.0) is spoken: a cleartext HTTP/2 preface is a malformed head.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::core::limits::{LimitError, ListenerLimits, Resolved, resolve};

/// What a listener saw happen to connections and requests it did not pass on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerEvent {
    /// A connection accepted and served.
    Accepted,
    /// A connection closed at once: the listener was at its connection cap.
    Refused,
    /// No whole request head within the header-read timeout (or an idle keep-alive ended).
    HeaderTimeout,
    /// A request head over the size limit (431).
    HeaderTooLarge,
    /// A request the listener will not serve: a malformed head, `CONNECT`, an absolute-form
    /// target for a host it does not serve (400).
    BadRequest,
    /// The client went away, or broke the connection, in the middle of a message.
    ClientAborted,
}

impl ListenerEvent {
    const ALL: [ListenerEvent; 6] = [
        ListenerEvent::Accepted,
        ListenerEvent::Refused,
        ListenerEvent::HeaderTimeout,
        ListenerEvent::HeaderTooLarge,
        ListenerEvent::BadRequest,
        ListenerEvent::ClientAborted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerEvent::Accepted => "accepted",
            ListenerEvent::Refused => "refused",
            ListenerEvent::HeaderTimeout => "header_timeout",
            ListenerEvent::HeaderTooLarge => "header_too_large",
            ListenerEvent::BadRequest => "bad_request",
            ListenerEvent::ClientAborted => "client_aborted",
        }
    }

    /// How a connection that ended with `e` ended.
    fn of(e: &hyper::Error) -> ListenerEvent {
        if e.is_timeout() {
            ListenerEvent::HeaderTimeout
        } else if e.is_parse_too_large() {
            ListenerEvent::HeaderTooLarge
        } else if e.is_parse() || e.is_parse_status() {
            ListenerEvent::BadRequest
        } else {
            // A message cut short, a reset while writing, and other I/O errors.
            ListenerEvent::ClientAborted
        }
    }
}

/// Counters of one listener, for `/metrics`.
#[derive(Default)]
pub struct ListenerStats {
    counts: [AtomicU64; ListenerEvent::ALL.len()],
    open: AtomicU64,
}

impl fmt::Debug for ListenerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerStats")
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl ListenerStats {
    pub fn count(&self, event: ListenerEvent) {
        self.counts[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many times `event` happened.
    pub fn get(&self, event: ListenerEvent) -> u64 {
        self.counts[event as usize].load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Appends `{family}_events_total{labels,event}` and `{family}_open_connections{labels}`.
    /// `labels` is empty or a list of `name="value"` pairs, already escaped.
    pub fn render(&self, family: &str, help: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {family}_events_total Connections and requests of the {help} listener that \
             were not passed on, by what happened (and those accepted)."
        );
        let _ = writeln!(out, "# TYPE {family}_events_total counter");
        for e in ListenerEvent::ALL {
            let _ = writeln!(
                out,
                "{family}_events_total{{{labels}{sep}event=\"{}\"}} {}",
                e.as_str(),
                self.get(e)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {family}_open_connections Connections open on the {help} listener."
        );
        let _ = writeln!(out, "# TYPE {family}_open_connections gauge");
        let _ = writeln!(out, "{family}_open_connections{{{labels}}} {}", self.open());
    }
}

/// Binds `addr` (`host:port`; the first address it resolves to) with `backlog`.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(backlog)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("`{addr}` resolves to no address"),
        )
    }))
}

/// Serves HTTP/1.1 on `listener` with `limits`, a service from `service(peer)` per
/// connection, until `shutdown`; then stops accepting and gives open connections `grace` to
/// finish. `name` is for logs.
pub async fn serve<F, S, B>(
    name: &str,
    listener: TcpListener,
    limits: ListenerLimits,
    stats: Arc<ListenerStats>,
    service: F,
    grace: Duration,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // hyper's read buffer must hold a whole head; 8 KiB is its floor.
        .max_buf_size(limits.max_header_bytes.max(8192) + 1024);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: the client sees a reset or EOF now, not a stall.
            stats.count(ListenerEvent::Refused);
            drop(stream);
            continue;
        };
        stats.count(ListenerEvent::Accepted);
        let _ = stream.set_nodelay(true);
        let svc = service(peer);
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let stats = stats.clone();
        let first_byte = limits.header_read_timeout;
        stats.open.fetch_add(1, Ordering::Relaxed);
        tracker.spawn(async move {
            // hyper gives each connection its read buffer at once; a connection that sends
            // nothing costs only its socket until its first byte (or the header timeout).
            let ready = tokio::select! {
                r = tokio::time::timeout(first_byte, stream.readable()) => r,
                () = shutdown.cancelled() => Ok(Ok(())),
            };
            if !matches!(ready, Ok(Ok(()))) {
                stats.count(ListenerEvent::HeaderTimeout);
                stats.open.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
                return;
            }
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(grace, conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                stats.count(ListenerEvent::of(&e));
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Raises this process's soft limit of open files to its hard limit, so that connections a
/// listener holds do not starve the others (and Git, and the routers' clients) of descriptors.
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
