//! The autoscaling lab on the real Docker engine (issue 11): `docker/compose.autoscale.yaml`
//! with this run's images, driven the way a user drives it. Load makes the balancer add webapp
//! containers up to `max`; when it stops, the balancer drains and stops them one at a time down
//! to `min`; with `min: 0` it stops the last one and starts it again for the next request; with
//! no Docker socket it serves what it finds; a webapp that never becomes healthy is given up
//! on, removed, and retried only after a backoff.
//!
//! Run from `docker::compose_lab_and_swarm_stack`, which builds the images once for all its
//! scenarios. Traffic goes only to 127.0.0.1 and to the containers of the projects this
//! creates. Every container is removed by its compose project label, pass or fail, including
//! those the balancer created (which `docker-compose down` does not know of).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::support::docker::{
    Cleanup, Compose, Lab, container_ip, docker, engine_available, engine_start, finished_at,
    free_port, identity_secret, inspect, ip, logs, output, quiet, repo, run, run_async, started_at,
    timestamped_logs,
};
use crate::support::{User, chain, client, eventually};

/// The network docker/compose.autoscale.yaml declares.
const SUBNET: &str = "192.168.42.0/24";
const GATEWAY: &str = "192.168.42.1";
const WEBAPP_PORT: u16 = 3000;
/// The label the balancer puts on the containers it creates.
const AUTOSCALED: &str = "io.sweeplb.autoscaled=true";

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
/// How often the kept users of the load-down ask, and the pages a "quiet" one still asks for
/// once its container is draining, before it idles.
const KEPT_EVERY: Duration = Duration::from_secs(1);
const QUIET_PAGES: usize = 2;
/// Load up: the service reaches `max` within this of the load step.
const UP_BOUND: Duration = Duration::from_secs(30);
/// `/_lb/health` is sampled this often while the service shrinks.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A start or a stop, the balancer's own and the prober's lag, and a slow machine.
const SLACK: Duration = Duration::from_secs(20);
/// The fault stack gives up on a started container after this.
const FAULT_START_TIMEOUT: Duration = Duration::from_secs(5);
const FAULT_HOLD: Duration = Duration::from_secs(2);
/// The longest the fault scenario waits for a second attempt after a give-up.
const RETRY_WAIT: Duration = Duration::from_secs(60);
const FEW_SECONDS: Duration = Duration::from_secs(15);

/// The `autoscale:` block of docker/autoscale-config.yaml: the scenario's bounds derive from
/// the stack as shipped.
#[derive(Debug, Clone)]
struct Settings {
    min: u64,
    max: u64,
    target_inflight: u64,
    up_after: Duration,
    down_after: Duration,
    session_idle: Duration,
    drain_max: Duration,
}

impl Settings {
    fn of(config: &serde_yaml::Value) -> Settings {
        let a = &config["autoscale"];
        let count = |key: &str| {
            a[key]
                .as_u64()
                .unwrap_or_else(|| panic!("autoscale.{key} is a count in the config: {a:?}"))
        };
        let duration = |key: &str| {
            let text = a[key].as_str().unwrap_or_default();
            humantime::parse_duration(text)
                .unwrap_or_else(|e| panic!("autoscale.{key}: {text:?}: {e}"))
        };
        Settings {
            min: count("min"),
            max: count("max"),
            target_inflight: count("target_inflight"),
            up_after: duration("up_after"),
            down_after: duration("down_after"),
            session_idle: duration("session_idle"),
            drain_max: duration("drain_max"),
        }
    }
}

/// The balancer's config file for one project: a copy of docker/autoscale-config.yaml that the
/// scenario edits in place (the shipped file stays as it is), readable by uid 65534.
struct ConfigFile {
    path: PathBuf,
    yaml: serde_yaml::Value,
}

impl ConfigFile {
    fn new(cleanup: &mut Cleanup, name: &str, edit: impl FnOnce(&mut serde_yaml::Value)) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sweeplb-e2e-{}-{name}-config.yaml",
            std::process::id()
        ));
        cleanup.push("rm the autoscale config", {
            let path = path.clone();
            move || {
                let _ = std::fs::remove_file(&path);
            }
        });
        let mut file = ConfigFile {
            path,
            yaml: shipped_config(),
        };
        edit(&mut file.yaml);
        file.write();
        file
    }

    /// Rewrites the file in place: a single-file bind mount follows the inode, so the
    /// balancer sees the new text (a rename would leave it the old one).
    fn write(&self) {
        let text = serde_yaml::to_string(&self.yaml).expect("the config serialises");
        std::fs::write(&self.path, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.path.display()));
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", self.path.display()));
    }

    fn set(&mut self, key: &str, value: serde_yaml::Value) {
        self.yaml["autoscale"][key] = value;
        self.write();
    }
}

fn shipped_config() -> serde_yaml::Value {
    let path = repo().join("docker/autoscale-config.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The group that owns the Docker socket, which the stack gives the balancer.
fn socket_gid() -> String {
    use std::os::unix::fs::MetadataExt as _;
    let socket = "/var/run/docker.sock";
    let meta = std::fs::metadata(socket).unwrap_or_else(|e| {
        panic!("the autoscaling stack mounts {socket}, which this host lacks: {e}")
    });
    meta.gid().to_string()
}

/// A project of docker/compose.autoscale.yaml (plus `overrides`) with this run's images,
/// secret and config; `down` and every container of the project removed on drop.
fn project(
    cleanup: &mut Cleanup,
    name: &str,
    tag: &str,
    secret: &std::path::Path,
    config: &ConfigFile,
    overrides: Option<PathBuf>,
) -> (Compose, u16) {
    let port = free_port();
    let mut files = vec![repo().join("docker/compose.autoscale.yaml")];
    files.extend(overrides);
    let lab = Compose {
        project: format!("sweeplb-e2e-{name}-{}", std::process::id()),
        tag: tag.to_string(),
        publish: format!("127.0.0.1:{port}"),
        secret: secret.to_path_buf(),
        files,
        env: vec![
            ("SWEEPLB_DOCKER_GID", socket_gid()),
            (
                "SWEEPLB_AUTOSCALE_CONFIG",
                config.path.display().to_string(),
            ),
        ],
    };
    cleanup.push("docker-compose down (autoscale)", {
        let mut down = lab.command(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        let mut logs = lab.command(&[
            "logs",
            "--no-color",
            "--timestamps",
            "--tail",
            "80",
            "balancer",
        ]);
        let leftovers = lab.clone();
        move || {
            if std::thread::panicking() {
                if let Ok(o) = logs.output() {
                    eprintln!(
                        "--- balancer logs ({}) ---\n{}",
                        leftovers.project,
                        String::from_utf8_lossy(&o.stdout)
                    );
                }
            }
            // The balancer's own containers first: `down` removes the network, which fails
            // while a container it does not know of is still attached.
            let stop = format!("label=com.docker.compose.project={}", leftovers.project);
            let ours = output(&mut docker(&[
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &stop,
                "--filter",
                &format!("label={AUTOSCALED}"),
            ]));
            for id in ours.split_whitespace() {
                quiet(&mut docker(&["rm", "--force", id]));
            }
            quiet(&mut down);
            leftovers.remove_all();
        }
    });
    (lab, port)
}

/// The stack as shipped: load up, load down, no socket, scale to zero and back. Each step's
/// numbers are printed as `[autoscale]` lines.
pub(crate) async fn autoscale_lab(tag: &str) {
    if !engine_available("the autoscaling scenario", &["docker-compose"]) {
        return;
    }
    let started = Instant::now();
    let mut cleanup = Cleanup::default();
    let s = Settings::of(&shipped_config());
    assert!(
        s.min >= 1 && s.max > s.min,
        "the shipped stack scales between min >= 1 and a larger max: {s:?}"
    );
    let secret = identity_secret(&mut cleanup, "autoscale");
    let mut config = ConfigFile::new(&mut cleanup, "autoscale", |_| {});
    let (lab, port) = project(&mut cleanup, "as", tag, &secret, &config, None);
    run(&mut lab.command(&["up", "--detach"]));
    let up_at = Instant::now();
    let network = format!("{}_lab", lab.project);
    let net = inspect(&["network", "inspect", &network]);
    assert_eq!(
        net["IPAM"]["Config"][0]["Subnet"], SUBNET,
        "the stack's network has the subnet docker/autoscale-config.yaml sweeps"
    );
    let balancer = lab.container("balancer");
    let mut forbidden = BTreeMap::new();
    forbidden.insert(ip(GATEWAY), "the gateway (the Docker host)".to_string());
    forbidden.insert(
        container_ip(&balancer, &network),
        "the balancer itself".to_string(),
    );
    let mut lb = Lab::new(port, forbidden.clone());

    // What the balancer does wrong but does not stop the scenario: said at the end, after
    // every step has run and printed its numbers.
    let mut findings: Vec<String> = Vec::new();
    let webapps = lab.webapps();
    assert_eq!(webapps.len(), 1, "compose starts one webapp: {webapps:?}");
    let compose_ip = container_ip(&webapps[0], &network);
    let (h, _) = lb
        .wait(
            FEW_SECONDS,
            "compose's webapp healthy, autoscaling on",
            |h| {
                // `engine` says ok until a call fails; `mode` is set once the engine answered.
                h.healthy.contains(&compose_ip) && h.autoscale()["mode"] == "compose"
            },
        )
        .await;
    let ready = up_at.elapsed();
    let extra: Vec<String> = lab
        .all("webapp")
        .into_iter()
        .filter(|id| *id != webapps[0])
        .collect();
    if !extra.is_empty() {
        findings.push(format!(
            "at `up`, with compose's one webapp running (min {}), the balancer added {} more \
             container(s) {extra:?}: its first decision came before the webapp was routed; \
             last decision {}",
            s.min,
            extra.len(),
            h.autoscale()["last_decision"]
        ));
    }
    // From one webapp, whatever happened at `up`.
    let (h, _) = lb
        .wait(
            s.down_after + s.session_idle + SLACK,
            "one webapp, nothing starting or draining",
            |h| {
                h.healthy.len() == 1
                    && h.listed.len() == 1
                    && h.scale("running") == 1
                    && h.scale("starting") + h.scale("draining") + h.scale("stopping") == 0
            },
        )
        .await;
    assert_eq!(lab.webapps().len(), 1, "one webapp runs before the load");
    let settled = up_at.elapsed();
    let a = h.autoscale();
    assert_eq!(a["service"], "webapp", "{a:#}");
    assert_eq!(a["engine"], "ok", "{a:#}");
    assert_eq!(a["min"].as_u64(), Some(s.min), "{a:#}");
    assert_eq!(a["max"].as_u64(), Some(s.max), "{a:#}");
    assert_eq!(
        a["target_inflight"].as_u64(),
        Some(s.target_inflight),
        "{a:#}"
    );
    eprintln!(
        "[autoscale] stack up, compose's webapp healthy and the engine reached {ready:.1?} \
         after `up`; one webapp, settled, {settled:.1?} after"
    );

    let kept = load_up(&lab, &network, &mut lb, &s).await;
    load_down(&lab, &mut lb, &s, kept).await;
    no_socket(
        &mut cleanup,
        &lab,
        &network,
        &forbidden,
        tag,
        &config,
        &secret,
    )
    .await;
    scale_to_zero(&lab, &network, &mut lb, &s, &mut config).await;
    drop(cleanup);
    eprintln!(
        "[autoscale] total {:.1?} ({} health polls)",
        started.elapsed(),
        lb.polls
    );
    assert!(findings.is_empty(), "the autoscaling lab: {findings:#?}");
}

/// What one user saw of its session, page after page.
#[derive(Debug, Default, Clone)]
struct Session {
    backend: Option<IpAddr>,
    views: u64,
}

impl Session {
    /// Records a page; a count that does not go on by one on the same backend, or that does
    /// not start at 1 on another, is said in words.
    fn record(&mut self, backend: IpAddr, views: u64) -> Result<(), String> {
        let expected = match self.backend {
            Some(b) if b == backend => self.views + 1,
            _ => 1,
        };
        self.backend = Some(backend);
        self.views = views;
        if views == expected {
            Ok(())
        } else {
            Err(format!("on {backend}: views {views}, expected {expected}"))
        }
    }
}

/// What the load users share: the pages each backend served (and when the first came), and
/// every failure.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    served: Mutex<BTreeMap<IpAddr, (Instant, u64)>>,
    failures: Mutex<Vec<String>>,
    pages: std::sync::atomic::AtomicU64,
}

impl Traffic {
    fn fail(&self, e: String) {
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
async fn load_up(lab: &Compose, network: &str, lb: &mut Lab, s: &Settings) -> Vec<(User, Session)> {
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
async fn load_down(lab: &Compose, lb: &mut Lab, s: &Settings, kept: Vec<(User, Session)>) {
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

/// d1. A balancer with `autoscale:` on and no socket: it says so, in its log and in
/// `/_lb/health`, and serves the webapp it finds.
#[allow(clippy::too_many_arguments)]
async fn no_socket(
    cleanup: &mut Cleanup,
    lab: &Compose,
    network: &str,
    forbidden: &BTreeMap<IpAddr, String>,
    tag: &str,
    config: &ConfigFile,
    secret: &std::path::Path,
) {
    let t = Instant::now();
    let name = format!("{}-no-socket", lab.project);
    cleanup.push("docker rm the socketless balancer", {
        let mut rm = docker(&["rm", "--force", &name]);
        move || quiet(&mut rm)
    });
    let port = free_port();
    run(&mut docker(&[
        "run",
        "--detach",
        "--pull",
        "never",
        "--name",
        &name,
        "--network",
        network,
        "--publish",
        &format!("127.0.0.1:{port}:8080"),
        "--env",
        "RUST_LOG=info",
        "--read-only",
        "--volume",
        &format!("{}:/etc/sweeplb/config.yaml:ro", config.path.display()),
        "--volume",
        &format!("{}:/run/secrets/sweeplb-identity:ro", secret.display()),
        &format!("sweeplb:{tag}"),
    ]));
    let mut forbidden = forbidden.clone();
    forbidden.insert(
        container_ip(&name, network),
        "the socketless balancer".to_string(),
    );
    let mut other = Lab::new(port, forbidden);
    let webapp = lab
        .webapps()
        .first()
        .map(|id| container_ip(id, network))
        .expect("a webapp runs");
    let (h, _) = other
        .wait(
            FEW_SECONDS,
            "the socketless balancer routing the webapp",
            |h| {
                h.healthy.contains(&webapp)
                    && h.autoscale()["engine"].as_str().is_some_and(|e| e != "ok")
            },
        )
        .await;
    let engine = h.autoscale()["engine"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        engine.contains("cannot reach the Docker engine"),
        "autoscale.engine says the socket is missing: {:#}",
        h.body
    );
    let page = User::at(&other.base)
        .get()
        .await
        .unwrap_or_else(|e| panic!("the socketless balancer serves the webapp: {e}"));
    assert_eq!(page.backend, webapp);
    let log = logs(&name);
    assert!(
        log.contains("cannot reach the Docker engine"),
        "the socketless balancer logs it:\n{log}"
    );
    quiet(&mut docker(&["rm", "--force", &name]));
    let took = t.elapsed();
    eprintln!(
        "[autoscale] no socket: autoscale.engine {engine:?}; served the webapp {webapp} (200); \
         {took:.1?}"
    );
}

/// c. Scale to zero and back: with `min: 0` (a hot reload) and no users, no webapp runs; the
/// next request is held and answered by the container started for it.
async fn scale_to_zero(
    lab: &Compose,
    network: &str,
    lb: &mut Lab,
    s: &Settings,
    config: &mut ConfigFile,
) {
    let reloads = lb
        .health()
        .await
        .map(|h| h.body["reloads"]["ok"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    config.set("min", serde_yaml::Value::from(0u64));
    run(&mut lab.command(&["kill", "-s", "HUP", "balancer"]));
    lb.wait(FEW_SECONDS, "the reload to min 0", |h| {
        h.body["reloads"]["ok"].as_u64() == Some(reloads + 1) && h.autoscale()["min"] == 0
    })
    .await;
    let reloaded = Instant::now();
    let bound = s.down_after + s.session_idle + s.drain_max + SLACK;
    // The pool lets a container go when its stop begins; `docker ps` when it has exited.
    let (h, _) = lb
        .wait(bound, "no webapp running or listed", |h| {
            h.scale("running") + h.scale("starting") + h.scale("draining") + h.scale("stopping")
                == 0
                && h.listed.is_empty()
                && lab.webapps().is_empty()
        })
        .await;
    let to_zero = reloaded.elapsed();
    let desired = h.scale("desired");
    assert_eq!(desired, 0, "{:#}", h.body);

    // One request, while a second look at /_lb/health watches it held.
    let held = Arc::new(AtomicBool::new(false));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (held, sampling) = (Arc::clone(&held), Arc::clone(&sampling));
        let mut watcher = Lab::at(lb.base.clone(), BTreeMap::new());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while sampling.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(h) = watcher.health().await {
                    if h.scale("held") > 0 {
                        held.store(true, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let sent = SystemTime::now();
    let t = Instant::now();
    let page = User::at(&lb.base).get().await;
    let latency = t.elapsed();
    sampling.store(false, Ordering::SeqCst);
    sampler.await.expect("the health sampler");
    let page = page.unwrap_or_else(|e| panic!("the cold request is answered 200: {e}"));
    let running = lab.webapps();
    assert_eq!(
        running.len(),
        1,
        "one webapp started for the request: {running:?}"
    );
    let id = running[0].clone();
    assert_eq!(
        container_ip(&id, network),
        page.backend,
        "the started container answered"
    );
    let started = started_at(&id);
    assert!(
        started >= sent,
        "the container was started for the request (started {started:?}, request {sent:?})"
    );
    assert!(
        held.load(Ordering::SeqCst),
        "/_lb/health counted the request held"
    );
    let name = inspect(&["container", "inspect", &id])["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    // The controller notes the start at its next tick after the pool routed it.
    let (h, _) = lb
        .wait(
            FEW_SECONDS,
            "last_start naming the started container",
            |h| h.autoscale()["last_start"]["container"] == name.as_str(),
        )
        .await;
    let last_start = h.autoscale()["last_start"].clone();

    // The same container's own start-to-healthy, measured from here: stopped, then started
    // with the engine call the balancer makes, and its /health polled every 5 ms from the
    // moment the call returns. Not before: probing an address whose interface does not exist
    // yet leaves the host's ARP entry unresolved for up to a second after it appears (it read
    // 1.0-1.2 s for a start the webapp's own log put at 0.5 s). Its log's "webapp listening"
    // line, stamped by the engine, is a second measure.
    let old = container_ip(&id, network);
    run_async(docker(&["stop", &id])).await;
    let (t, t_wall) = (Instant::now(), SystemTime::now());
    let status = engine_start(&id).await;
    let call = t.elapsed();
    assert_eq!(status, Ok(204), "POST /containers/{id}/start");
    let addr = container_ip(&id, network);
    let url = format!("http://{addr}:{WEBAPP_PORT}/health");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("a client");
    let healthy = loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{url} healthy within 10 s of the start call"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let log = timestamped_logs(&id, t_wall - Duration::from_secs(1));
    let listening = log
        .lines()
        .filter(|l| l.contains("webapp listening"))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .filter_map(|at| at.duration_since(t_wall).ok())
        .next_back();
    let same = if container_ip(&id, network) == old {
        "the same address"
    } else {
        "another address"
    };
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let added = (latency.as_secs_f64() - healthy.as_secs_f64()) * 1e3;
    eprintln!(
        "[autoscale] scale to zero: reloaded to min 0, no webapp running {to_zero:.1?} later; \
         the next request held and answered 200 by {name} (started for it) in {}; the \
         balancer's last_start {last_start}; the container's own start-to-healthy, from \
         `POST /containers/{{id}}/start` (which returned after {}; {same}) to its /health \
         answering (polled every 5 ms once the call returned): {} (its log says listening \
         at {}); added {added:+.0} ms",
        ms(latency),
        ms(call),
        ms(healthy),
        listening.map_or("?".to_string(), ms),
    );
}

/// d2. A webapp that never becomes healthy (the service's only replica listens on another
/// port), on a project of its own: under load the balancer starts one, gives up on it after
/// `start_timeout`, removes it, and tries again only after a backoff.
pub(crate) async fn autoscale_never_healthy(tag: &str) {
    if !engine_available("the autoscaling fault scenario", &["docker-compose"]) {
        return;
    }
    let t = Instant::now();
    let mut cleanup = Cleanup::default();
    let secret = identity_secret(&mut cleanup, "autoscale-fault");
    let config = ConfigFile::new(&mut cleanup, "autoscale-fault", |c| {
        let a = &mut c["autoscale"];
        a["start_timeout"] = format!("{}s", FAULT_START_TIMEOUT.as_secs()).into();
        a["hold"] = format!("{}s", FAULT_HOLD.as_secs()).into();
    });
    let overrides = std::env::temp_dir().join(format!(
        "sweeplb-e2e-{}-autoscale-fault.yaml",
        std::process::id()
    ));
    std::fs::write(
        &overrides,
        "services:\n  webapp:\n    command: [--listen, 0.0.0.0:3001, --identity-secret-file, \
         /run/secrets/sweeplb-identity, --drain-grace, 1s]\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", overrides.display()));
    cleanup.push("rm the fault override", {
        let path = overrides.clone();
        move || {
            let _ = std::fs::remove_file(&path);
        }
    });
    let (lab, port) = project(
        &mut cleanup,
        "as-fault",
        tag,
        &secret,
        &config,
        Some(overrides),
    );
    // The webapp first, running, then the balancer, so that what the balancer finds is a
    // running replica to copy, as an operator's stack would have. (Before the controller
    // waited for the pool to settle, a balancer racing compose's `up` found the container
    // created but not started, started it as its own, gave up on it and removed it, leaving
    // nothing to copy.)
    run(&mut lab.command(&["up", "--detach", "--no-deps", "webapp"]));
    let template = lab.container("webapp");
    run(&mut lab.command(&["up", "--detach", "--no-deps", "balancer"]));
    let network = format!("{}_lab", lab.project);
    let balancer = lab.container("balancer");
    let mut forbidden = BTreeMap::new();
    forbidden.insert(ip(GATEWAY), "the gateway".to_string());
    forbidden.insert(
        container_ip(&balancer, &network),
        "the balancer".to_string(),
    );
    forbidden.insert(
        container_ip(&template, &network),
        "the webapp on the wrong port".to_string(),
    );
    let mut lb = Lab::new(port, forbidden);
    lb.wait(FEW_SECONDS, "the fault stack's balancer up", |h| {
        h.autoscale()["engine"] == "ok"
    })
    .await;

    // A little load: requests are held for `hold`, then answered 503; counted, not failed.
    let traffic = Arc::new(Traffic::default());
    let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let users: Vec<_> = (0..4)
        .map(|_| {
            let (base, traffic, statuses) =
                (lb.base.clone(), Arc::clone(&traffic), Arc::clone(&statuses));
            tokio::spawn(async move {
                let http = client();
                let deadline = Instant::now() + RETRY_WAIT + FAULT_START_TIMEOUT * 4;
                while !traffic.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let status = match http.get(format!("{base}/")).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(e) => {
                            traffic.fail(chain(&e));
                            0
                        }
                    };
                    *statuses
                        .lock()
                        .expect("statuses")
                        .entry(status)
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();

    let created = |known: &BTreeSet<String>| -> Option<String> {
        output(&mut docker(&[
            "ps",
            "--all",
            "--quiet",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", lab.project),
            "--filter",
            &format!("label={AUTOSCALED}"),
        ]))
        .split_whitespace()
        .find(|id| !known.contains(*id))
        .map(str::to_string)
    };
    let mut known = BTreeSet::new();
    let load_at = Instant::now();
    let first = eventually(FEW_SECONDS + FAULT_START_TIMEOUT, async || {
        created(&known).ok_or_else(|| "no container created yet".to_string())
    })
    .await;
    let first_seen = load_at.elapsed();
    known.insert(first.clone());
    let first_name = inspect(&["container", "inspect", &first])["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    // The balancer's deadline runs from its create call, which the engine stamps `Created`.
    let first_created = docker_time_created(&first);
    eventually(FAULT_START_TIMEOUT + SLACK, async || {
        let all = output(&mut docker(&["ps", "--all", "--quiet", "--no-trunc"]));
        if all.split_whitespace().any(|id| id == first) {
            Err(format!("{first_name} still listed by docker ps --all"))
        } else {
            Ok(())
        }
    })
    .await;
    let removed = SystemTime::now();
    let given_up = removed.duration_since(first_created).unwrap_or_default();
    assert!(
        given_up >= FAULT_START_TIMEOUT,
        "{first_name} was removed {given_up:?} after it was created, before start_timeout \
         {FAULT_START_TIMEOUT:?}"
    );
    let (h, _) = lb
        .wait(FEW_SECONDS, "a backoff after the give-up", |h| {
            h.autoscale()["backoff_until"].is_string()
        })
        .await;
    let backoff_until = h.autoscale()["backoff_until"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let until = humantime::parse_rfc3339(&backoff_until)
        .unwrap_or_else(|e| panic!("backoff_until {backoff_until:?}: {e}"));
    let backoff = until.duration_since(removed).unwrap_or_default();
    let metrics = lb.metrics().await;
    assert!(
        metrics.sum("sweeplb_autoscale_actions_total", &[("action", "give_up")]) >= 1.0,
        "the give-up counted: {}",
        metrics.text
    );

    // The next attempt waits for the backoff.
    let retry = if backoff < RETRY_WAIT {
        let second = eventually(backoff + FAULT_START_TIMEOUT + SLACK, async || {
            created(&known).ok_or_else(|| "no second attempt yet".to_string())
        })
        .await;
        let again = started_at(&second);
        let gap = again.duration_since(removed).unwrap_or_default();
        assert!(
            again + Duration::from_millis(500) >= until,
            "the second attempt started {gap:?} after the give-up, before backoff_until \
             {backoff_until}"
        );
        Some(gap)
    } else {
        None
    };
    traffic.stop.store(true, Ordering::SeqCst);
    for u in users {
        u.await.expect("a fault user");
    }
    let log = logs(&balancer);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&first_name)).collect();
    assert!(
        lines.len() >= 2,
        "the balancer logged the start and the give-up of {first_name}:\n{log}"
    );
    let statuses = statuses.lock().expect("statuses").clone();
    let failures = traffic.failures.lock().expect("failures").clone();
    drop(cleanup);
    let took = t.elapsed();
    eprintln!(
        "[autoscale] never healthy (start_timeout {FAULT_START_TIMEOUT:?}, hold {FAULT_HOLD:?}): \
         {first_name} created {first_seen:.1?} after the load began, removed {given_up:.1?} \
         after it was created; backoff_until {backoff:.1?} after the removal; second attempt \
         {retry:.1?} after it; the balancer's lines on it: {lines:#?}; the users got {statuses:?} \
         ({} transport errors); {took:.1?}",
        failures.len()
    );
}

/// When the engine created a container (`Created`, not a `State` field like the others).
fn docker_time_created(id: &str) -> SystemTime {
    let v = inspect(&["container", "inspect", id]);
    let text = v["Created"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{id} Created {text:?}: {e}"))
}
