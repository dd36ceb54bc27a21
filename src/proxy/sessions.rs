//! Active sessions: which backend each user was last sent to, and when. It counts the active
//! sessions of each backend (users seen within `balance.session_idle`) and tells a real move
//! from a repeat, so that a user whose parallel requests all carry the same stale pin is
//! counted as moved once.
//!
//! Shared by the workers, since one user's connections may land on different ones; sharded by
//! key so that two workers rarely take the same lock, and bounded so that clients inventing
//! keys cannot grow it without end.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nohash_hasher::NoHashHasher;

use crate::pool::PinMap;

const SHARDS: usize = 16;

/// Users remembered per shard; past this a new user is not tracked until others idle out
/// (their requests are served as ever, and the counts fall short).
const PER_SHARD: usize = 1 << 16;

/// Key hashes are already hashes: they index a map as they are.
type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<NoHashHasher<u64>>>;

#[derive(Debug, Clone, Copy)]
struct Seen {
    pin: u64,
    at: Instant,
}

pub(crate) struct Sessions {
    /// `balance.session_idle` in nanoseconds; a reload replaces it.
    idle: AtomicU64,
    shards: [Mutex<KeyMap<Seen>>; SHARDS],
}

impl Sessions {
    pub(crate) fn new(idle: Duration) -> Sessions {
        Sessions {
            idle: AtomicU64::new(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX)),
            shards: std::array::from_fn(|_| Mutex::new(KeyMap::default())),
        }
    }

    /// From now on a user counts while seen within `idle`.
    pub(crate) fn set_idle(&self, idle: Duration) {
        let nanos = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self.idle.store(nanos, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_nanos(self.idle.load(Ordering::Relaxed))
    }

    /// The user with `key` was just sent to the backend pinned `pin`. Returns the pin they had
    /// been sent to before, if they were active.
    pub(crate) fn record(&self, key: u64, pin: u64, now: Instant) -> Option<u64> {
        let shard = &self.shards[(key % SHARDS as u64) as usize];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let full = map.len() >= PER_SHARD;
        match map.get_mut(&key) {
            Some(seen) => {
                let before = (now.duration_since(seen.at) < self.idle()).then_some(seen.pin);
                *seen = Seen { pin, at: now };
                before
            }
            None => {
                if !full {
                    map.insert(key, Seen { pin, at: now });
                }
                None
            }
        }
    }

    /// Forgets users idle longer than `session_idle` and counts the rest by the pin of their
    /// backend.
    pub(crate) fn tally(&self, now: Instant) -> PinMap<u64> {
        let mut counts = PinMap::default();
        let idle = self.idle();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, seen| now.duration_since(seen.at) < idle);
            for seen in map.values() {
                *counts.entry(seen.pin).or_default() += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_counts_once_where_they_were_last_sent_until_idle() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let later = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(s.record(1, 0xa, t0), None);
        assert_eq!(s.record(2, 0xa, t0), None);
        assert_eq!(s.record(1, 0xa, later(1)), Some(0xa));
        // Moved: counted at its new backend only, and the move is seen once.
        assert_eq!(s.record(2, 0xb, later(2)), Some(0xa));
        assert_eq!(s.record(2, 0xb, later(2)), Some(0xb));
        let counts = s.tally(later(3));
        assert_eq!((counts.get(&0xa), counts.get(&0xb)), (Some(&1), Some(&1)));
        // User 1 was last seen at 1 s: idle at 61 s, forgotten, and new again after.
        let counts = s.tally(later(61));
        assert_eq!((counts.get(&0xa), counts.get(&0xb)), (None, Some(&1)));
        assert_eq!(s.record(1, 0xa, later(62)), None);
    }
}
