//! The pool: what the prober publishes and everyone else reads.
//!
//! A [`Snapshot`] is immutable and replaced whole. Its [`Routing`] part (the members that take
//! requests, the hash ring over those that take new users, and where each known pin leads) is
//! rebuilt only when one of those changes; between such changes successive snapshots share it
//! through an `Arc`, so status-only updates (probe latencies, counters) never rebuild it. The
//! only things mutated in place are the per-backend request and session counters, which are
//! statistics, not membership.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::balancer::{self, Lookup, Moved, PinKey, Ring};

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
    responses: Responses,
}

/// One backend as long as it stays a member; the same `Arc` is carried from snapshot to
/// snapshot so counters survive membership changes of others.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    /// The instance its health answer names (`x-sweeplb-instance`), if it names one.
    pub(crate) instance: Option<String>,
    /// The pin of its identity (address and instance), as cookies carry it.
    pub(crate) pin: u64,
    counters: [Shard; SHARDS],
    /// Users seen within `balance.session_idle` whose pin names it, as last tallied.
    sessions: AtomicU64,
    /// New users assigned to it since the last tally began.
    assigned: AtomicU64,
    /// Protocol-switch tunnels (WebSockets, say) open to it: each also counts in flight.
    tunnels: AtomicU64,
    /// Cancelled when the prober removes the backend from the pool (after `fall` failures).
    /// In-flight requests to it stop waiting: idempotent ones are retried elsewhere.
    gone: CancellationToken,
}

impl Backend {
    pub(crate) fn new(addr: SocketAddr, instance: Option<String>, pins: &PinKey) -> Backend {
        let identity = match &instance {
            Some(i) => format!("{addr}/{i}"),
            None => addr.to_string(),
        };
        Backend {
            pin: pins.pin(identity.as_bytes()),
            addr,
            instance,
            counters: Default::default(),
            sessions: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            tunnels: AtomicU64::new(0),
            gone: CancellationToken::new(),
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.counters
            .iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// Its responses by status class and duration, over every worker.
    pub(crate) fn responses(&self) -> ResponseCounts {
        let mut sum = ResponseCounts::default();
        for s in &self.counters {
            s.responses.add_to(&mut sum);
        }
        sum
    }

    pub(crate) fn inflight(&self) -> u64 {
        self.counters
            .iter()
            .map(|s| s.inflight.load(Ordering::Relaxed))
            .sum()
    }

    /// Its active sessions: the last tally and the new users assigned since it began (a user
    /// assigned while it ran may count twice until the next one: the cautious side).
    pub(crate) fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed) + self.assigned.load(Ordering::Relaxed)
    }

    /// A tally of its sessions begins: new users count apart from it from now on.
    pub(crate) fn start_tally(&self) {
        self.assigned.store(0, Ordering::Relaxed);
    }

    /// The tally of its active sessions.
    pub(crate) fn set_sessions(&self, n: u64) {
        self.sessions.store(n, Ordering::Relaxed);
    }

    /// A new user was assigned to it: counted at once, so that a burst of new users is
    /// bounded before the next tally.
    pub(crate) fn add_session(&self) {
        self.assigned.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn gone(&self) -> &CancellationToken {
        &self.gone
    }

    /// Tunnels open to it now.
    pub(crate) fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
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
    /// The status handed to the client and when the request arrived: counted as the guard
    /// drops, which is when the response body has ended (or been cut off).
    answered: Option<(u16, Instant)>,
    /// It counts as a tunnel of the backend.
    tunnel: bool,
}

impl InflightGuard {
    /// The backend's response with `status` goes to the client for a request that arrived at
    /// `arrived`; it is counted when the guard drops.
    pub(crate) fn answered(&mut self, status: u16, arrived: Instant) {
        self.answered = Some((status, arrived));
    }

    /// The request became a tunnel: counted as one (besides in flight) until the guard drops,
    /// so that autoscaling never stops a backend a tunnel is open to and does not take a
    /// tunnel for load.
    pub(crate) fn tunnel(&mut self) {
        if !self.tunnel {
            if let Some(b) = self.local.backends.get(self.index) {
                b.tunnels.fetch_add(1, Ordering::Relaxed);
                self.tunnel = true;
            }
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if let Some(b) = self.local.backends.get(self.index) {
            let shard = &b.counters[self.shard];
            shard.inflight.fetch_sub(1, Ordering::Relaxed);
            if self.tunnel {
                b.tunnels.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some((status, arrived)) = self.answered {
                shard.responses.record(status, arrived.elapsed());
            }
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
            answered: None,
            tunnel: false,
        }
    }

    /// Counts a response of `backends[index]` that took `took`, from worker `worker`, at once:
    /// for a protocol switch, whose tunnel may then last for hours.
    pub(crate) fn answered_now(&self, index: usize, worker: usize, status: u16, took: Duration) {
        if let Some(b) = self.backends.get(index) {
            b.counters[worker % SHARDS].responses.record(status, took);
        }
    }
}

impl std::ops::Deref for Local {
    type Target = Routing;

    fn deref(&self) -> &Routing {
        &self.0
    }
}

/// Upper bounds of the request-duration buckets, in microseconds: 1 ms to 10 s, the span of
/// web requests; the slowest go past the last bound (`+Inf`). Fixed, so that a bucket is an
/// index and counting is one compare walk and one add.
pub(crate) const DURATION_BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Response status classes counted: 1xx to 5xx.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses by status class and duration, as one worker counts them. Summed over workers
/// when someone reads them ([`ResponseCounts`]), never on the request path.
#[derive(Debug, Default)]
pub(crate) struct Responses {
    classes: [AtomicU64; STATUS_CLASSES.len()],
    /// By [`bucket`]; the last one past every bound.
    buckets: [AtomicU64; DURATION_BOUNDS_US.len() + 1],
    /// Microseconds: a u64 of them holds 584,000 years of request time.
    sum_us: AtomicU64,
}

/// [`Responses`] summed over workers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResponseCounts {
    pub(crate) classes: [u64; STATUS_CLASSES.len()],
    /// Not cumulative: `buckets[i]` counts durations in (bound i-1, bound i].
    pub(crate) buckets: [u64; DURATION_BOUNDS_US.len() + 1],
    pub(crate) sum_us: u64,
}

impl Responses {
    pub(crate) fn record(&self, status: u16, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.classes[status_class(status)].fetch_add(1, Ordering::Relaxed);
        self.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn add_to(&self, sum: &mut ResponseCounts) {
        for (s, c) in sum.classes.iter_mut().zip(&self.classes) {
            *s += c.load(Ordering::Relaxed);
        }
        for (s, b) in sum.buckets.iter_mut().zip(&self.buckets) {
            *s += b.load(Ordering::Relaxed);
        }
        sum.sum_us = sum.sum_us.wrapping_add(self.sum_us.load(Ordering::Relaxed));
    }
}

/// The index in [`STATUS_CLASSES`] of `status`. hyper lets a backend send 600 to 999: those
/// count as 5xx, a broken answer, so the classes stay five.
pub(crate) fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1
}

/// The bucket of a duration of `us` microseconds: the first bound it does not exceed (a
/// Prometheus bucket is `le`, less or equal), or the last bucket past every bound.
pub(crate) fn bucket(us: u64) -> usize {
    DURATION_BOUNDS_US.partition_point(|&bound| bound < us)
}

/// Pins are already hashes: they index a map as they are.
pub(crate) type PinMap<V> = HashMap<u64, V, BuildHasherDefault<nohash_hasher::NoHashHasher<u64>>>;

/// What requests are routed by: the members that take requests, the ring over those that take
/// new users, and where each known pin leads.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    /// The ring's members first (`backends[i]` is ring owner `i`), then the draining members,
    /// which keep their pinned users but take no new ones.
    pub(crate) backends: Vec<Arc<Backend>>,
    /// Over `backends[..ring.len()]`; shared with the routing before when they are the same.
    pub(crate) ring: Arc<Ring>,
    pins: PinMap<Lookup>,
    /// The prober has had time to find every backend that answered its first sweep: an unknown
    /// pin is stale, not merely early.
    settled: bool,
}

impl Routing {
    /// The routing over `ring` members (in address order), `draining` members, and the pins
    /// of backends whose users must leave them. `previous` is reused for the ring when it has
    /// the same members, since a ring takes milliseconds to build.
    pub(crate) fn new(
        ring: Vec<Arc<Backend>>,
        draining: Vec<Arc<Backend>>,
        joining: &[u64],
        gone: &[(u64, Moved)],
        settled: bool,
        previous: &Routing,
    ) -> Routing {
        let same = ring.len() == previous.ring.len()
            && ring
                .iter()
                .zip(&previous.backends)
                .all(|(a, b)| a.addr == b.addr);
        let ring_built = if same {
            Arc::clone(&previous.ring)
        } else {
            let ids: Vec<u64> = ring
                .iter()
                .map(|b| balancer::backend_hash(b.addr.to_string().as_bytes()))
                .collect();
            Arc::new(Ring::new(&ids))
        };
        let mut pins = PinMap::default();
        for (pin, why) in gone {
            pins.insert(*pin, Lookup::Gone(*why));
        }
        for pin in joining {
            pins.insert(*pin, Lookup::Pending);
        }
        let in_ring = ring.len();
        let backends: Vec<Arc<Backend>> = ring.into_iter().chain(draining).collect();
        for (index, b) in backends.iter().enumerate() {
            let lookup = if index < in_ring {
                Lookup::Member(index)
            } else {
                Lookup::Draining(index)
            };
            pins.insert(b.pin, lookup);
        }
        Routing {
            backends,
            ring: ring_built,
            pins,
            settled,
        }
    }

    /// Where `pin` leads.
    pub(crate) fn lookup(&self, pin: u64) -> Lookup {
        match self.pins.get(&pin) {
            Some(found) => *found,
            None if self.settled => Lookup::Unknown,
            None => Lookup::Pending,
        }
    }

    /// Whether the prober has had time to find what its first sweep found.
    pub(crate) fn settled(&self) -> bool {
        self.settled
    }

    /// Whether this routing sends requests the way `other` does.
    pub(crate) fn same_as(&self, other: &Routing) -> bool {
        self.ring.len() == other.ring.len()
            && self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.pins == other.pins
            && self.settled == other.settled
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Answered, but fewer than `rise` times in a row; not routed yet.
    Joining,
    /// Routed.
    Healthy,
    /// Routed for its pinned users only: its health answer carries `x-sweeplb-drain`.
    Draining,
    /// Failing, fewer than `fall` times in a row so far. Still routed unless a real request
    /// could not connect to it (`routed: false`).
    Leaving,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Joining => "joining",
            State::Healthy => "healthy",
            State::Draining => "draining",
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
    /// The backend it was, with its final counts: the metrics export it for a while, even if
    /// it joined and left between two scrapes. `None` if it left before it was a member.
    pub(crate) backend: Option<Arc<Backend>>,
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
    /// Members that take new users.
    pub(crate) fn healthy(&self) -> usize {
        self.routing.ring.len()
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

/// Requests held while no backend is routed, waiting for one that autoscaling starts (a cold
/// start). The proxy holds and counts them; the autoscaler reads the count, is woken by the
/// first, and says whether holding makes sense at all (an engine reached, room to start one).
/// Off the request path: touched only when the pool has no routed backend.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    held: AtomicU64,
    /// Requests held at most at once; 0 while holding is off.
    limit: AtomicU64,
    /// How long one is held, in nanoseconds.
    hold: AtomicU64,
    /// The autoscaler can start a backend now: without it a request is not held, since
    /// nothing would come.
    can_start: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

/// One held request, counted until dropped.
#[derive(Debug)]
pub(crate) struct Held<'a>(&'a Waiting);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Waiting {
    /// Holding on: at most `limit` requests, each for at most `hold`.
    pub(crate) fn configure(&self, limit: usize, hold: Duration) {
        let limit = if hold.is_zero() { 0 } else { limit as u64 };
        self.limit.store(limit, Ordering::Relaxed);
        let nanos = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
        self.hold.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn set_can_start(&self, can: bool) {
        self.can_start.store(can, Ordering::Relaxed);
    }

    /// Holds one more request, if holding is on, the autoscaler can start a backend and the
    /// limit is not reached; wakes the autoscaler. `None`: answer as without autoscaling.
    pub(crate) fn hold(&self) -> Option<(Held<'_>, Duration)> {
        if !self.can_start.load(Ordering::Relaxed) {
            return None;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let taken = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            });
        taken.ok()?;
        self.wake.notify_one();
        let hold = Duration::from_nanos(self.hold.load(Ordering::Relaxed));
        Some((Held(self), hold))
    }

    /// Requests held right now.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Resolves when a request is held (or was since the last call).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// Marks a backend gone when the prober drops it.
pub(crate) fn retire(backend: &Backend) {
    backend.gone.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_counts_until_its_guard_drops() {
        let addr = std::net::SocketAddr::from(([127, 77, 0, 10], 3000));
        let b = Arc::new(Backend::new(addr, None, &PinKey::new(None)));
        let routing = Routing::new(
            vec![Arc::clone(&b)],
            Vec::new(),
            &[],
            &[],
            true,
            &Routing::default(),
        );
        let local = Local::new(Arc::new(routing));
        let mut guard = local.begin_request(0, 0);
        let plain = local.begin_request(0, 1);
        assert_eq!((b.inflight(), b.tunnels()), (2, 0));
        guard.tunnel();
        guard.tunnel();
        assert_eq!((b.inflight(), b.tunnels()), (2, 1), "counted once");
        drop(plain);
        assert_eq!((b.inflight(), b.tunnels()), (1, 1));
        drop(guard);
        assert_eq!((b.inflight(), b.tunnels()), (0, 0));
    }

    #[test]
    fn status_classes() {
        for (status, class) in [
            (100, "1xx"),
            (101, "1xx"),
            (200, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (431, "4xx"),
            (503, "5xx"),
            (599, "5xx"),
            (600, "5xx"),
            (999, "5xx"),
            (0, "1xx"),
        ] {
            assert_eq!(STATUS_CLASSES[status_class(status)], class, "{status}");
        }
    }

    #[test]
    fn duration_buckets_are_less_or_equal() {
        for (us, want) in [
            (0, 0),
            (999, 0),
            (1_000, 0),
            (1_001, 1),
            (2_500, 1),
            (9_999, 3),
            (10_000_000, 12),
            (10_000_001, 13),
            (u64::MAX, 13),
        ] {
            assert_eq!(bucket(us), want, "{us} µs");
        }
    }

    #[test]
    fn responses_sum_over_workers() {
        let (a, b) = (Responses::default(), Responses::default());
        a.record(200, Duration::from_millis(3));
        b.record(502, Duration::from_secs(20));
        b.record(204, Duration::from_micros(10));
        let mut sum = ResponseCounts::default();
        a.add_to(&mut sum);
        b.add_to(&mut sum);
        assert_eq!(sum.classes, [0, 2, 0, 0, 1]);
        assert_eq!(sum.buckets[0], 1);
        assert_eq!(sum.buckets[2], 1);
        assert_eq!(sum.buckets[13], 1);
        assert_eq!(sum.sum_us, 20_003_010);
    }
}
