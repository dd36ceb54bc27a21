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

mod health;
mod probe;
mod stats;
mod targets;

pub(crate) use probe::{BALANCER_HEADER, PROBE_HEADER};
pub(crate) use stats::{Counts, Stats};
use stats::{Join, Leave};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::balancer::{Moved, PinKey};
use crate::config::Discovery;
use crate::pool::{
    self, Backend, Departure, Member, Report, Routing, Snapshot, State, SweepReport,
};
use health::{Change, Health, Seen};
use probe::{Answer, Failure, probe};
use targets::{Order, Targets, own_addresses};

/// Why the members of a range a reload removed left.
pub(crate) const RANGE_REMOVED: &str = "range removed from config";

/// How many departures `/_lb/health` remembers.
const RECENTLY_LEFT: usize = 16;

/// How many departed pins are remembered, so that their users are counted as moved for the
/// right reason; older ones count as unknown pins.
const DEPARTED_PINS: usize = 4096;

/// How often an address autoscaling started is probed until it joins: a cold start's held
/// requests wait for it, so this bounds what the prober adds to the container's own start.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// What autoscaling tells the prober about the containers it starts and stops.
#[derive(Debug)]
pub(crate) enum Command {
    /// A container was started at `addr`: probe it now and every [`WATCH_EVERY`] until it
    /// has joined (its `rise` checks too), or until `until`.
    Watch { addr: SocketAddr, until: Instant },
    /// Drain it on the balancer's side (pinned users stay, no new ones), or (`on: false`)
    /// take new users again.
    Drain { addr: SocketAddr, on: bool },
    /// It is being stopped: it leaves now, with `reason`, its users move, and the sweep leaves
    /// its address alone until `until` (or until it is watched again), so that a container
    /// still answering during its stop is not found again.
    Remove {
        addr: SocketAddr,
        reason: String,
        until: Instant,
    },
}

/// An address autoscaling started a container at, watched until it joins.
struct Watched {
    until: Instant,
    due: Instant,
    probing: bool,
}

/// Status-only changes (latencies, counters) are published at most this often; routing changes
/// are published at once.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How often the sweep pacer wakes while a round is being launched.
const PACE_TICK: Duration = Duration::from_millis(5);

/// The addresses of `listeners` at the probed `port`: the balancer's own, never probed.
fn own(listeners: &[SocketAddr], port: u16) -> impl Iterator<Item = IpNet> {
    listeners.iter().flat_map(move |l| own_addresses(*l, port))
}

/// What a finished probe task hands back: why it ran, where, how long it took, what it saw.
type Probed = (Kind, SocketAddr, Duration, Result<Answer, Failure>);

/// An address that has answered and not yet left: joining, healthy or leaving.
struct Known {
    /// The pool's handle on it, carried from snapshot to snapshot so its counters survive.
    backend: Arc<Backend>,
    health: Health,
    /// When it entered its current state, for `/_lb/health`.
    since: SystemTime,
    /// How long its last probe took.
    last_check: Option<Duration>,
    /// Why its last probe failed, or why a request could not connect; `None` once it passes.
    last_error: Option<String>,
    /// A check of it is in flight: never two at once for one member.
    probing: bool,
    /// When its next check is due.
    due: Instant,
}

/// Why a probe was sent: a member's re-check, the sweep of an unknown address, or an address
/// autoscaling started a container at.
enum Kind {
    Check,
    Sweep,
    Watch,
}

/// One sweep of the ranges, from its first launch to its last answer.
struct Round {
    started: Instant,
    started_at: SystemTime,
    /// The next position of [`Order`] to launch.
    next: u64,
    /// Sweep probes launched and not yet answered.
    inflight: u64,
    /// Sweep probes launched this round.
    probed: u64,
    /// Sweep probes that answered healthy.
    found: u64,
    /// Members passed over by the sweep: covered by their own checks.
    members: u64,
}

/// The prober's state, owned by its one task: nothing here is shared but the published pool.
struct Scheduler {
    /// Shared with every probe task; a /16 round spawns 65,534 of them.
    d: Arc<Discovery>,
    /// The balancer's own listeners (public and admin), never probed.
    listeners: Vec<SocketAddr>,
    /// The configured ranges, addressed by position.
    targets: Targets,
    /// The walk over `targets`, fixed at start so each address is swept once per interval.
    order: Order,
    /// Excluded ranges and the balancer's own addresses: never probed.
    skip: Vec<IpNet>,
    /// Every address that has answered and not yet left, in address order.
    members: BTreeMap<SocketAddr, Known>,
    /// The last [`RECENTLY_LEFT`] departures, newest first.
    recently_left: Vec<Departure>,
    /// Pins of backends that are gone, and why, newest last; at most [`DEPARTED_PINS`].
    departed: std::collections::VecDeque<(u64, Moved)>,
    /// Makes each backend's pin.
    pins: PinKey,
    /// When the pool will hold every backend that answered the first sweep: until then a pin
    /// naming nothing known may name a backend not yet found, and does not move its user.
    settles: Option<Instant>,
    settled: bool,
    last_sweep: Option<SweepReport>,
    /// The routing last published.
    routing: Arc<Routing>,
    /// Replaced routings, kept until no request holds them so that the last reference (and
    /// the freeing of a ring of megabytes) is dropped here, off the request path.
    retired: Vec<Arc<Routing>>,
    pool: pool::Writer,
    /// Probes in flight, checks and sweep alike, against `concurrency`.
    inflight: usize,
    /// The sweep under way, if any.
    round: Option<Round>,
    /// When the next sweep starts.
    next_round: Instant,
    /// The routed set may have changed: publish at once (a new ring if it really did).
    routing_dirty: bool,
    /// Something only `/_lb/health` shows changed: publish within [`PUBLISH_EVERY`].
    status_dirty: bool,
    last_publish: Instant,
    /// What the metrics endpoint reads.
    stats: Arc<Stats>,
    /// Addresses autoscaling started containers at, until they join.
    watched: BTreeMap<SocketAddr, Watched>,
    /// Addresses autoscaling is stopping containers at: not swept until then.
    barred: BTreeMap<SocketAddr, Instant>,
}

/// What the prober talks to: the pool it writes, what it hears from the proxy and from
/// reloads, and the counters the metrics endpoint reads.
pub(crate) struct Links {
    pub(crate) pool: pool::Writer,
    /// Requests that could not connect.
    pub(crate) reports: mpsc::Receiver<Report>,
    /// The settings of a reloaded config.
    pub(crate) reloads: mpsc::Receiver<Discovery>,
    pub(crate) stats: Arc<Stats>,
    /// What autoscaling starts, drains and stops.
    pub(crate) commands: mpsc::Receiver<Command>,
}

/// Runs until `shutdown` is cancelled. `listeners` are the balancer's own addresses (the public
/// one and the admin one), never probed.
pub(crate) async fn run(
    d: Discovery,
    listeners: Vec<SocketAddr>,
    pins: PinKey,
    links: Links,
    shutdown: CancellationToken,
) {
    let Links {
        pool,
        mut reports,
        mut reloads,
        stats,
        mut commands,
    } = links;
    let targets = Targets::new(&d.subnets);
    let mut skip = d.exclude.clone();
    skip.extend(own(&listeners, d.port));
    let now = Instant::now();
    let mut p = Scheduler {
        order: Order::random(targets.len()),
        targets,
        skip,
        listeners,
        members: BTreeMap::new(),
        recently_left: Vec::new(),
        departed: std::collections::VecDeque::new(),
        pins,
        settles: None,
        settled: false,
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
        stats,
        watched: BTreeMap::new(),
        barred: BTreeMap::new(),
        d: Arc::new(d),
    };
    info!(
        addresses = p.targets.len(),
        port = p.d.port,
        sweep_interval = ?p.d.sweep_interval,
        check_interval = ?p.d.check_interval,
        "prober started"
    );
    let mut probes: JoinSet<Probed> = JoinSet::new();
    loop {
        let now = Instant::now();
        p.launch(now, &mut probes);
        if !p.settled && p.settles.is_some_and(|at| now >= at) {
            p.settled = true;
            p.routing_dirty = true;
            debug!("pool settled: pins naming no backend move their users from now on");
        }
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
                        Kind::Watch => p.watched(addr, took, result),
                    }
                } else {
                    p.inflight -= 1;
                }
            }
            Some(report) = reports.recv() => p.report(report),
            Some(d) = reloads.recv() => p.reconfigure(d, Instant::now()),
            Some(command) = commands.recv() => p.command(command, Instant::now()),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    probes.shutdown().await;
}

impl Scheduler {
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

    /// A reloaded config's discovery settings, from now on. Members still inside the ranges
    /// keep their state, counters and `since`; those outside (a range removed or excluded, the
    /// port changed) leave, and their users move. A changed set of ranges starts a new sweep.
    fn reconfigure(&mut self, d: Discovery, now: Instant) {
        let targets = Targets::new(&d.subnets);
        let mut skip = d.exclude.clone();
        skip.extend(own(&self.listeners, d.port));
        let outside: Vec<SocketAddr> = self
            .members
            .keys()
            .filter(|a| {
                a.port() != d.port
                    || !targets.contains(a.ip())
                    || skip.iter().any(|n| n.contains(&a.ip()))
            })
            .copied()
            .collect();
        for addr in outside {
            self.apply(
                addr,
                Change::Left,
                Some((Leave::RangeRemoved, RANGE_REMOVED.to_string())),
            );
        }
        for t in self.members.values_mut() {
            t.health.set_thresholds(d.rise, d.fall);
            t.due = t.due.min(now + d.check_interval);
        }
        if d.subnets != self.d.subnets || d.exclude != self.d.exclude || d.port != self.d.port {
            // Probes of the old walk still in flight are counted off, never admitted (see
            // `swept`); the new walk starts at once.
            self.order = Order::random(targets.len());
            self.round = None;
            self.next_round = now;
        } else {
            self.next_round = self.next_round.min(now + d.sweep_interval);
        }
        self.targets = targets;
        self.skip = skip;
        self.d = Arc::new(d);
        self.status_dirty = true;
        info!(
            addresses = self.targets.len(),
            members = self.members.len(),
            "prober reconfigured"
        );
    }

    /// Whether `addr` is one the current settings sweep: a sweep probe launched before a
    /// reload may come back for an address no longer in the ranges.
    fn in_ranges(&self, addr: SocketAddr) -> bool {
        addr.port() == self.d.port
            && self.targets.contains(addr.ip())
            && !self.skip.iter().any(|n| n.contains(&addr.ip()))
    }

    fn spawn(&mut self, probes: &mut JoinSet<Probed>, kind: Kind, addr: SocketAddr) {
        self.inflight += 1;
        let d = Arc::clone(&self.d);
        probes.spawn(async move {
            let start = Instant::now();
            let result = probe(addr, &d).await;
            (kind, addr, start.elapsed(), result)
        });
    }

    fn launch(&mut self, now: Instant, probes: &mut JoinSet<Probed>) {
        let limit = self.d.concurrency;
        let due: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, t)| !t.probing && t.due <= now)
            .map(|(a, _)| *a)
            .take(limit.saturating_sub(self.inflight))
            .collect();
        for addr in due {
            let every = self.check_every(&addr);
            if let Some(t) = self.members.get_mut(&addr) {
                t.probing = true;
                t.due = now + every;
            }
            self.spawn(probes, Kind::Check, addr);
        }
        self.watched.retain(|addr, w| {
            let keep = w.probing || now < w.until;
            if !keep {
                debug!(%addr, "watched address did not join in time; left to the sweep");
            }
            keep
        });
        let watch: Vec<SocketAddr> = self
            .watched
            .iter()
            .filter(|(a, w)| !w.probing && w.due <= now && !self.members.contains_key(a))
            .map(|(a, _)| *a)
            .take(limit.saturating_sub(self.inflight))
            .collect();
        for addr in watch {
            if let Some(w) = self.watched.get_mut(&addr) {
                w.probing = true;
            }
            self.spawn(probes, Kind::Watch, addr);
        }
        self.barred.retain(|_, until| now < *until);

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
            if self.barred.contains_key(&addr) || self.watched.contains_key(&addr) {
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
        if self.settles.is_none() {
            // What the first sweep found joins within `rise` checks.
            self.settles = Some(now + self.d.check_interval * self.d.rise);
        }
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
        self.stats.swept();
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
        if let (false, Some(at)) = (self.settled, self.settles) {
            wake = wake.min(at);
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
        if let Some(due) = self
            .watched
            .values()
            .filter(|w| !w.probing)
            .map(|w| w.due.min(w.until))
            .min()
        {
            wake = wake.min(due);
        }
        if self.status_dirty && !self.routing_dirty {
            wake = wake.min(self.last_publish + PUBLISH_EVERY);
        }
        wake.max(now)
    }

    fn swept(&mut self, addr: SocketAddr, took: Duration, result: Result<Answer, Failure>) {
        if let Some(round) = self.round.as_mut() {
            round.inflight = round.inflight.saturating_sub(1);
        }
        self.stats.probed(&Kind::Sweep, &result);
        match result {
            Err(f) => debug!(%addr, reason = %f, "sweep probe failed"),
            Ok(answer) => {
                debug!(%addr, ms = took.as_secs_f64() * 1e3, "sweep probe answered");
                if let Some(round) = self.round.as_mut() {
                    round.found += 1;
                }
                if !self.barred.contains_key(&addr) {
                    self.admit(addr, took, answer);
                }
            }
        }
        if let Some(round) = &self.round {
            if round.next >= self.targets.len() && round.inflight == 0 {
                self.finish_round(Instant::now());
            }
        }
    }

    /// An address that is not a member answered healthy: it becomes one, joining.
    fn admit(&mut self, addr: SocketAddr, took: Duration, answer: Answer) {
        if self.members.contains_key(&addr) || !self.in_ranges(addr) {
            return;
        }
        let (health, change) = Health::found(self.d.rise, self.d.fall, answer.draining);
        let t = Known {
            backend: Arc::new(Backend::new(addr, answer.instance, &self.pins)),
            health,
            since: SystemTime::now(),
            last_check: Some(took),
            last_error: None,
            probing: false,
            due: Instant::now() + self.check_every(&addr),
        };
        self.members.insert(addr, t);
        self.apply(addr, change, None);
        self.status_dirty = true;
    }

    /// How often a member at `addr` is checked: every `check_interval`, but an address
    /// autoscaling started a container at is checked every [`WATCH_EVERY`] until it joins.
    fn check_every(&self, addr: &SocketAddr) -> Duration {
        if self.watched.contains_key(addr) {
            WATCH_EVERY
        } else {
            self.d.check_interval
        }
    }

    /// A probe of a watched address came back: admitted if it answered, else probed again.
    fn watched(&mut self, addr: SocketAddr, took: Duration, result: Result<Answer, Failure>) {
        self.stats.probed(&Kind::Watch, &result);
        let Some(w) = self.watched.get_mut(&addr) else {
            return;
        };
        w.probing = false;
        w.due = Instant::now() + WATCH_EVERY;
        match result {
            Err(f) => debug!(%addr, reason = %f, "watched address not answering yet"),
            Ok(answer) => {
                debug!(%addr, ms = took.as_secs_f64() * 1e3, "watched address answered");
                self.admit(addr, took, answer);
            }
        }
    }

    /// What autoscaling asks for.
    fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Watch { addr, until } => {
                if !self.in_ranges(addr) {
                    warn!(%addr, "a started container's address is outside the swept ranges; not watched");
                    return;
                }
                self.barred.remove(&addr);
                self.watched.insert(
                    addr,
                    Watched {
                        until,
                        due: now,
                        probing: false,
                    },
                );
                if let Some(t) = self.members.get_mut(&addr) {
                    t.due = t.due.min(now);
                }
            }
            Command::Drain { addr, on } => {
                let Some(t) = self.members.get_mut(&addr) else {
                    return;
                };
                let change = t.health.set_draining(on);
                self.status_dirty = true;
                self.apply(addr, change, None);
            }
            Command::Remove {
                addr,
                reason,
                until,
            } => {
                self.watched.remove(&addr);
                self.barred.insert(addr, until);
                if self.members.contains_key(&addr) {
                    self.apply(addr, Change::Left, Some((Leave::ScaledDown, reason)));
                }
            }
        }
    }

    fn checked(&mut self, addr: SocketAddr, took: Duration, result: Result<Answer, Failure>) {
        self.stats.probed(&Kind::Check, &result);
        let Some(t) = self.members.get_mut(&addr) else {
            return;
        };
        t.probing = false;
        t.last_check = Some(took);
        let ms = took.as_secs_f64() * 1e3;
        let change = match &result {
            Ok(answer) => {
                debug!(%addr, ms, draining = answer.draining, "check passed");
                t.last_error = None;
                if answer.instance != t.backend.instance {
                    // Another instance at the same address is another backend: its
                    // predecessor's users have lost their sessions and are moved once. It keeps
                    // the member's standing, since it answers as a healthy one does.
                    info!(
                        %addr,
                        was = t.backend.instance.as_deref().unwrap_or("(none)"),
                        now = answer.instance.as_deref().unwrap_or("(none)"),
                        "backend instance replaced"
                    );
                    let new = Arc::new(Backend::new(addr, answer.instance.clone(), &self.pins));
                    let old = std::mem::replace(&mut t.backend, new);
                    pool::retire(&old);
                    self.stats.left(Leave::Replaced);
                    self.stats.joined(Join::Replaced);
                    self.departed.push_back((old.pin, Moved::InstanceReplaced));
                    self.routing_dirty = true;
                }
                t.health.observe(Seen::Pass {
                    draining: answer.draining,
                })
            }
            Err(f) => {
                debug!(%addr, ms, reason = %f, "check failed");
                t.last_error = Some(f.to_string());
                t.health.observe(Seen::Fail)
            }
        };
        self.status_dirty = true;
        let reason = result
            .err()
            .map(|f| (Leave::Check(f.class()), f.to_string()));
        self.apply(addr, change, reason);
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
                Some((
                    Leave::RequestConnect,
                    format!("request could not connect: {reason}"),
                )),
            );
        }
    }

    /// Logs a transition and updates membership; every routing change goes through here.
    /// `reason` is why it failed, if it did: a class to count and the message.
    fn apply(&mut self, addr: SocketAddr, change: Change, reason: Option<(Leave, String)>) {
        let (why, reason) = reason.unzip();
        let reason = reason.unwrap_or_default();
        let Some(t) = self.members.get_mut(&addr) else {
            return;
        };
        match change {
            Change::None => {}
            Change::Joined | Change::Recovered | Change::Draining | Change::Undrained => {
                let what = match change {
                    Change::Joined => "backend joined",
                    Change::Recovered => "backend recovered",
                    Change::Draining => "backend draining: no new users",
                    _ => "backend no longer draining",
                };
                info!(%addr, checks = t.health.ok, "{what}");
                if change == Change::Joined {
                    self.stats.joined(Join::Found);
                    self.watched.remove(&addr);
                }
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
                if why == Some(Leave::ScaledDown) {
                    info!(%addr, %reason, "backend left");
                } else {
                    warn!(%addr, %reason, "backend left");
                }
                if let Some(why) = why {
                    self.stats.left(why);
                }
                let backend = self.members.remove(&addr).map(|t| {
                    pool::retire(&t.backend);
                    let why = if t.health.draining {
                        Moved::Drained
                    } else {
                        Moved::BackendLeft
                    };
                    self.departed.push_back((t.backend.pin, why));
                    t.backend
                });
                self.recently_left.insert(
                    0,
                    Departure {
                        addr,
                        at: SystemTime::now(),
                        reason,
                        backend,
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

    /// Makes the routing of the members as they are now, if it routes differently from the
    /// last one: the ring over the members that take new users, the draining ones, and the
    /// pins of backends whose users must leave them.
    async fn rebuild(&mut self) {
        while self.departed.len() > DEPARTED_PINS {
            self.departed.pop_front();
        }
        // Departed pins first, then the members: a pin that is a member again (a backend back
        // at its address with the same instance) leads to the member.
        let mut gone: Vec<(u64, Moved)> = self.departed.iter().copied().collect();
        let (mut ring, mut draining, mut joining) = (Vec::new(), Vec::new(), Vec::new());
        for t in self.members.values() {
            let backend = Arc::clone(&t.backend);
            match (t.health.routed, t.health.in_ring(), t.health.state) {
                (true, true, _) => ring.push(backend),
                (true, false, _) => draining.push(backend),
                // Not proven yet: its users wait for it rather than move.
                (false, _, State::Joining) => joining.push(backend.pin),
                (false, _, _) if t.health.draining => gone.push((backend.pin, Moved::Drained)),
                (false, _, _) => gone.push((backend.pin, Moved::OutOfRouting)),
            }
        }
        let previous = Arc::clone(&self.routing);
        let settled = self.settled;
        // A ring takes milliseconds to build (tens at a thousand backends): not on a runtime
        // thread that also accepts connections.
        let built = tokio::task::spawn_blocking(move || {
            Routing::new(ring, draining, &joining, &gone, settled, &previous)
        })
        .await;
        match built {
            Ok(routing) if !routing.same_as(&self.routing) => {
                let old = std::mem::replace(&mut self.routing, Arc::new(routing));
                self.retired.push(old);
                info!(
                    healthy = self.routing.ring.len(),
                    draining = self.routing.backends.len() - self.routing.ring.len(),
                    "pool changed"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "building the routing failed; routing unchanged"),
        }
    }

    async fn maybe_publish(&mut self, now: Instant) {
        let due = self.status_dirty && now >= self.last_publish + PUBLISH_EVERY;
        if !self.routing_dirty && !due {
            return;
        }
        if self.routing_dirty {
            self.rebuild().await;
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
