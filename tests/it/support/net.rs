//! Loopback networking for tests and benchmarks: a free port, a server that never answers, a
//! relay that keeps what each connection asks, a small axum app served until dropped, and a
//! plain HTTP GET that needs no runtime.

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
    let auth: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    http_get_with(addr, path, &auth)
}

/// [`http_get`] with these request headers.
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .ok()?;
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

/// A TCP relay on 127.0.0.1 in front of `upstream` that keeps the first line each connection
/// sends, so that a test sees how many connections a client made and what each asked (one
/// command a connection, as HAProxy's runtime API takes them); it stops relaying when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let (listener, addr) = listener().await;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut client = tokio::io::BufReader::new(client);
                    let mut line = String::new();
                    if client.read_line(&mut line).await.is_err() {
                        return;
                    }
                    if let Ok(mut kept) = kept.lock() {
                        kept.push(line.trim_end().to_string());
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    // The line, and whatever the client sent after it that was read with it.
                    let sent = [line.as_bytes(), client.buffer()].concat();
                    if server.write_all(&sent).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(client.get_mut(), &mut server).await;
                    }
                });
            }
        });
        Relay { addr, lines, task }
    }

    /// The first line of each connection so far, in the order they were read.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("the relayed lines").clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
