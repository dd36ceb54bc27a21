//! The retry rule, as a pure function: after a failed attempt, send the request again on a
//! fresh connection to the same backend, offer it to the next candidate, or give up.
//!
//! A request that reached a backend is sent again at most once, and only when the failure
//! shows the backend cannot have acted on it; anything else is that client's 502, so one
//! "query of death" takes down one backend, not the pool:
//! - the connection could not be made, or the exchange handed the request back unwritten: nothing
//!   reached the backend, so it goes, body and all, to the next candidate (a warm connection
//!   first gets one fresh connection to the same backend);
//! - a warm keep-alive connection that closed before any byte of a response came back: the
//!   idle race (the backend closed it as the request went out). A *replayable* request (an
//!   idempotent method with an empty body; there is no copy of a streamed body) is sent once
//!   more, on a fresh connection to the same backend, so the user stays where they are pinned;
//! - everything else ends the request: a fresh connection that fails, garbage or a reset after
//!   the request was written, a response that does not come within `timeouts.response`, the
//!   backend leaving the pool while the request waits for it, a 101 nobody asked for, or the
//!   client's own body failing (which is the client's fault, not the backend's).
//!
//! This is HAProxy's `retry-on conn-failure empty-response` with one retry, and nginx's
//! `proxy_next_upstream error` restricted to errors before anything was sent.
//!
//! The rule is consulted only before a response head has been handed to the client: once the
//! client has seen a byte there is nothing left to retry. Candidates are walked in order, at
//! most [`MAX_BACKENDS_TRIED`] of them.

use http::Method;

/// Distinct backends one request may be offered to.
pub(crate) const MAX_BACKENDS_TRIED: usize = 3;

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made to the backend.
    Connect,
    /// The connection failed around the exchange. `unsent`: the exchange handed the request back
    /// before writing it. `reused`: the connection was a warm keep-alive one. `answered`: some
    /// byte of a response had arrived.
    Exchange {
        unsent: bool,
        reused: bool,
        answered: bool,
    },
    /// The client's request body stalled, was malformed, or the client left.
    Client,
    /// No response head within `timeouts.response`.
    TimedOut,
    /// The prober removed the backend while the request waited for it.
    Gone,
    /// The backend switched protocols on a request that did not ask to.
    UnaskedUpgrade,
}

impl Failure {
    /// Causes of a retry, as counted: bounded, unlike the errors behind them.
    pub(crate) const CAUSES: [&str; 4] = ["connect", "unsent", "closed_idle", "other"];

    /// The index in [`Failure::CAUSES`] of what this failure is, when it causes a retry:
    /// no connection, a request handed back unwritten, a warm connection closed before any
    /// answer (the idle race). The rule retries nothing else, so the rest is `other`.
    pub(crate) fn cause(self) -> usize {
        match self {
            Failure::Connect => 0,
            Failure::Exchange { unsent: true, .. } => 1,
            Failure::Exchange {
                unsent: false,
                reused: true,
                answered: false,
            } => 2,
            _ => 3,
        }
    }
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

/// A request as the rule sees it, and what has happened to it so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// An idempotent method with an empty body: a copy of it can be sent again.
    pub(crate) replayable: bool,
    /// It reached a backend and was sent again once already.
    resent: bool,
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
            resent: false,
        }
    }

    pub(crate) fn decide(&mut self, failure: Failure) -> Decision {
        match failure {
            Failure::Connect => Decision::NextBackend,
            Failure::Exchange {
                unsent: true,
                reused,
                ..
            } => {
                if reused {
                    Decision::Reconnect
                } else {
                    Decision::NextBackend
                }
            }
            Failure::Exchange {
                unsent: false,
                reused: true,
                answered: false,
            } if self.replayable && !self.resent => {
                self.resent = true;
                Decision::Reconnect
            }
            Failure::Exchange { .. }
            | Failure::Client
            | Failure::TimedOut
            | Failure::Gone
            | Failure::UnaskedUpgrade => Decision::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case a line: method, body, failures, decisions (a comma-separated sequence of
    /// attempts of one request). A failure is `connect`, `client`, `timeout`, `gone`, `upgrade`,
    /// or an exchange: `unsent`, `sent` (nothing came back) or `answered` on a `warm`/`fresh`
    /// connection.
    const TABLE: &str = "
        # Nothing reached the backend: the next candidate, whatever the request.
        GET     empty  connect            next
        POST    body   connect            next
        # Handed back unwritten: nothing reached the backend either. A warm connection gets one
        # fresh one (the idle race); a fresh one that fails means the next backend.
        POST    body   unsent-warm        reconnect
        POST    body   unsent-fresh       next
        GET     empty  unsent-fresh       next
        # The warm-connection retry: closed before any byte of a response, sent once more.
        GET     empty  sent-warm          reconnect
        PUT     empty  sent-warm          reconnect
        HEAD    empty  sent-warm          reconnect
        # ...but only once.
        GET     empty  sent-warm,sent-warm  reconnect,fail
        # Anything the backend may have acted on is not sent again: a fresh connection that
        # fails, a warm one that answered something (garbage, half a head), a reset.
        GET     empty  sent-fresh         fail
        DELETE  empty  sent-fresh         fail
        GET     empty  answered-warm      fail
        GET     empty  answered-fresh     fail
        # Not idempotent, or a body there is no copy of: never sent twice.
        POST    empty  sent-warm          fail
        PATCH   empty  sent-warm          fail
        GET     body   sent-warm          fail
        PUT     body   sent-warm          fail
        # The backend left the pool while the request waited: it may have acted on it.
        GET     empty  gone               fail
        POST    body   gone               fail
        # Trying elsewhere helps none of these.
        GET     empty  timeout            fail
        PUT     body   client             fail
        GET     empty  upgrade            fail
    ";

    fn failure(word: &str) -> Failure {
        let exchange = |unsent, reused, answered| Failure::Exchange {
            unsent,
            reused,
            answered,
        };
        match word {
            "connect" => Failure::Connect,
            "client" => Failure::Client,
            "timeout" => Failure::TimedOut,
            "gone" => Failure::Gone,
            "upgrade" => Failure::UnaskedUpgrade,
            "unsent-warm" => exchange(true, true, false),
            "unsent-fresh" => exchange(true, false, false),
            "sent-warm" => exchange(false, true, false),
            "sent-fresh" => exchange(false, false, false),
            "answered-warm" => exchange(false, true, true),
            "answered-fresh" => exchange(false, false, true),
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
            let mut attempt = Attempt::new(&method, body == "empty");
            let got: Vec<Decision> = fails
                .split(',')
                .map(|f| attempt.decide(failure(f)))
                .collect();
            let want: Vec<Decision> = decides.split(',').map(decision).collect();
            assert_eq!(got, want, "{line}");
            cases += 1;
        }
        assert_eq!(cases, 22);
    }

    /// Every failure the rule may retry has a cause of its own; only those that are never
    /// retried fall into `other`.
    #[test]
    fn retry_causes() {
        for (word, cause) in [
            ("connect", "connect"),
            ("unsent-warm", "unsent"),
            ("unsent-fresh", "unsent"),
            ("sent-warm", "closed_idle"),
            ("sent-fresh", "other"),
            ("answered-warm", "other"),
            ("timeout", "other"),
            ("gone", "other"),
            ("client", "other"),
            ("upgrade", "other"),
        ] {
            assert_eq!(Failure::CAUSES[failure(word).cause()], cause, "{word}");
            let retried = [Method::GET, Method::POST]
                .iter()
                .any(|m| Attempt::new(m, true).decide(failure(word)) != Decision::Fail);
            assert_eq!(retried, cause != "other", "{word}");
        }
    }
}
