//! Consistent hashing of stickiness keys onto backends: pure and synchronous, no I/O.
//!
//! It deliberately knows nothing of addresses, health or configuration: the pool hands it one
//! stable `u64` per backend ([`backend_hash`]) and gets back indexes into the slice it passed.
//! The hashes here, the ring's constants and the pin are the routing contract: the same pool
//! routes the same way in every process, on every restart, on every replica. The ring decides
//! a user's first backend; the pin ([`pin`]) keeps them there.

pub mod pin;
mod ring;

pub use pin::{Lookup, Moved, PinKey};
pub use ring::{Candidates, MAX_BACKENDS, Ring, VNODES};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of [`key_hash`]. Part of the routing contract, like [`BACKEND_SEED`], [`VNODES`] and
/// the ring's position bits: changing any of them moves almost every user to another backend on the
/// next deploy, which is what the golden tests of the ring are there to catch. Never derive
/// it from `RandomState` or anything per-process: every replica and every restart must place a
/// key identically.
const KEY_SEED: u64 = 0x7377_6565_706c_6231; // "sweeplb1"

/// Seed of [`backend_hash`]. Different from [`KEY_SEED`] so a key that happens to be spelled
/// like a backend address does not land exactly on that backend's points.
const BACKEND_SEED: u64 = 0x7377_6565_706c_6232; // "sweeplb2"

/// Hash of a request's stickiness key (cookie value, header value, client IP bytes). Seeded xxh3, stable across processes/versions.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED)
}

/// Stable identity hash of a backend, from its canonical string form e.g. "127.77.0.10:3000" (the pool passes `addr.to_string().as_bytes()`).
pub fn backend_hash(id: &[u8]) -> u64 {
    xxh3_64_with_seed(id, BACKEND_SEED)
}
