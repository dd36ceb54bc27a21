//! Autoscaling: the containers of one service started, added and stopped to match the
//! in-flight load the proxy measures, through the Docker Engine API.
//!
//! The controller is one task. Every [`TICK`] it samples the load from the pool (requests in
//! flight to routed backends, tunnels left out, plus requests held for a backend), follows the
//! containers it acts on, and asks [`decide`] what to do. Engine calls run in tasks of their
//! own and report back, so a slow or hung engine never stalls the sampling, and the balancer
//! serves the pool it has whatever the engine does.
//!
//! Where it sits in the data flow: it reads the pool like the admin endpoints do, and acts on
//! membership only through the prober ([`crate::discovery::Command`]): watch a started
//! container's address at once, drain one on the balancer's side, remove one being stopped.
//! The proxy holds requests while no backend is routed and one is starting
//! ([`crate::pool::Waiting`]); that is all it knows of autoscaling.
//!
//! - `decide.rs`: the scaling rule, pure and tested as a table.
//! - `engine.rs`: the Docker Engine API (bollard), the only place that talks to Docker.
//! - `status.rs`: what `/_lb/health`, `/_lb/metrics` and the dashboard show.

mod decide;
mod engine;
mod status;

pub(crate) use status::{ACTIONS, ERROR_KINDS, Report, Status};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Autoscale;
use crate::discovery::Command;
use crate::pool::{self, Snapshot};
use decide::{Counts, Decision, History, Limits, Sample, Why, decide};
use engine::{Engine, EngineError, Mode, Replica};

/// How often the load is sampled and the decision taken.
const TICK: Duration = Duration::from_millis(100);

/// How often the service's containers are listed, besides after each action.
const LIST_EVERY: Duration = Duration::from_secs(2);

/// Each engine call gives up after this (a stop waits for the container's grace on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Backoff after a failed start or an unreachable engine: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long the sweep leaves the address of a container being stopped alone.
const STOPPING_BAR: Duration = Duration::from_secs(60);

/// What autoscaling reads and acts on.
pub(crate) struct Links {
    pub(crate) pool: pool::Reader,
    pub(crate) prober: mpsc::Sender<Command>,
    pub(crate) waiting: Arc<pool::Waiting>,
    pub(crate) status: Arc<Status>,
}

/// The settings autoscaling runs with: its block, and the swept ranges and port (a
/// container's backend address is its address in the ranges, at the port).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) autoscale: Autoscale,
    pub(crate) subnets: Vec<IpNet>,
    pub(crate) port: u16,
}

/// Runs until `shutdown`, taking new settings from `settings` (a reload).
pub(crate) async fn run(
    mut settings: watch::Receiver<Settings>,
    links: Links,
    shutdown: CancellationToken,
) {
    let s = settings.borrow_and_update().clone();
    let (done_tx, mut done_rx) = mpsc::channel(64);
    let mut c = Controller::new(s, links, done_tx);
    info!(
        service = %c.s.autoscale.service,
        docker = %c.s.autoscale.docker,
        min = c.s.autoscale.min,
        max = c.s.autoscale.max,
        target_inflight = c.s.autoscale.target_inflight,
        "autoscaling on"
    );
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let waiting = Arc::clone(&c.links.waiting);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = waiting.woken() => {}
            Some(done) = done_rx.recv() => c.done(done),
            Ok(()) = settings.changed() => {
                let s = settings.borrow_and_update().clone();
                c.reconfigure(s);
            }
        }
        c.step(Instant::now());
    }
    c.links.waiting.set_can_start(false);
    // Engine calls under way (a stop waits out a container's grace) are not waited for: the
    // engine finishes them without us.
    c.tasks.close();
}

/// What an engine task reports back.
enum Done {
    Connected(Result<Engine, EngineError>),
    Listed(Result<Vec<Replica>, EngineError>),
    /// A container started (`how`: `start` or `create`), at `began`, for `why`.
    Started {
        how: &'static str,
        began: Instant,
        result: Result<Replica, EngineError>,
    },
    Stopped {
        id: String,
        result: Result<(), EngineError>,
    },
    Removed {
        id: String,
        result: Result<(), EngineError>,
    },
    /// Swarm: the replica count was set.
    Scaled {
        from: Option<u64>,
        to: u64,
        result: Result<(), EngineError>,
    },
}

/// Where a container autoscaling acts on stands.
#[derive(Debug)]
enum Phase {
    /// Started; watched until routed, given up at `deadline`.
    Starting {
        addr: SocketAddr,
        began: Instant,
        since: SystemTime,
        deadline: Instant,
        answered: Option<Instant>,
    },
    /// Drained on the balancer's side; stopped once idle `session_idle` or after `drain_max`.
    Draining {
        addr: SocketAddr,
        began: Instant,
        since: SystemTime,
        last_active: Instant,
        requests: u64,
    },
    /// Out of the pool, `docker stop` under way.
    Stopping { since: SystemTime },
}

struct Controller {
    s: Settings,
    links: Links,
    done_tx: mpsc::Sender<Done>,
    tasks: TaskTracker,
    engine: Option<Arc<Engine>>,
    connecting: bool,
    /// The service's containers at the last listing.
    replicas: Vec<Replica>,
    listing: bool,
    listed: Option<Instant>,
    history: History,
    /// By container id.
    phases: BTreeMap<String, Phase>,
    /// Starts asked of the engine and not answered yet.
    pending: u32,
    /// Swarm: replicas asked for and not routed yet.
    swarm_wanted: Option<u32>,
    last_change: Option<Instant>,
    backoff_until: Option<Instant>,
    failures: u32,
    last_why: Option<Why>,
}

impl Controller {
    fn new(s: Settings, links: Links, done_tx: mpsc::Sender<Done>) -> Controller {
        let a = &s.autoscale;
        links.waiting.configure(a.hold_limit, a.hold);
        links.status.update(|r| {
            r.service = a.service.clone();
            (r.min, r.max, r.target) = (a.min, a.max, a.target_inflight);
        });
        Controller {
            s,
            links,
            done_tx,
            tasks: TaskTracker::new(),
            engine: None,
            connecting: false,
            replicas: Vec::new(),
            listing: false,
            listed: None,
            history: History::default(),
            phases: BTreeMap::new(),
            pending: 0,
            swarm_wanted: None,
            last_change: None,
            backoff_until: None,
            failures: 0,
            last_why: None,
        }
    }

    fn limits(&self) -> Limits {
        let a = &self.s.autoscale;
        Limits {
            min: a.min,
            max: a.max,
            target: a.target_inflight,
            up_after: a.up_after,
            down_after: a.down_after,
        }
    }

    /// A reload's settings. Another engine or service: reconnect. Limits and windows: from now on.
    fn reconfigure(&mut self, s: Settings) {
        let a = &s.autoscale;
        let old = &self.s.autoscale;
        let reconnect =
            a.docker != old.docker || a.service != old.service || s.subnets != self.s.subnets;
        self.links.waiting.configure(a.hold_limit, a.hold);
        self.links.status.update(|r| {
            r.service = a.service.clone();
            (r.min, r.max, r.target) = (a.min, a.max, a.target_inflight);
        });
        info!(
            service = %a.service,
            min = a.min,
            max = a.max,
            target_inflight = a.target_inflight,
            "autoscaling reconfigured"
        );
        self.s = s;
        if reconnect {
            self.engine = None;
            self.replicas.clear();
            self.backoff_until = None;
        }
    }

    fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = Done> + Send + 'static,
    {
        let tx = self.done_tx.clone();
        self.tasks.spawn(async move {
            let _ = tx.send(work.await).await;
        });
    }

    /// An engine error: counted, shown, logged.
    fn failed(&mut self, what: &str, e: &EngineError) {
        warn!(error = %e, "autoscaling: {what} failed");
        let text = e.to_string();
        let kind = e.class();
        self.links.status.update(|r| {
            r.error(kind);
            r.engine_error = Some(text);
        });
    }

    /// Backs off after a failure: doubling, from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`].
    fn back_off(&mut self, now: Instant) {
        self.failures += 1;
        let wait = BACKOFF_FIRST
            .saturating_mul(1 << self.failures.saturating_sub(1).min(10))
            .min(BACKOFF_MAX);
        self.backoff_until = Some(now + wait);
        warn!(
            failures = self.failures,
            wait_s = wait.as_secs_f64(),
            "autoscaling backs off: no start before then"
        );
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|until| now < until)
    }

    fn done(&mut self, done: Done) {
        let now = Instant::now();
        match done {
            Done::Connected(result) => {
                self.connecting = false;
                match result {
                    Ok(engine) => {
                        let mode = match engine.mode {
                            Mode::Compose { .. } => "compose",
                            Mode::Swarm { .. } => "swarm",
                        };
                        info!(service = %self.s.autoscale.service, mode, "autoscaling: Docker engine reached");
                        self.links.status.update(|r| {
                            r.mode = Some(mode);
                            r.engine_error = None;
                        });
                        self.engine = Some(Arc::new(engine));
                        self.failures = 0;
                        self.backoff_until = None;
                        self.listed = None;
                    }
                    Err(e) => {
                        self.failed("reaching the Docker engine", &e);
                        warn!(
                            "autoscaling: the balancer serves the backends it finds, without scaling them"
                        );
                        self.back_off(now);
                    }
                }
            }
            Done::Listed(result) => {
                self.listing = false;
                match result {
                    Ok(replicas) => {
                        self.replicas = replicas;
                        self.listed = Some(now);
                        self.links.status.update(|r| r.engine_error = None);
                    }
                    Err(e) => {
                        self.failed("listing the service's containers", &e);
                        self.listed = Some(now);
                        if matches!(e, EngineError::Unreachable { .. }) {
                            self.engine = None;
                            self.back_off(now);
                        }
                    }
                }
            }
            Done::Started { how, began, result } => {
                self.pending = self.pending.saturating_sub(1);
                self.listed = None;
                match result {
                    Ok(replica) => {
                        self.links.status.update(|r| r.count(how, true));
                        let Some(ip) = replica.addr else {
                            return;
                        };
                        let addr = SocketAddr::new(ip, self.s.port);
                        let deadline = began + self.s.autoscale.start_timeout;
                        info!(
                            container = %replica.name,
                            %addr,
                            how,
                            ms = began.elapsed().as_secs_f64() * 1e3,
                            "autoscaling: container started; watching it"
                        );
                        let _ = self.links.prober.try_send(Command::Watch {
                            addr,
                            until: deadline,
                        });
                        self.phases.insert(
                            replica.id.clone(),
                            Phase::Starting {
                                addr,
                                began,
                                since: SystemTime::now(),
                                deadline,
                                answered: None,
                            },
                        );
                        if !self.replicas.iter().any(|r| r.id == replica.id) {
                            self.replicas.push(replica);
                        }
                    }
                    Err(e) => {
                        self.links.status.update(|r| r.count(how, false));
                        self.failed("starting a container", &e);
                        self.back_off(now);
                    }
                }
            }
            Done::Stopped { id, result } => {
                self.phases.remove(&id);
                self.listed = None;
                let ok = result.is_ok();
                self.links.status.update(|r| r.count("stop", ok));
                match result {
                    Ok(()) => info!(container = %self.name(&id), "autoscaling: container stopped"),
                    Err(e) => self.failed("stopping a container", &e),
                }
            }
            Done::Removed { id, result } => {
                self.phases.remove(&id);
                self.listed = None;
                match result {
                    Ok(()) => info!(container = %self.name(&id), "autoscaling: container removed"),
                    Err(e) => self.failed("removing a container", &e),
                }
            }
            Done::Scaled { from, to, result } => {
                self.pending = 0;
                self.listed = None;
                match result {
                    Ok(()) => info!(from, replicas = to, "autoscaling: swarm service scaled"),
                    Err(e) => {
                        self.swarm_wanted = None;
                        self.failed("scaling the swarm service", &e);
                        self.back_off(now);
                    }
                }
            }
        }
    }

    fn name(&self, id: &str) -> String {
        self.replicas
            .iter()
            .find(|r| r.id == id)
            .map_or_else(|| id.chars().take(12).collect(), |r| r.name.clone())
    }

    /// The backend address of a replica, if it has one in the swept ranges.
    fn addr_of(&self, r: &Replica) -> Option<SocketAddr> {
        r.addr.map(|ip| SocketAddr::new(ip, self.s.port))
    }

    fn step(&mut self, now: Instant) {
        self.keep_engine(now);
        let snapshot = Arc::clone(&self.links.pool.borrow());
        let held = self.links.waiting.held();
        let ring = &snapshot.routing.backends[..snapshot.routing.ring.len()];
        let inflight: u64 = ring
            .iter()
            .map(|b| b.inflight().saturating_sub(b.tunnels()))
            .sum::<u64>()
            + held;
        let span = self.s.autoscale.down_after.max(self.s.autoscale.up_after);
        self.history.push(Sample { at: now, inflight }, span);
        self.follow(&snapshot, now);
        let counts = self.counts(&snapshot, held);
        let engine_ok = self.engine.is_some();
        let can_start = engine_ok
            && self.s.autoscale.max > 0
            && (counts.starting > 0
                || (!self.backing_off(now)
                    && counts.running + counts.starting < self.s.autoscale.max));
        self.links.waiting.set_can_start(can_start);
        let decision = decide(
            &self.limits(),
            &self.history,
            &counts,
            self.last_change,
            now,
        );
        let current = counts.running + counts.starting;
        let desired = match &decision {
            Decision::Up { to, .. } => *to,
            Decision::Down { .. } => current.saturating_sub(1),
            Decision::Stay { .. } => current,
        };
        // Until the pool has settled (the first sweep's finds have had their `rise` checks),
        // a running container not routed yet is not missing: acting then would start one too
        // many at every balancer start.
        let ready = engine_ok
            && snapshot.routing.settled()
            && self.listed.is_some()
            && (!self.replicas.is_empty() || self.is_swarm());
        let acted = ready && self.act(&decision, &snapshot, &counts, now);
        self.publish(
            &snapshot, &counts, desired, inflight, held, &decision, acted, now,
        );
    }

    fn is_swarm(&self) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|e| matches!(e.mode, Mode::Swarm { .. }))
    }

    /// Connects when there is no engine (after the backoff), lists the containers every
    /// [`LIST_EVERY`].
    fn keep_engine(&mut self, now: Instant) {
        match &self.engine {
            None if !self.connecting && !self.backing_off(now) => {
                self.connecting = true;
                let a = self.s.autoscale.clone();
                let subnets = self.s.subnets.clone();
                self.spawn(async move {
                    Done::Connected(
                        Engine::connect(&a.docker, &a.service, &subnets, CALL_TIMEOUT).await,
                    )
                });
            }
            Some(engine)
                if !self.listing && self.listed.is_none_or(|at| now >= at + LIST_EVERY) =>
            {
                self.listing = true;
                let engine = Arc::clone(engine);
                self.spawn(async move { Done::Listed(engine.replicas().await) });
            }
            _ => {}
        }
    }

    /// Follows the containers being started (routed? given up?) and drained (idle? too long?).
    fn follow(&mut self, snapshot: &Snapshot, now: Instant) {
        let a = self.s.autoscale.clone();
        let member = |addr: SocketAddr| snapshot.members.iter().find(|m| m.backend.addr == addr);
        let mut give_up = Vec::new();
        let mut stop = Vec::new();
        let mut routed = Vec::new();
        for (id, phase) in self.phases.iter_mut() {
            match phase {
                Phase::Starting {
                    addr,
                    began,
                    deadline,
                    answered,
                    ..
                } => {
                    let m = member(*addr);
                    if answered.is_none() && m.is_some() {
                        *answered = Some(now);
                    }
                    if m.is_some_and(|m| m.routed && m.state == pool::State::Healthy) {
                        routed.push((id.clone(), *began, *answered));
                    } else if now >= *deadline {
                        give_up.push((id.clone(), *addr));
                    }
                }
                Phase::Draining {
                    addr,
                    began,
                    last_active,
                    requests,
                    ..
                } => match member(*addr) {
                    // It left on its own (died, or failed its checks): nothing to drain.
                    None => stop.push((id.clone(), *addr, "it left the pool while draining")),
                    Some(m) => {
                        let n = m.backend.requests();
                        if n != *requests || m.backend.inflight() > 0 {
                            (*requests, *last_active) = (n, now);
                        }
                        if now.duration_since(*last_active) >= a.session_idle {
                            stop.push((id.clone(), *addr, "its users were idle for session_idle"));
                        } else if now.duration_since(*began) >= a.drain_max {
                            stop.push((id.clone(), *addr, "drain_max passed"));
                        }
                    }
                },
                Phase::Stopping { .. } => {}
            }
        }
        for (id, began, answered) in routed {
            self.phases.remove(&id);
            let name = self.name(&id);
            let to_routed = now.duration_since(began);
            let to_answer = answered.map(|at| at.duration_since(began));
            info!(
                container = %name,
                start_to_answer_ms = to_answer.map(|d| d.as_secs_f64() * 1e3),
                start_to_routed_ms = to_routed.as_secs_f64() * 1e3,
                "autoscaling: started container routed"
            );
            self.failures = 0;
            self.links.status.update(|r| {
                r.last_start = Some(status::LastStart {
                    container: name,
                    to_answer,
                    to_routed,
                })
            });
        }
        for (id, addr) in give_up {
            let name = self.name(&id);
            warn!(
                container = %name,
                %addr,
                start_timeout = ?a.start_timeout,
                "autoscaling: started container never became healthy; giving up on it and removing it"
            );
            self.links.status.update(|r| r.count("give_up", true));
            let _ = self.links.prober.try_send(Command::Remove {
                addr,
                reason: "autoscaling gave up on it: not healthy within start_timeout".into(),
                until: now + STOPPING_BAR,
            });
            self.phases.insert(
                id.clone(),
                Phase::Stopping {
                    since: SystemTime::now(),
                },
            );
            self.back_off(now);
            if let Some(engine) = &self.engine {
                let engine = Arc::clone(engine);
                self.spawn(async move {
                    let result = engine.remove(&id).await;
                    Done::Removed { id, result }
                });
            }
        }
        for (id, addr, why) in stop {
            self.stop(id, addr, why, now);
        }
    }

    /// Takes a drained container out of the pool and stops it.
    fn stop(&mut self, id: String, addr: SocketAddr, why: &str, now: Instant) {
        let name = self.name(&id);
        info!(container = %name, %addr, why, "autoscaling: stopping drained container");
        let _ = self.links.prober.try_send(Command::Remove {
            addr,
            reason: format!("autoscaling stopped it: {why}"),
            until: now + STOPPING_BAR,
        });
        self.phases.insert(
            id.clone(),
            Phase::Stopping {
                since: SystemTime::now(),
            },
        );
        self.last_change = Some(now);
        let Some(engine) = &self.engine else {
            return;
        };
        let engine = Arc::clone(engine);
        self.spawn(async move {
            let result = engine.stop(&id).await;
            Done::Stopped { id, result }
        });
    }

    /// The containers as [`decide`] sees them.
    fn counts(&self, snapshot: &Snapshot, held: u64) -> Counts {
        let ring = &snapshot.routing.backends[..snapshot.routing.ring.len()];
        let ours: Vec<SocketAddr> = self
            .replicas
            .iter()
            .filter(|r| r.running() && !self.phases.contains_key(&r.id))
            .filter_map(|r| self.addr_of(r))
            .collect();
        let running = ring.iter().filter(|b| ours.contains(&b.addr)).count() as u32;
        let others = ring.len() as u32 - running;
        let mut starting = self.pending
            + self
                .phases
                .values()
                .filter(|p| matches!(p, Phase::Starting { .. }))
                .count() as u32;
        if let Some(wanted) = self.swarm_wanted {
            starting = starting.max(wanted.saturating_sub(running));
        }
        let draining = self
            .phases
            .values()
            .filter(|p| !matches!(p, Phase::Starting { .. }))
            .count() as u32;
        Counts {
            running,
            others,
            starting,
            draining,
            held,
        }
    }

    /// Carries out `decision`; whether it did something.
    fn act(
        &mut self,
        decision: &Decision,
        snapshot: &Snapshot,
        counts: &Counts,
        now: Instant,
    ) -> bool {
        if self.last_why.as_ref() != Some(decision.why()) {
            debug!(decision = ?decision, "autoscaling decision");
            self.last_why = Some(decision.why().clone());
        }
        let current = counts.running + counts.starting;
        match decision {
            Decision::Up { to, why } if *to > current => {
                if self.backing_off(now) {
                    return false;
                }
                info!(from = current, to, reason = %why, "autoscaling: scale up");
                self.last_change = Some(now);
                if self.is_swarm() {
                    self.scale_swarm(*to);
                } else {
                    self.up(to - current);
                }
                true
            }
            // Swarm picks the task it removes when the replica count drops: draining one first
            // would drain the wrong one as often as not. Not scaled down (see the README).
            Decision::Down { .. } if self.is_swarm() => false,
            Decision::Down { why } => self.down(why, snapshot, counts, now),
            _ => false,
        }
    }

    /// Brings `need` more containers: undrains draining ones first (they are up and warm),
    /// then starts stopped ones, then creates new ones from a running replica.
    fn up(&mut self, mut need: u32) {
        let draining: Vec<(String, SocketAddr)> = self
            .phases
            .iter()
            .filter_map(|(id, p)| match p {
                Phase::Draining { addr, .. } => Some((id.clone(), *addr)),
                _ => None,
            })
            .collect();
        for (id, addr) in draining.into_iter().take(need as usize) {
            info!(container = %self.name(&id), %addr, "autoscaling: undraining container: load is back");
            let _ = self
                .links
                .prober
                .try_send(Command::Drain { addr, on: false });
            self.phases.remove(&id);
            self.links.status.update(|r| r.count("undrain", true));
            need -= 1;
        }
        let Some(engine) = self.engine.clone() else {
            return;
        };
        let stopped: Vec<String> = self
            .replicas
            .iter()
            .filter(|r| !r.running() && !self.phases.contains_key(&r.id))
            .map(|r| r.id.clone())
            .take(need as usize)
            .collect();
        let template = self
            .replicas
            .iter()
            .rev()
            .find(|r| r.running() && r.addr.is_some())
            .or_else(|| self.replicas.iter().rev().find(|r| r.addr.is_some()))
            .or_else(|| self.replicas.last())
            .cloned();
        let creates = need.saturating_sub(stopped.len() as u32);
        if creates > 0 && template.is_none() {
            warn!("autoscaling: no container of the service to copy; start one by hand first");
            return;
        }
        self.pending += need;
        // One task, one container after the other: creates number containers from what the
        // engine lists, so two at once would race for a number.
        let tx = self.done_tx.clone();
        self.tasks.spawn(async move {
            for id in stopped {
                let began = Instant::now();
                let result = engine.start(&id).await;
                let _ = tx
                    .send(Done::Started {
                        how: "start",
                        began,
                        result,
                    })
                    .await;
            }
            if let Some(template) = template {
                for _ in 0..creates {
                    let began = Instant::now();
                    let result = engine.create_from(&template).await;
                    let failed = result.is_err();
                    let _ = tx
                        .send(Done::Started {
                            how: "create",
                            began,
                            result,
                        })
                        .await;
                    if failed {
                        break;
                    }
                }
            }
        });
    }

    fn scale_swarm(&mut self, to: u32) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        self.swarm_wanted = Some(to);
        self.pending = 1;
        self.spawn(async move {
            // The count the service has now, for the log: it includes tasks still starting.
            let from = engine.service_replicas().await.ok();
            let result = engine.scale_service(u64::from(to)).await;
            Done::Scaled {
                from,
                to: u64::from(to),
                result,
            }
        });
    }

    /// Drains the running container with the fewest active sessions and no open tunnel.
    fn down(&mut self, why: &Why, snapshot: &Snapshot, counts: &Counts, now: Instant) -> bool {
        let ring = &snapshot.routing.backends[..snapshot.routing.ring.len()];
        let candidate = self
            .replicas
            .iter()
            .filter(|r| r.running() && !self.phases.contains_key(&r.id))
            .filter_map(|r| {
                let addr = self.addr_of(r)?;
                let b = ring.iter().find(|b| b.addr == addr)?;
                (b.tunnels() == 0).then(|| (r, addr, b.sessions(), b.inflight()))
            })
            .min_by_key(|(r, _, sessions, inflight)| {
                (
                    *sessions,
                    *inflight,
                    std::cmp::Reverse(r.number.unwrap_or(0)),
                )
            });
        let Some((r, addr, sessions, _)) = candidate else {
            return false;
        };
        let (id, name) = (r.id.clone(), r.name.clone());
        info!(
            container = %name,
            %addr,
            sessions,
            from = counts.running,
            to = counts.running - 1,
            reason = %why,
            "autoscaling: scale down: draining container"
        );
        let _ = self
            .links
            .prober
            .try_send(Command::Drain { addr, on: true });
        self.links.status.update(|r| r.count("drain", true));
        self.phases.insert(
            id,
            Phase::Draining {
                addr,
                began: now,
                since: SystemTime::now(),
                last_active: now,
                requests: u64::MAX,
            },
        );
        self.last_change = Some(now);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        snapshot: &Snapshot,
        counts: &Counts,
        desired: u32,
        inflight: u64,
        held: u64,
        decision: &Decision,
        acted: bool,
        now: Instant,
    ) {
        let ring = &snapshot.routing.backends[..snapshot.routing.ring.len()];
        let mut containers: Vec<status::Container> = Vec::new();
        for r in &self.replicas {
            let addr = self.addr_of(r);
            let (state, since) = match self.phases.get(&r.id) {
                Some(Phase::Starting { since, .. }) => ("starting", Some(*since)),
                Some(Phase::Draining { since, .. }) => ("draining", Some(*since)),
                Some(Phase::Stopping { since, .. }) => ("stopping", Some(*since)),
                None if r.running() && addr.is_some_and(|a| ring.iter().any(|b| b.addr == a)) => {
                    ("running", None)
                }
                None if r.running() => ("unrouted", None),
                None => continue,
            };
            containers.push(status::Container {
                name: r.name.clone(),
                id: r.id.chars().take(12).collect(),
                addr,
                state,
                since,
            });
        }
        let stopping = self
            .phases
            .values()
            .filter(|p| matches!(p, Phase::Stopping { .. }))
            .count() as u32;
        let backoff_until = self
            .backoff_until
            .filter(|until| *until > now)
            .map(|until| SystemTime::now() + until.duration_since(now));
        let current = counts.running + counts.starting;
        let action = match decision {
            Decision::Up { to, .. } if *to > current && acted => Some("up"),
            Decision::Down { .. } if acted => Some("down"),
            _ => None,
        };
        let reason = if self.engine.is_none() {
            "the Docker engine is not reachable: not scaling".to_string()
        } else {
            decision.why().to_string()
        };
        self.links.status.update(|r| {
            r.running = counts.running;
            r.starting = counts.starting;
            r.draining = counts.draining.saturating_sub(stopping);
            r.stopping = stopping;
            r.desired = desired;
            r.inflight = inflight;
            r.held = held;
            r.containers = containers;
            r.backoff_until = backoff_until;
            if let Some(action) = action {
                r.last_decision = Some(status::LastDecision {
                    at: SystemTime::now(),
                    action,
                    from: current,
                    to: desired,
                    reason: reason.clone(),
                });
            }
            r.reason = reason;
        });
    }
}
