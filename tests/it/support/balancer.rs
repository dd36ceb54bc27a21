//! The balancer run in-process, exactly as the binary runs it, and what its `/_lb/health`
//! says.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Backend, Net, addrs, client, eventually, webapps};

/// How long a fresh balancer may take to find backends that are already up: a sweep, `rise`
/// checks, and a wide margin for a loaded machine.
const FIND_WITHIN: Duration = Duration::from_secs(5);

pub struct Balancer {
    pub addr: SocketAddr,
    /// `admin.listen`, where `/_lb/health` is read when it is set.
    pub admin: Option<SocketAddr>,
    /// Hands the running balancer new configs, as SIGHUP does in the binary.
    pub reload: sweeplb::reload::Reload,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Balancer {
    pub async fn start(yaml: &str) -> Balancer {
        Balancer::start_on("127.0.0.1:0".parse().expect("literal"), yaml).await
    }

    pub async fn start_on(listen: SocketAddr, yaml: &str) -> Balancer {
        let config = sweeplb::config::parse(yaml).unwrap_or_else(|e| panic!("test config: {e}"));
        let listener = TcpListener::bind(listen).await.expect("bind balancer");
        let addr = listener.local_addr().expect("local addr");
        let admin = config.admin().listen;
        let shutdown = CancellationToken::new();
        let (reload, reloads) = sweeplb::reload::channel();
        let task = tokio::spawn(sweeplb::run_with_reload(
            config,
            listener,
            reloads,
            shutdown.clone(),
        ));
        if let Some(admin) = admin {
            // `run` binds `admin.listen` itself, on its own task.
            eventually(Duration::from_secs(5), async || {
                tokio::net::TcpStream::connect(admin)
                    .await
                    .map(drop)
                    .map_err(|e| format!("admin.listen {admin}: {e}"))
            })
            .await;
        }
        Balancer {
            addr,
            admin,
            reload,
            shutdown,
            task: Some(task),
        }
    }

    /// A balancer on `yaml` that has found `backends`, and nothing else.
    pub async fn found(yaml: &str, backends: &[SocketAddr]) -> Balancer {
        let lb = Balancer::start(yaml).await;
        lb.wait_healthy(backends, FIND_WITHIN).await;
        lb
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn health(&self) -> (u16, Value) {
        let resp = client()
            .get(format!(
                "http://{}/_lb/health",
                self.admin.unwrap_or(self.addr)
            ))
            .send()
            .await
            .expect("GET /_lb/health");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("health is JSON"))
    }

    /// Every backend listed, in any state.
    pub async fn listed(&self) -> Vec<String> {
        let (_, h) = self.health().await;
        h["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["addr"].as_str().map(str::to_string))
            .collect()
    }

    /// The addresses the health endpoint lists as routed.
    pub async fn healthy(&self) -> Vec<String> {
        let (_, h) = self.health().await;
        let mut addrs: Vec<String> = h["backends"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter(|b| b["state"] != "joining" && b["routed"] == true)
                    .filter_map(|b| b["addr"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        addrs.sort();
        addrs
    }

    /// `sessions_moved`: users moved off their pinned backend since start, by reason.
    pub async fn moved(&self) -> BTreeMap<String, u64> {
        let (_, h) = self.health().await;
        h["sessions_moved"]
            .as_object()
            .unwrap_or_else(|| panic!("no sessions_moved object in {h}"))
            .iter()
            .map(|(why, n)| {
                let n = n
                    .as_u64()
                    .unwrap_or_else(|| panic!("{why}: {n} is no count"));
                (why.clone(), n)
            })
            .collect()
    }

    /// Users moved for any reason since start.
    pub async fn moved_total(&self) -> u64 {
        self.moved().await.values().sum()
    }

    /// `bounded_load_diverted`: new users sent past their first choice since start.
    pub async fn diverted(&self) -> u64 {
        let (_, h) = self.health().await;
        h["bounded_load_diverted"]
            .as_u64()
            .unwrap_or_else(|| panic!("no bounded_load_diverted count in {h}"))
    }

    /// The `backends` entry of the member at `addr` (its `state`, `instance`, `sessions`...);
    /// panics if it is not listed.
    pub async fn member(&self, addr: SocketAddr) -> Value {
        let (_, h) = self.health().await;
        h["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["addr"] == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("{addr} is not listed: {h}"))
    }

    /// Waits until the routed set is exactly `want`; returns how long it took.
    pub async fn wait_healthy(&self, want: &[SocketAddr], within: Duration) -> Duration {
        let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
        want.sort();
        let start = Instant::now();
        eventually(within, async || {
            let got = self.healthy().await;
            if got == want {
                Ok(start.elapsed())
            } else {
                Err(format!("the pool is {got:?}, wanted {want:?}"))
            }
        })
        .await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("balancer task").expect("balancer run");
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Webapps at `lasts` and a balancer (config `net.config("", rest)`) that has found them all.
pub async fn lab(net: &Net, lasts: &[u8], rest: &str) -> (Vec<Backend>, Balancer) {
    let backends = webapps(net, lasts);
    let lb = Balancer::found(&net.config("", rest), &addrs(&backends)).await;
    (backends, lb)
}
