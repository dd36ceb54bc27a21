//! Fuzzing entry point into the request-head deadline: a client's bytes read through
//! [`Watched`] in fuzzer-chosen pieces, with requests starting and finishing between reads.
//! Reached through [`crate::fuzzing`].
//!
//! The clock is real, so whether a short allowance runs out depends on timing; only what holds
//! whatever the clock says is asserted: bytes pass through unchanged, and the watcher fails no
//! read that brought nothing, none while a request is being answered, none once the connection
//! is a tunnel, and none under an allowance too long to run out.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use super::head_deadline::{Head, Watched};

/// What the client's socket does on the next poll.
enum Step {
    Bytes(Vec<u8>),
    Pending,
    Eof,
    Fail,
}

/// A socket that plays a script of steps; bytes a read has no room for wait for the next one.
struct Script(Rc<RefCell<VecDeque<Step>>>);

/// Marks the script's own failures apart from the watcher's.
const SCRIPTED: &str = "scripted failure";

impl AsyncRead for Script {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut steps = self.0.borrow_mut();
        match steps.pop_front() {
            Some(Step::Bytes(mut bytes)) => {
                let n = bytes.len().min(buf.remaining());
                buf.put_slice(&bytes[..n]);
                if n < bytes.len() {
                    steps.push_front(Step::Bytes(bytes.split_off(n)));
                }
                Poll::Ready(Ok(()))
            }
            Some(Step::Pending) => Poll::Pending,
            Some(Step::Fail) => Poll::Ready(Err(io::Error::other(SCRIPTED))),
            Some(Step::Eof) | None => Poll::Ready(Ok(())),
        }
    }
}

/// `data[0]` picks the allowance, `data[1]` the read buffer's size; then each byte is an
/// operation `op << 5 | arg`: 0-3 queue the next `arg + 1` bytes of input as what the socket
/// has ready and read once, 4 starts a request (a head was complete), 5 finishes the oldest
/// one, 6 makes the connection a tunnel, 7 reads once from a socket that is pending
/// (`arg` 0), at its end (1) or failing (2 and up).
pub(crate) fn head(data: &[u8]) {
    thread_local! {
        // The watcher arms a timer when a head stops arriving: timers need a runtime's clock,
        // though nothing here ever waits on one.
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime with a timer builds");
    }
    RUNTIME.with(|rt| {
        let _clock = rt.enter();
        drive(data);
    });
}

fn drive(data: &[u8]) {
    let (limit, endless) = match data.first().map_or(0, |b| b % 4) {
        0 => (Duration::ZERO, false),
        1 => (Duration::from_millis(1), false),
        2 => (Duration::from_secs(10), false),
        _ => (Duration::MAX, true),
    };
    let capacity = usize::from(data.get(1).copied().unwrap_or(0)) % 64 + 1;
    // The same allowance between requests: an idle connection past it reads as closed.
    let head = Head::new(limit, limit);
    let steps = Rc::new(RefCell::new(VecDeque::new()));
    let mut socket = Watched::new(Script(Rc::clone(&steps)), Arc::clone(&head));
    let mut cx = Context::from_waker(Waker::noop());
    let mut requests = VecDeque::new();
    let mut tunnel = false;
    let mut rest = data.get(2..).unwrap_or_default();
    while let Some((&op, after)) = rest.split_first() {
        rest = after;
        let arg = usize::from(op & 31);
        let step = match op >> 5 {
            0..=3 => {
                let n = (arg + 1).min(rest.len());
                let (bytes, after) = rest.split_at(n);
                rest = after;
                Step::Bytes(bytes.to_vec())
            }
            4 => {
                requests.push_back(head.request_started());
                continue;
            }
            5 => {
                requests.pop_front();
                continue;
            }
            6 => {
                head.stop_watching();
                tunnel = true;
                continue;
            }
            _ => match arg {
                0 => Step::Pending,
                1 => Step::Eof,
                _ => Step::Fail,
            },
        };
        // Bytes queue behind what earlier reads left; anything else happens now.
        let sent = {
            let mut steps = steps.borrow_mut();
            match step {
                Step::Bytes(_) => steps.push_back(step),
                _ => steps.push_front(step),
            }
            match steps.front() {
                Some(Step::Bytes(b)) => b[..b.len().min(capacity)].to_vec(),
                _ => Vec::new(),
            }
        };
        let mut storage = vec![0u8; capacity];
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut socket).poll_read(&mut cx, &mut buf) {
            Poll::Pending => assert!(sent.is_empty(), "a read with bytes was pending"),
            Poll::Ready(Ok(())) => assert_eq!(buf.filled(), &sent[..], "bytes were changed"),
            Poll::Ready(Err(e)) if e.to_string() == SCRIPTED => {}
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                assert!(!sent.is_empty(), "a read that brought nothing failed: {e}");
                assert!(
                    requests.is_empty(),
                    "failed while a request was answered: {e}"
                );
                assert!(!tunnel, "a tunnel's read failed: {e}");
                assert!(!endless, "an endless allowance ran out: {e}");
                // The connection is closed here.
                return;
            }
        }
    }
}

/// A client's request bytes through sweeplb's head parser, against hyper's server as the
/// oracle: sweeplb ran on hyper's server before it read requests itself, and the smuggling
/// rules were hyper's. Whatever hyper hands its service as the first request, sweeplb must read
/// the same (method, target, version, every field in order, how the body is framed); a head
/// hyper refuses, sweeplb must refuse with the same status; one hyper waits on, sweeplb waits
/// on too. The bytes fed in two pieces must read as fed whole.
pub(crate) fn request(data: &[u8]) {
    use super::conn::request::{self, Framing};

    /// Both sides' limit on a head, far above what an input reaches.
    const LIMIT: usize = 64 * 1024;

    let ours = request::parse(&mut bytes::BytesMut::from(data), LIMIT);
    if data.len() > 1 {
        let cut = usize::from(data[0]) % data.len();
        let mut buf = bytes::BytesMut::from(&data[..cut]);
        let first = request::parse(&mut buf, LIMIT);
        let pieces = match first {
            Ok(None) => {
                buf.extend_from_slice(&data[cut..]);
                request::parse(&mut buf, LIMIT)
            }
            done => done,
        };
        assert_eq!(
            summary(&ours),
            summary(&pieces),
            "whole and in pieces differ"
        );
    }
    let hyper = hyper_reads(data, LIMIT);
    match (&ours, hyper) {
        (Ok(Some(head)), Hyper::Called(theirs)) => {
            let r = &head.request;
            assert_eq!(r.method(), theirs.method, "method");
            assert_eq!(r.uri(), &theirs.uri, "target");
            assert_eq!(r.version(), theirs.version, "version");
            let fields: Vec<_> = r.headers().iter().collect();
            let their_fields: Vec<_> = theirs.headers.iter().collect();
            assert_eq!(fields, their_fields, "fields");
            let framing = match (theirs.end, theirs.exact) {
                (true, _) => Framing::Empty,
                (false, Some(n)) => Framing::Length(n),
                (false, None) => Framing::Chunked,
            };
            assert_eq!(head.framing, framing, "framing");
        }
        (Err(refused), Hyper::Refused(status)) => {
            assert_eq!(
                refused.status.as_u16(),
                status,
                "refusal status ({refused})"
            );
        }
        (Ok(None), Hyper::Waited) => {}
        // hyper drops an HTTP/2 preface without a word; sweeplb answers it 400.
        (Err(_), Hyper::Waited) if data.starts_with(b"PRI * HTTP/2.0") => {}
        (ours, hyper) => panic!("sweeplb read {:?}, hyper {hyper:?}", summary(ours)),
    }
}

/// What a parse came to, for comparing two of them.
fn summary(
    parsed: &Result<Option<super::conn::request::Head>, super::conn::request::Refused>,
) -> String {
    match parsed {
        Ok(Some(h)) => format!("{:?} {:?}", h.request, h.framing),
        Ok(None) => "waiting".into(),
        Err(e) => format!("refused {e}"),
    }
}

/// What hyper's server made of a client's bytes.
#[derive(Debug)]
enum Hyper {
    /// It called its service with this first request.
    Called(Box<Seen>),
    /// It answered with this status before any request.
    Refused(u16),
    /// Neither: it waited for more, and the client's close ended it.
    Waited,
}

#[derive(Debug, Clone)]
struct Seen {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    end: bool,
    exact: Option<u64>,
}

fn hyper_reads(data: &[u8], limit: usize) -> Hyper {
    use http_body::Body;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(data.len() + 64 * 1024);
            let seen: Rc<RefCell<Option<Seen>>> = Rc::default();
            let record = Rc::clone(&seen);
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut first = record.borrow_mut();
                    if first.is_none() {
                        *first = Some(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            version: req.version(),
                            headers: req.headers().clone(),
                            end: req.body().is_end_stream(),
                            exact: req.body().size_hint().exact(),
                        });
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.max_header_size(limit);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(server), service);
            let _ = conn.await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            if let Some(first) = seen.borrow_mut().take() {
                return Hyper::Called(Box::new(first));
            }
            match out.strip_prefix(b"HTTP/1.1 ") {
                Some(rest) => Hyper::Refused(
                    std::str::from_utf8(rest.get(..3).unwrap_or_default())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                ),
                None => Hyper::Waited,
            }
        })
    })
}

#[cfg(test)]
mod request_tests {
    use proptest::prelude::*;

    const METHODS: &[&str] = &[
        "GET", "POST", "HEAD", "CONNECT", "OPTIONS", "get", "G T", "",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "/a?b=1",
        "*",
        "http://h.test/x",
        "h.test:443",
        "/%zz",
        "/\x7f",
        "//x",
        "",
    ];
    const VERSIONS: &[&str] = &[
        "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "",
    ];
    const FIELDS: &[&str] = &[
        "Host: x",
        "Host: a@b",
        "Content-Length: 5",
        "Content-Length: 0",
        "Content-Length: 5, 5",
        "Content-Length:  7 ",
        "Content-Length: 05",
        "Content-Length: 18446744073709551615",
        "content-length: 5",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: ",
        "Transfer-Encoding: Chunked",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: Upgrade, close",
        "Upgrade: websocket",
        "Expect: 100-continue",
        " folded",
        "\tfolded",
        "X-A:\tb\t",
        "X-A : b",
        "X-\u{0}: b",
        "X-A: \u{1}",
        "X-A: caf\u{e9}",
        "Bad Name: 1",
        ":x",
        "X-A",
    ];
    const BODIES: &[&str] = &["", "hello", "5\r\nhello\r\n0\r\n\r\n", "zz\r\n"];

    fn pick(list: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        proptest::sample::select(list)
    }

    prop_compose! {
        fn requests()(
            method in pick(METHODS),
            target in pick(TARGETS),
            version in pick(VERSIONS),
            fields in proptest::collection::vec((pick(FIELDS), any::<bool>()), 0..7),
            bare_lf in any::<bool>(),
            body in pick(BODIES),
            cut in any::<prop::sample::Index>(),
            whole in any::<bool>(),
        ) -> Vec<u8> {
            let end = |lf: bool| if lf { "\n" } else { "\r\n" };
            let mut text = format!("{method} {target} {version}{}", end(bare_lf));
            for (field, lf) in fields {
                text.push_str(field);
                text.push_str(end(lf));
            }
            text.push_str(end(bare_lf));
            text.push_str(body);
            let mut bytes = text.into_bytes();
            if !whole {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Heads built from the pieces smuggling is made of (framing fields in every
        /// combination, bad line ends, folding, control bytes, odd methods and targets),
        /// whole or cut anywhere: sweeplb reads each as hyper's server did.
        #[test]
        fn sweeplb_reads_a_request_head_as_hyper_did(bytes in requests()) {
            super::request(&bytes);
        }
    }
}
