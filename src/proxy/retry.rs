//! The retry rule, as a pure function: after a failed attempt, send the request again on a
//! fresh connection to the same backend, offer it to the next candidate, or give up.
//!
//! A request may be sent again only while it is certain the backend did not act on it, or
//! when acting twice is harmless:
//! - the connection could not be made, or hyper handed the request back unsent: nothing
//!   reached the backend, so the request (body and all) goes to the next candidate;
//! - otherwise only a *replayable* request is sent again: an idempotent method with an empty
//!   body (there is no copy of a streamed body to send twice). A warm keep-alive connection
//!   that fails is most likely the idle race (the backend closed it as the request went out),
//!   so the same backend gets one more try on a fresh connection; a fresh connection that
//!   fails is the backend's fault, so the next candidate gets it.
//! - A response that does not come within `timeouts.response`, a client body that stalls, or
//!   a 101 nobody asked for end the request: none is helped by trying elsewhere.
//!
//! The rule is consulted only before a response head has been handed to the client: once the
//! client has seen a byte there is nothing left to retry. Candidates are walked in ring order,
//! at most [`MAX_BACKENDS_TRIED`] of them, so a user whose backend fails moves to the same
//! fallback as when that backend leaves.

use http::Method;

/// Distinct backends one request may be offered to.
pub(crate) const MAX_BACKENDS_TRIED: usize = 3;

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made to the backend.
    Connect,
    /// The connection failed around the exchange. `unsent`: hyper handed the request back
    /// before writing it. `reused`: the connection was a warm keep-alive one.
    Exchange { unsent: bool, reused: bool },
    /// The client's request body stalled longer than `timeouts.body` on its way upstream.
    ClientStalled,
    /// No response head within `timeouts.response`.
    TimedOut,
    /// The prober removed the backend while the request waited for it.
    Gone,
    /// The backend switched protocols on a request that did not ask to.
    UnaskedUpgrade,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send it again to the same backend, on a connection opened for it.
    Reconnect,
    /// Offer it to the next candidate.
    NextBackend,
    /// Answer the client with this failure's error.
    Fail,
}

/// A request as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// An idempotent method with an empty body: a copy of it can be sent again.
    pub(crate) replayable: bool,
}

impl Attempt {
    pub(crate) fn new(method: &Method, body_empty: bool) -> Attempt {
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        Attempt {
            replayable: idempotent && body_empty,
        }
    }

    pub(crate) fn decide(self, failure: Failure) -> Decision {
        match failure {
            Failure::Connect => Decision::NextBackend,
            Failure::ClientStalled | Failure::TimedOut | Failure::UnaskedUpgrade => Decision::Fail,
            Failure::Exchange { unsent, reused } => {
                if !unsent && !self.replayable {
                    Decision::Fail
                } else if reused {
                    Decision::Reconnect
                } else {
                    Decision::NextBackend
                }
            }
            Failure::Gone if self.replayable => Decision::NextBackend,
            Failure::Gone => Decision::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case a line: method, body, failure, decision. A failure is `connect`, `stalled`,
    /// `timeout`, `gone`, `upgrade`, or an exchange: `sent`/`unsent` on a `warm`/`fresh`
    /// connection.
    const TABLE: &str = "
        # Nothing reached the backend: the next candidate, whatever the request.
        GET     empty  connect       next
        POST    body   connect       next
        # Handed back unsent: nothing reached the backend either. A warm connection gets one
        # fresh one (the idle race); a fresh one that fails means the next backend.
        POST    body   unsent-warm   reconnect
        POST    body   unsent-fresh  next
        GET     empty  unsent-fresh  next
        # Sent, then the connection failed: only a replayable request is sent again.
        # The warm-connection GET retry: same backend, fresh connection.
        GET     empty  sent-warm     reconnect
        GET     empty  sent-fresh    next
        HEAD    empty  sent-fresh    next
        PUT     empty  sent-warm     reconnect
        DELETE  empty  sent-fresh    next
        # Not idempotent, or a body there is no copy of: never sent twice.
        POST    empty  sent-warm     fail
        PATCH   empty  sent-fresh    fail
        GET     body   sent-warm     fail
        PUT     body   sent-fresh    fail
        # The backend left the pool mid-request: a replayable request goes elsewhere.
        GET     empty  gone          next
        OPTIONS empty  gone          next
        POST    empty  gone          fail
        GET     body   gone          fail
        # Trying elsewhere helps none of these.
        GET     empty  timeout       fail
        PUT     body   stalled       fail
        GET     empty  upgrade       fail
    ";

    fn failure(word: &str) -> Failure {
        let exchange = |unsent, reused| Failure::Exchange { unsent, reused };
        match word {
            "connect" => Failure::Connect,
            "stalled" => Failure::ClientStalled,
            "timeout" => Failure::TimedOut,
            "gone" => Failure::Gone,
            "upgrade" => Failure::UnaskedUpgrade,
            "sent-warm" => exchange(false, true),
            "sent-fresh" => exchange(false, false),
            "unsent-warm" => exchange(true, true),
            "unsent-fresh" => exchange(true, false),
            other => panic!("unknown failure {other:?} in the table"),
        }
    }

    fn decision(word: &str) -> Decision {
        match word {
            "reconnect" => Decision::Reconnect,
            "next" => Decision::NextBackend,
            "fail" => Decision::Fail,
            other => panic!("unknown decision {other:?} in the table"),
        }
    }

    #[test]
    fn retry_table() {
        let mut cases = 0;
        let lines = TABLE.lines().map(str::trim);
        for line in lines.filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [method, body, fails, decides] = words[..] else {
                panic!("a table line has four words: {line:?}");
            };
            let method: Method = method.parse().expect("a method");
            let got = Attempt::new(&method, body == "empty").decide(failure(fails));
            assert_eq!(got, decision(decides), "{line}");
            cases += 1;
        }
        assert_eq!(cases, 21);
    }
}
