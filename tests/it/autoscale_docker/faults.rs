//! d. Faults: a balancer with `autoscale:` on and no Docker socket; a webapp that never becomes
//! healthy, given up on, removed, and retried only after a backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::up::Traffic;
use super::{AUTOSCALED, ConfigFile, FEW_SECONDS, GATEWAY, SLACK, docker_time_created, project};
use crate::support::docker::{
    Cleanup, Compose, Lab, container_ip, docker, engine_available, free_port, identity_secret,
    inspect, ip, logs, output, quiet, run, started_at,
};
use crate::support::{User, chain, client, eventually};

/// The fault stack gives up on a started container after this.
const FAULT_START_TIMEOUT: Duration = Duration::from_secs(5);
const FAULT_HOLD: Duration = Duration::from_secs(2);
/// The longest the fault scenario waits for a second attempt after a give-up.
const RETRY_WAIT: Duration = Duration::from_secs(60);

/// d1. A balancer with `autoscale:` on and no socket: it says so, in its log and in
/// `/_lb/health`, and serves the webapp it finds.
#[allow(clippy::too_many_arguments)]
pub(super) async fn no_socket(
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
