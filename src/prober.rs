//! The prober: sweeps the configured ranges for an HTTP health endpoint, re-checks members,
//! applies the rise/fall hysteresis, and publishes the pool. It is the pool's only writer.
//!
//! Two cadences share one bound on probes in flight (`concurrency`):
//! members are re-checked every `check_interval`; every other address of the ranges is probed
//! once per `sweep_interval`, in a random order fixed at start-up and paced over the first half
//! of the interval. A fixed order means each address is probed exactly once per interval (so a
//! new backend is found within one `sweep_interval`) while probes are spread out rather than
//! sent in one burst. Addresses are computed from their position, never listed, so memory
//! grows with the number of responders, not with the size of the ranges.
//!
//! Probe results are observations, not errors: they are logged at debug, and only state
//! transitions at info or warn.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Discovery, PROBE_BODY_LIMIT};
use crate::pool::{
    self, Backend, Departure, Member, Report, Routing, Snapshot, State, SweepReport,
};

/// Sent with every probe. A sweeplb that receives it answers for itself instead of forwarding,
/// with [`BALANCER_HEADER`], so that balancers never add each other (or themselves) as backends.
pub const PROBE_HEADER: &str = "x-sweeplb-probe";
pub const BALANCER_HEADER: &str = "x-sweeplb-balancer";
pub const USER_AGENT: &str = concat!("sweeplb/", env!("CARGO_PKG_VERSION"), " (health probe)");

/// How many departures `/_lb/health` remembers.
const RECENTLY_LEFT: usize = 16;

/// Status-only changes (latencies, counters) are published at most this often; routing changes
/// are published at once.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How often the sweep pacer wakes while a round is being launched.
const PACE_TICK: Duration = Duration::from_millis(5);

/// Why a probe did not count as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Refused,
    Timeout,
    Unreachable(String),
    Status(u16),
    BodyMismatch,
    Http(String),
    /// The address is a sweeplb balancer (possibly this one), not a backend.
    Balancer,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::BodyMismatch => f.write_str("body mismatch"),
            Failure::Http(e) => write!(f, "bad response: {e}"),
            Failure::Balancer => f.write_str("a sweeplb balancer, not a backend"),
        }
    }
}

/// One health check: a fresh connection, `GET health_path`, bounded by `timeout` as a whole.
pub async fn probe(addr: SocketAddr, d: &Discovery) -> Result<(), Failure> {
    match tokio::time::timeout(d.timeout, probe_once(addr, d)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

async fn probe_once(addr: SocketAddr, d: &Discovery) -> Result<(), Failure> {
    let stream = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        _ => Failure::Unreachable(e.to_string()),
    })?;
    let _ = stream.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Http(e.to_string()))?;
    let req = http::Request::get(d.health_path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::CONNECTION, "close")
        .header(PROBE_HEADER, "1")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Http(e.to_string()))?;
    let exchange = async move {
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Failure::Http(e.to_string()))?;
        if resp.headers().contains_key(BALANCER_HEADER) {
            return Err(Failure::Balancer);
        }
        let status = resp.status().as_u16();
        if !d.expect_status.contains(&status) {
            return Err(Failure::Status(status));
        }
        let Some(expected) = &d.expect_body else {
            return Ok(());
        };
        let mut body = resp.into_body();
        let mut seen = Vec::new();
        while seen.len() < PROBE_BODY_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = PROBE_BODY_LIMIT - seen.len();
                        seen.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(e)) => return Err(Failure::Http(e.to_string())),
                None => break,
            }
        }
        if contains(&seen, expected.as_bytes()) {
            Ok(())
        } else {
            Err(Failure::BodyMismatch)
        }
    };
    // The connection is driven here rather than spawned, so nothing outlives the probe.
    tokio::select! {
        r = exchange => r,
        Err(e) = conn => Err(Failure::Http(e.to_string())),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The rise/fall hysteresis of one member, free of time and I/O so it can be tested as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    rise: u32,
    fall: u32,
    pub state: State,
    pub routed: bool,
    pub ok: u32,
    pub fail: u32,
}

/// What an observation did to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Reached `rise`: now routed.
    Joined,
    /// Was leaving, is healthy again.
    Recovered,
    /// First failure of a healthy member; still routed.
    Failing,
    /// A real request could not connect: no longer routed, but still a member.
    Unrouted,
    /// Reached `fall`: no longer a member.
    Left,
    /// Failed before ever joining: forgotten.
    Dropped,
}

impl Health {
    /// A member starts with the one success that found it.
    pub fn found(rise: u32, fall: u32) -> (Health, Change) {
        let mut h = Health {
            rise,
            fall,
            state: State::Joining,
            routed: false,
            ok: 0,
            fail: 0,
        };
        let change = h.observe(true);
        (h, change)
    }

    pub fn observe(&mut self, success: bool) -> Change {
        if success {
            self.ok += 1;
            self.fail = 0;
            match self.state {
                State::Joining | State::Leaving if self.routed => {
                    self.state = State::Healthy;
                    Change::Recovered
                }
                State::Joining | State::Leaving if self.ok >= self.rise => {
                    let was_joining = self.state == State::Joining;
                    self.state = State::Healthy;
                    self.routed = true;
                    if was_joining {
                        Change::Joined
                    } else {
                        Change::Recovered
                    }
                }
                _ => Change::None,
            }
        } else {
            self.ok = 0;
            self.fail += 1;
            match self.state {
                State::Joining => Change::Dropped,
                _ if self.fail >= self.fall => {
                    self.state = State::Leaving;
                    self.routed = false;
                    Change::Left
                }
                State::Healthy => {
                    self.state = State::Leaving;
                    Change::Failing
                }
                State::Leaving => Change::None,
            }
        }
    }

    /// A real request could not connect: out of routing at once, and one failure counted.
    /// Further reports while it is out of routing add nothing; the checks decide.
    pub fn connect_failed(&mut self) -> Change {
        if !self.routed {
            return Change::None;
        }
        let change = self.observe(false);
        self.routed = false;
        self.state = State::Leaving;
        match change {
            Change::Left => Change::Left,
            _ => Change::Unrouted,
        }
    }
}

/// The addresses of the configured ranges, addressed by position.
#[derive(Debug, Clone)]
pub struct Targets {
    ranges: Vec<(IpNet, u128, u64)>,
    total: u64,
}

impl Targets {
    pub fn new(subnets: &[IpNet]) -> Targets {
        let mut ranges = Vec::new();
        let mut total = 0u64;
        for net in subnets {
            let count = crate::config::host_count(net).min(crate::config::MAX_ADDRESSES) as u64;
            let first = match net {
                IpNet::V4(n) if n.prefix_len() <= 30 => u128::from(u32::from(n.network())) + 1,
                IpNet::V4(n) => u128::from(u32::from(n.network())),
                IpNet::V6(n) => u128::from(n.network()),
            };
            ranges.push((*net, first, count));
            total += count;
        }
        Targets { ranges, total }
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn get(&self, mut index: u64) -> Option<IpAddr> {
        for (net, first, count) in &self.ranges {
            if index < *count {
                let n = first + u128::from(index);
                return Some(match net {
                    IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
                    IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
                });
            }
            index -= count;
        }
        None
    }
}

/// A permutation of `0..len` as `offset + i * stride (mod len)` with `stride` coprime to `len`:
/// a random-looking walk that needs no memory.
#[derive(Debug, Clone, Copy)]
struct Order {
    len: u64,
    offset: u64,
    stride: u64,
}

impl Order {
    fn random(len: u64) -> Order {
        if len <= 1 {
            return Order {
                len,
                offset: 0,
                stride: 1,
            };
        }
        let offset = fastrand::u64(0..len);
        let stride = loop {
            let s = fastrand::u64(1..len);
            if gcd(s, len) == 1 {
                break s;
            }
        };
        Order {
            len,
            offset,
            stride,
        }
    }

    fn at(&self, i: u64) -> u64 {
        ((u128::from(self.offset) + u128::from(i) * u128::from(self.stride)) % u128::from(self.len))
            as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The addresses this balancer itself answers on at the probed port: never probed.
pub fn own_addresses(listen: SocketAddr, port: u16) -> Vec<IpNet> {
    if listen.port() != port {
        return Vec::new();
    }
    if !listen.ip().is_unspecified() {
        return vec![IpNet::from(listen.ip())];
    }
    // Listening on 0.0.0.0 means answering on every local address, all of 127/8 included.
    let mut own: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
    ];
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        own.extend(ifaces.into_iter().map(|i| IpNet::from(i.ip())));
    }
    own
}

struct Tracked {
    backend: Arc<Backend>,
    health: Health,
    since: SystemTime,
    last_check: Option<Duration>,
    last_error: Option<String>,
    probing: bool,
    due: Instant,
}

enum Kind {
    Check,
    Sweep,
}

struct Round {
    started: Instant,
    started_at: SystemTime,
    next: u64,
    inflight: u64,
    probed: u64,
    found: u64,
    /// Members passed over by the sweep: covered by their own checks.
    members: u64,
}

/// The prober's state, owned by its one task.
struct Prober {
    /// Shared with every probe task; a /16 round spawns 65,534 of them.
    d: Arc<Discovery>,
    targets: Targets,
    order: Order,
    skip: Vec<IpNet>,
    members: BTreeMap<SocketAddr, Tracked>,
    recently_left: Vec<Departure>,
    last_sweep: Option<SweepReport>,
    routing: Arc<Routing>,
    /// Replaced routings, kept until no request holds them so that the last reference (and
    /// the freeing of a ring of megabytes) is dropped here, off the request path.
    retired: Vec<Arc<Routing>>,
    pool: pool::Writer,
    inflight: usize,
    round: Option<Round>,
    next_round: Instant,
    routing_dirty: bool,
    status_dirty: bool,
    last_publish: Instant,
}

/// Runs until `shutdown` is cancelled. `listen` is the balancer's own address, never probed.
pub async fn run(
    d: Discovery,
    listen: SocketAddr,
    pool: pool::Writer,
    mut reports: mpsc::Receiver<Report>,
    shutdown: CancellationToken,
) {
    let targets = Targets::new(&d.subnets);
    let mut skip = d.exclude.clone();
    skip.extend(own_addresses(listen, d.port));
    let now = Instant::now();
    let mut p = Prober {
        order: Order::random(targets.len()),
        targets,
        skip,
        members: BTreeMap::new(),
        recently_left: Vec::new(),
        last_sweep: None,
        routing: Arc::new(Routing::default()),
        retired: Vec::new(),
        pool,
        inflight: 0,
        round: None,
        next_round: now,
        routing_dirty: false,
        status_dirty: false,
        last_publish: now,
        d: Arc::new(d),
    };
    info!(
        addresses = p.targets.len(),
        port = p.d.port,
        sweep_interval = ?p.d.sweep_interval,
        check_interval = ?p.d.check_interval,
        "prober started"
    );
    let mut probes: JoinSet<(Kind, SocketAddr, Duration, Result<(), Failure>)> = JoinSet::new();
    loop {
        let now = Instant::now();
        p.launch(now, &mut probes);
        p.maybe_publish(now).await;
        let wake = p.next_wake(now);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                if let Ok((kind, addr, took, result)) = done {
                    p.inflight -= 1;
                    match kind {
                        Kind::Check => p.checked(addr, took, result),
                        Kind::Sweep => p.swept(addr, took, result),
                    }
                } else {
                    p.inflight -= 1;
                }
            }
            Some(report) = reports.recv() => p.report(report),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    probes.shutdown().await;
}

impl Prober {
    fn free_retired(&mut self) {
        let (free, keep): (Vec<_>, Vec<_>) = self
            .retired
            .drain(..)
            .partition(|r| Arc::strong_count(r) == 1);
        self.retired = keep;
        if !free.is_empty() {
            tokio::task::spawn_blocking(move || drop(free));
        }
    }

    fn spawn(
        &mut self,
        probes: &mut JoinSet<(Kind, SocketAddr, Duration, Result<(), Failure>)>,
        kind: Kind,
        addr: SocketAddr,
    ) {
        self.inflight += 1;
        let d = Arc::clone(&self.d);
        probes.spawn(async move {
            let start = Instant::now();
            let result = probe(addr, &d).await;
            (kind, addr, start.elapsed(), result)
        });
    }

    fn launch(
        &mut self,
        now: Instant,
        probes: &mut JoinSet<(Kind, SocketAddr, Duration, Result<(), Failure>)>,
    ) {
        let limit = self.d.concurrency;
        let due: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, t)| !t.probing && t.due <= now)
            .map(|(a, _)| *a)
            .take(limit.saturating_sub(self.inflight))
            .collect();
        for addr in due {
            if let Some(t) = self.members.get_mut(&addr) {
                t.probing = true;
                t.due = now + self.d.check_interval;
            }
            self.spawn(probes, Kind::Check, addr);
        }

        if self.round.is_none() && now >= self.next_round {
            self.round = Some(Round {
                started: now,
                started_at: SystemTime::now(),
                next: 0,
                inflight: 0,
                probed: 0,
                found: 0,
                members: 0,
            });
            self.next_round += self.d.sweep_interval;
            if self.next_round < now {
                // A round that overran its interval: start the next one from now, not in a burst.
                self.next_round = now + self.d.sweep_interval;
            }
        }
        // Leave room for member checks so a large sweep cannot starve them.
        let reserve = self.members.len().min(limit / 4);
        let sweep_limit = limit - reserve;
        let window = self.d.sweep_interval / 2;
        let total = self.targets.len();
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let elapsed = now.duration_since(round.started).as_secs_f64();
        let paced = ((elapsed / window.as_secs_f64()) * total as f64).ceil() as u64;
        let until = paced.clamp(1, total.max(1)).min(total);
        let mut launch = Vec::new();
        while round.next < until && self.inflight + launch.len() < sweep_limit {
            let position = round.next;
            round.next += 1;
            let Some(ip) = self.targets.get(self.order.at(position)) else {
                continue;
            };
            let addr = SocketAddr::new(ip, self.d.port);
            if self.skip.iter().any(|n| n.contains(&ip)) {
                continue;
            }
            if self.members.contains_key(&addr) {
                round.members += 1;
                continue;
            }
            launch.push(addr);
        }
        round.inflight += launch.len() as u64;
        round.probed += launch.len() as u64;
        let finished = round.next >= total && round.inflight == 0;
        for addr in launch {
            self.spawn(probes, Kind::Sweep, addr);
        }
        if finished {
            self.finish_round(now);
        }
    }

    fn finish_round(&mut self, now: Instant) {
        let Some(round) = self.round.take() else {
            return;
        };
        let report = SweepReport {
            addresses: round.probed + round.members,
            found: round.found + round.members,
            duration: now.duration_since(round.started),
            finished: SystemTime::now(),
        };
        debug!(
            addresses = report.addresses,
            found = report.found,
            duration_ms = report.duration.as_secs_f64() * 1e3,
            started = ?round.started_at,
            "sweep finished"
        );
        self.last_sweep = Some(report);
        self.status_dirty = true;
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + self.d.check_interval.min(self.d.sweep_interval);
        if let Some(round) = &self.round {
            if round.next < self.targets.len() {
                wake = wake.min(now + PACE_TICK);
            }
        } else {
            wake = wake.min(self.next_round);
        }
        if let Some(due) = self
            .members
            .values()
            .filter(|t| !t.probing)
            .map(|t| t.due)
            .min()
        {
            wake = wake.min(due);
        }
        if self.status_dirty && !self.routing_dirty {
            wake = wake.min(self.last_publish + PUBLISH_EVERY);
        }
        wake.max(now)
    }

    fn swept(&mut self, addr: SocketAddr, took: Duration, result: Result<(), Failure>) {
        if let Some(round) = self.round.as_mut() {
            round.inflight = round.inflight.saturating_sub(1);
        }
        match result {
            Err(f) => debug!(%addr, reason = %f, "sweep probe failed"),
            Ok(()) => {
                debug!(%addr, ms = took.as_secs_f64() * 1e3, "sweep probe answered");
                if let Some(round) = self.round.as_mut() {
                    round.found += 1;
                }
                if !self.members.contains_key(&addr) {
                    let (health, change) = Health::found(self.d.rise, self.d.fall);
                    let t = Tracked {
                        backend: Arc::new(Backend::new(addr)),
                        health,
                        since: SystemTime::now(),
                        last_check: Some(took),
                        last_error: None,
                        probing: false,
                        due: Instant::now() + self.d.check_interval,
                    };
                    self.members.insert(addr, t);
                    self.apply(addr, change, None);
                    self.status_dirty = true;
                }
            }
        }
        if let Some(round) = &self.round {
            if round.next >= self.targets.len() && round.inflight == 0 {
                self.finish_round(Instant::now());
            }
        }
    }

    fn checked(&mut self, addr: SocketAddr, took: Duration, result: Result<(), Failure>) {
        let Some(t) = self.members.get_mut(&addr) else {
            return;
        };
        t.probing = false;
        t.last_check = Some(took);
        let ms = took.as_secs_f64() * 1e3;
        let change = match &result {
            Ok(()) => {
                debug!(%addr, ms, "check passed");
                t.last_error = None;
                t.health.observe(true)
            }
            Err(f) => {
                debug!(%addr, ms, reason = %f, "check failed");
                t.last_error = Some(f.to_string());
                t.health.observe(false)
            }
        };
        self.status_dirty = true;
        self.apply(addr, change, result.err().map(|f| f.to_string()));
    }

    fn report(&mut self, report: Report) {
        let Report::ConnectFailed { addr, reason } = report;
        let Some(t) = self.members.get_mut(&addr) else {
            return;
        };
        let change = t.health.connect_failed();
        if change != Change::None {
            t.last_error = Some(reason.clone());
            self.status_dirty = true;
            self.apply(
                addr,
                change,
                Some(format!("request could not connect: {reason}")),
            );
        }
    }

    /// Logs a transition and updates membership; every routing change goes through here.
    fn apply(&mut self, addr: SocketAddr, change: Change, reason: Option<String>) {
        let reason = reason.unwrap_or_default();
        let Some(t) = self.members.get_mut(&addr) else {
            return;
        };
        match change {
            Change::None => {}
            Change::Joined => {
                info!(%addr, checks = t.health.ok, "backend joined");
                t.since = SystemTime::now();
                self.routing_dirty = true;
            }
            Change::Recovered => {
                info!(%addr, "backend recovered");
                t.since = SystemTime::now();
                self.routing_dirty = true;
            }
            Change::Failing => {
                warn!(%addr, %reason, fall = self.d.fall, "backend failing a check");
                t.since = SystemTime::now();
            }
            Change::Unrouted => {
                warn!(%addr, %reason, "backend out of routing after a failed request");
                t.since = SystemTime::now();
                self.routing_dirty = true;
            }
            Change::Left => {
                warn!(%addr, %reason, "backend left");
                if let Some(t) = self.members.remove(&addr) {
                    pool::retire(&t.backend);
                }
                self.recently_left.insert(
                    0,
                    Departure {
                        addr,
                        at: SystemTime::now(),
                        reason,
                    },
                );
                self.recently_left.truncate(RECENTLY_LEFT);
                self.routing_dirty = true;
            }
            Change::Dropped => {
                debug!(%addr, %reason, "joining address failed a check; forgotten");
                self.members.remove(&addr);
            }
        }
    }

    async fn maybe_publish(&mut self, now: Instant) {
        let due = self.status_dirty && now >= self.last_publish + PUBLISH_EVERY;
        if !self.routing_dirty && !due {
            return;
        }
        if self.routing_dirty {
            let routed: Vec<Arc<Backend>> = self
                .members
                .values()
                .filter(|t| t.health.routed)
                .map(|t| Arc::clone(&t.backend))
                .collect();
            let changed = routed.len() != self.routing.backends.len()
                || routed
                    .iter()
                    .zip(&self.routing.backends)
                    .any(|(a, b)| a.addr != b.addr);
            if changed {
                // A ring takes milliseconds to build (tens at a thousand backends): not on a
                // runtime thread that also accepts connections.
                let built = tokio::task::spawn_blocking(move || Routing::new(routed)).await;
                match built {
                    Ok(routing) => {
                        let old = std::mem::replace(&mut self.routing, Arc::new(routing));
                        self.retired.push(old);
                        info!(healthy = self.routing.backends.len(), "pool changed");
                    }
                    Err(e) => warn!(error = %e, "building the ring failed; routing unchanged"),
                }
            }
        }
        self.free_retired();
        let members = self
            .members
            .values()
            .map(|t| Member {
                backend: Arc::clone(&t.backend),
                state: t.health.state,
                routed: t.health.routed,
                since: t.since,
                last_check: t.last_check,
                consecutive_ok: t.health.ok,
                consecutive_fail: t.health.fail,
                last_error: t.last_error.clone(),
            })
            .collect();
        self.pool.send_replace(Arc::new(Snapshot {
            routing: Arc::clone(&self.routing),
            members,
            recently_left: self.recently_left.clone(),
            last_sweep: self.last_sweep.clone(),
        }));
        self.routing_dirty = false;
        self.status_dirty = false;
        self.last_publish = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rise: u32, fall: u32, steps: &str) -> Vec<(State, bool, Change)> {
        let (mut h, first) = Health::found(rise, fall);
        let mut out = vec![(h.state, h.routed, first)];
        for c in steps.chars() {
            let change = match c {
                '+' => h.observe(true),
                '-' => h.observe(false),
                'x' => h.connect_failed(),
                _ => unreachable!("test alphabet is + - x"),
            };
            out.push((h.state, h.routed, change));
        }
        out
    }

    use Change::*;
    use State::*;

    #[test]
    fn hysteresis_table() {
        type Case<'a> = (u32, u32, &'a str, &'a [(State, bool, Change)]);
        let cases: &[Case] = &[
            // rise 2: found, then one more success joins.
            (
                2,
                2,
                "+",
                &[(Joining, false, None), (Healthy, true, Joined)],
            ),
            // rise 1: the finding probe is enough.
            (1, 2, "", &[(Healthy, true, Joined)]),
            // A failure while joining forgets the address.
            (
                3,
                2,
                "+-",
                &[
                    (Joining, false, None),
                    (Joining, false, None),
                    (Joining, false, Dropped),
                ],
            ),
            // fall 2: one failure is "leaving" but still routed; a success recovers.
            (
                1,
                2,
                "-+",
                &[
                    (Healthy, true, Joined),
                    (Leaving, true, Failing),
                    (Healthy, true, Recovered),
                ],
            ),
            // fall 2: two failures leave.
            (
                1,
                2,
                "--",
                &[
                    (Healthy, true, Joined),
                    (Leaving, true, Failing),
                    (Leaving, false, Left),
                ],
            ),
            // fall 1: one failure leaves.
            (
                1,
                1,
                "-",
                &[(Healthy, true, Joined), (Leaving, false, Left)],
            ),
            // A failed request unroutes at once and counts as one failure; one more check failure leaves.
            (
                1,
                2,
                "x-",
                &[
                    (Healthy, true, Joined),
                    (Leaving, false, Unrouted),
                    (Leaving, false, Left),
                ],
            ),
            // Repeated request failures count once; rise successes bring it back.
            (
                2,
                3,
                "+xx++",
                &[
                    (Joining, false, None),
                    (Healthy, true, Joined),
                    (Leaving, false, Unrouted),
                    (Leaving, false, None),
                    (Leaving, false, None),
                    (Healthy, true, Recovered),
                ],
            ),
            // fall 1 and a failed request: gone at once.
            (
                1,
                1,
                "x",
                &[(Healthy, true, Joined), (Leaving, false, Left)],
            ),
        ];
        for (rise, fall, steps, expected) in cases {
            assert_eq!(
                &run(*rise, *fall, steps),
                expected,
                "rise {rise} fall {fall} steps {steps:?}"
            );
        }
    }

    #[test]
    fn targets_walk_hosts_of_every_range() {
        let t = Targets::new(&[
            "127.77.0.0/30".parse().unwrap(),
            "127.78.0.9/32".parse().unwrap(),
        ]);
        assert_eq!(t.len(), 3);
        let all: Vec<String> = (0..3).map(|i| t.get(i).unwrap().to_string()).collect();
        assert_eq!(all, ["127.77.0.1", "127.77.0.2", "127.78.0.9"]);
        assert_eq!(t.get(3), Option::None);
    }

    #[test]
    fn order_is_a_permutation() {
        for len in [1u64, 2, 3, 254, 256, 4094] {
            let o = Order::random(len);
            let mut seen: Vec<u64> = (0..len).map(|i| o.at(i)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..len).collect::<Vec<_>>(), "len {len}");
        }
    }

    #[test]
    fn own_address_is_skipped_only_on_the_probed_port() {
        let listen: SocketAddr = "127.77.0.1:3000".parse().unwrap();
        assert_eq!(own_addresses(listen, 3000), vec![IpNet::from(listen.ip())]);
        assert!(own_addresses(listen, 8080).is_empty());
        let any: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        assert!(
            own_addresses(any, 3000)
                .iter()
                .any(|n| n.contains(&"127.77.0.10".parse::<IpAddr>().unwrap()))
        );
    }
}
