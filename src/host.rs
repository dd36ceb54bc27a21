//! What this host is on the network: loopback and each interface's address with its prefix.
//! Read by config (a swept range must be attached to the host) and by discovery (the
//! balancer's own addresses are never probed).

use std::net::IpAddr;

use ipnet::IpNet;

/// Loopback (`127.0.0.0/8`, `::1/128`) and every interface's address with its prefix length,
/// host bits kept: `.trunc()` gives the attached network, `.addr()` the host's own address.
/// An unreadable interface list leaves only loopback, the safe side of both uses.
pub(crate) fn networks() -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
    ];
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            let net = match iface.addr {
                if_addrs::IfAddr::V4(a) => IpNet::new(IpAddr::V4(a.ip), a.prefixlen),
                if_addrs::IfAddr::V6(a) => IpNet::new(IpAddr::V6(a.ip), a.prefixlen),
            };
            if let Ok(net) = net {
                nets.push(net);
            }
        }
    }
    nets
}
