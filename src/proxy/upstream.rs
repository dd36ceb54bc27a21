//! Connections to backends: HTTP/1.1 keep-alive, with a list of idle connections per backend
//! (one [`Connections`] per worker thread).
//!
//! Written on hyper's low-level client rather than hyper-util's pooled `Client` because the
//! proxy must know *where* a request failed: connecting is separate from sending here, so a
//! connect failure can go to the next backend with the request (and its body) untouched,
//! which the pooled client cannot promise. Idle connections are kept newest first (LIFO) so a
//! light load keeps few sockets warm and the rest age out.
//!
//! Every socket counts the bytes it reads. A connection that read anything while it sat idle
//! (a backend that wrote past the end of its response, or after it) is closed at its next
//! checkout and counted, never reused: what arrived belongs to no request. And a request whose
//! warm connection closed before any byte of its response arrived can be told from one the
//! backend answered, for the retry rule.
//!
//! An idle connection's task keeps reading (hyper watches an idle connection for its close),
//! so bytes that arrive on it are read, and counted, as soon as the runtime hears of them. As
//! in HAProxy and nginx, that is the only look: bytes that land in the very turn of the
//! runtime a connection is taken are not seen before the request is written. (A `MSG_PEEK` at
//! every checkout closed that window but cost one system call per request, a fifth of them.)

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    read: Arc<AtomicU64>,
    /// What `read` said when the connection went idle.
    read_then: u64,
    wait: ResponseTimer,
}

impl Idle {
    /// Bytes arrived while it was idle, and the connection's task read them (`read` moved):
    /// they answer no request. An end of stream is not counted, it only closes.
    fn spoiled(&self) -> bool {
        self.read.load(Ordering::Relaxed) != self.read_then
    }
}

/// Counters for `/_lb/health` and the benchmarks: how many requests found a warm connection.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connects: AtomicU64,
    pub(crate) reused: AtomicU64,
    /// Idle connections closed because bytes arrived on them.
    pub(crate) unexpected: AtomicU64,
}

pub(crate) struct Connections {
    /// Keyed by the pool's own backend addresses, never a client's input, so a fast hash
    /// (FxHash) rather than SipHash, which took ~200 instructions a request here.
    idle: Mutex<FxHashMap<SocketAddr, Vec<Idle>>>,
    /// `timeouts.connect` and `timeouts.idle` in nanoseconds: atomics, since a reload replaces
    /// them while connections are made.
    connect_timeout: AtomicU64,
    idle_timeout: AtomicU64,
    pub(crate) stats: Stats,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A connection checked out of the idle list; give it back with [`Connections::checkin`] once the response
/// is complete, or drop it to close it.
pub(crate) struct Conn {
    pub(crate) addr: SocketAddr,
    pub(crate) send: SendRequest<RequestBody>,
    /// Taken from the idle list rather than opened for this request.
    pub(crate) reused: bool,
    read: Arc<AtomicU64>,
    /// Times the wait for each response on this connection: made once with the connection
    /// and moved lazily, so a request does not make and drop a timer of its own.
    pub(crate) wait: ResponseTimer,
}

/// A connection's timer for its responses (see [`super::wait_response`]).
pub(crate) type ResponseTimer = Pin<Box<tokio::time::Sleep>>;

impl Conn {
    /// Bytes read from the backend on this connection so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl Connections {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Connections {
        Connections {
            idle: Mutex::new(FxHashMap::default()),
            connect_timeout: AtomicU64::new(nanos(connect_timeout)),
            idle_timeout: AtomicU64::new(nanos(idle_timeout)),
            stats: Stats::default(),
        }
    }

    /// From now on: new connections wait `connect`, idle ones are kept `idle`.
    pub(crate) fn set_timeouts(&self, connect: Duration, idle: Duration) {
        self.connect_timeout
            .store(nanos(connect), Ordering::Relaxed);
        self.idle_timeout.store(nanos(idle), Ordering::Relaxed);
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_timeout.load(Ordering::Relaxed))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout.load(Ordering::Relaxed))
    }

    /// A ready connection to `addr`: a warm one if any, else a new one.
    pub(crate) async fn checkout(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        while let Some(mut idle) = self.pop(addr) {
            if idle.spoiled() {
                self.unexpected(addr);
                continue;
            }
            if idle.since.elapsed() >= self.idle_timeout() || idle.conn.is_closed() {
                continue;
            }
            // Ready at once unless the previous response is still being wound down.
            if idle.conn.ready().await.is_ok() {
                self.stats.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Conn {
                    addr,
                    send: idle.conn,
                    reused: true,
                    read: idle.read,
                    wait: idle.wait,
                });
            }
        }
        self.connect(addr).await
    }

    /// Always a new connection (for a retry after a warm connection failed mid-request).
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let timeout = self.connect_timeout();
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(s) => s?,
            Err(_) => return Err(ConnectError::Timeout(timeout)),
        };
        stream.set_nodelay(true)?;
        let read = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            stream,
            read: Arc::clone(&read),
        };
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(counted))
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
            read,
            wait: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    fn unexpected(&self, addr: SocketAddr) {
        self.stats.unexpected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%addr, "bytes arrived on an idle backend connection; closed, never reused");
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
                read_then: conn.read.load(Ordering::Relaxed),
                read: conn.read,
                wait: conn.wait,
            });
        }
    }

    /// Closes connections idle longer than the idle timeout, or that read bytes while idle,
    /// and forgets backends with none.
    pub(crate) fn reap(&self) {
        let mut spoiled = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let limit = self.idle_timeout();
            idle.retain(|addr, list| {
                list.retain(|i| {
                    if i.spoiled() {
                        spoiled.push(*addr);
                        return false;
                    }
                    i.since.elapsed() < limit && !i.conn.is_closed()
                });
                !list.is_empty()
            });
        }
        for addr in spoiled {
            self.unexpected(addr);
        }
    }

    pub(crate) fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

pin_project_lite::pin_project! {
    /// A backend connection's socket, counting the bytes read from it.
    struct Counted {
        #[pin]
        stream: TcpStream,
        read: Arc<AtomicU64>,
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.stream.poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}
