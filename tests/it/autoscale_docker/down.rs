//! b. Load down: back to `min`, one container drained at a time and stopped only after it was
//! drained; users kept through a drain keep their session until their container is stopped,
//! then move once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::{SAMPLE_EVERY, SLACK, Session, Settings};
use crate::support::User;
use crate::support::docker::{Compose, Lab, finished_at, inspect, logs};

/// How often the kept users of the load-down ask, and the pages a "quiet" one still asks for
/// once its container is draining, before it idles.
const KEPT_EVERY: Duration = Duration::from_secs(1);
const QUIET_PAGES: usize = 2;

/// What the kept users of the load down share with the sampling loop.
#[derive(Default)]
struct Watch {
    stop: AtomicBool,
    /// Addresses draining right now, on the balancer's side.
    draining: Mutex<BTreeSet<IpAddr>>,
    /// Addresses the pool lists as joining, healthy or draining.
    present: Mutex<BTreeSet<IpAddr>>,
    /// Taken by the first user whose container drains: that one stays active through it.
    active_taken: AtomicBool,
}

/// One kept user's pages: when, from whom, the count.
#[derive(Debug, Default)]
struct Kept {
    id: usize,
    pages: Vec<(Instant, IpAddr, u64)>,
    failures: Vec<String>,
    /// Containers it saw draining under it, and whether it stayed active through the drain.
    drains: Vec<(IpAddr, bool)>,
}

/// A user kept through the load down: one `GET /` every `KEPT_EVERY`. When its container
/// drains, the first such user stays active (the container is then stopped at `drain_max`);
/// the others ask `QUIET_PAGES` more times and idle until it is gone (stopped after
/// `session_idle`); then each asks again, and moves.
async fn kept_user(
    id: usize,
    user: User,
    mut session: Session,
    watch: Arc<Watch>,
    until: Instant,
) -> Kept {
    let mut kept = Kept {
        id,
        ..Kept::default()
    };
    let mut quiet_on: Option<(IpAddr, usize)> = None;
    while !watch.stop.load(Ordering::SeqCst) && Instant::now() < until {
        match user.get().await {
            Ok(page) => {
                kept.pages.push((Instant::now(), page.backend, page.views));
                if let Err(e) = session.record(page.backend, page.views) {
                    kept.failures
                        .push(format!("kept user {id}: session reset {e}"));
                }
                let b = page.backend;
                let draining = watch.draining.lock().expect("draining").contains(&b);
                if draining && !kept.drains.iter().any(|(d, _)| *d == b) {
                    let active = !watch.active_taken.swap(true, Ordering::SeqCst);
                    kept.drains.push((b, active));
                    if !active {
                        quiet_on = Some((b, 0));
                    }
                }
                if let Some((q, n)) = &mut quiet_on {
                    if *q == b {
                        *n += 1;
                    }
                }
            }
            Err(e) => kept.failures.push(format!("kept user {id}: {e}")),
        }
        if let Some((q, n)) = quiet_on {
            if n >= QUIET_PAGES {
                while !watch.stop.load(Ordering::SeqCst)
                    && Instant::now() < until
                    && watch.present.lock().expect("present").contains(&q)
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                quiet_on = None;
                continue;
            }
        }
        tokio::time::sleep(KEPT_EVERY).await;
    }
    kept
}

/// Each container's states as `/_lb/health`'s autoscale block listed them, on change.
#[derive(Debug, Default)]
struct Timeline {
    addr: Option<IpAddr>,
    /// (since the load drop, wall clock, state); "gone" when no longer listed.
    states: Vec<(Duration, SystemTime, String)>,
}

impl Timeline {
    fn note(&mut self, at: Duration, state: &str) {
        if self.states.last().is_none_or(|(_, _, s)| s != state) {
            self.states.push((at, SystemTime::now(), state.to_string()));
        }
    }

    fn first(&self, state: &str) -> Option<&(Duration, SystemTime, String)> {
        self.states.iter().find(|(_, _, s)| s == state)
    }

    /// When it stopped being drained: its first state after `draining`.
    fn after_draining(&self) -> Option<&(Duration, SystemTime, String)> {
        let i = self.states.iter().position(|(_, _, s)| s == "draining")?;
        self.states[i..].iter().find(|(_, _, s)| s != "draining")
    }
}

/// One container the load down stopped: when its drain began (since the load drop), how long
/// it lasted, and what came after it.
struct Drained {
    name: String,
    addr: IpAddr,
    began: Duration,
    lasted: Duration,
    then: String,
}

impl std::fmt::Debug for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) draining at {:.1?} for {:.1?}, then {}",
            self.name, self.addr, self.began, self.lasted, self.then
        )
    }
}

/// b. Load down: back to `min`, one container drained at a time and stopped only after it
/// was drained; the kept users keep their sessions through a drain and move once, after it.
pub(super) async fn load_down(
    lab: &Compose,
    lb: &mut Lab,
    s: &Settings,
    kept: Vec<(User, Session)>,
) {
    let drop_at = Instant::now();
    let watch = Arc::new(Watch::default());
    let bound = (s.down_after + s.drain_max + SLACK) * (s.max - s.min) as u32;
    let until = drop_at + bound + SLACK;
    let users: Vec<_> = kept
        .into_iter()
        .enumerate()
        .map(|(id, (user, session))| {
            tokio::spawn(kept_user(id, user, session, Arc::clone(&watch), until))
        })
        .collect();

    let mut containers: BTreeMap<String, Timeline> = BTreeMap::new();
    let mut pool: BTreeMap<IpAddr, Vec<(Duration, String)>> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();
    let mut first_drain: Option<Duration> = None;
    let mut max_draining = 0;
    let deadline = drop_at + bound;
    let outcome = loop {
        let h = match lb.health().await {
            Ok(h) => h,
            Err(e) => {
                violations.push(format!("{:.1?}: /_lb/health: {e}", drop_at.elapsed()));
                tokio::time::sleep(SAMPLE_EVERY).await;
                continue;
            }
        };
        let at = drop_at.elapsed();
        let a = h.autoscale();
        let listed: Vec<(String, Option<IpAddr>, String)> = a["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let addr = c["addr"]
                    .as_str()
                    .and_then(|t| t.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.ip());
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    addr,
                    c["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        for (name, addr, state) in &listed {
            let t = containers.entry(name.clone()).or_default();
            t.addr = t.addr.or(*addr);
            t.note(at, state);
        }
        for (name, t) in containers.iter_mut() {
            if !listed.iter().any(|(n, _, _)| n == name) {
                t.note(at, "gone");
            }
        }
        for b in h.body["backends"].as_array().into_iter().flatten() {
            let Some(addr) = b["addr"]
                .as_str()
                .and_then(|t| t.parse::<std::net::SocketAddr>().ok())
            else {
                continue;
            };
            let state = b["state"].as_str().unwrap_or_default().to_string();
            let states = pool.entry(addr.ip()).or_default();
            if states.last().is_none_or(|(_, s)| *s != state) {
                states.push((at, state));
            }
        }
        for (addr, states) in pool.iter_mut() {
            if !h.listed.contains(addr) && states.last().is_none_or(|(_, s)| s != "gone") {
                states.push((at, "gone".to_string()));
            }
        }

        let draining_listed = listed.iter().filter(|(_, _, st)| st == "draining").count() as u64;
        let draining = h.scale("draining").max(draining_listed);
        max_draining = max_draining.max(draining);
        if draining > 0 && first_drain.is_none() {
            first_drain = Some(at);
        }
        if draining > 1 {
            violations.push(format!("{at:.1?}: {draining} draining at once: {a:#}"));
        }
        let routed = h.scale("running");
        if routed + draining < s.min || (h.healthy.len() as u64) < s.min {
            violations.push(format!(
                "{at:.1?}: below min {}: running {routed}, draining {draining}, pool healthy {:?}",
                s.min, h.healthy
            ));
        }
        *watch.draining.lock().expect("draining") = listed
            .iter()
            .filter(|(_, _, st)| st == "draining")
            .filter_map(|(_, addr, _)| *addr)
            .chain(h.draining.iter().copied())
            .collect();
        *watch.present.lock().expect("present") = h.body["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| {
                ["joining", "healthy", "draining"].contains(&b["state"].as_str().unwrap_or(""))
            })
            .filter_map(|b| b["addr"].as_str()?.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip())
            .collect();

        let settled = routed == s.min
            && draining == 0
            && h.scale("starting") == 0
            && h.healthy.len() as u64 == s.min
            && h.listed.len() as u64 == s.min;
        if settled && lab.webapps().len() as u64 == s.min {
            break Ok(h);
        }
        if Instant::now() > deadline {
            break Err(format!(
                "not back to min {} within {bound:?} of the load drop: {:#}",
                s.min, h.body
            ));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    let settled_after = drop_at.elapsed();
    watch.stop.store(true, Ordering::SeqCst);
    let mut kept = Vec::new();
    for u in users {
        kept.push(u.await.expect("a kept user"));
    }
    let h = outcome.unwrap_or_else(|e| panic!("load down: {e}"));
    assert!(violations.is_empty(), "load down: {violations:#?}");

    // The stopped containers: stopped, not removed, each drained before it was stopped.
    let running: BTreeSet<String> = lab.webapps().into_iter().collect();
    let all = lab.all("webapp");
    let stopped: Vec<&String> = all.iter().filter(|id| !running.contains(*id)).collect();
    assert_eq!(
        stopped.len() as u64,
        s.max - s.min,
        "the balancer stopped (and did not remove) {} webapps: all {all:?}, running {running:?}",
        s.max - s.min
    );
    let mut drains: Vec<Drained> = Vec::new();
    for id in &stopped {
        let c = inspect(&["container", "inspect", id]);
        let name = c["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let t = containers.get(&name).unwrap_or_else(|| {
            panic!("the stopped {name} was in the autoscale block: {containers:#?}")
        });
        let (began, began_wall, _) = t
            .first("draining")
            .unwrap_or_else(|| panic!("{name} was stopped without being seen draining: {t:?}"));
        let running_then_stopped = t
            .states
            .windows(2)
            .any(|w| w[0].2 == "running" && ["stopping", "gone"].contains(&w[1].2.as_str()));
        assert!(
            !running_then_stopped,
            "{name} went from running to stopped: {t:?}"
        );
        let finished = finished_at(id);
        assert!(
            finished > *began_wall,
            "{name} stopped before it was seen draining: {t:?}"
        );
        let addr = t
            .addr
            .unwrap_or_else(|| panic!("{name} had an address in the autoscale block: {t:?}"));
        let states = pool.get(&addr).cloned().unwrap_or_default();
        let skipped_drain = states
            .windows(2)
            .any(|w| w[0].1 == "healthy" && ["leaving", "gone"].contains(&w[1].1.as_str()));
        assert!(
            !skipped_drain && states.iter().any(|(_, s)| s == "draining"),
            "{name} ({addr}) left the pool without draining first: {states:?}"
        );
        let ended = t
            .after_draining()
            .map(|(at, _, state)| (*at, state.clone()))
            .unwrap_or((settled_after, "?".to_string()));
        drains.push(Drained {
            name,
            addr,
            began: *began,
            lasted: ended.0 - *began,
            then: ended.1,
        });
    }
    drains.sort_by_key(|d| d.began);

    // The kept users: no failure, no reset; one on each drained container, served by it while
    // it drained, then moved once.
    let failures: Vec<&String> = kept.iter().flat_map(|k| &k.failures).collect();
    assert!(
        failures.is_empty(),
        "load down: kept users failed: {failures:#?}"
    );
    let drained: BTreeSet<IpAddr> = drains.iter().map(|d| d.addr).collect();
    for k in &kept {
        let strays: Vec<_> = k
            .pages
            .windows(2)
            .filter(|w| w[0].1 != w[1].1 && !drained.contains(&w[0].1))
            .collect();
        assert!(
            strays.is_empty(),
            "kept user {} moved off a webapp that was not stopped: {strays:?}",
            k.id
        );
    }
    let mut through = Vec::new();
    for Drained {
        name,
        addr,
        began,
        lasted,
        ..
    } in &drains
    {
        let began_at = drop_at + *began;
        let on: Vec<&Kept> = kept
            .iter()
            .filter(|k| k.drains.iter().any(|(d, _)| d == addr))
            .collect();
        assert!(
            !on.is_empty(),
            "a kept user was on {name} ({addr}) when it drained: {kept:#?}"
        );
        for k in on {
            let served_while: Vec<&(Instant, IpAddr, u64)> = k
                .pages
                .iter()
                .filter(|(at, b, _)| b == addr && *at >= began_at)
                .collect();
            assert!(
                !served_while.is_empty(),
                "kept user {} was served by {name} after it began draining: {:?}",
                k.id,
                k.pages
            );
            // Its pages on the drained container are one run, and another page follows it.
            let on_it: Vec<usize> = (0..k.pages.len())
                .filter(|i| k.pages[*i].1 == *addr)
                .collect();
            let one_run = on_it
                .last()
                .zip(on_it.first())
                .is_some_and(|(l, f)| l - f + 1 == on_it.len());
            let moved = on_it.last().is_some_and(|l| l + 1 < k.pages.len());
            assert!(
                one_run && moved,
                "kept user {} stayed on {name} until it was stopped, then moved once: {:?}",
                k.id,
                k.pages
            );
            let active = k.drains.iter().any(|(d, a)| d == addr && *a);
            if active {
                assert!(
                    *lasted + SAMPLE_EVERY * 2 >= s.drain_max,
                    "{name} was stopped {lasted:?} into its drain while kept user {} was active \
                     on it; drain_max {:?}",
                    k.id,
                    s.drain_max
                );
            } else {
                let last = served_while
                    .last()
                    .map(|(at, _, _)| *at)
                    .unwrap_or(began_at);
                let idle = (began_at + *lasted).saturating_duration_since(last);
                assert!(
                    idle + SAMPLE_EVERY * 2 >= s.session_idle,
                    "{name} was stopped {idle:?} after kept user {}'s last request; \
                     session_idle {:?}",
                    k.id,
                    s.session_idle
                );
            }
            through.push((k.id, name.clone(), served_while.len(), active));
        }
    }
    let logs = logs(&lab.container("balancer"));
    for Drained { name, .. } in &drains {
        assert!(
            logs.lines().filter(|l| l.contains(name.as_str())).count() >= 2,
            "the balancer logged the drain and the stop of {name}:\n{logs}"
        );
    }
    let metrics = lb.metrics().await;
    for action in ["drain", "stop"] {
        assert!(
            metrics.sum(
                "sweeplb_autoscale_actions_total",
                &[("action", action), ("result", "ok")]
            ) >= (s.max - s.min) as f64,
            "{action} counted {} times: {}",
            s.max - s.min,
            metrics.text
        );
    }
    let first_drain = first_drain.unwrap_or_default();
    let pages: usize = kept.iter().map(|k| k.pages.len()).sum();
    eprintln!(
        "[autoscale] load down (down_after {:?}, session_idle {:?}, drain_max {:?}): first \
         drain {first_drain:.1?} after the load drop, back to min {} in {settled_after:.1?}; \
         at most {max_draining} draining at once; drains: \
         {drains:?}; kept users through a drain (user, container, pages served while \
         draining, stayed active): {through:?}; {pages} kept-user requests, 0 failed; last \
         decision {}",
        s.down_after,
        s.session_idle,
        s.drain_max,
        s.min,
        h.autoscale()["last_decision"]
    );
}
