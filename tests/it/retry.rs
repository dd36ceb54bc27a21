//! The retry rule: a request goes to another connection or backend only while it is certain
//! the backend did not act on it, or when it is idempotent with an empty body; anything else
//! gets its error status, never a replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{
    Balancer, Net, Request, addrs, candidates, canned, client, custom, raw, read_response, text,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_kept_alive_connection_the_backend_just_closed_is_sent_again_on_a_fresh_one() {
    let net = Net::new(50);
    // Answers the first request of each connection, keeping it alive, then closes it the
    // moment the next request arrives, unread and unanswered: a backend whose idle timer fired
    // just then. Says which connection (counted from 1) served the request.
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (Arc::clone(&opened), Arc::clone(&closed));
    let backend = raw(net.addr(10), move |mut s, _| {
        let (n, closed) = (o.fetch_add(1, Ordering::SeqCst) + 1, Arc::clone(&c));
        async move {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-conn: {n}\r\n\r\nok");
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if s.readable().await.is_ok() {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;

    // One client connection, so every request meets the same worker and its warm upstream
    // connection.
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    for n in 1..=4 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nCookie: sweeplb=warm\r\n\r\n")
            .await
            .unwrap();
        let head = read_response(&mut s).await;
        assert!(head.starts_with("http/1.1 200 "), "request {n}: {head}");
        assert!(
            head.contains(&format!("\r\nx-conn: {n}\r\n")),
            "request {n} was not answered on upstream connection {n}: {head}"
        );
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        3,
        "the backend closed a warm connection under requests 2 to 4"
    );
    assert_eq!(lb.healthy().await, [backend.addr.to_string()]);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_backend_the_prober_removes_get_502_and_are_never_replayed() {
    let net = Net::new(51);
    // .10 hangs on every request; once two are waiting on it, its health check fails too,
    // so after `fall` checks the prober removes it while they wait.
    let waiting = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&waiting);
    let hung = custom(net.addr(10), move |req: Request| {
        let waiting = Arc::clone(&w);
        async move {
            if req.uri().path() == "/health" {
                return match waiting.load(Ordering::SeqCst) {
                    0 | 1 => text(200, "ok"),
                    _ => text(503, "stuck"),
                };
            }
            waiting.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(30)).await;
            text(200, "too late")
        }
    });
    // The others answer, and count the requests that reach them.
    let others_hit = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = [11, 12]
        .map(|i| {
            let hit = Arc::clone(&others_hit);
            custom(net.addr(i), move |req: Request| {
                if req.uri().path() != "/health" {
                    hit.fetch_add(1, Ordering::SeqCst);
                }
                async { text(200, "ok") }
            })
        })
        .into();
    let mut all = addrs(&others);
    all.push(hung.addr);
    let lb = Balancer::found(&net.config("", "timeouts:\n  response: 20s\n"), &all).await;

    let cookie = (0..1000)
        .find_map(|i| {
            let key = format!("k{i}");
            let order = candidates(&all, key.as_bytes());
            (order[0] == hung.addr).then(|| format!("sweeplb={key}"))
        })
        .expect("some key lands on .10");
    let get = tokio::spawn({
        let (url, cookie) = (lb.url("/orders"), cookie.clone());
        async move { client().get(url).header("cookie", cookie).send().await }
    });
    let post = tokio::spawn({
        let url = lb.url("/orders");
        async move {
            client()
                .post(url)
                .header("cookie", cookie)
                .body("order=1")
                .send()
                .await
        }
    });
    let get = get.await.unwrap().expect("the GET is answered");
    let post = post.await.unwrap().expect("the POST is answered");
    assert_eq!(waiting.load(Ordering::SeqCst), 2, "both waited on .10");

    // The backend had the requests and may have acted on them: neither is sent elsewhere, so a
    // request that hangs its backend cannot go on to hang the next.
    for resp in [get, post] {
        assert_eq!(resp.status(), 502);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "the backend failed");
    }
    assert_eq!(
        others_hit.load(Ordering::SeqCst),
        0,
        "a request was replayed"
    );
    // The prober signals the departure to waiting requests before it publishes the pool.
    lb.wait_healthy(&addrs(&others), Duration::from_secs(2))
        .await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_switching_protocols_unasked_gives_502() {
    let net = Net::new(52);
    let backend = canned(
        net.addr(10),
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    );
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let resp = client().get(lb.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "the backend failed");
    lb.stop().await;
}
