//! The hash ring: every backend owns [`VNODES`] seeded points on a circle, a key belongs to
//! the owner of the first point at or after it, and the walk on from there is the exact
//! fallback order. Built once per membership change, read per request in O(1).

use std::fmt;
use std::iter::FusedIterator;
use std::sync::Mutex;
use std::thread;

/// Virtual points per backend.
///
/// A constant, never a function of the number of backends: a backend's points must depend on
/// its identity alone, or a join or leave would move points of the others and with them their
/// keys.
///
/// The smallest power of two that meets the balance target with margin. A backend's share is
/// the sum of `VNODES` independent arc lengths, so its relative standard deviation is about
/// `1/sqrt(VNODES)` (1.1% here), and the busiest of 100 backends sits about 2.5 standard
/// deviations above the mean. Measured at N=100 over twenty random backend sets: 4096 points
/// give a busiest/mean of 1.041 exactly (1.051 over 1M sampled keys, worst set 1.067), 8192
/// give 1.028 (sampled 1.035, worst set 1.046), against the 1.05 target. Part of what remains
/// is sampling noise of the keys themselves (about 1% per backend at 10,000 keys each), which
/// no ring can remove. The price is memory and build time, both linear in the points.
pub const VNODES: usize = 8192;

/// The ring is a circle of `2^42` positions: a hash is placed by its top 42 bits.
///
/// Fixed, so routing is a function of the points alone, whatever the size of the bucket table.
/// 42 bits because the top [`PARTITION_BITS`] of a position are implied by the bucket it lands
/// in, and the other 32 then fit beside a 32-bit owner in one `u64`: 8 bytes a point, which
/// holds everything a lookup needs in one cache line. Memory is what a build pays for (on this
/// VM a fresh page costs ~1.6 us to fault in, a third of a single-threaded N=1000 build), and
/// 64-bit positions would make it 12 or 16 bytes a point. Coinciding points (about `P^2 / 2^43`
/// pairs, so a few at N=1000) are harmless: ties break by identity hash, which keeps the ring
/// consistent and independent of input order. A resolution of `2^-42` is far below anything
/// balance could notice.
const POSITION_BITS: u32 = 42;

/// The build sorts in two levels: first by the top 10 bits of the position into 1024
/// partitions, written as 1024 sequential streams (few enough for the TLB and the caches),
/// then each partition, a few thousand points, in cache. A single scatter straight to the final
/// buckets is a random write per point into tens of megabytes: a first version that did so
/// took 430 ms at N=1000, over 3x this build on one thread. 8 or 9 bits measured the same.
const PARTITION_BITS: u32 = 10;

/// Bits of a position that an entry stores: those below the partition's prefix.
const TAIL_BITS: u32 = POSITION_BITS - PARTITION_BITS;

/// Bits of an entry left for the owner, below the position's tail.
const OWNER_BITS: u32 = u64::BITS - TAIL_BITS;
const OWNER_MASK: u64 = (1 << OWNER_BITS) - 1;

/// The counting sort inside a partition splits each bucket 8 ways, so that an eighth of a
/// bucket (half an entry on average) is mostly empty or single and the insertion sort after it
/// has little left to do. Its time is mostly mispredicted branches: sorting whole buckets of
/// four that way made the build 1.4x slower; 4 or 16 ways measured 5% slower than 8.
const SUB_BUCKET_BITS: u32 = 3;

/// Rings of at least this many points (N >= 512) are built on two threads. A single-threaded
/// build at N=1000 measured 125-135 ms, two threads 68 ms, against a 100 ms target. Smaller
/// rings stay on the caller's thread: N=100 builds in 8 ms, and a thread would buy little.
/// The cost is that a big rebuild briefly keeps two cores busy.
const PARALLEL_POINTS: usize = 1 << 22;

/// Most backends a ring places; the rest of the slice is ignored (documented on [`Ring::new`]).
/// Point indexes are `u32` to keep the bucket table small, and this many backends already need
/// 32 GiB of points, so the limit can only be reached by a caller bug.
pub const MAX_BACKENDS: usize = u32::MAX as usize / VNODES;

/// Distinct candidates remembered inline before [`Candidates`] switches to a heap bitset. The
/// walk usually ends at the first or second candidate, so the failure path allocates only when
/// that many backends have already been refused.
const INLINE_SEEN: usize = 8;
/// Position on the ring of virtual point `j` of the backend with identity hash `backend`.
///
/// This is the splitmix64 generator seeded with the identity hash: a Weyl step (odd gamma, so
/// the `VNODES` states of one backend are distinct) through a bijective finalizer with full
/// avalanche, so one backend's points look independent of each other and of every other
/// backend's. A few nanoseconds a point, cheap enough that a build generates the points twice
/// rather than keep them in scratch memory. (xxh3 of `j` seeded with the hash measured the
/// same; splitmix is the textbook seeded stream, short enough to reimplement elsewhere, say in
/// a tool that predicts placements, without a dependency.)
fn position(backend: u64, j: usize) -> u64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = backend.wrapping_add((j as u64 + 1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> (u64::BITS - POSITION_BITS)
}

/// The part of an entry that holds a position: its tail, above the owner bits.
fn tail(pos: u64) -> u64 {
    (pos & ((1 << TAIL_BITS) - 1)) << OWNER_BITS
}

/// A consistent-hash ring: every backend owns `VNODES` points on a circle of `2^42` positions,
/// and a key belongs to the owner of the first point at or after its position, wrapping past
/// the top.
///
/// Lookups are O(1) without a binary search: the points are bucketed by the top `bucket_bits`
/// bits of their position, and `first[b]` is the index of the first point of bucket `b` (the
/// prefix sums of a counting sort, which is also how the build sorts). A lookup is one table
/// load and a scan of about four entries in one cache line, which also hold the owner, instead
/// of the ~20 dependent, cache-missing probes of a binary search over a million points. The
/// table only speeds up the search: its size grows with N, but routing depends on the points
/// alone.
#[derive(Clone)]
pub struct Ring {
    /// One per point, ascending: the tail of its position (the rest is the bucket's prefix)
    /// above the index of the backend that owns it.
    entries: Vec<u64>,
    /// `first[b]..first[b + 1]` are the entries of bucket `b`; `2^bucket_bits + 1` of them so
    /// the end of the last bucket needs no special case.
    first: Vec<u32>,
    /// `POSITION_BITS - bucket_bits`: shifting a position right by this gives its bucket.
    low_bits: u32,
    /// Length of the caller's slice, capped at [`MAX_BACKENDS`].
    backends: usize,
    /// Backends with points: `backends` less the copies of duplicated hashes.
    placed: usize,
}

impl Ring {
    /// `backends[i]` is the identity hash of backend i; owners returned are indexes into this slice.
    ///
    /// The ring depends only on the set of hashes, not their order: shuffling the slice changes
    /// which index is returned but never which backend it names.
    ///
    /// Identical hashes are a caller bug (two entries for one address); they are taken to be one
    /// backend: the lowest index is placed and the copies are never returned. Only the first
    /// [`MAX_BACKENDS`] entries are placed.
    pub fn new(backends: &[u64]) -> Ring {
        let points = backends.len().min(MAX_BACKENDS) * VNODES;
        Ring::build(backends, points >= PARALLEL_POINTS)
    }

    /// [`Ring::new`], with the choice of threads left to the caller so tests can compare both.
    fn build(backends: &[u64], parallel: bool) -> Ring {
        let backends = &backends[..backends.len().min(MAX_BACKENDS)];
        // Entries carry ranks, not indexes, until the end of the build: `order[rank]` is the
        // index of the backend with the rank-th smallest hash, so equal positions sort by
        // identity, whatever the input order.
        let mut order: Vec<u32> = (0..backends.len() as u32).collect();
        order.sort_unstable_by_key(|&i| (backends[i as usize], i));
        order.dedup_by_key(|i| backends[*i as usize]);
        let ids: Vec<u64> = order.iter().map(|&i| backends[i as usize]).collect();

        let total = ids.len() * VNODES;
        // About four points a bucket: they share a cache line, so a scan costs one miss, and the
        // table (4 bytes a bucket) adds an eighth to the entries. Two a bucket measured lookups
        // 10-20% faster, but a table twice the size and a slower build (9 rather than 8 ms at
        // N=100, against 10); both targets hold with margin at four.
        let ceil_log2 = usize::BITS - total.saturating_sub(1).leading_zeros();
        let bucket_bits = ceil_log2.saturating_sub(2).clamp(PARTITION_BITS, 30);
        let low_bits = POSITION_BITS - bucket_bits;
        let partitions = 1usize << PARTITION_BITS;
        let buckets_per_partition = 1usize << (bucket_bits - PARTITION_BITS);

        // Each half of the work goes to one thread: first each half of the backends counts and
        // then scatters its points, into its own share of every partition, then each half of
        // the partitions is sorted.
        let (lo_ids, hi_ids) = ids.split_at(ids.len() / 2);
        let (lo_counts, hi_counts) = join(parallel, || histogram(lo_ids), || histogram(hi_ids));
        let mut bounds = vec![0u32; partitions + 1];
        for p in 0..partitions {
            bounds[p + 1] = bounds[p] + lo_counts[p] + hi_counts[p];
        }
        let mut entries = vec![0u64; total];
        let mut lo_parts = Vec::with_capacity(partitions);
        let mut hi_parts = Vec::with_capacity(partitions);
        let mut rest = &mut entries[..];
        for p in 0..partitions {
            let (lo, after) = rest.split_at_mut(lo_counts[p] as usize);
            let (hi, after) = after.split_at_mut(hi_counts[p] as usize);
            lo_parts.push(lo);
            hi_parts.push(hi);
            rest = after;
        }
        join(
            parallel,
            || scatter(lo_ids, 0, &mut lo_parts),
            || scatter(hi_ids, lo_ids.len(), &mut hi_parts),
        );

        let mut first = vec![0u32; (1 << bucket_bits) + 1];
        let layout = Layout {
            low_bits,
            buckets_per_partition,
        };
        let mid = partitions / 2;
        let (lo_entries, hi_entries) = entries.split_at_mut(bounds[mid] as usize);
        let (lo_first, hi_first) = first.split_at_mut(mid * buckets_per_partition);
        join(
            parallel,
            || sort_partitions(&layout, &order, &bounds[..=mid], lo_entries, lo_first),
            || sort_partitions(&layout, &order, &bounds[mid..], hi_entries, hi_first),
        );
        first[1 << bucket_bits] = total as u32;

        Ring {
            entries,
            first,
            low_bits,
            backends: backends.len(),
            placed: ids.len(),
        }
    }

    /// Number of backends: the length of the slice given to [`Ring::new`], copies of a
    /// duplicated hash included.
    pub fn len(&self) -> usize {
        self.backends
    }

    pub fn is_empty(&self) -> bool {
        self.backends == 0
    }

    /// Index of the backend that owns `key_hash`, None if empty.
    pub fn route(&self, key_hash: u64) -> Option<usize> {
        self.successor(key_hash).map(|i| self.owner(i))
    }

    /// Distinct backend indexes in fallback order; first == route(key_hash).
    ///
    /// Walks the ring forward from the key's point, so the k-th candidate is exactly where the
    /// key would route once the first k-1 are removed: a session that fails over moves once,
    /// and stays on the backend it moved to when the pool later drops the dead one.
    pub fn candidates(&self, key_hash: u64) -> Candidates<'_> {
        Candidates {
            ring: self,
            next: self.successor(key_hash).unwrap_or(0),
            unvisited: self.entries.len(),
            remaining: self.placed,
            seen: Seen::Few {
                ids: [0; INLINE_SEEN],
                len: 0,
            },
        }
    }

    /// Heap memory held by the ring, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<u64>() + self.first.capacity() * size_of::<u32>()
    }

    fn owner(&self, i: usize) -> usize {
        (self.entries[i] & OWNER_MASK) as usize
    }

    /// Index of the first point at or after the position of `h`, wrapping; None if there are
    /// no points.
    fn successor(&self, h: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let pos = h >> (u64::BITS - POSITION_BITS);
        let bucket = (pos >> self.low_bits) as usize;
        let start = self.first[bucket] as usize;
        let end = self.first[bucket + 1] as usize;
        // Owner bits are zero here, so an entry at this very position compares greater or equal.
        let key = tail(pos);
        // The successor is the first entry of the bucket not below `key`, or, if there is none,
        // the first past the bucket (later buckets all come after `h`): `end`, or the lowest
        // point when `end` is the top. Counting the entries below `key` finds it without an
        // early exit, whose mispredicted branch measured a quarter slower than this.
        let below = self.entries[start..end]
            .iter()
            .map(|&e| usize::from(e < key))
            .sum::<usize>();
        let i = start + below;
        Some(if i == self.entries.len() { 0 } else { i })
    }
}

/// Points of the backends `ids` in each partition.
fn histogram(ids: &[u64]) -> Vec<u32> {
    let mut counts = vec![0u32; 1 << PARTITION_BITS];
    for &id in ids {
        for j in 0..VNODES {
            counts[(position(id, j) >> TAIL_BITS) as usize] += 1;
        }
    }
    counts
}

/// Writes the entries of `ids`, whose ranks start at `first_rank`, into their partitions'
/// slices, as sized by [`histogram`].
fn scatter(ids: &[u64], first_rank: usize, parts: &mut [&mut [u64]]) {
    let mut cursor = vec![0usize; parts.len()];
    for (rank, &id) in (first_rank..).zip(ids) {
        for j in 0..VNODES {
            let pos = position(id, j);
            let p = (pos >> TAIL_BITS) as usize;
            parts[p][cursor[p]] = tail(pos) | rank as u64;
            cursor[p] += 1;
        }
    }
}

/// The shape of the bucket table, as [`sort_partitions`] needs it.
struct Layout {
    low_bits: u32,
    buckets_per_partition: usize,
}

/// Sorts the partitions bounded by `bounds` (indexes into the whole ring; `entries` starts at
/// `bounds[0]`) and fills their share of the bucket table, `first`.
///
/// Each partition goes through a scratch buffer that stays in cache: a counting sort by an
/// eighth of a bucket, whose prefix sums are also the table, then one insertion sort over the
/// whole partition for what is left out of order. Entries compare as `(position, rank)`.
fn sort_partitions(
    layout: &Layout,
    order: &[u32],
    bounds: &[u32],
    entries: &mut [u64],
    first: &mut [u32],
) {
    let per_partition = layout.buckets_per_partition;
    let subs = per_partition << SUB_BUCKET_BITS;
    let sub_shift = OWNER_BITS + layout.low_bits - SUB_BUCKET_BITS;
    let sub = |entry: u64| (entry >> sub_shift) as usize & (subs - 1);
    let offset = bounds[0] as usize;
    let mut cursor = vec![0u32; subs];
    let mut scratch: Vec<u64> = Vec::new();
    for (p, range) in bounds.windows(2).enumerate() {
        let (start, end) = (range[0] as usize, range[1] as usize);
        let part = &mut entries[start - offset..end - offset];
        cursor.fill(0);
        for &entry in part.iter() {
            cursor[sub(entry)] += 1;
        }
        let mut next = 0;
        for slot in cursor.iter_mut() {
            let count = *slot;
            *slot = next;
            next += count;
        }
        let table = &mut first[p * per_partition..(p + 1) * per_partition];
        let bucket_starts = cursor.iter().step_by(1 << SUB_BUCKET_BITS);
        for (bucket, &sub_start) in table.iter_mut().zip(bucket_starts) {
            *bucket = start as u32 + sub_start;
        }
        // The scatter is a permutation of the partition, so every slot it reads back is written
        // first: the buffer only grows and is never cleared.
        if scratch.len() < part.len() {
            scratch.resize(part.len(), 0);
        }
        let sorted = &mut scratch[..part.len()];
        for &entry in part.iter() {
            let slot = &mut cursor[sub(entry)];
            sorted[*slot as usize] = entry;
            *slot += 1;
        }
        // Only entries sharing an eighth of a bucket can be out of order, so this is linear
        // in practice. Big groups mean hashes crafted to share points (`Ring::new` takes any
        // `u64`s); the insertion sort gives up on those, and a real sort keeps them from
        // making the build quadratic.
        if !insertion_sort(sorted) {
            sorted.sort_unstable();
        }
        for (slot, &entry) in part.iter_mut().zip(sorted.iter()) {
            *slot = entry & !OWNER_MASK | u64::from(order[(entry & OWNER_MASK) as usize]);
        }
    }
}

/// Sorts `entries` if no entry is more than 32 places from where it belongs; false, with
/// `entries` permuted, if one is.
fn insertion_sort(entries: &mut [u64]) -> bool {
    for i in 1..entries.len() {
        let entry = entries[i];
        let mut j = i;
        while j > 0 && entries[j - 1] > entry {
            if i - j == 32 {
                entries[j] = entry;
                return false;
            }
            entries[j] = entries[j - 1];
            j -= 1;
        }
        entries[j] = entry;
    }
    true
}

/// Runs `a` and `b`, on two threads if `parallel` and a thread can be had, else one after the
/// other: failing to spawn a thread (a process limit) must not fail a build.
fn join<A: Send, B>(parallel: bool, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if !parallel {
        return (a(), b());
    }
    // `spawn_scoped` consumes its closure even when it fails, so `a` waits in a cell from which
    // either the thread or the fallback takes it.
    let cell = Mutex::new(Some(a));
    let take = || cell.lock().unwrap_or_else(|e| e.into_inner()).take();
    thread::scope(|s| {
        let spawned = thread::Builder::new()
            .name("ring-build".into())
            .spawn_scoped(s, || take().map(|a| a()));
        let b = b();
        let a = match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            Err(_) => None,
        };
        match a.or_else(|| take().map(|a| a())) {
            Some(a) => (a, b),
            None => unreachable!("`a` is taken exactly once, by the thread or by the fallback"),
        }
    })
}

impl Default for Ring {
    /// The empty ring: routes nothing.
    fn default() -> Ring {
        Ring::new(&[])
    }
}

impl fmt::Debug for Ring {
    /// A summary: the points themselves are millions of numbers nobody wants in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("backends", &self.backends)
            .field("placed", &self.placed)
            .field("points", &self.entries.len())
            .field("buckets", &(self.first.len() - 1))
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

/// Fallback order for one key, from [`Ring::candidates`].
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    ring: &'a Ring,
    next: usize,
    /// Points not yet visited; bounds the walk to one lap of the ring.
    unvisited: usize,
    /// Backends not yet yielded: every placed backend owns points, so one lap finds them all.
    remaining: usize,
    seen: Seen,
}

/// Which backends a [`Candidates`] walk has yielded: a few inline, so the usual failover of one
/// or two steps never allocates, then a bitset over all indexes, so a walk through a thousand
/// backends stays linear.
#[derive(Debug, Clone)]
enum Seen {
    Few {
        ids: [usize; INLINE_SEEN],
        len: usize,
    },
    Many(Vec<u64>),
}

impl Seen {
    /// Records `id`; false if it was already there. `backends` sizes the bitset.
    fn insert(&mut self, id: usize, backends: usize) -> bool {
        match self {
            Seen::Few { ids, len } => {
                if ids[..*len].contains(&id) {
                    return false;
                }
                if *len < INLINE_SEEN {
                    ids[*len] = id;
                    *len += 1;
                    return true;
                }
                let mut bits = vec![0u64; backends.div_ceil(64)];
                for &seen in ids.iter() {
                    bits[seen / 64] |= 1 << (seen % 64);
                }
                *self = Seen::Many(bits);
                self.insert(id, backends)
            }
            Seen::Many(bits) => {
                let (word, bit) = (id / 64, 1u64 << (id % 64));
                let fresh = bits[word] & bit == 0;
                bits[word] |= bit;
                fresh
            }
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.remaining > 0 && self.unvisited > 0 {
            let owner = self.ring.owner(self.next);
            self.next = if self.next + 1 == self.ring.entries.len() {
                0
            } else {
                self.next + 1
            };
            self.unvisited -= 1;
            if self.seen.insert(owner, self.ring.backends) {
                self.remaining -= 1;
                return Some(owner);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Candidates<'_> {}

impl FusedIterator for Candidates<'_> {}

#[cfg(test)]
mod tests;
