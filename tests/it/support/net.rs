//! Loopback networking for tests and benchmarks: a free port, a server that never answers, a
//! small axum app served until dropped, and a plain HTTP GET that needs no runtime.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// A port nothing listens on right now on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// `127.0.0.1:<a free port>`: where a connection is refused.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A loopback listener bound now, on a port the system picks.
pub async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("a bound listener's address");
    (listener, addr)
}

/// `GET path` over HTTP/1.0 (so that no body is chunked), with std only (it works outside a
/// runtime): status and body, or `None` when nothing answered within a few seconds.
pub fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Serves `app` on a loopback port until the guard is dropped.
pub async fn serve(app: axum::Router) -> (SocketAddr, DropGuard) {
    let (listener, addr) = listener().await;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await;
        served.expect("a test server stopped on its own");
    });
    (addr, stop.drop_guard())
}

/// A server on 127.0.0.1 that accepts connections and never reads or answers them, as a hung
/// process behind a live socket does; it closes them all when dropped.
pub struct Silent {
    pub addr: SocketAddr,
    first: Arc<Mutex<Option<DateTime<Utc>>>>,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let (listener, addr) = listener().await;
        let first = Arc::new(Mutex::new(None));
        let seen = first.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                if let Ok(mut first) = seen.lock() {
                    first.get_or_insert_with(Utc::now);
                }
                held.push(socket);
            }
        });
        Silent { addr, first, task }
    }

    /// When the first connection came, if one has.
    pub fn first_connection(&self) -> Option<DateTime<Utc>> {
        *self.first.lock().expect("the first connection's time")
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}
