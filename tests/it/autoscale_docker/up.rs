//! a. Load up: from one webapp to `max` under a bounded load of users who start new sessions
//! as they go, each new container taking traffic, no request failing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{SAMPLE_EVERY, SLACK, Session, Settings};
use crate::support::User;
use crate::support::docker::{Compose, Lab, container_ip, inspect};

/// The load: this many users at once, each always waiting on one `GET /work?ms=WORK_MS`, so
/// in flight stays near `USERS`, six times `target_inflight`.
const USERS: usize = 48;
const WORK_MS: u64 = 300;
/// A user starts a new session (a new cookie jar) after this many pages: new users are what
/// reach the new containers, since pinned ones stay where they are.
const SESSION_PAGES: u64 = 8;
/// Hard caps on the load, whatever the phase's own deadline.
const LOAD_FOR: Duration = Duration::from_secs(60);
const MAX_PAGES_PER_USER: u64 = 400;
/// Load up: the service reaches `max` within this of the load step.
const UP_BOUND: Duration = Duration::from_secs(30);

/// What the load users share: the pages each backend served (and when the first came), and
/// every failure.
#[derive(Default)]
pub(super) struct Traffic {
    pub(super) stop: AtomicBool,
    served: Mutex<BTreeMap<IpAddr, (Instant, u64)>>,
    pub(super) failures: Mutex<Vec<String>>,
    pages: AtomicU64,
}

impl Traffic {
    pub(super) fn fail(&self, e: String) {
        self.failures.lock().expect("failures").push(e);
    }

    fn served(&self) -> BTreeMap<IpAddr, (Instant, u64)> {
        self.served.lock().expect("served").clone()
    }
}

/// A load user: one `GET /work` at a time, a new session every `SESSION_PAGES`; its last
/// session when told to stop.
async fn load_user(id: usize, base: String, traffic: Arc<Traffic>) -> (User, Session) {
    let deadline = Instant::now() + LOAD_FOR;
    let mut user = User::at(&base);
    let mut session = Session::default();
    let path = format!("work?ms={WORK_MS}");
    let mut n = 0;
    while !traffic.stop.load(Ordering::SeqCst)
        && Instant::now() < deadline
        && n < MAX_PAGES_PER_USER
    {
        if n > 0 && n % SESSION_PAGES == 0 {
            user = User::at(&base);
            session = Session::default();
        }
        n += 1;
        match user.get_path(&path).await {
            Ok(page) => {
                traffic.pages.fetch_add(1, Ordering::Relaxed);
                traffic
                    .served
                    .lock()
                    .expect("served")
                    .entry(page.backend)
                    .or_insert((Instant::now(), 0))
                    .1 += 1;
                if let Err(e) = session.record(page.backend, page.views) {
                    traffic.fail(format!("load user {id}: session reset {e}"));
                }
            }
            Err(e) => {
                traffic.fail(format!("load user {id}: {e}"));
                // A failed request is counted; not retried in a tight loop.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    (user, session)
}

/// a. Load up: from one webapp to `max` under load, each new container taking traffic, no
/// request failing. Gives the users to keep for the load down, one on each container.
pub(super) async fn load_up(
    lab: &Compose,
    network: &str,
    lb: &mut Lab,
    s: &Settings,
) -> Vec<(User, Session)> {
    let first = lab.webapps();
    let traffic = Arc::new(Traffic::default());
    let step = Instant::now();
    let users: Vec<_> = (0..USERS)
        .map(|id| tokio::spawn(load_user(id, lb.base.clone(), Arc::clone(&traffic))))
        .collect();

    // Sample until `max` webapps are routed and each has served this load.
    let mut first_new: Option<Duration> = None;
    let mut at_max: Option<Duration> = None;
    let mut peak_inflight = 0;
    let mut desired = Vec::new();
    let deadline = step + UP_BOUND + SLACK;
    let outcome = loop {
        let h = match lb.health().await {
            Ok(h) => h,
            Err(e) => break Err(format!("/_lb/health: {e}")),
        };
        peak_inflight = peak_inflight.max(h.scale("inflight"));
        let d = h.scale("desired");
        if desired.last() != Some(&d) {
            desired.push(d);
        }
        let routed = h.healthy.len() as u64;
        if routed >= 2 && first_new.is_none() {
            first_new = Some(step.elapsed());
        }
        if routed == s.max && at_max.is_none() {
            at_max = Some(step.elapsed());
        }
        let served = traffic.served();
        if at_max.is_some() && h.healthy.iter().all(|a| served.contains_key(a)) {
            // Long enough for every user to be on a session begun with all of them routed.
            let sessions = Duration::from_millis(WORK_MS * SESSION_PAGES * 2);
            if step.elapsed() >= at_max.unwrap_or_default() + sessions {
                break Ok(h);
            }
        }
        if routed > s.max {
            break Err(format!(
                "{routed} webapps routed, above max {}: {:#}",
                s.max, h.body
            ));
        }
        if Instant::now() > deadline {
            break Err(format!(
                "not at max {} with traffic on each within {:?}; served {served:?}; {:#}",
                s.max,
                deadline - step,
                h.body
            ));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    traffic.stop.store(true, Ordering::SeqCst);
    let mut kept_by_backend: BTreeMap<IpAddr, (User, Session)> = BTreeMap::new();
    for u in users {
        let (user, session) = u.await.expect("a load user");
        if let Some(b) = session.backend {
            kept_by_backend.entry(b).or_insert((user, session));
        }
    }
    let stopped = step.elapsed();
    let h = outcome.unwrap_or_else(|e| panic!("load up: {e}"));
    let failures = traffic.failures.lock().expect("failures").clone();
    let pages = traffic.pages.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "load up: {} of {pages} requests failed: {failures:#?}",
        failures.len()
    );
    let at_max = at_max.unwrap_or_default();
    assert!(
        at_max <= UP_BOUND,
        "the service reached max {} {at_max:?} after the load step; bound {UP_BOUND:?} \
         (up_after {:?})",
        s.max,
        s.up_after
    );

    // The containers: compose's first and the balancer's, named and labelled as compose would.
    let running = lab.webapps();
    assert_eq!(running.len() as u64, s.max, "{running:?}");
    let ips: BTreeSet<IpAddr> = running.iter().map(|id| container_ip(id, network)).collect();
    assert_eq!(
        h.healthy, ips,
        "the routed webapps are the service's containers"
    );
    let served = traffic.served();
    for a in &ips {
        assert!(
            served.get(a).is_some_and(|(_, n)| *n > 0) && h.requests(a) > 0,
            "webapp {a} took traffic: served {served:?}, /_lb/health {:#}",
            h.body
        );
    }
    let mut created = Vec::new();
    for id in running.iter().filter(|id| !first.contains(id)) {
        let c = inspect(&["container", "inspect", id]);
        let name = c["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        let labels = &c["Config"]["Labels"];
        assert_eq!(
            labels["io.sweeplb.autoscaled"], "true",
            "{name} was created by the balancer and says so"
        );
        assert_eq!(
            labels["com.docker.compose.project"],
            lab.project.as_str(),
            "{name}"
        );
        assert_eq!(labels["com.docker.compose.service"], "webapp", "{name}");
        let number = labels["com.docker.compose.container-number"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            name,
            format!("{}_webapp_{number}", lab.project),
            "named as compose v1 names its containers"
        );
        created.push(name.to_string());
    }
    let a = h.autoscale();
    assert_eq!(a["running"].as_u64(), Some(s.max), "{a:#}");
    assert_eq!(a["engine"], "ok", "{a:#}");
    let metrics = lb.metrics().await;
    assert_eq!(
        metrics.value("sweeplb_autoscale_containers", &[("state", "running")]),
        Some(s.max as f64),
        "{}",
        metrics.text
    );
    let added = metrics.sum(
        "sweeplb_autoscale_actions_total",
        &[("action", "create"), ("result", "ok")],
    ) + metrics.sum(
        "sweeplb_autoscale_actions_total",
        &[("action", "start"), ("result", "ok")],
    );
    assert!(
        added >= (s.max - 1) as f64,
        "the actions counted each container added: {}",
        metrics.text
    );
    let first_taken: Vec<String> = served
        .iter()
        .map(|(a, (at, _))| format!("{a} {:.1?}", at.duration_since(step)))
        .collect();
    eprintln!(
        "[autoscale] load up ({USERS} users, GET /work?ms={WORK_MS}, target_inflight {}, \
         up_after {:?}): first new webapp routed {:.1?} after the load step, max {} routed \
         {at_max:.1?}; desired went {desired:?}; peak inflight {peak_inflight}; first page \
         from each webapp {first_taken:?}; created {created:?}; {pages} requests, 0 \
         failed; load ran {stopped:.1?}",
        s.target_inflight,
        s.up_after,
        first_new.unwrap_or_default(),
        s.max,
    );
    let kept: Vec<(User, Session)> = kept_by_backend.into_values().collect();
    assert_eq!(
        kept.len() as u64,
        s.max,
        "the load left a user on each webapp, to keep for the load down"
    );
    kept
}
