//! Connections to backends: HTTP/1.1 keep-alive, with a list of idle connections per backend
//! (one [`Connections`] per worker thread).
//!
//! The protocol is spoken here rather than by hyper's client: [`codec`] has the bytes and
//! [`exchange`] drives one request on a connection from the request's own task, so a request
//! does not hop to a connection task and back through channels, and an idle connection holds
//! a socket and nothing else (hyper's kept two 8 KiB buffers and a request channel each, for
//! the connection's life). Connecting is separate from sending, so a connect failure can go to
//! the next backend with the request (and its body) untouched. Idle connections are kept
//! newest first (LIFO) so a light load keeps few sockets warm and the rest age out.
//!
//! An idle connection is looked at before it is taken and by the reaper ([`Link::look`]):
//! bytes that arrived on it (a backend that wrote past the end of its response, or after it)
//! answer no request, so it is closed and counted, never reused; one the backend closed is
//! dropped. The look costs a system call only when the runtime has seen the socket become
//! readable. As in HAProxy and nginx, bytes that land in the very turn of the runtime a
//! connection is taken are not seen before the request is written.

pub(super) mod codec;
mod exchange;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

pub(crate) use codec::BackendError;
use exchange::Look;
pub(crate) use exchange::{Answer, Failed, Link, Streaming};

/// Idle connections kept per backend and worker; more than this are closed when returned.
/// At 256, a burst of 1,000 concurrent clients churned a new upstream connection every ~40
/// requests; idle ones cost a socket each and age out after `timeouts.idle`.
const MAX_IDLE_PER_BACKEND: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct Idle {
    link: Link,
    since: Instant,
    wait: ResponseTimer,
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

/// A connection checked out of the idle list; a response body that reads it to the end gives
/// it back with [`Connections::checkin`], dropping it closes it.
pub(crate) struct Conn {
    pub(crate) addr: SocketAddr,
    pub(crate) link: Link,
    /// Taken from the idle list rather than opened for this request.
    pub(crate) reused: bool,
    /// Times the wait for each response on this connection: made once with the connection
    /// and moved lazily, so a request does not make and drop a timer of its own.
    pub(crate) wait: ResponseTimer,
}

/// A connection's timer for its responses (see [`super::wait_response`]).
pub(crate) type ResponseTimer = Pin<Box<tokio::time::Sleep>>;

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
        let limit = self.idle_timeout();
        while let Some(idle) = self.pop(addr) {
            if idle.since.elapsed() >= limit {
                continue;
            }
            match idle.link.look() {
                Look::Quiet => {
                    self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Conn {
                        addr,
                        link: idle.link,
                        reused: true,
                        wait: idle.wait,
                    });
                }
                Look::Spoiled => self.unexpected(addr),
                Look::Closed => {}
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
        Ok(Conn {
            addr,
            link: Link::new(stream),
            reused: false,
            wait: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    /// Bytes that answer no request arrived on a connection to `addr`: it was closed.
    pub(crate) fn unexpected(&self, addr: SocketAddr) {
        self.stats.unexpected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%addr, "bytes arrived on an idle backend connection; closed, never reused");
    }

    fn pop(&self, addr: SocketAddr) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&addr).and_then(Vec::pop)
    }

    /// Keeps `conn` for a later request, its response read to the end.
    pub(crate) fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(conn.addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                link: conn.link,
                since: Instant::now(),
                wait: conn.wait,
            });
        }
    }

    /// Closes connections idle longer than the idle timeout, closed by their backend, or that
    /// read bytes while idle, and forgets backends with none.
    pub(crate) fn reap(&self) {
        let mut spoiled = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let limit = self.idle_timeout();
            idle.retain(|addr, list| {
                list.retain(|i| match i.link.look() {
                    Look::Quiet => i.since.elapsed() < limit,
                    Look::Spoiled => {
                        spoiled.push(*addr);
                        false
                    }
                    Look::Closed => false,
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
