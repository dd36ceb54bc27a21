//! HTTP/1.1 with clients, as sweeplb's own server speaks it: what a browser, curl or a load
//! tester relies on beyond the smuggling table (`smuggling.rs`). `Expect: 100-continue`,
//! pipelined requests answered in order, HTTP/1.0 keep-alive, `HEAD`, and a request body the
//! balancer answers without reading. Raw sockets, so nothing between the test and sweeplb
//! normalises what it sends.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Balancer, Net, custom, text, with_headers};

/// A backend that answers `{method} {path} {body length}`, with a length of its own on `HEAD`.
async fn describe(req: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        return text(200, "ok");
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
    let line = format!("{method} {path} {}", body.unwrap_or(0));
    if method == http::Method::HEAD {
        return with_headers(text(200, ""), &[("content-length", "1234")]);
    }
    text(200, &line)
}

/// Reads off `s` until `want` has been read, at most 5 s; what was read.
async fn read_until(s: &mut TcpStream, want: &[u8]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(want.len()).any(|w| w == want) {
            match s.read(&mut buf).await {
                Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

async fn balancer(net: &Net) -> (crate::support::Backend, Balancer) {
    let backend = custom(net.addr(10), describe);
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    (backend, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_expects_100_continue_gets_it_and_its_upload_goes_through() {
    let net = Net::new(195);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(
        b"POST /up HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // As curl does: the body waits for the 100.
    let interim = read_until(&mut c, b"\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "no 100 Continue before the body: {interim:?}"
    );
    c.write_all(b"hello").await.unwrap();
    let got = read_until(&mut c, b"POST /up 5").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
    assert!(got.ends_with("POST /up 5"), "{got:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let net = Net::new(196);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    // Three requests in one write, the second with a body.
    c.write_all(
        b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
          GET /three HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut c, b"GET /three 0").await;
    let one = got.find("GET /one 0");
    let two = got.find("POST /two 3");
    let three = got.find("GET /three 0");
    assert!(
        one.is_some() && one < two && two < three,
        "not all three answered, in order: {got:?}"
    );
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_that_asks_for_keep_alive_keeps_its_connection() {
    let net = Net::new(197);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut c, b"GET /a 0").await;
    assert!(first.starts_with("HTTP/1.0 200 OK\r\n"), "{first:?}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{first:?}"
    );
    c.write_all(b"GET /b HTTP/1.0\r\n\r\n").await.unwrap();
    let second = read_until(&mut c, b"GET /b 0").await;
    assert!(second.starts_with("HTTP/1.0 200 OK\r\n"), "{second:?}");
    // Without keep-alive asked, 1.0 ends the connection after the response.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an HTTP/1.0 connection stayed open");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_keeps_its_length_and_has_no_body() {
    let net = Net::new(198);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(b"HEAD /h HTTP/1.1\r\nhost: a\r\n\r\nGET /after HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, b"GET /after 0").await;
    let (head, rest) = got.split_once("\r\n\r\n").unwrap_or((&got, ""));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{got:?}");
    assert!(head.contains("content-length: 1234"), "{head:?}");
    // The next bytes are the next response: HEAD's has no body.
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "{rest:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_balancer_answers_without_reading_does_not_spoil_the_connection() {
    let net = Net::new(199);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    // /_lb/live answers without reading the body; the body must not be read as a request.
    c.write_all(
        b"POST /_lb/live HTTP/1.1\r\nhost: a\r\ncontent-length: 35\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n\
          GET /next HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut c, b"GET /next 0").await;
    assert!(
        got.contains("GET /next 0"),
        "the next request was not answered: {got:?}"
    );
    assert!(
        !got.contains("/smuggled"),
        "a body was read as a request: {got:?}"
    );
    lb.stop().await;
}

// A keep-alive connection idle for a second is parked: no longer a task of its own, its socket
// waits in its worker's poller (src/server/lot.rs). These are what its client sees of that.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_the_park_time_is_served_again_on_the_same_socket() {
    let net = Net::new(201);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    for round in 0..3 {
        let path = format!("/round-{round}");
        c.write_all(format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let want = format!("GET {path} 0");
        let got = read_until(&mut c, want.as_bytes()).await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n"),
            "round {round}: {got:?}"
        );
        assert!(got.ends_with(&want), "round {round}: {got:?}");
        // Past the park time (1 s), well within `timeouts.idle` (60 s by default).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Pipelined bytes that arrive together wake it the same.
    c.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\nGET /y HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, b"GET /y 0").await;
    assert!(
        got.contains("GET /x 0") && got.ends_with("GET /y 0"),
        "{got:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_parked_connection_at_once() {
    let net = Net::new(202);
    let (_backend, lb) = balancer(&net).await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(b"GET /p HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut c, b"GET /p 0").await;
    assert!(got.ends_with("GET /p 0"), "{got:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lb.stop().await;
    // Closed by the balancer, as an idle connection's task is, not left open behind it.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a parked connection outlived the balancer's shutdown: {closed:?}"
    );
}
