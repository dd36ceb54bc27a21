//! Connections to backends: HTTP/1.1 keep-alive with a pool of idle connections per backend.
//!
//! Written on hyper's low-level client rather than hyper-util's pooled `Client` because the
//! proxy must know *where* a request failed: connecting is separate from sending here, so a
//! connect failure can go to the next backend with the request (and its body) untouched,
//! which the pooled client cannot promise. Idle connections are kept newest first (LIFO) so a
//! light load keeps few sockets warm and the rest age out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The body sent upstream: the client's streamed body, or nothing (for a retried request).
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Empty<Bytes>>;

/// Idle connections kept per backend and worker; more than this are closed when returned.
/// At 256, a burst of 1,000 concurrent clients churned a new upstream connection every ~40
/// requests; idle ones cost a few KiB each and age out after `timeouts.idle`.
const MAX_IDLE_PER_BACKEND: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
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
pub struct Stats {
    pub connects: AtomicU64,
    pub reused: AtomicU64,
}

pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pub stats: Stats,
}

/// A connection checked out of the pool; give it back with [`Pool::checkin`] once the response
/// is complete, or drop it to close it.
pub struct Conn {
    pub addr: SocketAddr,
    pub send: SendRequest<RequestBody>,
    pub reused: bool,
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            stats: Stats::default(),
        }
    }

    /// A ready connection to `addr`: a warm one if any, else a new one.
    pub async fn checkout(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
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
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
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
        // The connection task ends when its `SendRequest` is dropped or the peer closes.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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

    pub fn checkin(&self, conn: Conn) {
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
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.idle_timeout;
        idle.retain(|_, list| {
            list.retain(|i| i.since.elapsed() < limit && !i.conn.is_closed());
            !list.is_empty()
        });
    }

    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

pin_project_lite::pin_project! {
    /// A backend's response body on its way to the client. When it has been read to the end
    /// the connection goes back to the pool; dropped before that, the connection is closed,
    /// since the rest of the response would still be on the wire.
    pub struct Returning {
        #[pin]
        inner: Incoming,
        conn: Option<Conn>,
        pool: Arc<Pool>,
        guard: Option<crate::pool::InflightGuard>,
    }

    impl PinnedDrop for Returning {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(conn) = this.conn.take() {
                if this.inner.is_end_stream() {
                    this.pool.checkin(conn);
                }
            }
        }
    }
}

impl Returning {
    pub fn new(
        inner: Incoming,
        conn: Conn,
        pool: Arc<Pool>,
        guard: crate::pool::InflightGuard,
    ) -> Returning {
        Returning {
            inner,
            conn: Some(conn),
            pool,
            guard: Some(guard),
        }
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(conn) = this.conn.take() {
                this.pool.checkin(conn);
            }
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
