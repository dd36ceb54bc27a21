//! Admin access: `admin.allow` gates every `/_lb/*` path but `/_lb/live`, nothing under
//! `/_lb/` reaches a backend, and `admin.listen` moves the admin endpoints to a listener of
//! their own. Loopback gives distinct peers: a client binds its source address first.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{Balancer, Net, Request, custom, read_response, text};

/// `GET path` from source address `from` to `to` on a connection of its own: the status and
/// the response head, lower-cased.
pub(crate) async fn get_from(from: IpAddr, to: SocketAddr, path: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the source");
    let mut s = socket.connect(to).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let head = read_response(&mut s).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, head)
}

/// A backend that answers its health checks and counts every other request it sees.
fn counting(addr: SocketAddr) -> (crate::support::Backend, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let backend = custom(addr, move |req: Request| {
        let count = Arc::clone(&count);
        async move {
            if req.uri().path() != "/health" {
                count.fetch_add(1, Ordering::SeqCst);
            }
            text(200, "from the backend")
        }
    });
    (backend, seen)
}

const PATHS: [&str; 5] = [
    "/_lb/health",
    "/_lb/metrics",
    "/_lb",
    "/_lb/anything",
    "/_lb/health?x=1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_admin_allow_gets_403_but_live_and_nothing_is_forwarded() {
    let net = Net::new(170);
    let (backend, seen) = counting(net.addr(10));
    let lb = Balancer::found(
        &net.config("", "admin:\n  allow: [127.0.0.1/32]\n"),
        &[backend.addr],
    )
    .await;
    let (inside, outside) = ("127.0.0.1".parse().unwrap(), net.ip(200));

    for path in PATHS {
        let (status, head) = get_from(outside, lb.addr, path).await;
        assert_eq!(status, 403, "{path} from outside: {head}");
        assert!(head.contains("application/json"), "{head}");
    }
    let (status, _) = get_from(outside, lb.addr, "/_lb/live").await;
    assert_eq!(status, 200, "/_lb/live must answer everyone");
    let (status, head) = get_from(inside, lb.addr, "/_lb/health").await;
    assert_eq!(status, 200, "{head}");
    for path in ["/_lb/metrics", "/_lb/anything"] {
        let (status, head) = get_from(inside, lb.addr, path).await;
        assert_ne!(status, 403, "{path} from inside: {head}");
        assert!(
            !head.contains("x-backend-ip"),
            "{path} was forwarded: {head}"
        );
    }
    // The backend is reachable, and saw none of the admin requests.
    let (status, head) = get_from(outside, lb.addr, "/app").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-backend-ip"), "{head}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a /_lb path reached the backend"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_listen_the_public_side_answers_only_live() {
    let net = Net::new(172);
    let (backend, seen) = counting(net.addr(10));
    // The port the net's backends use is free on an address none of them holds.
    let admin = net.addr(251);
    let yaml = net.config(
        "",
        &format!("admin:\n  listen: {admin}\n  allow: [127.0.0.1/32]\n"),
    );
    let lb = Balancer::found(&yaml, &[backend.addr]).await;
    let (inside, outside) = ("127.0.0.1".parse().unwrap(), net.ip(200));

    // Public side: /_lb/live for the HEALTHCHECK, 404 for the rest, never forwarded.
    let (status, head) = get_from(inside, lb.addr, "/_lb/health").await;
    assert_eq!(status, 404, "{head}");
    assert!(!head.contains("x-backend-ip"), "{head}");
    assert_eq!(get_from(outside, lb.addr, "/_lb/metrics").await.0, 404);
    assert_eq!(get_from(outside, lb.addr, "/_lb/live").await.0, 200);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a /_lb path reached the backend"
    );

    // Admin side: everything under /_lb, to the allowed; nothing else.
    let (status, head) = get_from(inside, admin, "/_lb/health").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(get_from(outside, admin, "/_lb/health").await.0, 403);
    assert_eq!(get_from(outside, admin, "/_lb/live").await.0, 200);
    let (status, head) = get_from(inside, admin, "/app").await;
    assert_eq!(status, 404, "{head}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the admin listener forwarded"
    );

    // The admin listener is in the swept range at the probed port: like the public one, the
    // sweep leaves it alone. Probed, it would answer 404 (a "status" failure) every round.
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let sweeps = r#"sweeplb_sweeps_total{pool="default"}"#;
    let probed = r#"sweeplb_probes_total{pool="default",kind="sweep",result="status"}"#;
    let scraper = reqwest::Client::builder()
        .no_proxy()
        .local_address(inside)
        .build()
        .unwrap();
    let text = crate::support::eventually(Duration::from_secs(10), async || {
        let resp = scraper
            .get(format!("http://{admin}/_lb/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        match metric(&text, sweeps) {
            n if status == 200 && n >= 2.0 => Ok(text),
            n => Err(format!("{n} sweeps so far ({status})")),
        }
    })
    .await;
    assert_eq!(
        metric(&text, probed),
        0.0,
        "the admin listener was probed:\n{text}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listen_that_cannot_be_bound_is_named() {
    let net = Net::new(173);
    let taken = std::net::TcpListener::bind((net.ip(252), 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let config =
        sweeplb::config::parse(&net.config("", &format!("admin:\n  listen: {addr}\n"))).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = sweeplb::run(config, listener, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("a taken admin.listen");
    assert!(
        err.to_string()
            .starts_with(&format!("admin.listen: cannot bind {addr}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_a_reloads_connection_settings_too() {
    let net = Net::new(186);
    let (backend, _) = counting(net.addr(10));
    let admin = net.addr(251);
    let config = |rest: &str| {
        sweeplb::config::parse(&net.config("", &format!("admin:\n  listen: {admin}\n{rest}")))
            .expect("a valid config")
    };
    let lb = Balancer::found(
        &net.config("", &format!("admin:\n  listen: {admin}\n")),
        &[backend.addr],
    )
    .await;
    let head = async |extra: &str| -> String {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        let req = format!("GET /_lb/live HTTP/1.1\r\nHost: lb.test\r\n{extra}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        read_response(&mut s).await
    };
    let big = format!("x-big: {}", "a".repeat(4000));
    let before = head(&big).await;
    assert!(before.starts_with("http/1.1 200"), "{before}");
    let outcome = lb
        .reload
        .apply(config("limits:\n  max_request_head: 2048\n"))
        .await;
    assert_eq!(outcome.result(), "ok", "{outcome:?}");
    let after = head(&big).await;
    assert!(
        after.starts_with("http/1.1 431"),
        "the admin listener's head cap: {after}"
    );
    lb.stop().await;
}
