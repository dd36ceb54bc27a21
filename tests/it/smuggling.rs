//! Request smuggling and header confusion, as a table of raw client requests. The backend is a
//! bare TCP server that records exactly the bytes it received, so nothing normalises what the
//! test sees: each row says what the client gets and what the backend must have received, which
//! for a refusal is nothing at all.
//!
//! The expectations follow RFC 9112 (and RFC 9110 for `Host` and `Connection`); where sweeplb
//! (or hyper beneath it) already behaved correctly, the row is a regression guard.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::{Balancer, HEALTH_OK, Net, tcp};

/// One request as the backend received it: the request line, the header lines sorted (their
/// order means nothing across names), and the body, de-chunked if it came chunked (the
/// `transfer-encoding` line stays among the headers).
#[derive(Debug, PartialEq, Eq)]
struct Forwarded {
    line: String,
    headers: Vec<String>,
    body: Vec<u8>,
}

/// What the backend saw on a connection.
#[derive(Debug)]
enum Seen {
    Request(Forwarded),
    /// Bytes that never made a whole request, when the connection closed.
    Unfinished(Vec<u8>),
}

/// What the backend must have received for a row.
#[derive(Debug)]
enum Backend {
    /// Exactly these requests, nothing more.
    Got(Vec<Forwarded>),
    /// Not one complete request (a body that fails half-way: its head may have gone ahead).
    NothingWhole,
}

use Backend::{Got, NothingWhole};

/// Nothing reached the backend.
const NOTHING: Backend = Got(Vec::new());

/// A request as sweeplb should forward it from 127.0.0.1: `headers` plus the `X-Forwarded-*`
/// it adds (`X-Forwarded-Host` copies `Host`, when there is one).
fn fwd(line: &str, headers: &[&str], body: &str) -> Forwarded {
    let mut all: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    all.push("x-forwarded-for: 127.0.0.1".into());
    all.push("x-forwarded-proto: http".into());
    if let Some(host) = headers.iter().find_map(|h| h.strip_prefix("host: ")) {
        all.push(format!("x-forwarded-host: {host}"));
    }
    all.sort();
    Forwarded {
        line: line.into(),
        headers: all,
        body: body.as_bytes().to_vec(),
    }
}

fn got(f: Forwarded) -> Backend {
    Got(vec![f])
}

/// Splits one whole request off the front of `buf`: what it is and how many bytes it took, or
/// `None` while it is not complete. Strict on framing: a chunk size that is not hex never
/// completes, so it shows as unfinished.
fn parse_request(buf: &[u8]) -> Option<(Forwarded, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let mut headers: Vec<String> = lines.map(str::to_string).collect();
    headers.sort();
    let value = |name: &str| {
        headers
            .iter()
            .find_map(|h| h.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let mut at = end + 4;
    let mut body = Vec::new();
    if value("transfer-encoding:").is_some_and(|te| te.ends_with("chunked")) {
        loop {
            let eol = buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..at + eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at += eol + 2;
            if size == 0 {
                // Trailers, if any, then the empty line.
                let rest = buf[at..].windows(2).position(|w| w == b"\r\n")?;
                at += rest + 2;
                if rest == 0 {
                    break;
                }
                continue;
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else if let Some(len) = value("content-length:") {
        let len: usize = len.parse().ok()?;
        if buf.len() < at + len {
            return None;
        }
        body.extend_from_slice(&buf[at..at + len]);
        at += len;
    }
    Some((
        Forwarded {
            line,
            headers,
            body,
        },
        at,
    ))
}

/// A backend that answers the prober, records every other request it gets and answers it
/// `200 ok`, keeping the connection; at a connection's end, whatever bytes never made a
/// request are recorded too.
fn recording_backend(net: &Net) -> (crate::support::Backend, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = tcp(net.addr(10), move |mut s: TcpStream| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                while let Some((req, used)) = parse_request(&buf) {
                    buf.drain(..used);
                    if req.line.starts_with("GET /health ") {
                        let _ = s.write_all(HEALTH_OK).await;
                        return;
                    }
                    let _ = tx.send(Seen::Request(req));
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                    _ => {
                        if !buf.is_empty() {
                            let _ = tx.send(Seen::Unfinished(buf));
                        }
                        return;
                    }
                }
            }
        }
    });
    (backend, rx)
}

/// Sends `bytes` on a fresh connection and reads the response head: its status (0 if the
/// connection ended without one), and the connection.
async fn exchange(lb: &Balancer, bytes: &[u8]) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    // The balancer may refuse before it has read everything: a failed write is an answer too.
    let _ = s.write_all(bytes).await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no response within 10 s; read {head:?}");
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, s)
}

/// Whether the peer closes `s` (EOF or reset) within `within`; what it sends meanwhile is
/// discarded.
async fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        while let Ok(1..) = s.read(&mut buf).await {}
    })
    .await
    .is_ok()
}

/// One row: a name, the raw bytes the client sends, the statuses it may get (one, except where
/// noted), whether its connection must then be closed, and what the backend must get.
struct Row {
    name: &'static str,
    send: Vec<u8>,
    status: &'static [u16],
    closes: bool,
    backend: Backend,
}

fn row(name: &'static str, send: &str, status: u16, closes: bool, backend: Backend) -> Row {
    let status: &'static [u16] = match status {
        200 => &[200],
        400 => &[400],
        431 => &[431],
        other => panic!("add {other} to row()"),
    };
    Row {
        name,
        send: send.as_bytes().to_vec(),
        status,
        closes,
        backend,
    }
}

fn rows() -> Vec<Row> {
    let post =
        |headers: &str, body: &str| format!("POST /s HTTP/1.1\r\nHost: x\r\n{headers}\r\n{body}");
    let chunked_hello = "5\r\nhello\r\n0\r\n\r\n";
    let fwd_chunked = || {
        got(fwd(
            "POST /s HTTP/1.1",
            &["host: x", "transfer-encoding: chunked"],
            "hello",
        ))
    };
    let fwd_length = || {
        got(fwd(
            "POST /s HTTP/1.1",
            &["host: x", "content-length: 5"],
            "hello",
        ))
    };
    let big = |n: usize| {
        format!(
            "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(n)
        )
    };
    vec![
        row(
            "a plain GET",
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
            false,
            got(fwd("GET /a?b=1 HTTP/1.1", &["host: x"], "")),
        ),
        row(
            "a Content-Length body",
            &post("Content-Length: 5\r\n", "hello"),
            200,
            false,
            fwd_length(),
        ),
        row(
            "a chunked body, with a chunk extension (dropped)",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "5;ext=1\r\nhello\r\n0\r\n\r\n",
            ),
            200,
            false,
            fwd_chunked(),
        ),
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, which an intermediary
        // must remove before forwarding, and the connection must close after the response.
        // The 4 bytes of Content-Length would end at "5\r\nh": CL.TE smuggling.
        row(
            "CL then TE",
            &post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                chunked_hello,
            ),
            200,
            true,
            fwd_chunked(),
        ),
        row(
            "TE then CL",
            &post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                chunked_hello,
            ),
            200,
            true,
            fwd_chunked(),
        ),
        // §6.3: a request whose final coding is not chunked has no knowable length: 400.
        row(
            "Transfer-Encoding: xchunked",
            &post("Transfer-Encoding: xchunked\r\n", chunked_hello),
            400,
            true,
            NOTHING,
        ),
        row(
            "Transfer-Encoding: chunked, identity",
            &post("Transfer-Encoding: chunked, identity\r\n", chunked_hello),
            400,
            true,
            NOTHING,
        ),
        row(
            "Transfer-Encoding: chunked then a second line of identity",
            &post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                chunked_hello,
            ),
            400,
            true,
            NOTHING,
        ),
        // Decoded as chunked (its final coding) and re-encoded: the backend cannot read it
        // another way.
        row(
            "Transfer-Encoding: identity, chunked",
            &post("Transfer-Encoding: identity, chunked\r\n", chunked_hello),
            200,
            false,
            fwd_chunked(),
        ),
        row(
            "Transfer-Encoding:<tab>chunked<tab> (whitespace around the value is OWS)",
            &post("Transfer-Encoding:\tchunked\t\r\n", chunked_hello),
            200,
            false,
            fwd_chunked(),
        ),
        // §5.1: whitespace between a field name and the colon must be answered 400.
        row(
            "Transfer-Encoding<space>: chunked",
            &post("Transfer-Encoding : chunked\r\n", chunked_hello),
            400,
            true,
            NOTHING,
        ),
        row(
            "<space>Transfer-Encoding: chunked (a leading space folds into the line before)",
            &post(" Transfer-Encoding: chunked\r\n", chunked_hello),
            400,
            true,
            NOTHING,
        ),
        // §6.1: Transfer-Encoding is HTTP/1.1; in a 1.0 request it cannot be trusted.
        row(
            "Transfer-Encoding on HTTP/1.0",
            &format!(
                "POST /s HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hello}"
            ),
            400,
            true,
            NOTHING,
        ),
        row(
            "two equal Content-Length lines (forwarded once)",
            &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            200,
            false,
            fwd_length(),
        ),
        // §6.3: differing lengths are unrecoverable: 400 and close.
        row(
            "two different Content-Length lines",
            &post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            400,
            true,
            NOTHING,
        ),
        row(
            "Content-Length: 5, 6 in one line",
            &post("Content-Length: 5, 6\r\n", "hello!"),
            400,
            true,
            NOTHING,
        ),
        row(
            "Content-Length: +5 (signed)",
            &post("Content-Length: +5\r\n", "hello"),
            400,
            true,
            NOTHING,
        ),
        row(
            "Content-Length: -1",
            &post("Content-Length: -1\r\n", ""),
            400,
            true,
            NOTHING,
        ),
        // §5.2: obs-fold in a request is rejected (or replaced by spaces): hyper rejects.
        row(
            "an obs-fold continuation line",
            "GET /s HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        // §2.2: a bare LF may be accepted as a line end; forwarded as CRLF.
        row(
            "bare LF line endings",
            "GET /lf HTTP/1.1\nHost: x\nX-A: 1\n\n",
            200,
            false,
            got(fwd("GET /lf HTTP/1.1", &["host: x", "x-a: 1"], "")),
        ),
        // §2.2: a bare CR must be rejected or replaced.
        row(
            "a bare CR inside a header line",
            "GET /s HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        row(
            "NUL in a header value",
            "GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        // RFC 9112 §3.2: 400 for a missing Host on HTTP/1.1, and for more than one.
        row(
            "no Host on HTTP/1.1",
            "GET /s HTTP/1.1\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        row(
            "two different Host lines",
            "GET /s HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        row(
            "two equal Host lines",
            "GET /s HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        row(
            "a Host with userinfo",
            "GET /s HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        row(
            "no Host, /_lb/health (the rule holds for admin paths too)",
            "GET /_lb/health HTTP/1.1\r\n\r\n",
            400,
            true,
            NOTHING,
        ),
        row(
            "HTTP/1.0 without Host (allowed)",
            "GET /old HTTP/1.0\r\n\r\n",
            200,
            true,
            got(fwd("GET /old HTTP/1.1", &[], "")),
        ),
        // §3.2.2: an absolute-form target's authority is the host, whatever Host says.
        row(
            "absolute-form, no Host",
            "GET http://shop.test/a HTTP/1.1\r\n\r\n",
            200,
            false,
            got(fwd("GET /a HTTP/1.1", &["host: shop.test"], "")),
        ),
        row(
            "absolute-form and another Host",
            "GET http://shop.test/a HTTP/1.1\r\nHost: other.test\r\n\r\n",
            200,
            false,
            got(fwd("GET /a HTTP/1.1", &["host: shop.test"], "")),
        ),
        // Connection names hop-by-hop headers to drop, but never Host or Content-Length.
        row(
            "Connection: Host, Content-Length, X-Drop",
            &post(
                "Connection: Host, Content-Length, X-Drop\r\nX-Drop: 1\r\nContent-Length: 5\r\n",
                "hello",
            ),
            200,
            false,
            fwd_length(),
        ),
        // limits.max_request_head, 16 KiB by default: 431, and nothing forwarded. The head is
        // sent whole and small enough to be read whole, so the 431 is not lost to a reset.
        row(
            "a head over max_request_head",
            &big(18 * 1024),
            431,
            true,
            NOTHING,
        ),
        row(
            "a head just under max_request_head",
            &big(15 * 1024),
            200,
            false,
            got(fwd(
                "GET /big HTTP/1.1",
                &["host: x", &format!("x-big: {}", "a".repeat(15 * 1024))],
                "",
            )),
        ),
        // Last: the backend may learn of the half-sent request only when its connection
        // closes, after the next row's sentinel. A chunk size past u64 fails the body after its
        // head went ahead: never a whole request upstream, and that upstream connection is never
        // reused. A client fault: 400, not the backend's 502.
        Row {
            name: "a chunk size that overflows",
            send: post(
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            )
            .into_bytes(),
            status: &[400],
            closes: true,
            backend: NothingWhole,
        },
    ]
}

/// Receives what the backend saw up to and including the sentinel request for `path`; panics
/// after 10 s without it.
async fn until_sentinel(seen: &mut mpsc::UnboundedReceiver<Seen>, path: &str) -> Vec<Seen> {
    let line = format!("GET {path} HTTP/1.1");
    let mut got = Vec::new();
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(s) = seen.recv().await {
            if matches!(&s, Seen::Request(r) if r.line == line) {
                return;
            }
            got.push(s);
        }
    })
    .await;
    assert!(
        wait.is_ok(),
        "the sentinel {path} never reached the backend; saw {got:?}"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_host_confusion_table() {
    let net = Net::new(90);
    let (backend, mut seen) = recording_backend(&net);
    let lb = Balancer::found(
        &net.config("", "balance:\n  key: client_ip\n"),
        &[backend.addr],
    )
    .await;
    let mut failures = Vec::new();
    for (i, row) in rows().into_iter().enumerate() {
        let (status, mut conn) = exchange(&lb, &row.send).await;
        if !row.status.contains(&status) {
            failures.push(format!(
                "{}: status {status}, expected {:?}",
                row.name, row.status
            ));
        }
        if row.closes && !closes_within(&mut conn, Duration::from_secs(5)).await {
            failures.push(format!("{}: the connection stayed open", row.name));
        }
        drop(conn);
        // A clean request after it: once the backend has it, whatever the row made the
        // balancer send has arrived (a desynchronised upstream connection would swallow it).
        let sentinel = format!("/sentinel/{i}");
        let (status, _conn) = exchange(
            &lb,
            format!("GET {sentinel} HTTP/1.1\r\nHost: s\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "after {}: the sentinel got {status}", row.name);
        let got = until_sentinel(&mut seen, &sentinel).await;
        let ok = match &row.backend {
            Got(want) => {
                got.len() == want.len()
                    && got
                        .iter()
                        .zip(want)
                        .all(|(g, w)| matches!(g, Seen::Request(r) if r == w))
            }
            NothingWhole => got
                .iter()
                .all(|g| matches!(g, Seen::Unfinished(bytes) if !bytes.is_empty())),
        };
        if !ok {
            failures.push(format!(
                "{}: the backend got {got:?}, expected {:?}",
                row.name, row.backend
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    lb.stop().await;
}

/// The case: a single 64 KiB header was forwarded. Now it is refused before any of it
/// goes upstream; the client sees the 431, or a reset if the balancer closed with some of the
/// head unread (the kernel then discards what it had sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_kib_header_is_never_forwarded() {
    let net = Net::new(91);
    let (backend, mut seen) = recording_backend(&net);
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let head = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (status, _conn) = exchange(&lb, head.as_bytes()).await;
    assert!(matches!(status, 431 | 0), "status {status}");
    let (status, _conn) = exchange(&lb, b"GET /sentinel HTTP/1.1\r\nHost: s\r\n\r\n").await;
    assert_eq!(status, 200);
    let got = until_sentinel(&mut seen, "/sentinel").await;
    assert!(got.is_empty(), "the backend got {got:?}");
    lb.stop().await;
}
