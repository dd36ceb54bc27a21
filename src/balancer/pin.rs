//! The pinning cookie: the hash decides only a user's first backend; the cookie then pins the
//! user to the backend that served them, until that backend is gone.
//!
//! A cookie value is `KEY.PIN.T`: the user's key (what the ring hashes), the pin naming the
//! backend, and when the pin was made (Unix seconds). A pin is a keyed hash (SipHash-2-4) of
//! the backend's identity, its address and, where its health answer names one, its instance:
//! every process with the same config computes the same pin for the same backend, so replicas
//! and restarts agree with no shared state, and no address is handed to a browser. A pin is
//! resolved only by looking it up among the pool's members, so a forged one can at most name
//! another member; an unknown one moves its user as a departed backend's would.
//!
//! [`decide`] is the whole resolution rule, pure, with its table beside it.

use std::hash::Hasher;
use std::time::Duration;

use siphasher::sip::SipHasher24;
use xxhash_rust::xxh3::xxh3_128;

/// The SipHash key pins are made with. Without a configured secret it is a constant, and
/// anyone who knows the swept range can tell which address a pin names by hashing them all.
#[derive(Clone, Copy)]
pub struct PinKey(u64, u64);

impl PinKey {
    /// The key for `secret`, or the public default.
    pub fn new(secret: Option<&str>) -> PinKey {
        let bytes = xxh3_128(secret.unwrap_or("sweeplb pin v1").as_bytes());
        PinKey(bytes as u64, (bytes >> 64) as u64)
    }

    /// The pin of the backend with this identity.
    pub fn pin(&self, identity: &[u8]) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.0, self.1);
        h.write(identity);
        h.finish()
    }
}

impl std::fmt::Debug for PinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinKey(..)")
    }
}

/// A parsed cookie value. A value without a pin (an older sweeplb's cookie, or a hand-made
/// one) is a key alone: its user is assigned by the hash, as a new user would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie<'a> {
    pub key: &'a str,
    pub pin: Option<Pin>,
}

/// The pin part of a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub pin: u64,
    /// When it was made, in Unix seconds.
    pub at: u64,
}

impl<'a> Cookie<'a> {
    pub fn parse(value: &'a str) -> Cookie<'a> {
        // `split_once` twice rather than `splitn(3, ..)`: the same three parts, at half the
        // cost (this runs on every request with a cookie).
        let (key, rest) = value.split_once('.').unwrap_or((value, ""));
        let pin = match rest.split_once('.') {
            Some((pin, at)) if pin.len() == 16 => u64::from_str_radix(pin, 16)
                .ok()
                .zip(at.parse().ok())
                .map(|(pin, at)| Pin { pin, at }),
            _ => None,
        };
        Cookie { key, pin }
    }
}

/// The cookie value pinning `key` to the backend whose pin is `pin`, made at `at`.
pub fn format(key: &str, pin: u64, at: u64) -> String {
    format!("{key}.{pin:016x}.{at}")
}

/// Why a pinned user was moved to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Moved {
    /// Its backend failed its checks and left the pool.
    BackendLeft,
    /// Its backend drained (its health answers asked for it) and is gone.
    Drained,
    /// Its backend is still a member but out of routing: a request could not connect to it,
    /// or it is failing its checks after that.
    OutOfRouting,
    /// A different instance now answers at its backend's address (a replaced container).
    InstanceReplaced,
    /// The pin was older than `balance.repin_after`, and the ring now says elsewhere.
    RepinAfter,
    /// The pin names no backend this balancer knows of, nor one that recently left: a
    /// departure long ago, or a forged value.
    UnknownPin,
}

impl Moved {
    pub const ALL: [Moved; 6] = [
        Moved::BackendLeft,
        Moved::Drained,
        Moved::OutOfRouting,
        Moved::InstanceReplaced,
        Moved::RepinAfter,
        Moved::UnknownPin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Moved::BackendLeft => "backend left",
            Moved::Drained => "backend drained",
            Moved::OutOfRouting => "out of routing",
            Moved::InstanceReplaced => "instance replaced",
            Moved::RepinAfter => "repin_after",
            Moved::UnknownPin => "unknown pin",
        }
    }
}

/// What the pool knows of a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A routed member: its index.
    Member(usize),
    /// A draining member, which keeps its pinned users but takes no others: its index.
    Draining(usize),
    /// A backend its users must leave, and why.
    Gone(Moved),
    /// A backend that may take its users soon: one still joining, or, just after start, one
    /// not found yet. Its users go where the ring says for now, and keep their pin.
    Pending,
    /// Nothing known.
    Unknown,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To its pinned member, whatever the ring says.
    Pinned(usize),
    /// Where the ring says, as a new user: no pin yet.
    First,
    /// Where the ring says for now, keeping the pin, which may lead somewhere soon.
    Transient,
    /// Where the ring says, leaving the pinned backend for this reason.
    Move(Moved),
    /// Where the ring says, once `repin_after` has passed: a move only if that is not the
    /// pinned member itself.
    Repin(usize),
}

/// The resolution rule: the pin decides while its backend takes its users, the ring otherwise.
/// `age` is how long ago the pin was made; `repin_after` is `balance.repin_after`.
pub fn decide(pin: Option<Lookup>, age: Duration, repin_after: Option<Duration>) -> Route {
    match pin {
        None => Route::First,
        Some(Lookup::Member(index)) => match repin_after {
            Some(limit) if age >= limit => Route::Repin(index),
            _ => Route::Pinned(index),
        },
        // Its users stay until it is gone, however old their pins.
        Some(Lookup::Draining(index)) => Route::Pinned(index),
        Some(Lookup::Gone(why)) => Route::Move(why),
        Some(Lookup::Pending) => Route::Transient,
        Some(Lookup::Unknown) => Route::Move(Moved::UnknownPin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_odd_values_are_keys_alone() {
        let value = format("00ff", 0xabc, 1_700_000_000);
        assert_eq!(value, "00ff.0000000000000abc.1700000000");
        let c = Cookie::parse(&value);
        assert_eq!(c.key, "00ff");
        assert_eq!(
            c.pin,
            Some(Pin {
                pin: 0xabc,
                at: 1_700_000_000
            })
        );
        for odd in [
            "bench",
            "k.",
            "k.abc.1",
            "k.zzzzzzzzzzzzzzzz.1",
            "k.0000000000000abc",
            "k.0000000000000abc.soon",
            "",
        ] {
            let c = Cookie::parse(odd);
            assert_eq!(c.pin, None, "{odd:?}");
            assert_eq!(c.key, odd.split('.').next().unwrap(), "{odd:?}");
        }
    }

    #[test]
    fn pins_depend_on_identity_and_secret_only() {
        let public = PinKey::new(None);
        let a = public.pin(b"127.77.0.10:3000");
        assert_eq!(a, PinKey::new(None).pin(b"127.77.0.10:3000"));
        assert_ne!(a, public.pin(b"127.77.0.11:3000"));
        assert_ne!(a, public.pin(b"127.77.0.10:3000/web-2"));
        let secret = PinKey::new(Some("a long random secret"));
        assert_ne!(a, secret.pin(b"127.77.0.10:3000"));
        // Golden: a change here would strand every pinned user on upgrade.
        assert_eq!(a, 0x4122_6bae_9a3f_d743, "{a:#x}");
    }

    #[test]
    fn resolution_table() {
        let s = Duration::from_secs;
        let cases: &[(Option<Lookup>, u64, Option<u64>, Route)] = &[
            (None, 0, None, Route::First),
            (None, 9999, Some(60), Route::First),
            (Some(Lookup::Member(2)), 0, None, Route::Pinned(2)),
            (Some(Lookup::Member(2)), 9999, None, Route::Pinned(2)),
            (Some(Lookup::Member(2)), 59, Some(60), Route::Pinned(2)),
            (Some(Lookup::Member(2)), 60, Some(60), Route::Repin(2)),
            (Some(Lookup::Draining(4)), 0, None, Route::Pinned(4)),
            (Some(Lookup::Draining(4)), 9999, Some(60), Route::Pinned(4)),
            (
                Some(Lookup::Gone(Moved::BackendLeft)),
                0,
                None,
                Route::Move(Moved::BackendLeft),
            ),
            (
                Some(Lookup::Gone(Moved::InstanceReplaced)),
                9999,
                Some(60),
                Route::Move(Moved::InstanceReplaced),
            ),
            (
                Some(Lookup::Gone(Moved::OutOfRouting)),
                0,
                None,
                Route::Move(Moved::OutOfRouting),
            ),
            (
                Some(Lookup::Unknown),
                0,
                None,
                Route::Move(Moved::UnknownPin),
            ),
            (Some(Lookup::Pending), 0, None, Route::Transient),
            (Some(Lookup::Pending), 9999, Some(60), Route::Transient),
            (
                Some(Lookup::Gone(Moved::Drained)),
                0,
                None,
                Route::Move(Moved::Drained),
            ),
        ];
        for (lookup, age, repin, want) in cases {
            assert_eq!(
                decide(*lookup, s(*age), repin.map(s)),
                *want,
                "{lookup:?} age {age}s repin_after {repin:?}"
            );
        }
    }
}
