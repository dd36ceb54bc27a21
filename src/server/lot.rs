//! The parking lot: where a worker's keep-alive connections wait once they have been idle for
//! [`PARK_AFTER`](super::PARK_AFTER), as file descriptors in a poller of the worker's own
//! rather than as tasks. A connection served by a task costs the task (its state, ~1.4 KiB),
//! the runtime's registration of its socket and its timers; parked, it costs its descriptor
//! and a map entry (a few dozen bytes), as an idle connection costs HAProxy or nginx a small
//! struct in their event loop. Bytes from the client (or its close) bring it back to a task
//! of its own; its keep-alive deadline closes it here; so does the worker's shutdown, as it
//! closes any idle connection.
//!
//! The poller is mio's (what tokio runs on); the worker's runtime watches the poller's own
//! descriptor, so the lot needs no thread of its own.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tokio::io::unix::AsyncFd;

/// A parked connection: its socket, and what its next task needs to know of it.
pub(super) struct Parked {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    /// Requests the connection has brought so far.
    pub(super) requests: u64,
    /// When it closes if nothing comes: its keep-alive deadline.
    pub(super) until: Instant,
}

/// One worker's parked connections.
pub(super) struct Lot {
    poll: AsyncFd<Poll>,
    events: Events,
    parked: HashMap<usize, Parked>,
    next: usize,
}

/// Events taken from the poller at a time.
const EVENTS: usize = 256;

impl Lot {
    pub(super) fn new() -> io::Result<Lot> {
        // `AsyncFd::new` is deprecated because it accepts any descriptor-bearing value,
        // whose descriptor could be closed or swapped while the runtime watches it. A
        // `Poll` owns its descriptor for its whole life and never changes it, which is what
        // the unsafe `register` asks its caller to promise (this crate has no unsafe code).
        #[allow(deprecated)]
        let poll = AsyncFd::new(Poll::new()?)?;
        Ok(Lot {
            poll,
            events: Events::with_capacity(EVENTS),
            parked: HashMap::new(),
            next: 0,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Parks `conn`; a connection the poller refuses is closed (false).
    pub(super) fn park(&mut self, conn: Parked) -> bool {
        self.next = self.next.wrapping_add(1);
        let fd = conn.stream.as_raw_fd();
        let registered = self.poll.get_ref().registry().register(
            &mut SourceFd(&fd),
            Token(self.next),
            Interest::READABLE,
        );
        if registered.is_err() {
            return false;
        }
        self.parked.insert(self.next, conn);
        true
    }

    /// Waits until parked connections have something to read (or were closed by their
    /// clients), and moves them out of the lot into `out`. Cancel-safe: nothing is taken from
    /// the poller before the wait is over.
    pub(super) async fn ready(&mut self, out: &mut Vec<Parked>) -> io::Result<()> {
        loop {
            let mut guard = self.poll.readable_mut().await?;
            guard
                .get_inner_mut()
                .poll(&mut self.events, Some(Duration::ZERO))?;
            let mut taken = 0;
            for event in &self.events {
                taken += 1;
                if let Some(conn) = self.parked.remove(&event.token().0) {
                    let fd = conn.stream.as_raw_fd();
                    let _ = guard.get_inner().registry().deregister(&mut SourceFd(&fd));
                    out.push(conn);
                }
            }
            // Fewer than a full batch: the poller has nothing more now. (A full one may have
            // more, and the runtime would not be told again.)
            if taken < EVENTS {
                guard.clear_ready();
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Closes the parked connections whose keep-alive deadline has passed; how many.
    pub(super) fn expire(&mut self, now: Instant) -> usize {
        let before = self.parked.len();
        let registry = self.poll.get_ref().registry();
        self.parked.retain(|_, conn| {
            if conn.until > now {
                return true;
            }
            let _ = registry.deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
            false
        });
        before - self.parked.len()
    }

    /// How many connections are parked.
    pub(super) fn len(&self) -> usize {
        self.parked.len()
    }
}
