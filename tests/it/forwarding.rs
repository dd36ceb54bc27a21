//! Forwarding: headers added and removed, bodies streamed both ways, connect failures going to
//! the fallback backend, and errors mapped to 502/503/504.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Backend, Balancer, Net, Request, addrs, candidates, client, closed_within, custom, eventually,
    lab, raw, read_head, read_response, text, with_headers,
};

/// A backend that describes the request it got, and answers with hop-by-hop headers of its own.
async fn echo(req: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        return text(200, "ok");
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let uri = req.uri().to_string();
    let method = req.method().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let json =
        serde_json::json!({ "headers": headers, "uri": uri, "method": method, "body_len": body });
    with_headers(
        text(200, &json.to_string()),
        &[
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("x-end-to-end", "kept"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_added_and_hop_by_hop_headers_removed_both_ways() {
    let net = Net::new(40);
    let backend = custom(net.addr(10), echo);
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;

    let resp = client()
        .get(lb.url("/path?q=1"))
        .header("host", "shop.example.test")
        .header("x-forwarded-for", "127.9.9.9")
        .header("connection", "x-private")
        .header("x-private", "drop me")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-app", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for gone in ["x-hop", "keep-alive"] {
        assert!(
            resp.headers().get(gone).is_none(),
            "response kept hop-by-hop {gone}"
        );
    }
    assert_eq!(resp.headers()["x-end-to-end"], "kept");
    let seen: serde_json::Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/path?q=1");
    assert_eq!(h["host"], "shop.example.test");
    assert_eq!(h["x-forwarded-for"], "127.9.9.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.test");
    assert_eq!(h["x-app"], "kept");
    for gone in ["x-private", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "request kept hop-by-hop {gone}: {h}");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let net = Net::new(41);
    let backend = custom(net.addr(10), |req: Request| async move {
        if req.uri().path() == "/health" {
            return text(200, "ok");
        }
        // Echo the byte count and answer with 8 MiB.
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let resp = http::Response::new(Full::new(Bytes::from(vec![b'x'; 8 << 20])));
        with_headers(resp, &[("x-received", &n.to_string())])
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let upload = vec![b'y'; 16 << 20];
    let resp = client()
        .post(lb.url("/upload"))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-received"],
        (16 << 20).to_string().as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().len(), 8 << 20);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_backend_cannot_be_connected_goes_to_the_fallback_with_its_body() {
    let net = Net::new(42);
    let backends: Vec<_> = [10, 11, 12].map(|i| custom(net.addr(i), echo)).into();
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;

    // Find, with the library's own ring, a cookie whose backend is .11, and the fallback it
    // should get. No request has gone to .11, so no warm connection to it hides the failure.
    let (cookie, fallback) = (0..1000)
        .find_map(|i| {
            let key = format!("k{i}");
            let order = candidates(&addrs(&backends), key.as_bytes());
            (order[0] == net.addr(11))
                .then(|| (format!("sweeplb={key}"), order[1].ip().to_string()))
        })
        .expect("some key lands on .11");
    let target = net.ip(11).to_string();
    backends[1].kill().await;
    let resp = client()
        .post(lb.url("/orders"))
        .header("cookie", &cookie)
        .body(vec![b'z'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["x-backend-ip"], target.as_str());
    assert_eq!(
        resp.headers()["x-backend-ip"],
        fallback.as_str(),
        "not the key's first fallback"
    );
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body_len"], 100_000);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_gives_504_and_a_broken_one_502() {
    let net = Net::new(43);
    let backend = custom(net.addr(10), |req: Request| async move {
        match req.uri().path() {
            "/health" => text(200, "ok"),
            "/hang" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                text(200, "too late")
            }
            _ => text(200, "ok"),
        }
    });
    let lb = Balancer::found(
        &net.config("", "timeouts:\n  response: 300ms\n"),
        &[backend.addr],
    )
    .await;
    let resp = client().get(lb.url("/hang")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 504);
    // The backend stays in the pool: slowness is not a connect failure.
    assert_eq!(lb.healthy().await, [backend.addr.to_string()]);
    lb.stop().await;

    // A backend that passes health checks but closes the connection on any other request.
    let net = Net::new(44);
    let broken = raw(net.addr(12), |_, _| async {});
    let lb = Balancer::found(&net.config("", ""), &[broken.addr]).await;
    let resp = client()
        .post(lb.url("/crash"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "the backend failed");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_paths_are_answered_by_the_balancer_never_forwarded() {
    let net = Net::new(45);
    let (_backends, lb) = lab(&net, &[10], "").await;
    let resp = client().get(lb.url("/_lb/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("x-backend-ip").is_none());
    let resp = client().post(lb.url("/_lb/health")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let resp = client().get(lb.url("/_lb/live")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client().get(lb.url("/")).send().await.unwrap();
    assert!(resp.headers().get("x-backend-ip").is_some());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_to_backends_are_reused() {
    let net = Net::new(46);
    let (_backends, lb) = lab(&net, &[10], "").await;
    // One client connection: its first request opens an upstream connection of its own, and
    // every later one rides it again.
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    for n in 0..200 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nCookie: sweeplb=same\r\n\r\n")
            .await
            .unwrap();
        let head = read_response(&mut s).await;
        assert!(head.starts_with("http/1.1 200 "), "request {n}: {head}");
    }
    let (_, h) = lb.health().await;
    let connects = h["upstream"]["connects"].as_u64().unwrap();
    let reused = h["upstream"]["reused"].as_u64().unwrap();
    assert_eq!(
        connects, 1,
        "upstream connections for 200 sequential requests"
    );
    assert_eq!(reused, 199);
    assert_eq!(h["backends"][0]["requests"], 200);
    lb.stop().await;
}

/// A backend that switches to a line-echo protocol on `Upgrade: echo`: it first says which
/// backend it is, then sends every line back.
async fn upgrading(
    mut req: http::Request<hyper::body::Incoming>,
    ip: std::net::IpAddr,
) -> http::Response<Full<Bytes>> {
    if req.headers().get("upgrade").map(|v| v.as_bytes()) != Some(b"echo") {
        return text(200, "plain");
    }
    let forwarded_for = req.headers().get("x-forwarded-for").cloned();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let hello = format!("{ip} for {forwarded_for:?}\n");
        if io.write_all(hello.as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            if io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    with_headers(
        text(101, ""),
        &[("upgrade", "echo"), ("connection", "upgrade")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_becomes_a_tunnel_to_the_users_backend() {
    let net = Net::new(47);
    let backends: Vec<_> = [10, 11, 12]
        .into_iter()
        .map(|i| {
            let ip = net.ip(i);
            custom(net.addr(i), move |req| upgrading(req, ip))
        })
        .collect();
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;

    for user in ["alice", "bob", "carol", "dave"] {
        // Where this user's plain requests go...
        let plain = client()
            .get(lb.url("/"))
            .header("cookie", format!("sweeplb={user}"))
            .send()
            .await
            .unwrap();
        let home = plain.headers()["x-backend-ip"]
            .to_str()
            .unwrap()
            .to_string();

        // ...is where its tunnel goes.
        let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        let ask = format!(
            "GET /chat HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, Upgrade\r\n\
             Upgrade: echo\r\nCookie: sweeplb={user}\r\n\r\n"
        );
        s.write_all(ask.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
        let mut tunnel = tokio::io::BufReader::new(s);
        let mut line = String::new();
        tunnel.read_line(&mut line).await.unwrap();
        assert_eq!(
            line,
            format!("{home} for Some(\"127.0.0.1\")\n"),
            "user {user}"
        );
        for msg in ["ping\n", "a longer line, twice over the tunnel\n"] {
            tunnel.get_mut().write_all(msg.as_bytes()).await.unwrap();
            line.clear();
            tunnel.read_line(&mut line).await.unwrap();
            assert_eq!(line, msg);
        }
    }

    // A backend that does not switch answers as to any request, and the client's connection
    // stays an HTTP one.
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let ask = "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: other\r\n\
               Cookie: sweeplb=erin\r\n\r\n";
    s.write_all(ask.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("\r\nupgrade:"), "{head}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_lasts_into_shutdown_and_is_closed_at_its_deadline() {
    let net = Net::new(49);
    let ip = net.ip(10);
    let backend = custom(net.addr(10), move |req| upgrading(req, ip));
    let shutdown = Duration::from_secs(5);
    let lb = Balancer::found(
        &net.config(
            "",
            &format!("timeouts:\n  shutdown: {}s\n", shutdown.as_secs()),
        ),
        &[backend.addr],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("http/1.1 101"));
    let mut tunnel = tokio::io::BufReader::new(s);
    let mut line = String::new();
    tunnel.read_line(&mut line).await.unwrap();

    // Shutdown begins (the listener is closed)...
    let addr = lb.addr;
    let began = Instant::now();
    let stopped = tokio::spawn(lb.stop());
    eventually(
        Duration::from_secs(3),
        async || match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Err("still accepting after stop".to_string()),
            Err(_) => Ok(()),
        },
    )
    .await;
    // ...and the tunnel is left to its users, at once and until shortly before the deadline...
    let mut echoes = async |msg: &str| {
        tunnel.get_mut().write_all(msg.as_bytes()).await.unwrap();
        let mut line = String::new();
        tunnel.read_line(&mut line).await.unwrap();
        assert_eq!(line, msg, "{:?} into shutdown", began.elapsed());
    };
    echoes("right after shutdown began\n").await;
    let late = shutdown - Duration::from_millis(1500);
    tokio::time::sleep_until((began + late).into()).await;
    echoes("shortly before the deadline\n").await;
    let echoed = began.elapsed();
    assert!(
        echoed < shutdown,
        "the late echo came {echoed:?} into shutdown, not before its deadline: it proves nothing"
    );
    // ...until the deadline, when it is closed (not before) and the balancer exits.
    let end = tokio::time::timeout(Duration::from_secs(10), tunnel.read_line(&mut line)).await;
    let closed = began.elapsed();
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "the tunnel outlived the shutdown deadline: {end:?}"
    );
    assert!(
        closed >= shutdown - Duration::from_millis(250),
        "the tunnel was closed {closed:?} into shutdown, before its {shutdown:?} deadline"
    );
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("run() returned")
        .unwrap();
}

/// A raw backend: on `/stall` sends a head promising 100 bytes, sends 10 and hangs; on
/// `/upload` reads what it is sent. It records whether the balancer closed the stalled
/// connection.
fn stalling(addr: std::net::SocketAddr) -> (Backend, Arc<AtomicBool>) {
    let closed = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&closed);
    let backend = raw(addr, move |mut s, head| {
        let seen = Arc::clone(&seen);
        async move {
            let mut buf = [0u8; 4096];
            if head.starts_with(b"GET /stall ") {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                // Hang; the balancer hanging up is what ends this.
                while let Ok(1..) = s.read(&mut buf).await {}
                seen.store(true, Ordering::SeqCst);
            } else {
                // An upload: wait for a body that never comes whole.
                while let Ok(1..) = s.read(&mut buf).await {}
            }
        }
    });
    (backend, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_cut_off_after_the_body_timeout() {
    let net = Net::new(48);
    let (backend, closed) = stalling(net.addr(10));
    let body = Duration::from_secs(1);
    let lb = Balancer::found(
        &net.config("", &format!("timeouts:\n  body: {}s\n", body.as_secs())),
        &[backend.addr],
    )
    .await;
    // A cut comes no sooner than the timeout after the last byte; the margin is for the
    // moments between that byte and when the test starts its clock.
    let not_before = body / 2;

    // A response body that stops halfway: the client sees the response cut, not a hang
    // (its own timeout is far longer), and the backend connection is closed.
    let resp = client().get(lb.url("/stall")).send().await.unwrap();
    let headed = Instant::now();
    assert_eq!(resp.status(), 200);
    let cut = resp
        .bytes()
        .await
        .expect_err("a 100-byte body with 10 sent");
    let after = headed.elapsed();
    assert!(!cut.is_timeout(), "the client gave up first: {cut:?}");
    assert!(
        after >= not_before,
        "the response was cut {after:?} after it stalled, before the {body:?} body timeout"
    );
    eventually(Duration::from_secs(10), async || {
        if closed.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("the stalled backend connection stays open".to_string())
        }
    })
    .await;

    // A request body that stops halfway: 408, and the connection is closed.
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: shop.test\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let sent = Instant::now();
    let head = tokio::time::timeout(Duration::from_secs(20), read_head(&mut s))
        .await
        .expect("an answer, not a hang");
    let after = sent.elapsed();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(
        after >= not_before,
        "408 {after:?} after the upload stalled, before the {body:?} body timeout"
    );
    closed_within(&mut s, Duration::from_secs(5)).await;
    lb.stop().await;
}

/// Reads off `s` until what was read holds `want`, at most `within`; what was read.
async fn read_until(s: &mut tokio::net::TcpStream, want: &[u8], within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        while !got.windows(want.len()).any(|w| w == want) {
            match s.read(&mut buf).await {
                Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_before_reading_the_body_is_heard() {
    let net = Net::new(192);
    // Refuses the upload at its head, then reads (and drops) whatever of the body comes.
    let backend = raw(net.addr(10), |mut s, _| async move {
        let refusal = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\
                        connection: close\r\n\r\ntoo large";
        if s.write_all(refusal).await.is_err() {
            return;
        }
        let mut sink = [0u8; 16 * 1024];
        while let Ok(1..) = s.read(&mut sink).await {}
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    // A 4 MiB upload of which only the first 64 KiB is ever sent.
    let head = "POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 4194304\r\n\r\n";
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let got = read_until(&mut c, b"too large", Duration::from_secs(5)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 413 "),
        "the backend's early answer did not reach the client: {got:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streams_back_while_its_request_body_is_still_coming() {
    let net = Net::new(193);
    // Answers at once with a chunked response, then sends back every piece of the request
    // body as it arrives (as it is on the wire), as a chunk of its own.
    let backend = raw(net.addr(10), |mut s, read| async move {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        if s.write_all(head).await.is_err() {
            return;
        }
        let at = read.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        let mut piece = read.get(at..).unwrap_or_default().to_vec();
        let mut buf = [0u8; 4096];
        loop {
            if !piece.is_empty() {
                let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            if piece.ends_with(b"0\r\n\r\n") {
                let _ = s.write_all(b"0\r\n\r\n").await;
                return;
            }
            match s.read(&mut buf).await {
                Ok(n @ 1..) => piece = buf[..n].to_vec(),
                _ => return,
            }
        }
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(b"5\r\nhello\r\n").await.unwrap();
    // The rest of the body is sent only once the first piece has come back: a proxy that
    // waits for the whole body before it reads the response never shows it.
    let got = read_until(&mut c, b"hello", Duration::from_secs(5)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    assert!(
        got.contains("hello"),
        "the first piece did not come back: {got:?}"
    );
    c.write_all(b"5\r\nworld\r\n0\r\n\r\n").await.unwrap();
    let rest = read_until(&mut c, b"world", Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&rest).contains("world"),
        "the second piece did not come back: {rest:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_backend_sends_right_behind_its_101_open_the_tunnel() {
    let net = Net::new(194);
    // The 101 and the protocol's first bytes in one write, then an echo.
    let backend = raw(net.addr(10), |mut s, _| async move {
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\n\
                       connection: upgrade\r\n\r\nearly bytes\n";
        if s.write_all(switch).await.is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let mut c = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let ask = "GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
    c.write_all(ask.as_bytes()).await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let early = read_until(&mut c, b"early bytes\n", Duration::from_secs(5)).await;
    assert_eq!(
        early, b"early bytes\n",
        "what the backend sent behind its 101 did not open the tunnel"
    );
    c.write_all(b"ping\n").await.unwrap();
    let echoed = read_until(&mut c, b"ping\n", Duration::from_secs(5)).await;
    assert_eq!(echoed, b"ping\n");
    drop(c);
    lb.stop().await;
}
