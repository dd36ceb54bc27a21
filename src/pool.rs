//! The pool: what the prober publishes and everyone else reads.
//!
//! A [`Snapshot`] is immutable and replaced whole. Its [`Routing`] part (the routed backends
//! and the hash ring over them) is rebuilt only when the routed set changes; between such
//! changes successive snapshots share it through an `Arc`, so status-only updates (probe
//! latencies, counters) never rebuild the ring. The only things mutated in place are the
//! per-backend request counters, which are statistics, not membership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::balancer::{self, Ring};

/// What the proxy and the admin endpoints hold: the latest snapshot, and a way to wait for the
/// next one.
pub(crate) type Reader = watch::Receiver<Arc<Snapshot>>;

/// The prober's half: the only writer.
pub(crate) type Writer = watch::Sender<Arc<Snapshot>>;

pub(crate) fn new() -> (Writer, Reader) {
    watch::channel(Arc::new(Snapshot::default()))
}

/// Request counters are split in shards, one per worker thread (modulo), each on its own cache
/// line: two workers counting requests to one backend never write the same line.
const SHARDS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard {
    requests: AtomicU64,
    inflight: AtomicU64,
}

/// One backend as long as it stays a member; the same `Arc` is carried from snapshot to
/// snapshot so counters survive membership changes of others.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    counters: [Shard; SHARDS],
    /// Cancelled when the prober removes the backend from the pool (after `fall` failures).
    /// In-flight requests to it stop waiting: idempotent ones are retried elsewhere.
    gone: CancellationToken,
}

impl Backend {
    pub(crate) fn new(addr: SocketAddr) -> Backend {
        Backend {
            addr,
            counters: Default::default(),
            gone: CancellationToken::new(),
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.counters
            .iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn inflight(&self) -> u64 {
        self.counters
            .iter()
            .map(|s| s.inflight.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn gone(&self) -> &CancellationToken {
        &self.gone
    }
}

/// Counts one request in flight to `backends[index]` until dropped. Holds the worker's
/// [`Local`] handle rather than the backend, so holding it touches no reference count that
/// another core also writes.
#[derive(Debug)]
pub(crate) struct InflightGuard {
    local: Local,
    index: usize,
    shard: usize,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(b) = self.local.backends.get(self.index) {
            b.counters[self.shard]
                .inflight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One worker's handle on a published [`Routing`]: a reference count of its own around the
/// shared one. Cloning it per request writes only this worker's count, where cloning the
/// shared `Arc` would bounce its cache line between the cores on every request.
#[derive(Debug, Clone)]
// The extra allocation is the point: the outer count is this worker's alone.
#[allow(clippy::redundant_allocation)]
pub(crate) struct Local(Arc<Arc<Routing>>);

impl Local {
    pub(crate) fn new(shared: Arc<Routing>) -> Local {
        Local(Arc::new(shared))
    }

    /// The published routing this handle wraps.
    pub(crate) fn shared(&self) -> &Arc<Routing> {
        &self.0
    }

    /// Counts a request to `backends[index]` from worker `worker` until the guard drops.
    pub(crate) fn begin_request(&self, index: usize, worker: usize) -> InflightGuard {
        let shard = worker % SHARDS;
        if let Some(b) = self.backends.get(index) {
            b.counters[shard].requests.fetch_add(1, Ordering::Relaxed);
            b.counters[shard].inflight.fetch_add(1, Ordering::Relaxed);
        }
        InflightGuard {
            local: self.clone(),
            index,
            shard,
        }
    }
}

impl std::ops::Deref for Local {
    type Target = Routing;

    fn deref(&self) -> &Routing {
        &self.0
    }
}

/// The routed backends and the ring over them; `backends[i]` is ring owner `i`.
#[derive(Debug)]
pub(crate) struct Routing {
    pub(crate) backends: Vec<Arc<Backend>>,
    pub(crate) ring: Ring,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing::new(Vec::new())
    }
}

impl Routing {
    /// Builds the ring over `backends`, which the caller gives in address order (the ring
    /// itself does not depend on the order).
    pub(crate) fn new(backends: Vec<Arc<Backend>>) -> Routing {
        let ids: Vec<u64> = backends
            .iter()
            .map(|b| balancer::backend_hash(b.addr.to_string().as_bytes()))
            .collect();
        Routing {
            ring: Ring::new(&ids),
            backends,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Answered, but fewer than `rise` times in a row; not routed yet.
    Joining,
    /// Routed.
    Healthy,
    /// Failing, fewer than `fall` times in a row so far. Still routed unless a real request
    /// could not connect to it (`routed: false`).
    Leaving,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Joining => "joining",
            State::Healthy => "healthy",
            State::Leaving => "leaving",
        }
    }
}

/// A member's status as the admin endpoint shows it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) backend: Arc<Backend>,
    pub(crate) state: State,
    pub(crate) routed: bool,
    /// When it entered `state`.
    pub(crate) since: SystemTime,
    pub(crate) last_check: Option<Duration>,
    pub(crate) consecutive_ok: u32,
    pub(crate) consecutive_fail: u32,
    pub(crate) last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Departure {
    pub(crate) addr: SocketAddr,
    pub(crate) at: SystemTime,
    pub(crate) reason: String,
}

#[derive(Debug, Clone)]
pub(crate) struct SweepReport {
    /// Addresses covered by the round: the ranges less exclusions. Members are covered by their
    /// own checks rather than probed again.
    pub(crate) addresses: u64,
    /// Addresses that answered: new ones the round found, plus the members it passed over.
    pub(crate) found: u64,
    pub(crate) duration: Duration,
    pub(crate) finished: SystemTime,
}

#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) routing: Arc<Routing>,
    /// Every member, joining, healthy or leaving, in address order.
    pub(crate) members: Vec<Member>,
    /// Newest first.
    pub(crate) recently_left: Vec<Departure>,
    pub(crate) last_sweep: Option<SweepReport>,
}

impl Snapshot {
    pub(crate) fn healthy(&self) -> usize {
        self.routing.backends.len()
    }
}

/// What the proxy tells the prober about real traffic.
#[derive(Debug)]
pub(crate) enum Report {
    /// A real request could not connect: take the backend out of routing now; the prober
    /// confirms with its own checks.
    ConnectFailed { addr: SocketAddr, reason: String },
}

/// Bounded so that a storm of failures cannot grow memory; a report that does not fit is
/// dropped, since the first one for a backend already took it out of routing.
pub(crate) fn reports() -> (mpsc::Sender<Report>, mpsc::Receiver<Report>) {
    mpsc::channel(1024)
}

/// Marks a backend gone when the prober drops it.
pub(crate) fn retire(backend: &Backend) {
    backend.gone.cancel();
}
