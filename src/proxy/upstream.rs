//! Connections to backends: HTTP/1.1 keep-alive, with a list of idle connections per backend
//! (one [`Connections`] per worker thread).
//!
//! Written on hyper's low-level client rather than hyper-util's pooled `Client` because the
//! proxy must know *where* a request failed: connecting is separate from sending here, so a
//! connect failure can go to the next backend with the request (and its body) untouched,
//! which the pooled client cannot promise. Idle connections are kept newest first (LIFO) so a
//! light load keeps few sockets warm and the rest age out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;

/// Idle connections kept per backend and worker; more than this are closed when returned.
/// At 256, a burst of 1,000 concurrent clients churned a new upstream connection every ~40
/// requests; idle ones cost a few KiB each and age out after `timeouts.idle`.
const MAX_IDLE_PER_BACKEND: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

struct Idle {
    conn: SendRequest<RequestBody>,
    since: Instant,
}

/// Counters for `/_lb/health` and the benchmarks: how many requests found a warm connection.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connects: AtomicU64,
    pub(crate) reused: AtomicU64,
}

pub(crate) struct Connections {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pub(crate) stats: Stats,
}

/// A connection checked out of the idle list; give it back with [`Connections::checkin`] once the response
/// is complete, or drop it to close it.
pub(crate) struct Conn {
    pub(crate) addr: SocketAddr,
    pub(crate) send: SendRequest<RequestBody>,
    /// Taken from the idle list rather than opened for this request.
    pub(crate) reused: bool,
}

impl Connections {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Connections {
        Connections {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            stats: Stats::default(),
        }
    }

    /// A ready connection to `addr`: a warm one if any, else a new one.
    pub(crate) async fn checkout(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        while let Some(mut idle) = self.pop(addr) {
            if idle.since.elapsed() >= self.idle_timeout || idle.conn.is_closed() {
                continue;
            }
            // Ready at once unless the previous response is still being wound down.
            if idle.conn.ready().await.is_ok() {
                self.stats.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Conn {
                    addr,
                    send: idle.conn,
                    reused: true,
                });
            }
        }
        self.connect(addr).await
    }

    /// Always a new connection (for a retry after a warm connection failed mid-request).
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(s) => s?,
                Err(_) => return Err(ConnectError::Timeout(self.connect_timeout)),
            };
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        // The connection task ends when its `SendRequest` is dropped or the peer closes, or
        // hands the socket over when the backend switches protocols (a WebSocket, say).
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(Conn {
            addr,
            send,
            reused: false,
        })
    }

    fn pop(&self, addr: SocketAddr) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&addr).and_then(Vec::pop)
    }

    pub(crate) fn checkin(&self, conn: Conn) {
        if conn.send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(conn.addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                conn: conn.send,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle longer than the idle timeout, and forgets backends with none.
    pub(crate) fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.idle_timeout;
        idle.retain(|_, list| {
            list.retain(|i| i.since.elapsed() < limit && !i.conn.is_closed());
            !list.is_empty()
        });
    }

    pub(crate) fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}
