//! Pinned sessions, as users with cookie jars see them: the ring picks a user's first backend
//! and the cookie's pin keeps them there through joins, restarts and other balancers, and on a
//! draining backend; a user moves only when its backend is gone or replaced, or its pin is
//! older than `repin_after`, and `/_lb/health` counts each move once, by reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sweeplb::webapp::Webapp;

use crate::support::{
    Backend, Balancer, Net, Page, Pinned, User, addrs, candidates, custom, eventually, lab, pages,
    serve_webapp, users, webapp, webapps,
};

/// A deadline for what the prober must notice (a join, a drain, a new instance) or the tally
/// must show: a few check intervals, with a wide margin for a loaded 2-core machine.
const WITHIN: Duration = Duration::from_secs(10);

/// The reasons `sessions_moved` counts, each present even at zero.
const REASONS: [&str; 6] = [
    "backend left",
    "backend drained",
    "out of routing",
    "instance replaced",
    "repin_after",
    "unknown pin",
];

fn no_moves() -> BTreeMap<String, u64> {
    REASONS.iter().map(|r| (r.to_string(), 0)).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// How many of `pages` each of `backends` served, zeros included.
fn per_backend(backends: &[SocketAddr], pages: &[Page]) -> BTreeMap<IpAddr, usize> {
    let mut per: BTreeMap<IpAddr, usize> = backends.iter().map(|a| (a.ip(), 0)).collect();
    for p in pages {
        *per.get_mut(&p.backend)
            .unwrap_or_else(|| panic!("{} is not one of {backends:?}", p.backend)) += 1;
    }
    per
}

/// The users (by index) whose page came from `ip`.
fn served_by(pages: &[Page], ip: IpAddr) -> BTreeSet<usize> {
    (0..pages.len())
        .filter(|&i| pages[i].backend == ip)
        .collect()
}

/// What each user has seen so far: where it is, its session's count, its cookie; and how often
/// it moved. [`Trail::step`] holds a round of pages to the contract: a user either stays (same
/// backend, the count goes on, no `Set-Cookie`) or moves (a `Set-Cookie` with another pin for
/// the same key, and the count starts again at 1, as on any backend that never saw it).
struct Trail {
    at: Vec<(IpAddr, u64, Pinned)>,
    moves: Vec<u32>,
    /// A staying user may be sent its own pin again with a new time (`repin_after`).
    refresh_ok: bool,
}

impl Trail {
    /// From the users' first pages, each of which must pin them.
    fn new(first: &[Page]) -> Trail {
        let at = first
            .iter()
            .enumerate()
            .map(|(i, p)| {
                assert_eq!(p.views, 1, "user {i}'s first page: {p:?}");
                let cookie = p
                    .set_cookie
                    .as_deref()
                    .unwrap_or_else(|| panic!("user {i}'s first visit was not pinned: {p:?}"));
                (p.backend, 1, Pinned::parse(cookie))
            })
            .collect();
        Trail {
            at,
            moves: vec![0; first.len()],
            refresh_ok: false,
        }
    }

    /// Checks one round of pages, user by user; returns the users who moved in it.
    fn step(&mut self, pages: &[Page]) -> Vec<usize> {
        assert_eq!(pages.len(), self.at.len(), "one page per user");
        let mut moved = Vec::new();
        for (i, (p, (ip, views, pinned))) in pages.iter().zip(&mut self.at).enumerate() {
            let cookie = p.set_cookie.as_deref().map(Pinned::parse);
            match cookie {
                Some(c) if c.pin != pinned.pin => {
                    assert_eq!(c.key, pinned.key, "user {i} moved under another key");
                    assert_eq!(
                        p.views, 1,
                        "user {i} was re-pinned but kept a session: {p:?}"
                    );
                    self.moves[i] += 1;
                    moved.push(i);
                    *ip = p.backend;
                    *pinned = c;
                }
                _ => {
                    assert_eq!(
                        p.backend, *ip,
                        "user {i} changed backend without a new pin: {p:?}"
                    );
                    assert_eq!(p.views, *views + 1, "user {i}'s session was reset: {p:?}");
                    if let Some(c) = cookie {
                        assert!(
                            self.refresh_ok,
                            "user {i} stayed but was sent a cookie: {:?}",
                            p.set_cookie
                        );
                        assert_eq!(c.key, pinned.key, "user {i}'s key changed");
                        *pinned = c;
                    }
                }
            }
            *views = p.views;
        }
        moved
    }

    /// Asserts a round in which every user stays.
    fn stay(&mut self, pages: &[Page], why: &str) {
        let moved = self.step(pages);
        assert!(moved.is_empty(), "{why}: users {moved:?} moved");
    }

    /// Users who moved at least once.
    fn movers(&self) -> BTreeSet<usize> {
        (0..self.moves.len())
            .filter(|&i| self.moves[i] > 0)
            .collect()
    }

    fn most_moves(&self) -> u32 {
        self.moves.iter().copied().max().unwrap_or(0)
    }

    /// Each user's key, as its cookie says.
    fn keys(&self) -> Vec<String> {
        self.at.iter().map(|(_, _, c)| c.key.clone()).collect()
    }

    /// How many users are pinned to another backend than their key's ring owner among
    /// `backends`: those the ring alone would have moved.
    fn off_ring(&self, backends: &[SocketAddr]) -> usize {
        self.at
            .iter()
            .filter(|(ip, _, c)| candidates(backends, c.key.as_bytes())[0].ip() != *ip)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_from_3_to_5_backends_moves_no_user_and_new_users_reach_all() {
    let net = Net::new(70);
    let (mut backends, lb) = lab(&net, &[10, 11, 12], "").await;
    let old = users(&lb, 50);
    let mut trail = Trail::new(&pages(&old).await);

    backends.extend(webapps(&net, &[13, 14]));
    let all = addrs(&backends);
    lb.wait_healthy(&all, WITHIN).await;
    let off_ring = trail.off_ring(&all);
    for _ in 0..3 {
        trail.stay(&pages(&old).await, "after 3 → 5");
    }
    assert_eq!(lb.moved().await, no_moves());

    let new = pages(&users(&lb, 50)).await;
    let per = per_backend(&all, &new);
    let on_new = per[&net.ip(13)] + per[&net.ip(14)];
    eprintln!(
        "3 → 5: 0 of 50 users moved ({off_ring} of them pinned off their key's new ring \
         owner); 50 new users: {per:?}, {on_new} on the two new backends"
    );
    assert!(
        per.values().all(|&n| n > 0),
        "50 new users did not reach every backend: {per:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backends_users_move_once_and_none_move_back_when_it_returns() {
    let net = Net::new(71);
    let (mut backends, lb) = lab(&net, &[10, 11, 12, 13], "").await;
    let all = addrs(&backends);
    let crowd = users(&lb, 40);
    let first = pages(&crowd).await;
    let mut trail = Trail::new(&first);
    let per = per_backend(&all, &first);
    let victim = *per.iter().max_by_key(|(_, n)| **n).expect("backends").0;
    let theirs = served_by(&first, victim);
    let v = backends
        .iter()
        .position(|b| b.addr.ip() == victim)
        .expect("the victim is a backend");

    backends[v].kill().await;
    // At once (the balancer learns from its failed connects), and again after it has left.
    for _ in 0..2 {
        trail.step(&pages(&crowd).await);
    }
    let remaining: Vec<SocketAddr> = all.iter().copied().filter(|a| a.ip() != victim).collect();
    lb.wait_healthy(&remaining, WITHIN).await;
    for _ in 0..2 {
        trail.step(&pages(&crowd).await);
    }
    assert_eq!(
        trail.movers(),
        theirs,
        "only the killed backend's users move"
    );
    assert_eq!(trail.most_moves(), 1, "a user moved more than once");
    let moved = lb.moved().await;
    eprintln!(
        "killed {victim}: {} of 40 users moved, health says {moved:?}",
        theirs.len()
    );
    assert_eq!(
        moved.values().sum::<u64>(),
        theirs.len() as u64,
        "sessions_moved disagrees with what the users saw: {moved:?}"
    );

    // Back at the same address, the same instance: its old pins would lead to it again, but
    // its users are pinned where they went.
    backends[v] = webapp(all[v]);
    lb.wait_healthy(&all, WITHIN).await;
    for _ in 0..3 {
        trail.stay(&pages(&crowd).await, "after the killed backend came back");
    }
    assert_eq!(lb.moved_total().await, theirs.len() as u64);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_balancer_keeps_every_user_on_its_pinned_backend() {
    let net = Net::new(72);
    let config = net.config("", "");
    let mut backends = webapps(&net, &[10, 11, 12]);
    let lb = Balancer::found(&config, &addrs(&backends)).await;
    let crowd = users(&lb, 40);
    let mut trail = Trail::new(&pages(&crowd).await);
    // A join first, so that the ring alone would now send some users elsewhere.
    backends.push(webapp(net.addr(13)));
    let all = addrs(&backends);
    lb.wait_healthy(&all, WITHIN).await;
    trail.stay(&pages(&crowd).await, "after the join");
    lb.stop().await;

    let lb = Balancer::found(&config, &all).await;
    let crowd: Vec<User> = crowd.iter().map(|u| u.via(&lb)).collect();
    for _ in 0..2 {
        trail.stay(&pages(&crowd).await, "after the restart");
    }
    assert_eq!(lb.moved().await, no_moves());
    let off_ring = trail.off_ring(&all);
    eprintln!("restart: 0 of 40 moved, {off_ring} of them pinned off their key's ring owner");
    assert!(off_ring > 0, "no user's pin differs from the ring: no test");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_arriving_while_a_restarted_balancer_is_still_finding_backends_wait_for_theirs() {
    let net = Net::new(79);
    let config = net.config("", "");
    let backends = webapps(&net, &[10, 11, 12]);
    let all = addrs(&backends);
    let lb = Balancer::found(&config, &all).await;
    let crowd = users(&lb, 30);
    let mut trail = Trail::new(&pages(&crowd).await);
    lb.stop().await;

    // Every user comes back the moment the new balancer listens, before its first sweep has
    // found anyone: their pins name backends it does not know yet.
    let lb = Balancer::start(&config).await;
    let crowd: Vec<User> = crowd.iter().map(|u| u.via(&lb)).collect();
    trail.stay(&pages(&crowd).await, "right after the restart");
    trail.stay(&pages(&crowd).await, "after that");
    assert_eq!(lb.moved().await, no_moves());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_route_every_pinned_cookie_to_the_same_backend() {
    let net = Net::new(73);
    let config = net.config("", "");
    let mut backends = webapps(&net, &[10, 11, 12]);
    let a = Balancer::found(&config, &addrs(&backends)).await;
    let via_a = users(&a, 40);
    let mut trail = Trail::new(&pages(&via_a).await);
    // The second balancer never saw the pool the users were pinned in.
    backends.push(webapp(net.addr(13)));
    let all = addrs(&backends);
    a.wait_healthy(&all, WITHIN).await;
    let b = Balancer::found(&config, &all).await;
    let via_b: Vec<User> = via_a.iter().map(|u| u.via(&b)).collect();
    for _ in 0..2 {
        trail.stay(&pages(&via_b).await, "through the second balancer");
        trail.stay(&pages(&via_a).await, "through the first balancer");
    }
    assert_eq!(a.moved().await, no_moves());
    assert_eq!(b.moved().await, no_moves());
    let off_ring = trail.off_ring(&all);
    eprintln!("two balancers: 40 of 40 cookies agree, {off_ring} pinned off their ring owner");
    assert!(off_ring > 0, "no user's pin differs from the ring: no test");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_backend_keeps_its_users_and_takes_no_new_ones() {
    let net = Net::new(74);
    let apps: Vec<Arc<Webapp>> = (0..3)
        .map(|_| Arc::new(Webapp::new("sweeplb-webapp")))
        .collect();
    let backends: Vec<Backend> = [10, 11, 12]
        .iter()
        .zip(&apps)
        .map(|(&last, app)| serve_webapp(net.addr(last), Arc::clone(app)))
        .collect();
    let all = addrs(&backends);
    let config = net.config("", "balance:\n  session_idle: 2s\n");
    let lb = Balancer::found(&config, &all).await;
    let old = users(&lb, 30);
    let first = pages(&old).await;
    let mut trail = Trail::new(&first);
    let per = per_backend(&all, &first);
    let d = (0..3).max_by_key(|&i| per[&all[i].ip()]).expect("backends");
    let drained = all[d];
    let pinned = served_by(&first, drained.ip()).len() as u64;

    apps[d].drain();
    eventually(WITHIN, async || {
        let m = lb.member(drained).await;
        match (&m["state"], &m["routed"]) {
            (s, r) if s == "draining" && r == true => Ok(()),
            _ => Err(format!("not draining yet: {m}")),
        }
    })
    .await;

    let new = users(&lb, 40);
    let mut new_trail = Trail::new(&pages(&new).await);
    // Its pinned users keep coming to it; the tally shows exactly them.
    eventually(WITHIN, async || {
        trail.stay(&pages(&old).await, "while draining");
        let sessions = &lb.member(drained).await["sessions"];
        if sessions == pinned {
            Ok(())
        } else {
            Err(format!("{drained} has sessions {sessions}, {pinned} users"))
        }
    })
    .await;
    new_trail.stay(&pages(&new).await, "new users while one backend drains");
    let new_there = new_trail.at.iter().filter(|a| a.0 == drained.ip()).count();
    assert_eq!(new_there, 0, "new users landed on the draining backend");

    // Once its users stop, its sessions fall to zero after session_idle; it still serves them.
    eventually(WITHIN, async || {
        let sessions = &lb.member(drained).await["sessions"];
        if sessions == 0 {
            Ok(())
        } else {
            Err(format!("{drained} still has sessions {sessions}"))
        }
    })
    .await;
    trail.stay(&pages(&old).await, "back after being idle");
    assert_eq!(lb.member(drained).await["state"], "draining");
    assert_eq!(lb.moved().await, no_moves());
    eprintln!("draining: {pinned} pinned users stayed on it, 0 of 40 new users reached it");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_instance_moves_its_users_once() {
    let net = Net::new(75);
    let mut backends = webapps(&net, &[10, 12]);
    let replaced = net.addr(11);
    let instance = |name: &str| Arc::new(Webapp::new("sweeplb-webapp").with_instance(name));
    // The app behind the address can be swapped with no gap: a container replaced between
    // two checks, with no sessions of its predecessor's.
    let current = Arc::new(Mutex::new(instance("web-1")));
    let serving = Arc::clone(&current);
    backends.push(custom(replaced, move |req| {
        let app = Arc::clone(&serving.lock().expect("not poisoned"));
        async move { app.handle(req, replaced).await }
    }));
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;
    let instance_is = async |name: &str| {
        eventually(WITHIN, async || {
            let m = lb.member(replaced).await;
            if m["instance"] == name {
                Ok(())
            } else {
                Err(format!("instance is not {name}: {m}"))
            }
        })
        .await
    };
    instance_is("web-1").await;
    let crowd = users(&lb, 40);
    let first = pages(&crowd).await;
    let mut trail = Trail::new(&first);
    let theirs = served_by(&first, replaced.ip());
    assert!(!theirs.is_empty(), "nobody on the backend to replace");
    trail.stay(&pages(&crowd).await, "before the replacement");

    *current.lock().expect("not poisoned") = instance("web-2");
    instance_is("web-2").await;
    let moved: BTreeSet<usize> = trail.step(&pages(&crowd).await).into_iter().collect();
    assert_eq!(moved, theirs, "exactly the replaced instance's users move");
    for _ in 0..2 {
        trail.stay(&pages(&crowd).await, "after the replacement");
    }
    // Their key's ring owner is still that address: they are at the new instance.
    assert!(theirs.iter().all(|&i| trail.at[i].0 == replaced.ip()));
    let mut want = no_moves();
    want.insert("instance replaced".to_string(), theirs.len() as u64);
    assert_eq!(lb.moved().await, want);
    eprintln!("instance replaced: {} of 40 users moved once", theirs.len());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_sends_new_users_past_a_crowded_backend_and_keeps_pins() {
    let net = Net::new(76);
    let config = net.config("", "balance:\n  bounded_load: 1.25\n");
    let mut backends = webapps(&net, &[10]);
    let crowded = backends[0].addr;
    let lb = Balancer::found(&config, &[crowded]).await;
    // 20 users arrive while it is alone: all pinned to it.
    let early = users(&lb, 20);
    let early_first = pages(&early).await;
    backends.extend(webapps(&net, &[11, 12]));
    let all = addrs(&backends);
    lb.wait_healthy(&all, WITHIN).await;

    // 60 new users, one after another, whose keys all hash to the crowded backend: the plain
    // ring would put all 80 users there.
    let keys: Vec<String> = (0u128..100_000)
        .map(|i| format!("{i:032x}"))
        .filter(|k| candidates(&all, k.as_bytes())[0] == crowded)
        .take(60)
        .collect();
    assert_eq!(keys.len(), 60);
    let late: Vec<User> = keys.iter().map(|k| User::with_cookie(&lb, k)).collect();
    let mut late_first = Vec::new();
    for (i, u) in late.iter().enumerate() {
        late_first.push(
            u.get()
                .await
                .unwrap_or_else(|e| panic!("new user {i}: {e}")),
        );
    }

    let everyone: Vec<Page> = early_first.iter().chain(&late_first).cloned().collect();
    let per = per_backend(&all, &everyone);
    let busiest = *per.values().max().expect("backends");
    let total = everyone.len();
    let cap = (1.25 * total as f64 / all.len() as f64).ceil() as usize;
    let late_crowded = served_by(&late_first, crowded.ip()).len() as u64;
    let diverted = lb.diverted().await;
    eprintln!(
        "bounded load 1.25: {per:?}, busiest {busiest}, mean {:.1}, cap {cap}, diverted \
         {diverted} of 60 (plain ring: all 80 on {crowded})",
        total as f64 / all.len() as f64
    );
    assert!(busiest <= cap, "{per:?} over the cap {cap}");
    assert!(diverted > 0, "nobody diverted");
    assert_eq!(
        diverted,
        60 - late_crowded,
        "every new user not on its ring owner was counted as diverted once"
    );

    // Pins are never overridden: the early users stay on the crowded backend, the late ones
    // where bounded load put them.
    let mut trail = Trail::new(&everyone);
    let all_users: Vec<&User> = early.iter().chain(&late).collect();
    for _ in 0..2 {
        let round = futures::future::join_all(all_users.iter().map(|u| u.get())).await;
        let round: Vec<Page> = round
            .into_iter()
            .map(|p| p.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        trail.stay(&round, "with bounded load");
    }
    assert_eq!(lb.moved().await, no_moves());
    eventually(WITHIN, async || {
        let mut shown = BTreeMap::new();
        for a in &all {
            shown.insert(
                a.ip(),
                lb.member(*a).await["sessions"].as_u64().unwrap_or(0) as usize,
            );
        }
        if shown == per {
            Ok(())
        } else {
            Err(format!(
                "health shows sessions {shown:?}, users are {per:?}"
            ))
        }
    })
    .await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repin_after_moves_only_users_the_ring_now_sends_elsewhere_once_pins_are_old() {
    const REPIN: u64 = 4;
    let net = Net::new(77);
    let config = net.config("", &format!("balance:\n  repin_after: {REPIN}s\n"));
    let mut backends = webapps(&net, &[10, 11, 12]);
    let lb = Balancer::found(&config, &addrs(&backends)).await;
    let crowd = users(&lb, 60);
    let first = pages(&crowd).await;
    let mut trail = Trail::new(&first);
    trail.refresh_ok = true;
    let pinned_at: Vec<u64> = trail.at.iter().map(|a| a.2.at).collect();

    let joined = net.addr(13);
    backends.push(webapp(joined));
    let all = addrs(&backends);
    lb.wait_healthy(&all, WITHIN).await;
    let to_new: BTreeSet<usize> = (0..crowd.len())
        .filter(|&i| candidates(&all, trail.keys()[i].as_bytes())[0] == joined)
        .collect();
    assert!(!to_new.is_empty(), "no key belongs to the new backend");

    // Rounds until every pin has been replaced: a cookie (move or refresh) only once the pin
    // is REPIN old; a move only to the new backend, only for the keys it now owns.
    let deadline = Instant::now() + WITHIN + Duration::from_secs(REPIN);
    let mut refreshed = BTreeSet::new();
    let mut quiet_rounds = 0;
    while trail.movers().len() + refreshed.len() < crowd.len() {
        assert!(
            Instant::now() < deadline,
            "pins not replaced: {refreshed:?}"
        );
        let round = pages(&crowd).await;
        let ended = unix_now();
        let moved = trail.step(&round);
        for (i, p) in round.iter().enumerate() {
            let Some(cookie) = &p.set_cookie else {
                continue;
            };
            let c = Pinned::parse(cookie);
            assert!(
                ended >= pinned_at[i] + REPIN && c.at >= pinned_at[i] + REPIN,
                "user {i} was re-pinned {}s after its pin of {}: {cookie}",
                ended - pinned_at[i],
                pinned_at[i]
            );
            if moved.contains(&i) {
                assert!(to_new.contains(&i), "user {i} moved, not the new backend's");
                assert_eq!(p.backend, joined.ip(), "user {i} moved elsewhere");
            } else {
                assert!(
                    !to_new.contains(&i),
                    "user {i} stayed, but is the new backend's"
                );
                refreshed.insert(i);
            }
        }
        if round.iter().all(|p| p.set_cookie.is_none()) && moved.is_empty() {
            quiet_rounds += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        quiet_rounds > 0,
        "no round after the join saw the pins hold"
    );
    assert_eq!(trail.movers(), to_new);
    assert_eq!(trail.most_moves(), 1);
    let mut want = no_moves();
    want.insert("repin_after".to_string(), to_new.len() as u64);
    assert_eq!(lb.moved().await, want);
    // The refreshed pins are young again: everyone stays, no cookie.
    trail.refresh_ok = false;
    trail.stay(&pages(&crowd).await, "after the repin");
    eprintln!(
        "repin_after {REPIN}s: {} of 60 moved to the new backend, {} refreshed, {quiet_rounds} \
         quiet rounds first",
        to_new.len(),
        refreshed.len()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_pin_is_a_new_user_of_its_key_and_cookies_carry_max_age() {
    let net = Net::new(78);
    let (backends, lb) = lab(&net, &[10, 11, 12], "balance:\n  cookie_max_age: 1h\n").await;
    let all = addrs(&backends);
    let max_age = "; Max-Age=3600";

    let now = unix_now();
    let forged: Vec<(String, String)> = (0..20)
        .map(|_| {
            let key = format!("{:032x}", fastrand::u128(..));
            let pin = format!("{:016x}", fastrand::u64(..));
            (key, pin)
        })
        .collect();
    let crowd: Vec<User> = forged
        .iter()
        .map(|(key, pin)| User::with_cookie(&lb, &format!("{key}.{pin}.{now}")))
        .collect();
    let first = pages(&crowd).await;
    for (i, (p, (key, pin))) in first.iter().zip(&forged).enumerate() {
        let cookie = p
            .set_cookie
            .as_deref()
            .unwrap_or_else(|| panic!("forged user {i} was not re-pinned: {p:?}"));
        assert!(cookie.contains(max_age), "{cookie}");
        let c = Pinned::parse(cookie);
        assert_eq!((&c.key, c.pin != *pin), (key, true), "{cookie}");
        assert_eq!(p.backend, candidates(&all, key.as_bytes())[0].ip());
    }
    let mut trail = Trail::new(&first);
    trail.stay(&pages(&crowd).await, "once re-pinned");
    let mut want = no_moves();
    want.insert("unknown pin".to_string(), forged.len() as u64);
    assert_eq!(lb.moved().await, want);

    // A key without a pin is a first visit of that key: placed by the ring, not a move.
    let keyed = User::with_cookie(&lb, "abc");
    let page = keyed.get().await.expect("a pin-less cookie is served");
    let cookie = page.set_cookie.expect("a pin-less cookie is pinned");
    assert!(cookie.starts_with("sweeplb=abc."), "{cookie}");
    assert!(cookie.contains(max_age), "{cookie}");
    assert_eq!(page.backend, candidates(&all, b"abc")[0].ip());
    assert_eq!(keyed.get().await.expect("pinned").set_cookie, None);
    // A fresh user's cookie carries Max-Age too.
    let fresh = pages(&users(&lb, 1)).await;
    let cookie = fresh[0]
        .set_cookie
        .as_deref()
        .expect("a first visit is pinned");
    assert!(cookie.contains(max_age), "{cookie}");
    assert_eq!(lb.moved().await, want);
    lb.stop().await;
}
