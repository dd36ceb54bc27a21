//! Golden placements, balance, and the invariants of consistent hashing as properties.

use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::*;
use crate::balancer::{backend_hash, key_hash};

fn addrs(range: std::ops::RangeInclusive<u8>) -> Vec<String> {
    range.map(|host| format!("127.77.0.{host}:3000")).collect()
}

fn hashes(ids: &[String]) -> Vec<u64> {
    ids.iter().map(|id| backend_hash(id.as_bytes())).collect()
}

/// The identity routed to, so rings built from different slices can be compared.
fn routed(ring: &Ring, backends: &[u64], key: u64) -> Option<u64> {
    ring.route(key).map(|i| backends[i])
}

/// Small deterministic key stream; the tests must not depend on a random seed to pass.
fn keys(count: usize, seed: u64) -> impl Iterator<Item = u64> {
    (0..count as u64).map(move |i| xxh3_64_with_seed(&i.to_le_bytes(), seed))
}

/// Full positions of the ring's points, in storage order.
fn positions(ring: &Ring) -> Vec<u64> {
    let low_mask = (1u64 << ring.low_bits) - 1;
    let mut all = Vec::with_capacity(ring.entries.len());
    for (bucket, range) in ring.first.windows(2).enumerate() {
        for &entry in &ring.entries[range[0] as usize..range[1] as usize] {
            all.push((bucket as u64) << ring.low_bits | (entry >> OWNER_BITS) & low_mask);
        }
    }
    all
}

/// The smallest key hash at position `pos`.
fn at(pos: u64) -> u64 {
    pos << (u64::BITS - POSITION_BITS)
}

/// Pinned placements and fallbacks: if this fails, a change has moved users between
/// backends (or failover targets), which every deployed replica would do at once on upgrade.
#[test]
fn golden_placements() {
    let ids = addrs(10..=14);
    let ring = Ring::new(&hashes(&ids));
    let cases = [
        ("alice", [11, 10]),
        ("bob", [14, 11]),
        ("carol", [11, 14]),
        ("dave", [14, 11]),
        ("erin", [11, 14]),
        ("frank", [11, 13]),
        ("grace", [11, 12]),
        ("heidi", [10, 11]),
        ("ivan", [11, 10]),
        ("judy", [10, 11]),
        ("mallory", [12, 10]),
        ("trent", [12, 14]),
    ];
    for (key, [first, second]) in cases {
        let got: Vec<&str> = ring
            .candidates(key_hash(key.as_bytes()))
            .take(2)
            .map(|i| ids[i].as_str())
            .collect();
        let want = [first, second].map(|host| format!("127.77.0.{host}:3000"));
        assert_eq!(got, want, "key {key:?}");
    }
}

/// The hashes themselves, so a dependency upgrade that changed xxh3's output would fail
/// here with a clear cause rather than only as reshuffled placements.
#[test]
fn golden_hashes() {
    let keys = [
        ("", 0x4d3a_2041_ec70_7b1d),
        ("alice", 0xd673_5485_2f2a_b594),
    ];
    for (input, want) in keys {
        assert_eq!(key_hash(input.as_bytes()), want, "key {input:?}");
    }
    let backends = [
        ("127.77.0.10:3000", 0xd989_7bc2_4ce9_c456),
        ("[::1]:8080", 0x5722_6327_463a_ad6d),
    ];
    for (input, want) in backends {
        assert_eq!(backend_hash(input.as_bytes()), want, "backend {input:?}");
    }
}

#[test]
fn balance_over_ten_backends() {
    let backends = hashes(&addrs(10..=19));
    let ring = Ring::new(&backends);
    let mut counts = [0u32; 10];
    for i in 0..100_000u32 {
        let key = format!("session-{i}");
        counts[ring.route(key_hash(key.as_bytes())).unwrap()] += 1;
    }
    let mean = 100_000.0 / 10.0;
    let busiest = f64::from(*counts.iter().max().unwrap()) / mean;
    assert!(
        busiest <= 1.10,
        "busiest/mean {busiest:.3}, counts {counts:?}"
    );
}

#[test]
fn small_and_degenerate_rings() {
    struct Case {
        name: &'static str,
        backends: Vec<u64>,
        /// How many distinct backends `candidates` yields.
        placed: usize,
    }
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let cases = [
        Case {
            name: "empty",
            backends: vec![],
            placed: 0,
        },
        Case {
            name: "one",
            backends: vec![7],
            placed: 1,
        },
        Case {
            name: "zero and max hashes",
            backends: vec![0, u64::MAX],
            placed: 2,
        },
        Case {
            name: "duplicate pair",
            backends: vec![42, 42],
            placed: 1,
        },
        Case {
            name: "many duplicates among others",
            backends: [vec![3], vec![9; 40], vec![4]].concat(),
            placed: 3,
        },
        Case {
            // Identities one Weyl step apart share all but one of their points, so groups
            // of 40 equal positions take the build's fallback sort.
            name: "crafted to share points",
            backends: (0..40).map(|k: u64| k.wrapping_mul(GAMMA)).collect(),
            placed: 40,
        },
    ];
    let probes = [0, 1, u64::MAX, u64::MAX - 1, 1 << 63, key_hash(b"x")];
    for case in cases {
        let ring = Ring::new(&case.backends);
        assert_eq!(ring.len(), case.backends.len(), "{}", case.name);
        assert_eq!(ring.is_empty(), case.backends.is_empty(), "{}", case.name);
        assert!(format!("{ring:?}").len() < 200, "{}", case.name);
        assert!(
            positions(&ring).windows(2).all(|w| w[0] <= w[1]),
            "{}",
            case.name
        );
        for &key in &probes {
            let all: Vec<usize> = ring.candidates(key).collect();
            assert_eq!(all.len(), case.placed, "{}: all candidates", case.name);
            let mut sorted = all.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), all.len(), "{}: distinct", case.name);
            assert_eq!(all.first().copied(), ring.route(key), "{}", case.name);
        }
    }
}

#[test]
fn duplicate_hashes_are_one_backend() {
    let ids = [5, 42, 42, 7];
    let ring = Ring::new(&ids);
    let deduped = [5, 42, 7];
    let reference = Ring::new(&deduped);
    for key in keys(2000, 1) {
        let all: Vec<u64> = ring.candidates(key).map(|i| ids[i]).collect();
        let want: Vec<u64> = reference.candidates(key).map(|i| deduped[i]).collect();
        assert_eq!(all, want);
        assert_ne!(ring.route(key), Some(2), "the copy is never returned");
    }
}

#[test]
fn parallel_build_matches_sequential() {
    let backends = hashes(&addrs(1..=40));
    let one = Ring::build(&backends, false);
    let two = Ring::build(&backends, true);
    assert_eq!(one.entries, two.entries);
    assert_eq!(one.first, two.first);
    assert_eq!(one.low_bits, two.low_bits);
}

#[test]
fn key_on_a_point_belongs_to_that_point() {
    let ring = Ring::new(&hashes(&addrs(10..=12)));
    let all = positions(&ring);
    let last = all.len() - 1;
    for i in [0, 1, all.len() / 2, last] {
        let owner = Some(ring.owner(i));
        assert_eq!(ring.route(at(all[i])), owner, "first hash at the point");
        assert_eq!(
            ring.route(at(all[i] + 1) - 1),
            owner,
            "last hash at the point"
        );
        if i > 0 && all[i - 1] < all[i] - 1 {
            assert_eq!(ring.route(at(all[i] - 1)), owner, "just before the point");
        }
    }
    assert_eq!(ring.route(u64::MAX), Some(ring.owner(0)), "wraps");
    assert_eq!(ring.route(0), Some(ring.owner(0)));
}

#[test]
fn lookup_matches_binary_search() {
    let ring = Ring::new(&hashes(&addrs(1..=30)));
    let all = positions(&ring);
    assert!(all.windows(2).all(|w| w[0] <= w[1]), "sorted");
    assert!(all.iter().all(|&p| p < 1 << POSITION_BITS));
    for key in keys(20_000, 2) {
        let pos = key >> (u64::BITS - POSITION_BITS);
        let i = all.partition_point(|&p| p < pos) % all.len();
        assert_eq!(ring.route(key), Some(ring.owner(i)));
    }
}

#[test]
fn every_candidate_is_the_route_after_removing_the_previous_ones() {
    let backends = hashes(&addrs(1..=6));
    let ring = Ring::new(&backends);
    for key in keys(50, 3) {
        let mut left = backends.clone();
        for candidate in ring.candidates(key) {
            let smaller = Ring::new(&left);
            assert_eq!(routed(&smaller, &left, key), Some(backends[candidate]));
            left.retain(|&b| b != backends[candidate]);
        }
        assert!(left.is_empty());
    }
}

#[test]
fn candidates_cover_a_large_ring_without_repeats() {
    let ring = Ring::new(&keys(300, 99).collect::<Vec<_>>());
    let mut seen = vec![false; 300];
    for candidate in ring.candidates(key_hash(b"walk")) {
        assert!(!seen[candidate]);
        seen[candidate] = true;
    }
    assert!(seen.iter().all(|&s| s));
}

/// Distinct identity hashes, two or more of them.
fn backend_set() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::btree_set(any::<u64>(), 2..12).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn leave_moves_only_the_keys_of_the_leaver(
        backends in backend_set(),
        gone in any::<prop::sample::Index>(),
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let gone = backends[gone.index(backends.len())];
        let before = Ring::new(&backends);
        let rest: Vec<u64> = backends.iter().copied().filter(|&b| b != gone).collect();
        let after = Ring::new(&rest);
        for key in keys {
            let was = routed(&before, &backends, key).unwrap();
            let now = routed(&after, &rest, key).unwrap();
            if was != gone {
                prop_assert_eq!(now, was);
            }
        }
    }

    #[test]
    fn join_moves_only_keys_to_the_joiner(
        backends in backend_set(),
        joiner in any::<u64>(),
        at in any::<prop::sample::Index>(),
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        prop_assume!(!backends.contains(&joiner));
        let before = Ring::new(&backends);
        let mut grown = backends.clone();
        grown.insert(at.index(grown.len() + 1), joiner);
        let after = Ring::new(&grown);
        for key in keys {
            let was = routed(&before, &backends, key).unwrap();
            let now = routed(&after, &grown, key).unwrap();
            if now != joiner {
                prop_assert_eq!(now, was);
            }
        }
    }

    #[test]
    fn input_order_does_not_matter(
        (backends, shuffled) in backend_set()
            .prop_flat_map(|b| (Just(b.clone()), Just(b).prop_shuffle())),
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let a = Ring::new(&backends);
        let b = Ring::new(&shuffled);
        prop_assert_eq!(positions(&a), positions(&b));
        let identity = |ring: &Ring, ids: &[u64]| -> Vec<u64> {
            (0..ring.entries.len()).map(|i| ids[ring.owner(i)]).collect()
        };
        prop_assert_eq!(identity(&a, &backends), identity(&b, &shuffled));
        for key in keys {
            let fallback = |ring: &Ring, ids: &[u64]| -> Vec<u64> {
                ring.candidates(key).map(|i| ids[i]).collect()
            };
            prop_assert_eq!(fallback(&a, &backends), fallback(&b, &shuffled));
        }
    }

    #[test]
    fn second_candidate_is_the_route_without_the_first(
        backends in backend_set(),
        keys in prop::collection::vec(any::<u64>(), 50),
    ) {
        let ring = Ring::new(&backends);
        // The ring without backend i, built on first use: a build per key would make this
        // the slowest test by far in a debug build.
        let mut without: Vec<Option<(Vec<u64>, Ring)>> = vec![None; backends.len()];
        for key in keys {
            let all: Vec<usize> = ring.candidates(key).collect();
            prop_assert_eq!(all.len(), backends.len());
            prop_assert_eq!(Some(all[0]), ring.route(key));
            let (rest, smaller) = without[all[0]].get_or_insert_with(|| {
                let mut rest = backends.clone();
                rest.remove(all[0]);
                let smaller = Ring::new(&rest);
                (rest, smaller)
            });
            prop_assert_eq!(routed(smaller, rest, key), Some(backends[all[1]]));
        }
    }
}
