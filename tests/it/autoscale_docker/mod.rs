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
//!
//! - `up.rs`: load up, from one webapp to `max`.
//! - `down.rs`: load down, one drain at a time back to `min`, users kept through the drains.
//! - `cold.rs`: scale to zero, and the cold start back.
//! - `faults.rs`: no socket; a webapp that never becomes healthy.

mod cold;
mod down;
mod faults;
mod up;

pub(crate) use faults::autoscale_never_healthy;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::support::docker::{
    Cleanup, Compose, Lab, container_ip, docker, engine_available, free_port, identity_secret,
    inspect, ip, output, quiet, repo, run,
};
use cold::scale_to_zero;
use down::load_down;
use faults::no_socket;
use up::load_up;

/// The network docker/compose.autoscale.yaml declares.
const SUBNET: &str = "192.168.42.0/24";
const GATEWAY: &str = "192.168.42.1";
const WEBAPP_PORT: u16 = 3000;
/// The label the balancer puts on the containers it creates.
const AUTOSCALED: &str = "io.sweeplb.autoscaled=true";
/// `/_lb/health` is sampled this often while the service shrinks.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A start or a stop, the balancer's own and the prober's lag, and a slow machine.
const SLACK: Duration = Duration::from_secs(20);
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

/// When the engine created a container (`Created`, not a `State` field like the others).
fn docker_time_created(id: &str) -> SystemTime {
    let v = inspect(&["container", "inspect", id]);
    let text = v["Created"].as_str().unwrap_or_default();
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{id} Created {text:?}: {e}"))
}
