//! Test support: fake backends on 127.77.N.x, the balancer run in-process on an ephemeral
//! port, users with their own cookie jars, waiting on what `/_lb/health` says, and the Docker
//! engine's commands for the end-to-end test.
//!
//! Each test owns one loopback /24, `127.77.N.0/24` with its own N, so tests running in
//! parallel processes never see each other's backends.

#![allow(dead_code)]

mod backend;
mod balancer;
pub mod docker;
mod users;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub use backend::{
    Backend, HEALTH_OK, addrs, canned, custom, raw, serve_webapp, tcp, text, webapp, webapp_named,
    webapps, with_headers,
};
pub use balancer::{Balancer, lab};
pub type Request = http::Request<hyper::body::Incoming>;

pub use users::{Page, Pinned, User, chain, pages, round, users, visit};

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

    /// A config sweeping this net with fast intervals, plus `discovery_extra` YAML lines
    /// appended to the `discovery:` block (indented by the caller) and `rest`, top-level
    /// sections.
    pub fn config(&self, discovery_extra: &str, rest: &str) -> String {
        format!(
            "\
             discovery:\n  subnets: [{}]\n  port: {}\n  check_interval: {}ms\n  sweep_interval: {}ms\n  \
             timeout: 150ms\n  rise: {RISE}\n  fall: {FALL}\n{discovery_extra}{rest}",
            self.subnet(),
            self.port,
            CHECK_INTERVAL.as_millis(),
            SWEEP_INTERVAL.as_millis(),
        )
    }
}

/// The prober settings of [`Net::config`], for bounds derived from them.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(400);
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;

/// Polls `attempt` every 50 ms until it gives `Ok`; panics after `within` with the last
/// `Err`, which says what was seen instead.
pub async fn eventually<T>(
    within: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("not within {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
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

/// `GET url` with `headers`, which must get an answer (of any status).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {}", chain(&e)))
}

/// The `x-backend-ip` header of a response: which backend answered.
pub fn backend_ip(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-backend-ip")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no x-backend-ip in {:?}", resp.headers()))
        .to_string()
}

/// Where the balancer sends a key, first choice first, computed with the library's own ring
/// the way the pool builds it: backends in ascending address order, each identified by the
/// hash of its address string.
pub fn candidates(backends: &[SocketAddr], key: &[u8]) -> Vec<SocketAddr> {
    use sweeplb::balancer::{Ring, backend_hash, key_hash};
    let mut addrs = backends.to_vec();
    addrs.sort();
    let ids: Vec<u64> = addrs
        .iter()
        .map(|a| backend_hash(a.to_string().as_bytes()))
        .collect();
    Ring::new(&ids)
        .candidates(key_hash(key))
        .map(|i| addrs[i])
        .collect()
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

/// Reads one response with a `content-length` off a raw socket, body and all; its head, as
/// [`read_head`] gives it.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(s, &mut body)
        .await
        .unwrap_or_else(|e| panic!("a {len}-byte body: {e}"));
    head
}

/// Waits, at most `within`, for the peer to close `s` (EOF or reset); what was read meanwhile
/// is discarded. Panics if it stays open.
pub async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) {
    let mut buf = [0u8; 1024];
    let end = tokio::time::timeout(within, async {
        loop {
            match tokio::io::AsyncReadExt::read(s, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the connection was still open after {within:?}"
    );
}
