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
