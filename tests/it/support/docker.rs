//! The Docker engine for the end-to-end test: running `docker` and `docker-compose`,
//! inspecting containers and networks, building the images, undoing all of it, and a
//! containerised balancer's `/_lb/health` as seen from the host.
//!
//! Without an engine the test skips loudly, except under `CI=true`, where it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::{chain, client, eventually};

/// Whether the tests can run; under `CI=true` a missing engine is a failure, not a skip.
pub fn engine_available(test: &str, also: &[&str]) -> bool {
    let problem = match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(e) => Some(format!("cannot run `docker`: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "no Docker engine answers `docker version`: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => also
            .iter()
            .find_map(|tool| match Command::new(tool).arg("version").output() {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(format!(
                    "`{tool} version` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Some(format!("cannot run `{tool}`: {e}")),
            }),
    };
    let Some(problem) = problem else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI is set and {test} cannot run: {problem}");
    }
    eprintln!("\n!!! SKIPPED {test}: {problem}. (With CI=true this is a failure.)\n");
    false
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c
}

/// Runs a command that must succeed; its stdout, trimmed.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A container's log, both streams (sweeplb logs to stderr).
pub fn logs(id: &str) -> String {
    let o = docker(&["logs", id])
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker logs: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A container's log since `since`, both streams, each line led by the engine's RFC 3339
/// timestamp of when it was written.
pub fn timestamped_logs(id: &str, since: SystemTime) -> String {
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default();
    let o = docker(&["logs", "--timestamps", "--since", &since, id])
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker logs: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Without blocking the runtime, so the simulated users keep going meanwhile.
pub async fn run_async(mut cmd: Command) -> String {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("the command thread")
}

/// Stdout of a command whose failure is not the test's business (cleanup, polling).
pub fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn quiet(cmd: &mut Command) {
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "cleanup: {cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("cleanup: {cmd:?}: {e}"),
    }
}

pub fn inspect(args: &[&str]) -> Value {
    let text = run(&mut docker(args));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("docker {args:?}: {e}: {text}"));
    v[0].clone()
}

pub fn container_ip(id: &str, network: &str) -> IpAddr {
    let v = inspect(&["container", "inspect", id]);
    let text = v["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_default();
    text.parse()
        .unwrap_or_else(|_| panic!("container {id} has an address on {network}: {text:?}"))
}

pub fn docker_time(id: &str, field: &str) -> SystemTime {
    let v = inspect(&["container", "inspect", id]);
    let text = v["State"][field].as_str().unwrap_or_default();
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{id} State.{field} {text:?}: {e}"))
}

pub fn started_at(id: &str) -> SystemTime {
    docker_time(id, "StartedAt")
}

pub fn finished_at(id: &str) -> SystemTime {
    docker_time(id, "FinishedAt")
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

type Step = Box<dyn FnOnce()>;

/// Undo steps, run in reverse order on drop, pass or fail.
#[derive(Default)]
pub struct Cleanup {
    steps: Vec<(&'static str, Step)>,
}

impl Cleanup {
    pub fn push(&mut self, what: &'static str, step: impl FnOnce() + 'static) {
        self.steps.push((what, Box::new(step)));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some((what, step)) = self.steps.pop() {
            let t = Instant::now();
            step();
            eprintln!("cleanup: {what} ({:.1?})", t.elapsed());
        }
    }
}

/// docker/build.sh with a tag of this run's own, removed afterwards.
pub fn build_images(cleanup: &mut Cleanup, tag: &str) -> Duration {
    let images = [format!("sweeplb:{tag}"), format!("sweeplb-webapp:{tag}")];
    cleanup.push("docker rmi", move || {
        // A container still using an image (a swarm task not yet reaped) would turn `rmi` into
        // a mere untag and leave the image behind, dangling. The tag is this run's own, so any
        // container from it is too.
        for image in &images {
            let users = output(&mut docker(&[
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("ancestor={image}"),
            ]));
            for id in users.split_whitespace() {
                quiet(&mut docker(&["rm", "--force", id]));
            }
        }
        quiet(&mut docker(&["rmi", &images[0], &images[1]]));
    });
    let t = Instant::now();
    run(Command::new(repo().join("docker/build.sh")).env("SWEEPLB_TAG", tag));
    t.elapsed()
}

/// A random identity secret of this run's own, in a file the containers (uid 65534) can read,
/// removed afterwards; for `SWEEPLB_IDENTITY_SECRET_FILE`, so the run never touches
/// docker/identity.secret.
pub fn identity_secret(cleanup: &mut Cleanup, name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("sweeplb-e2e-{}-{name}.secret", std::process::id()));
    let secret = format!("{:032x}{:032x}\n", fastrand::u128(..), fastrand::u128(..));
    std::fs::write(&path, secret).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&path, mode)
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
    cleanup.push("rm the identity secret", {
        let path = path.clone();
        move || {
            let _ = std::fs::remove_file(&path);
        }
    });
    path
}

/// One project of a compose file (docker/compose.yaml unless `files` says otherwise), under a
/// name, an image tag and an identity secret of this run's own.
#[derive(Clone)]
pub struct Compose {
    pub project: String,
    pub tag: String,
    pub publish: String,
    pub secret: PathBuf,
    /// The compose files, in order (later ones override); empty: docker/compose.yaml.
    pub files: Vec<PathBuf>,
    /// More variables for the files' interpolation (SWEEPLB_DOCKER_GID, ...).
    pub env: Vec<(&'static str, String)>,
}

impl Compose {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        if self.files.is_empty() {
            c.arg("--file").arg(repo().join("docker/compose.yaml"));
        }
        for file in &self.files {
            c.arg("--file").arg(file);
        }
        c.args(["--project-name", &self.project])
            .args(args)
            .env("SWEEPLB_TAG", &self.tag)
            .env("SWEEPLB_PUBLISH", &self.publish)
            .env("SWEEPLB_IDENTITY_SECRET_FILE", &self.secret)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Every container of the project, running or not, including those compose did not create
    /// (the balancer's, which carry the project's labels): `down` may leave those behind.
    pub fn remove_all(&self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let ids = output(&mut docker(&["ps", "--all", "--quiet", "--filter", &label]));
        for id in ids.split_whitespace() {
            quiet(&mut docker(&["rm", "--force", "--volumes", id]));
        }
    }

    /// Containers of `service`, running or not.
    pub fn all(&self, service: &str) -> Vec<String> {
        self.ps(service, true)
    }

    /// Running containers of `service`.
    pub fn running(&self, service: &str) -> Vec<String> {
        self.ps(service, false)
    }

    /// `docker ps` of the project's `service` containers, by label; stopped ones too with `all`.
    fn ps(&self, service: &str, all: bool) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let service = format!("label=com.docker.compose.service={service}");
        let mut args = vec!["ps", "--quiet", "--filter", &project, "--filter", &service];
        if all {
            args.push("--all");
        }
        output(&mut docker(&args))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    pub fn container(&self, service: &str) -> String {
        let ids = self.running(service);
        assert_eq!(ids.len(), 1, "one {service} container: {ids:?}");
        ids[0].clone()
    }

    pub fn webapps(&self) -> Vec<String> {
        self.running("webapp")
    }

    pub fn webapp_ips(&self, network: &str) -> BTreeSet<IpAddr> {
        self.webapps()
            .iter()
            .map(|id| container_ip(id, network))
            .collect()
    }
}

/// What `/_lb/health` says, by address.
pub struct Health {
    pub healthy: BTreeSet<IpAddr>,
    /// Members that keep their pinned users but take no new ones.
    pub draining: BTreeSet<IpAddr>,
    /// Every backend listed, in any state.
    pub listed: BTreeSet<IpAddr>,
    pub body: Value,
}

impl Health {
    fn backend(&self, addr: &IpAddr) -> Option<&Value> {
        self.body["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| backend_ip(b) == Some(*addr))
    }

    pub fn requests(&self, addr: &IpAddr) -> u64 {
        self.backend(addr)
            .and_then(|b| b["requests"].as_u64())
            .unwrap_or(0)
    }

    /// `joining`, `healthy`, `draining` or `leaving`; `None` when not listed.
    pub fn state(&self, addr: &IpAddr) -> Option<&str> {
        self.backend(addr).and_then(|b| b["state"].as_str())
    }

    /// Active sessions by backend, as the balancer counts them; backends with none left out.
    pub fn sessions(&self) -> BTreeMap<IpAddr, u64> {
        self.body["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| Some((backend_ip(b)?, b["sessions"].as_u64()?)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The `autoscale` block (`Null` when autoscaling is off).
    pub fn autoscale(&self) -> &Value {
        &self.body["autoscale"]
    }

    /// A count of the `autoscale` block (`running`, `draining`, `held`, ...); 0 when absent.
    pub fn scale(&self, field: &str) -> u64 {
        self.autoscale()[field].as_u64().unwrap_or(0)
    }

    /// Users moved off their pinned backend since the balancer started, by reason.
    pub fn sessions_moved(&self) -> BTreeMap<String, u64> {
        self.body["sessions_moved"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(why, n)| (why.clone(), n.as_u64().unwrap_or(0)))
            .collect()
    }
}

fn backend_ip(b: &Value) -> Option<IpAddr> {
    b["addr"]
        .as_str()?
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
}

/// One balancer as seen from the host; every look at its health also checks that none of
/// `forbidden` (gateway, balancer, impostors) is ever listed.
pub struct Lab {
    pub base: String,
    http: reqwest::Client,
    forbidden: BTreeMap<IpAddr, String>,
    pub polls: usize,
}

impl Lab {
    pub fn new(port: u16, forbidden: BTreeMap<IpAddr, String>) -> Lab {
        Lab::at(format!("http://127.0.0.1:{port}"), forbidden)
    }

    pub fn at(base: String, forbidden: BTreeMap<IpAddr, String>) -> Lab {
        Lab {
            base,
            http: client(),
            forbidden,
            polls: 0,
        }
    }

    pub fn forbid(&mut self, addr: IpAddr, why: &str) {
        self.forbidden.insert(addr, why.to_string());
    }

    pub async fn health(&mut self) -> Result<Health, String> {
        self.polls += 1;
        let resp = self
            .http
            .get(format!("{}/_lb/health", self.base))
            .send()
            .await
            .map_err(|e| chain(&e))?;
        let body: Value = resp.json().await.map_err(|e| chain(&e))?;
        let mut h = Health {
            healthy: BTreeSet::new(),
            draining: BTreeSet::new(),
            listed: BTreeSet::new(),
            body,
        };
        for b in h.body["backends"].as_array().into_iter().flatten() {
            let Some(addr) = backend_ip(b) else { continue };
            h.listed.insert(addr);
            if b["state"] == "healthy" {
                h.healthy.insert(addr);
            }
            if b["state"] == "draining" {
                h.draining.insert(addr);
            }
        }
        for addr in &h.listed {
            if let Some(why) = self.forbidden.get(addr) {
                panic!(
                    "{addr} ({why}) is listed by {}/_lb/health: {:#}",
                    self.base, h.body
                );
            }
        }
        Ok(h)
    }

    /// Polls until `done`; the first such health and when it was seen.
    pub async fn wait(
        &mut self,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&Health) -> bool,
    ) -> (Health, SystemTime) {
        eventually(within, async || {
            let h = self.health().await.map_err(|e| format!("{what}: {e}"))?;
            let at = SystemTime::now();
            if done(&h) {
                Ok((h, at))
            } else {
                Err(format!("{what}; /_lb/health says {:#}", h.body))
            }
        })
        .await
    }
}

impl Lab {
    /// `/_lb/metrics`, which must answer.
    pub async fn metrics(&mut self) -> Metrics {
        let text = self
            .http
            .get(format!("{}/_lb/metrics", self.base))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {}/_lb/metrics: {}", self.base, chain(&e)))
            .text()
            .await
            .unwrap_or_else(|e| panic!("the exposition: {}", chain(&e)));
        Metrics::parse(text)
    }
}

/// A Prometheus exposition, parsed just enough: each sample's name, labels and value.
pub struct Metrics {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: String) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                // Label values here never hold a comma or a quote.
                let labels = labels
                    .split(',')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.trim().to_string(), v.trim_matches('"').to_string()))
                    })
                    .collect();
                Some((name.to_string(), labels, value))
            })
            .collect();
        Metrics { text, samples }
    }

    /// The samples of `name` that carry `labels` (among others).
    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| *v)
            .collect()
    }

    /// The one sample of `name` with `labels`, if exactly one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.matching(name, labels)[..] {
            [v] => Some(v),
            _ => None,
        }
    }

    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().sum()
    }
}

/// `POST /containers/{id}/start` on the engine's socket, as the balancer calls it (no CLI in
/// between, so a start can be timed like the balancer's own); the answer's status.
pub async fn engine_start(id: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = "/var/run/docker.sock";
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {socket}: {e}"))?;
    let request = format!(
        "POST /containers/{id}/start HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write to {socket}: {e}"))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read from {socket}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in the engine's answer: {text}"))
}
