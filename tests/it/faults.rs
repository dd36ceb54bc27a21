//! Faults on either side of the balancer: what a backend does wrong stays with the request
//! that met it (one execution, a 502, never a replay across the pool, never another client's
//! bytes), and what a client does wrong is the client's (400, not the backend's 502).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Backend, Balancer, Net, Request, addrs, candidates, canned, client, custom, raw, text,
};

/// Backends .10-.12; every request to .10 other than a health check is counted and answered
/// by `answer` on the raw socket (which may be garbage, or nothing at all); .11 and .12 answer
/// 200 and count what reaches them.
async fn deadly_lab(
    net: &Net,
    answer: &'static [u8],
) -> (Balancer, Vec<Backend>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (deadly_hits, others_hit) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let hits = Arc::clone(&deadly_hits);
    let mut backends = vec![raw(net.addr(10), move |mut s, _| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = s.write_all(answer).await;
        }
    })];
    for i in [11, 12] {
        let hit = Arc::clone(&others_hit);
        backends.push(custom(net.addr(i), move |req: Request| {
            if req.uri().path() != "/health" {
                hit.fetch_add(1, Ordering::SeqCst);
            }
            async { text(200, "ok") }
        }));
    }
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;
    (lb, backends, deadly_hits, others_hit)
}

/// A cookie whose key the ring gives to `.10` first.
fn cookie_for_first(backends: &[Backend]) -> String {
    let all = addrs(backends);
    (0..1000)
        .map(|i| format!("k{i}"))
        .find(|key| candidates(&all, key.as_bytes())[0] == all[0])
        .map(|key| format!("sweeplb={key}"))
        .expect("some key lands on .10")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_death_reaches_one_backend_once_and_its_client_gets_502() {
    for (n, answer) in [
        // The backend dies on it: the connection closes with no answer.
        (100u8, &b""[..]),
        // The backend answers garbage.
        (101, &b"NOT HTTP AT ALL\r\n\r\n"[..]),
    ] {
        let net = Net::new(n);
        let (lb, backends, deadly_hits, others_hit) = deadly_lab(&net, answer).await;
        let cookie = cookie_for_first(&backends);
        let resp = client()
            .get(lb.url("/death"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "answer {answer:?}");
        assert_eq!(deadly_hits.load(Ordering::SeqCst), 1, "sent again to .10");
        assert_eq!(
            others_hit.load(Ordering::SeqCst),
            0,
            "replayed across the pool"
        );
        // Still a member: a failed request is not a failed health check.
        assert_eq!(lb.healthy().await.len(), 3);
        lb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_clients_400_not_the_backends_502() {
    let net = Net::new(102);
    let backend = custom(net.addr(10), |_req: Request| async { text(200, "ok") });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST /orders HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // The backend is untouched by it: still routed, still answering.
    assert_eq!(lb.healthy().await, [backend.addr.to_string()]);
    let ok = client().get(lb.url("/")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_both_transfer_encoding_and_content_length_is_framed_by_its_chunks() {
    let net = Net::new(103);
    let backend = canned(
        net.addr(10),
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let resp = client().get(lb.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(
        resp.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"50"[..]),
        "the backend's Content-Length was kept beside its chunks"
    );
    assert_eq!(resp.text().await.unwrap(), "hello");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_writes_on_an_idle_connection_reach_no_one_and_are_counted() {
    let net = Net::new(104);
    // Answers each request on a connection; after the first, 100 ms later, it also writes a
    // whole second response nobody asked for.
    let backend = raw(net.addr(10), |mut s, _| async move {
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected")
            .await;
        let mut buf = [0u8; 4096];
        while let Ok(1..) = s.read(&mut buf).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nnormal")
                .await;
        }
    });
    // A short idle timeout, so that the reaper looks at the idle connections every second.
    let lb = Balancer::found(&net.config("", "timeouts:\n  idle: 2s\n"), &[backend.addr]).await;
    for round in 0..6 {
        // A fresh client each time: the warm upstream connection is another client's.
        let first = client().get(lb.url("/a")).send().await.unwrap();
        let body = first.text().await.unwrap();
        assert!(body == "first" || body == "normal", "round {round}: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = client().get(lb.url("/b")).send().await.unwrap();
        let body = next.text().await.unwrap();
        assert_ne!(body, "injected", "round {round}: another response's bytes");
    }
    // A client that keeps its connection: its later requests may take a warm upstream
    // connection, which is looked at before it is used.
    let keeps = client();
    for round in 0..6 {
        let resp = keeps.get(lb.url("/c")).send().await.unwrap();
        let body = resp.text().await.unwrap();
        assert_ne!(
            body, "injected",
            "kept-alive round {round}: another response's bytes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, health) = lb.health().await;
    assert!(
        health["upstream"]["unexpected"].as_u64().unwrap_or(0) >= 1,
        "no idle connection was counted as spoiled: {}",
        health["upstream"]
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_body_timeout_and_so_is_its_backend() {
    let net = Net::new(105);
    // Streams a response without end, and says when its connection was closed under it.
    let (tx, mut backend_closed) = tokio::sync::mpsc::unbounded_channel();
    let backend = raw(net.addr(10), move |mut s, _| {
        let tx = tx.clone();
        async move {
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "z".repeat(64 * 1024));
            let started = tokio::time::Instant::now();
            // Bounded: a minute at most, whatever happens.
            while started.elapsed() < Duration::from_secs(60) {
                if s.write_all(chunk.as_bytes()).await.is_err() {
                    let _ = tx.send(started.elapsed());
                    return;
                }
            }
        }
    });
    let lb = Balancer::found(&net.config("", "timeouts:\n  body: 1s\n"), &[backend.addr]).await;
    // A client with a small receive buffer that asks and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(lb.addr).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let asked = tokio::time::Instant::now();
    // The backend's connection is cut: the balancer gave up on a client that reads nothing.
    let cut = tokio::time::timeout(Duration::from_secs(10), backend_closed.recv())
        .await
        .expect("the backend's connection was still open after 10 s")
        .expect("a report");
    assert!(
        cut >= Duration::from_millis(900),
        "cut after {cut:?}, before the 1s body timeout"
    );
    // And the client's: what it had been sent is there to read, then the end.
    crate::support::closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(asked.elapsed() < Duration::from_secs(10));
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_right_behind_a_response_reach_no_one_and_are_counted() {
    let net = Net::new(106);
    // Every answer carries a second, unasked-for response in the same write.
    let backend = raw(net.addr(10), |mut s, _| async move {
        let both = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst\
                     HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected";
        let mut buf = [0u8; 4096];
        loop {
            if s.write_all(both).await.is_err() {
                return;
            }
            match s.read(&mut buf).await {
                Ok(1..) => {}
                _ => return,
            }
        }
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let keeps = client();
    for round in 0..4 {
        let body = keeps
            .get(lb.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "first", "round {round}: another response's bytes");
    }
    let (_, health) = lb.health().await;
    assert!(
        health["upstream"]["unexpected"].as_u64().unwrap_or(0) >= 4,
        "the bytes behind each response were not counted: {}",
        health["upstream"]
    );
    assert!(
        health["upstream"]["reused"].as_u64().unwrap_or(0) == 0,
        "a connection with bytes left over was used again: {}",
        health["upstream"]
    );
    lb.stop().await;
}
