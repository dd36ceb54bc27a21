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
pub type RequestBody = http_body_util::Either<Paced<Incoming>, http_body_util::Empty<Bytes>>;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// A body, from the client or from a backend, paused longer than `timeouts.body`.
#[derive(Debug, thiserror::Error)]
#[error("the body stalled for {0:?}")]
pub struct Stalled(pub Duration);

impl Stalled {
    /// Whether `error` was caused, anywhere down its chain, by a stalled body.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut e = Some(error);
        while let Some(cause) = e {
            if cause.is::<Stalled>() {
                return true;
            }
            e = cause.source();
        }
        false
    }
}

pin_project_lite::pin_project! {
    /// A streamed body that fails with [`Stalled`] when no frame comes for `limit`. The timer
    /// is made only the first time the body has to wait, so a body that is already there when
    /// it is read (most are) costs no timer at all.
    pub struct Paced<B> {
        #[pin]
        inner: B,
        limit: Duration,
        stall: Option<Pin<Box<tokio::time::Sleep>>>,
        progressed: bool,
    }
}

impl<B> Paced<B> {
    pub fn new(inner: B, limit: Duration) -> Paced<B> {
        Paced {
            inner,
            limit,
            stall: None,
            progressed: false,
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.progressed = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = *this.limit;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if std::mem::take(this.progressed) {
                    // The clock restarts with each wait, not with each frame.
                    stall.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A backend's response body on its way to the client. When it has been read to the end
    /// the connection goes back to the pool; dropped before that, the connection is closed,
    /// since the rest of the response would still be on the wire.
    pub struct Returning {
        #[pin]
        inner: Paced<Incoming>,
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
        inner: Paced<Incoming>,
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
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(conn) = this.conn.take() {
                    this.pool.checkin(conn);
                }
                this.guard.take();
            }
            Poll::Ready(Some(Err(e))) => {
                // The rest of the response is lost: close the connection, cut the client's.
                if let Some(conn) = this.conn.take() {
                    tracing::warn!(addr = %conn.addr, error = %e, "response body cut off");
                }
                this.guard.take();
            }
            _ => {}
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
