//! Active sessions: which backend each user was last sent to, and when. It counts the active
//! sessions of each backend (users seen within `balance.session_idle`) and tells a real move
//! from a repeat, so that a user whose parallel requests all carry the same stale pin is
//! counted as moved once.
//!
//! Shared by the workers, since one user's connections may land on different ones; sharded by
//! key so that two workers rarely take the same lock, and bounded so that clients inventing
//! keys cannot grow it without end. An entry is 24 bytes (the key, the pin, milliseconds on the
//! table's own clock), and a full table about 26 MB; a shard that empties gives its memory back.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nohash_hasher::NoHashHasher;

use crate::pool::PinMap;

const SHARDS: usize = 16;

/// Users remembered per shard; past this a new user is not tracked until others idle out
/// (their requests are served as ever, and the counts fall short). 7/8 of a power of two: the
/// most a hash table of 65,536 slots holds before it doubles (917,504 users in all).
const PER_SHARD: usize = 7 << 13;

/// Key hashes are already hashes: they index a map as they are.
type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<NoHashHasher<u64>>>;

#[derive(Debug, Clone, Copy)]
struct Seen {
    pin: u64,
    /// Milliseconds since `Sessions::epoch`, wrapping after 49 days: an age is read as the
    /// wrapping difference, and no session stays active that long.
    at: u32,
}

pub(crate) struct Sessions {
    /// `balance.session_idle` in nanoseconds; a reload replaces it.
    idle: AtomicU64,
    epoch: Instant,
    shards: [Mutex<KeyMap<Seen>>; SHARDS],
}

/// The longest `session_idle` the table's clock tells apart: half its wrap.
const LONGEST_IDLE_MS: u32 = u32::MAX / 2;

impl Sessions {
    pub(crate) fn new(idle: Duration) -> Sessions {
        Sessions {
            idle: AtomicU64::new(u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX)),
            epoch: Instant::now(),
            shards: std::array::from_fn(|_| Mutex::new(KeyMap::default())),
        }
    }

    /// From now on a user counts while seen within `idle`.
    pub(crate) fn set_idle(&self, idle: Duration) {
        let nanos = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self.idle.store(nanos, Ordering::Relaxed);
    }

    /// `session_idle` in the table's milliseconds.
    fn idle_ms(&self) -> u32 {
        let ms = self.idle.load(Ordering::Relaxed) / 1_000_000;
        u32::try_from(ms).unwrap_or(u32::MAX).min(LONGEST_IDLE_MS)
    }

    /// `now` on the table's clock.
    fn ms(&self, now: Instant) -> u32 {
        // Truncated on purpose: the clock wraps (see `Seen::at`).
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// The user with `key` was just sent to the backend pinned `pin`. Returns the pin they had
    /// been sent to before, if they were active.
    pub(crate) fn record(&self, key: u64, pin: u64, now: Instant) -> Option<u64> {
        let shard = &self.shards[(key % SHARDS as u64) as usize];
        let (at, idle) = (self.ms(now), self.idle_ms());
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let full = map.len() >= PER_SHARD;
        match map.get_mut(&key) {
            Some(seen) => {
                let before = (at.wrapping_sub(seen.at) < idle).then_some(seen.pin);
                *seen = Seen { pin, at };
                before
            }
            None => {
                if !full {
                    map.insert(key, Seen { pin, at });
                }
                None
            }
        }
    }

    /// Forgets users idle longer than `session_idle` and counts the rest by the pin of their
    /// backend.
    pub(crate) fn tally(&self, now: Instant) -> PinMap<u64> {
        let mut counts = PinMap::default();
        let (at, idle) = (self.ms(now), self.idle_ms());
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, seen| at.wrapping_sub(seen.at) < idle);
            if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
                // A flood of new users came and went: give the room back.
                let keep = map.len() * 2;
                map.shrink_to(keep);
            }
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

    #[test]
    fn a_flood_of_new_users_is_bounded_and_its_room_given_back_once_idle() {
        let s = Sessions::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let all = SHARDS * PER_SHARD;
        for key in 0..(all + 10_000) as u64 {
            s.record(key, 0xa, t0);
        }
        let lens = |s: &Sessions| -> (usize, usize) {
            s.shards.iter().fold((0, 0), |(len, cap), m| {
                let m = m.lock().unwrap();
                (len + m.len(), cap + m.capacity())
            })
        };
        // At the cap, and no table doubled to get there.
        assert_eq!(lens(&s), (all, all));
        assert_eq!(
            s.tally(t0 + Duration::from_secs(1)).get(&0xa),
            Some(&(all as u64))
        );
        // All idle: forgotten, and the memory goes back.
        assert!(s.tally(t0 + Duration::from_secs(61)).is_empty());
        let (len, cap) = lens(&s);
        assert_eq!(len, 0);
        assert!(cap < all / 16, "{cap} slots kept for no one");
    }
}
