//! Lifecycle: slowloris cut-off, graceful shutdown, and start-up refusals of bad configs.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Balancer, Net, Request, client, closed_within, custom, lab, read_response, text,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dribbling_its_request_head_is_cut_off() {
    let net = Net::new(60);
    let (_backends, lb) = lab(&net, &[10], "timeouts:\n  header_read: 500ms\n").await;

    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    let mut closed = false;
    // One header byte every 100 ms: never a complete head. Bounded to 5 s.
    while start.elapsed() < Duration::from_secs(5) {
        if s.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                // hyper may answer 408 before closing; anything but a forwarded response is fine.
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(
                    !head.contains("x-backend-ip"),
                    "the dribbled request was forwarded: {head}"
                );
            }
            Err(_) => {}
        }
    }
    assert!(
        closed,
        "the connection was still open after 5 s of dribbling"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "cut off before header_read: {:?}",
        start.elapsed()
    );
    // A well-behaved client is still served.
    assert_eq!(
        client().get(lb.url("/")).send().await.unwrap().status(),
        200
    );
    lb.stop().await;
}

/// A head that stops arriving is closed at `header_read` from its first byte, not left to hold
/// its buffer until `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_mid_head_is_cut_at_header_read_not_idle() {
    let net = Net::new(92);
    let (_backends, lb) = lab(
        &net,
        &[10],
        "timeouts:\n  header_read: 500ms\n  idle: 30s\n",
    )
    .await;

    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    closed_within(&mut s, Duration::from_secs(10)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "cut off before header_read: {:?}",
        start.elapsed()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let net = Net::new(61);
    // Health answers at once; every other request takes 700 ms.
    let backend = custom(net.addr(10), |req: Request| async move {
        if req.uri().path() != "/health" {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        text(200, "ok")
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let url = lb.url("/slow");
    let inflight: Vec<_> = (0..5)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = lb.addr;
    let stopped = tokio::spawn(lb.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown began"
    );
    for r in inflight {
        assert_eq!(r.await.unwrap().expect("in-flight request completed"), 200);
    }
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("run() returned")
        .unwrap();
}

fn sweeplb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sweeplb"))
        .args(args)
        .output()
        .expect("run sweeplb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sweeplb-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_what_it_would_sweep() {
    let path = write_config(
        "ok.yaml",
        "discovery:\n  subnets: [127.77.62.0/24, 127.77.63.0/28]\n  port: 4000\n",
    );
    let (code, out, err) = sweeplb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("127.77.62.0/24 (254 addresses)"), "{out}");
    assert!(out.contains("addresses       268"), "{out}");
    assert!(out.contains("port            4000"), "{out}");
    assert!(out.contains("autoscale       off"), "{out}");
    // `check` names the service and the bounds; it does not contact the engine.
    let path = write_config(
        "autoscale.yaml",
        "discovery:\n  subnets: [127.77.62.0/24]\nautoscale:\n  docker: tcp://127.0.0.1:2375\n  \
         service: webapp\n  min: 0\n  max: 3\n",
    );
    let (code, out, err) = sweeplb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "autoscale       service webapp, 0-3 containers, target 8 in flight each, via \
             tcp://127.0.0.1:2375"
        ),
        "{out}"
    );
}

#[test]
fn invalid_configs_are_refused_with_one_line_per_problem() {
    let path = write_config(
        "bad.yaml",
        "discovery:\n  subnets: [127.77.64.1/24]\n  port: 0\n  rise: 0\n  timeout: 2s\n  colour: red\n",
    );
    // Unknown keys are reported by the parser before anything else.
    let (code, _, err) = sweeplb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `colour`"), "{err}");

    let path = write_config(
        "bad2.yaml",
        "discovery:\n  subnets: [127.77.64.1/24]\n  port: 0\n  rise: 0\n  timeout: 2s\n",
    );
    let (code, _, err) = sweeplb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    for expected in [
        "discovery.subnets: 127.77.64.1/24 has host bits set",
        "discovery.port: 0 is out of range",
        "discovery.rise: 0 is out of range",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
    // The balancer itself refuses to start on the same file: nothing half-configured.
    let (code, _, err) = sweeplb(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn a_routed_range_is_refused_unless_allow_routed() {
    // A documentation range (RFC 5737) that this host is not attached to. Nothing is ever sent
    // to it: `check` does not sweep, and the balancer refuses before starting.
    let attached = sweeplb::config::attached_networks();
    let net = ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24"]
        .into_iter()
        .find(|n| {
            !attached
                .iter()
                .any(|a| a.contains(&n.parse::<ipnet::IpNet>().unwrap()))
        })
        .expect("one documentation range is not attached");
    let path = write_config("routed.yaml", &format!("discovery:\n  subnets: [{net}]\n"));
    let (code, _, err) = sweeplb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!(
            "discovery.subnets: {net} is neither loopback nor a network attached"
        )),
        "{err}"
    );
    assert!(err.contains("allow_routed: true"), "{err}");
    // The balancer refuses it too. Its config also excludes the whole range, so that even if
    // the refusal ever broke, nothing would be sent there.
    let run = write_config(
        "routed-run.yaml",
        &format!("discovery:\n  subnets: [{net}]\n  exclude: [{net}]\n"),
    );
    let (code, _, err) = sweeplb(&["--config", run.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("allow_routed: true"), "{err}");
    let allowed = write_config(
        "allowed.yaml",
        &format!("discovery:\n  subnets: [{net}]\n  allow_routed: true\n"),
    );
    let (code, out, err) = sweeplb(&["check", "--config", allowed.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(net), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_client_waits_idle_not_header_read() {
    let net = Net::new(62);
    let (_backends, lb) = lab(&net, &[10], "timeouts:\n  header_read: 300ms\n  idle: 2s\n").await;

    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: shop.test\r\nCookie: sweeplb=idle\r\n\r\n";
    s.write_all(get).await.unwrap();
    assert!(
        read_response(&mut s)
            .await
            .starts_with("http/1.1 200 ok\r\n")
    );
    // Three times header_read between requests, well within idle: the connection still serves.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(get).await.unwrap();
    assert!(
        read_response(&mut s)
            .await
            .starts_with("http/1.1 200 ok\r\n")
    );
    // Left idle, it is closed after `idle` counted from its last response, not from its
    // first one (the idle timer is moved on lazily: it first fires ~1.1 s from now, for the
    // first idle period, and must not close then); bounded at 10 s.
    let idle_from = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    let after = idle_from.elapsed();
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection was not closed: {closed:?}"
    );
    assert!(
        after >= Duration::from_millis(1800),
        "closed {after:?} after its last response, before `idle` (2 s)"
    );
    lb.stop().await;
}
