//! Where a request goes and what its response tells the client: the stickiness key, the pin
//! (resolved by [`crate::balancer::pin`]), the candidates in order, the cookie to set, and the
//! session bookkeeping (who moved, and why).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::header::{HeaderMap, HeaderValue};

use super::access::Session;
use super::retry::MAX_BACKENDS_TRIED;
use super::sessions::Sessions;
use crate::balancer::pin::{self, Cookie, Route};
use crate::balancer::{self, Moved};
use crate::config::{Balance, Key};
use crate::message;
use crate::pool::Routing;

/// The stickiness rules of one balancer, and what they have counted.
pub(crate) struct Sticky {
    /// Replaced whole by a reload; each decision loads it once (an atomic load, no lock).
    balance: ArcSwap<Balance>,
    pub(crate) sessions: Sessions,
    /// Users moved off their pinned backend, by [`Moved::ALL`] index.
    moved: [AtomicU64; Moved::ALL.len()],
    /// New users that bounded load sent past their ring's first choice.
    diverted: AtomicU64,
}

/// One request's way: its key's hash, the backends to offer it to, best first, and what the
/// response must do about the cookie.
pub(crate) struct Plan {
    pub(crate) hash: u64,
    pub(crate) candidates: Candidates,
    route: Route,
    /// The cookie's key, in cookie mode.
    cookie_key: Option<String>,
    /// Whether the key identifies a user (a fresh key for a header-less request does not).
    track: bool,
}

/// Backend indexes into the routing, at most [`MAX_BACKENDS_TRIED`], without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Candidates {
    order: [usize; MAX_BACKENDS_TRIED],
    len: usize,
}

impl Candidates {
    fn push(&mut self, index: usize) -> bool {
        if self.len < MAX_BACKENDS_TRIED && !self.as_slice().contains(&index) {
            self.order[self.len] = index;
            self.len += 1;
        }
        self.len < MAX_BACKENDS_TRIED
    }

    pub(crate) fn as_slice(&self) -> &[usize] {
        &self.order[..self.len]
    }
}

impl Plan {
    /// What the access log says of the session, once `served` answered (`None`: the balancer
    /// did).
    pub(crate) fn session(&self, served: Option<usize>) -> Session {
        if self.cookie_key.is_none() {
            return Session::NoKey;
        }
        match (self.route, served) {
            (Route::First, _) => Session::New,
            (Route::Pinned(pin) | Route::Repin(pin), Some(served)) if pin == served => {
                Session::Pinned
            }
            (Route::Pinned(_) | Route::Repin(_), None) => Session::Pinned,
            _ => Session::Moved,
        }
    }
}

/// What `/_lb/health` shows of the stickiness rules.
pub(crate) struct StickyStats {
    pub(crate) moved: Vec<(&'static str, u64)>,
    pub(crate) diverted: u64,
}

impl Sticky {
    pub(crate) fn new(balance: Balance) -> Sticky {
        Sticky {
            sessions: Sessions::new(balance.session_idle),
            balance: ArcSwap::from_pointee(balance),
            moved: Default::default(),
            diverted: AtomicU64::new(0),
        }
    }

    /// A reload's balance settings, from the next request on. The caller has made sure the
    /// pins stay the same (`pin_secret` and `key` unchanged), so no user moves.
    pub(crate) fn set_balance(&self, balance: Balance) {
        self.sessions.set_idle(balance.session_idle);
        self.balance.store(std::sync::Arc::new(balance));
    }

    pub(crate) fn stats(&self) -> StickyStats {
        StickyStats {
            moved: Moved::ALL
                .iter()
                .zip(&self.moved)
                .map(|(why, n)| (why.as_str(), n.load(Ordering::Relaxed)))
                .collect(),
            diverted: self.diverted.load(Ordering::Relaxed),
        }
    }

    /// Whether the request carries a pin to a backend that may take it soon (one joining, or
    /// not found yet).
    pub(crate) fn pending(&self, headers: &HeaderMap, r: &Routing) -> bool {
        let balance = self.balance.load();
        let Key::Cookie(name) = &balance.key else {
            return false;
        };
        message::cookie(headers, name)
            .and_then(|v| Cookie::parse(v).pin)
            .is_some_and(|p| r.lookup(p.pin) == crate::balancer::Lookup::Pending)
    }

    /// Decides where a request goes. `None` when no backend can take it: the pool is empty,
    /// or holds only draining members and the request is pinned to none of them.
    pub(crate) fn plan(&self, headers: &HeaderMap, peer: SocketAddr, r: &Routing) -> Option<Plan> {
        let fresh = || format!("{:032x}", fastrand::u128(..));
        let b = self.balance.load();
        let (hash, route, cookie_key, track) = match &b.key {
            Key::Cookie(name) => {
                let cookie = message::cookie(headers, name)
                    .map(Cookie::parse)
                    .filter(|c| !c.key.is_empty());
                match cookie {
                    Some(c) => {
                        let hash = balancer::key_hash(c.key.as_bytes());
                        let found = c.pin.map(|p| (r.lookup(p.pin), p.at));
                        // The clock is read only when a pin's age can matter.
                        let age = match (found, b.repin_after) {
                            (Some((_, at)), Some(_)) => age(at),
                            _ => Duration::ZERO,
                        };
                        let route = pin::decide(found.map(|f| f.0), age, b.repin_after);
                        (hash, route, Some(c.key.to_string()), true)
                    }
                    None => {
                        let key = fresh();
                        (
                            balancer::key_hash(key.as_bytes()),
                            Route::First,
                            Some(key),
                            true,
                        )
                    }
                }
            }
            Key::Header(name) => match headers.get(name) {
                Some(v) => (balancer::key_hash(v.as_bytes()), Route::First, None, true),
                // Without the header there is nothing to stick to: spread.
                None => (
                    balancer::key_hash(fresh().as_bytes()),
                    Route::First,
                    None,
                    false,
                ),
            },
            Key::ClientIp => {
                let hash = match peer.ip() {
                    IpAddr::V4(ip) => balancer::key_hash(&ip.octets()),
                    IpAddr::V6(ip) => balancer::key_hash(&ip.octets()),
                };
                (hash, Route::First, None, true)
            }
        };
        let mut candidates = Candidates::default();
        if let Route::Pinned(index) = route {
            candidates.push(index);
        }
        if let (Route::First, Some(factor)) = (route, b.bounded_load) {
            if let Some(first) = self.bounded(factor, r, hash) {
                candidates.push(first);
            }
        }
        for index in r.ring.candidates(hash) {
            if !candidates.push(index) {
                break;
            }
        }
        (candidates.len > 0).then_some(Plan {
            hash,
            candidates,
            route,
            cookie_key,
            track,
        })
    }

    /// A new user's first backend under bounded load: the first in ring order whose active
    /// sessions are below `factor` times the mean, counting the user itself.
    fn bounded(&self, factor: f64, r: &Routing, hash: u64) -> Option<usize> {
        let members = &r.backends[..r.ring.len()];
        let total: u64 = members.iter().map(|b| b.sessions()).sum();
        let cap = (factor * (total + 1) as f64 / members.len().max(1) as f64).ceil() as u64;
        let mut walk = r.ring.candidates(hash);
        let first = walk.next()?;
        if members[first].sessions() < cap {
            return Some(first);
        }
        let chosen = walk.find(|&i| members[i].sessions() < cap).unwrap_or(first);
        if chosen != first {
            self.diverted.fetch_add(1, Ordering::Relaxed);
        }
        Some(chosen)
    }

    /// After `served` answered the request: records the session, counts a move, and returns
    /// the `Set-Cookie` value the response carries, if it must carry one.
    pub(crate) fn served(&self, plan: Plan, r: &Routing, served: usize) -> Option<HeaderValue> {
        let backend = &r.backends[served];
        let moved = match plan.route {
            // A draining member's users leave it when it stops answering.
            Route::Pinned(index) if index != served && index >= r.ring.len() => {
                Some(Moved::Drained)
            }
            Route::Pinned(index) if index != served => Some(Moved::OutOfRouting),
            Route::Move(why) => Some(why),
            Route::Repin(index) if index != served => Some(Moved::RepinAfter),
            _ => None,
        };
        // A transient answer belongs to no session: the user's pin still names their backend.
        if plan.track && plan.route != Route::Transient {
            let before = self.sessions.record(plan.hash, backend.pin, Instant::now());
            if before != Some(backend.pin) {
                backend.add_session();
                if let Some(why) = moved {
                    // Counted once: parallel requests with the same stale pin find the user
                    // already recorded at its new backend.
                    let i = Moved::ALL.iter().position(|m| *m == why).unwrap_or(0);
                    self.moved[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // A pinned user keeps their cookie, and so does one whose backend is not back yet;
        // every other one is pinned where they were served.
        let keep = matches!(plan.route, Route::Pinned(index) if index == served)
            || plan.route == Route::Transient;
        let b = self.balance.load();
        match (&b.key, plan.cookie_key) {
            (Key::Cookie(name), Some(key)) if !keep => cookie(&b, name, &key, backend.pin),
            _ => None,
        }
    }
}

fn cookie(b: &Balance, name: &str, key: &str, pin: u64) -> Option<HeaderValue> {
    let value = pin::format(key, pin, now_secs());
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = b.cookie_max_age {
        cookie.push_str(&format!("; Max-Age={}", age.as_secs().max(1)));
    }
    HeaderValue::from_str(&cookie).ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long ago Unix second `at` was; a pin from the future is new.
fn age(at: u64) -> Duration {
    Duration::from_secs(now_secs().saturating_sub(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(route: Route, cookie: bool) -> Plan {
        Plan {
            hash: 0,
            candidates: Candidates::default(),
            route,
            cookie_key: cookie.then(|| "k".to_string()),
            track: true,
        }
    }

    #[test]
    fn the_access_log_session_follows_the_pin_and_who_answered() {
        use Session::*;
        let moved = Route::Move(crate::balancer::Moved::ALL[0]);
        #[rustfmt::skip]
        let table = [
            // route,              cookie, served,  session
            (Route::First,         true,  Some(1), New),
            (Route::First,         true,  None,    New),
            (Route::Pinned(1),     true,  Some(1), Pinned),
            (Route::Pinned(1),     true,  Some(2), Moved),
            (Route::Pinned(1),     true,  None,    Pinned),
            (Route::Repin(1),      true,  Some(1), Pinned),
            (Route::Repin(1),      true,  Some(2), Moved),
            (moved,                true,  Some(1), Moved),
            (moved,                true,  None,    Moved),
            (Route::Transient,     true,  Some(1), Moved),
            (Route::First,         false, Some(1), NoKey),
            (Route::Pinned(1),     false, Some(1), NoKey),
        ];
        for (route, cookie, served, want) in table {
            assert_eq!(
                plan(route, cookie).session(served),
                want,
                "{route:?}, cookie {cookie}, served {served:?}"
            );
        }
    }
}
