//! The address walk: the configured ranges addressed by position ([`Targets`]), a
//! memoryless random permutation of the positions ([`Order`]), and the addresses never to
//! probe because they are the balancer itself ([`own_addresses`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The addresses of the configured ranges, addressed by position.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    ranges: Vec<(IpNet, u128, u64)>,
    total: u64,
}

impl Targets {
    pub(crate) fn new(subnets: &[IpNet]) -> Targets {
        let mut ranges = Vec::new();
        let mut total = 0u64;
        for net in subnets {
            let count = crate::config::host_count(net).min(crate::config::MAX_ADDRESSES) as u64;
            let first = match net {
                IpNet::V4(n) if n.prefix_len() <= 30 => u128::from(u32::from(n.network())) + 1,
                IpNet::V4(n) => u128::from(u32::from(n.network())),
                IpNet::V6(n) => u128::from(n.network()),
            };
            ranges.push((*net, first, count));
            total += count;
        }
        Targets { ranges, total }
    }

    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// Whether the walk reaches `ip` (a range's network and broadcast addresses it does not).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|(net, first, count)| {
            let n = match (net, ip) {
                (IpNet::V4(_), IpAddr::V4(ip)) => u128::from(u32::from(ip)),
                (IpNet::V6(_), IpAddr::V6(ip)) => u128::from(ip),
                _ => return false,
            };
            n >= *first && n - first < u128::from(*count)
        })
    }

    pub(crate) fn get(&self, mut index: u64) -> Option<IpAddr> {
        for (net, first, count) in &self.ranges {
            if index < *count {
                let n = first + u128::from(index);
                return Some(match net {
                    IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
                    IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
                });
            }
            index -= count;
        }
        None
    }
}

/// A permutation of `0..len` as `offset + i * stride (mod len)` with `stride` coprime to `len`:
/// a random-looking walk that needs no memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Order {
    len: u64,
    offset: u64,
    stride: u64,
}

impl Order {
    pub(crate) fn random(len: u64) -> Order {
        if len <= 1 {
            return Order {
                len,
                offset: 0,
                stride: 1,
            };
        }
        let offset = fastrand::u64(0..len);
        let stride = loop {
            let s = fastrand::u64(1..len);
            if gcd(s, len) == 1 {
                break s;
            }
        };
        Order {
            len,
            offset,
            stride,
        }
    }

    pub(crate) fn at(&self, i: u64) -> u64 {
        ((u128::from(self.offset) + u128::from(i) * u128::from(self.stride)) % u128::from(self.len))
            as u64
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The addresses this balancer itself answers on at the probed port: never probed.
pub(crate) fn own_addresses(listen: SocketAddr, port: u16) -> Vec<IpNet> {
    if listen.port() != port {
        return Vec::new();
    }
    if !listen.ip().is_unspecified() {
        return vec![IpNet::from(listen.ip())];
    }
    // Listening on 0.0.0.0 means answering on every local address, all of 127/8 included.
    crate::host::networks()
        .into_iter()
        .map(|net| match net {
            // Loopback's whole range answers, not only 127.0.0.1.
            n if n.addr().is_loopback() => n.trunc(),
            n => IpNet::from(n.addr()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_walk_hosts_of_every_range() {
        let t = Targets::new(&[
            "127.77.0.0/30".parse().unwrap(),
            "127.78.0.9/32".parse().unwrap(),
        ]);
        assert_eq!(t.len(), 3);
        let all: Vec<String> = (0..3).map(|i| t.get(i).unwrap().to_string()).collect();
        assert_eq!(all, ["127.77.0.1", "127.77.0.2", "127.78.0.9"]);
        assert_eq!(t.get(3), Option::None);
        for ip in ["127.77.0.1", "127.77.0.2", "127.78.0.9"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.77.0.0", "127.77.0.3", "127.78.0.10", "::1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn order_is_a_permutation() {
        for len in [1u64, 2, 3, 254, 256, 4094] {
            let o = Order::random(len);
            let mut seen: Vec<u64> = (0..len).map(|i| o.at(i)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..len).collect::<Vec<_>>(), "len {len}");
        }
    }

    #[test]
    fn own_address_is_skipped_only_on_the_probed_port() {
        let listen: SocketAddr = "127.77.0.1:3000".parse().unwrap();
        assert_eq!(own_addresses(listen, 3000), vec![IpNet::from(listen.ip())]);
        assert!(own_addresses(listen, 8080).is_empty());
        let any: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        assert!(
            own_addresses(any, 3000)
                .iter()
                .any(|n| n.contains(&"127.77.0.10".parse::<IpAddr>().unwrap()))
        );
    }
}
