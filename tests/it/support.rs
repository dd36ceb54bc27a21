//! Test support: fake backends on 127.77.N.x, the balancer run in-process on an ephemeral
//! port, HTTP clients with their own cookie jars, and waiting on what `/_lb/health` says.
//!
//! Each test owns one loopback /24, `127.77.N.0/24` with its own N, so tests running in
//! parallel processes never see each other's backends.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// A test's own loopback /24 and the port every backend in it listens on.
pub struct Net {
    pub n: u8,
    pub port: u16,
}

impl Net {
    /// Picks the port by binding an ephemeral one on the first backend address.
    pub fn new(n: u8) -> Net {
        let probe = std::net::TcpListener::bind((Ipv4Addr::new(127, 77, n, 250), 0))
            .expect("bind an ephemeral port");
        let port = probe.local_addr().expect("local addr").port();
        Net { n, port }
    }

    pub fn ip(&self, last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 77, self.n, last))
    }

    pub fn addr(&self, last: u8) -> SocketAddr {
        SocketAddr::new(self.ip(last), self.port)
    }

    pub fn subnet(&self) -> String {
        format!("127.77.{}.0/24", self.n)
    }

    /// A config sweeping this net with fast intervals, plus `extra` YAML lines appended to the
    /// `discovery:` block (indented by the caller) or top-level sections.
    pub fn config(&self, discovery_extra: &str, rest: &str) -> String {
        format!(
            "\
             discovery:\n  subnets: [{}]\n  port: {}\n  check_interval: 200ms\n  sweep_interval: 400ms\n  \
             timeout: 150ms\n  rise: 2\n  fall: 2\n{discovery_extra}{rest}",
            self.subnet(),
            self.port
        )
    }
}

fn reusable_listener(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    socket.listen(1024).expect("listen")
}

/// A backend that can be killed: its listener and every connection end at once.
pub struct Backend {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Backend {
    /// Returns once the listener and every connection are closed, as after a crash.
    pub async fn kill(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The real demo webapp on `addr`.
pub fn webapp(addr: SocketAddr) -> Backend {
    webapp_named(addr, "sweeplb-webapp")
}

pub fn webapp_named(addr: SocketAddr, app: &str) -> Backend {
    let app = Arc::new(sweeplb::webapp::Webapp::new(app));
    custom(addr, move |req| {
        let app = Arc::clone(&app);
        async move { app.handle(req, addr).await }
    })
}

/// Webapps on `net` at each of `lasts` (the last octet).
pub fn webapps(net: &Net, lasts: &[u8]) -> Vec<Backend> {
    lasts.iter().map(|&i| webapp(net.addr(i))).collect()
}

pub fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

/// Webapps at `lasts` and a balancer (config `net.config("", rest)`) that has found them all.
pub async fn lab(net: &Net, lasts: &[u8], rest: &str) -> (Vec<Backend>, Balancer) {
    let backends = webapps(net, lasts);
    let lb = Balancer::start(&net.config("", rest)).await;
    lb.wait_healthy(&addrs(&backends), Duration::from_secs(5))
        .await;
    (backends, lb)
}

/// A backend answering every request with `handler` (plus an `x-backend-ip` header, as the
/// webapp sends); connections die with it.
pub fn custom<F, Fut>(addr: SocketAddr, handler: F) -> Backend
where
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = reusable_listener(addr);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let tasks = tokio_util::task::TaskTracker::new();
    let conns = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = token.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let handler = handler.clone();
            let token = token.clone();
            conns.spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move {
                        let mut resp = handler(req).await;
                        if !resp.headers().contains_key("x-backend-ip") {
                            let ip = addr
                                .ip()
                                .to_string()
                                .parse()
                                .expect("an IP is a header value");
                            resp.headers_mut().insert("x-backend-ip", ip);
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    });
    Backend { addr, stop, tasks }
}

pub fn text(status: u16, body: &str) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
    r
}

/// The balancer, run in-process exactly as the binary runs it.
pub struct Balancer {
    pub addr: SocketAddr,
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
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sweeplb::run(config, listener, shutdown.clone()));
        Balancer {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn health(&self) -> (u16, Value) {
        let resp = client()
            .get(self.url("/_lb/health"))
            .send()
            .await
            .expect("GET /_lb/health");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("health is JSON"))
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

    /// Waits until the routed set is exactly `want`; returns how long it took.
    pub async fn wait_healthy(&self, want: &[SocketAddr], within: Duration) -> Duration {
        let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
        want.sort();
        let start = Instant::now();
        loop {
            let got = self.healthy().await;
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "pool is {got:?}, wanted {want:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// A client with no cookie jar.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A browser-like user: its own cookie jar, keep-alive.
pub struct User {
    http: reqwest::Client,
    url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub backend: String,
    pub views: u64,
}

impl User {
    pub fn new(balancer: &Balancer) -> User {
        let http = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        User {
            http,
            url: balancer.url("/"),
        }
    }

    pub async fn get(&self) -> Result<Page, String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        Ok(Page {
            backend: v["ip"].as_str().unwrap_or_default().to_string(),
            views: v["sessionViews"].as_u64().unwrap_or_default(),
        })
    }
}

pub async fn users(balancer: &Balancer, n: usize) -> Vec<User> {
    (0..n).map(|_| User::new(balancer)).collect()
}

/// Every user's next page, in order.
pub async fn round(users: &[User]) -> Vec<Result<Page, String>> {
    futures::future::join_all(users.iter().map(User::get)).await
}

/// Reads a response head off a raw socket: the status line and headers, lower-cased.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tokio::io::AsyncReadExt::read(s, &mut byte).await.unwrap(),
            1,
            "closed mid-head: {head:?}"
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}
