//! Who may read the admin endpoints: a peer inside `admin.allow`, for every `/_lb/*` path but
//! `/_lb/live`, which a container's HEALTHCHECK must always reach. The rule is pure, so it is
//! tested as a table; `front` applies it on both listeners.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use ipnet::IpNet;

use crate::message::json;

/// The one admin path open to everyone.
pub(crate) const LIVE: &str = "/_lb/live";

/// Whether `peer` may read `path` (a path under `/_lb`). An IPv4 client on a dual-stack
/// listener arrives as `::ffff:a.b.c.d`: it is matched as the IPv4 address it is.
pub(crate) fn allowed(path: &str, peer: IpAddr, allow: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    path == LIVE || allow.iter().any(|net| net.contains(&peer))
}

/// The answer to a peer outside `admin.allow`.
pub(crate) fn forbidden() -> Response<Full<Bytes>> {
    json(
        StatusCode::FORBIDDEN,
        r#"{"error":"forbidden: this client is not in admin.allow","status":403}"#.to_string(),
    )
}

/// The public listener's answer for an admin path when `admin.listen` serves them.
pub(crate) fn elsewhere() -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        r#"{"error":"not found: the admin endpoints are served on admin.listen","status":404}"#
            .to_string(),
    )
}

/// The admin listener's answer for anything outside `/_lb`: it forwards nothing.
pub(crate) fn not_admin() -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        r#"{"error":"not found: this listener serves /_lb/* only","status":404}"#.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_is_open_outside_the_allow_list() {
        let local: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let everyone: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        // allow, path, peer, allowed
        let table: &[(&[IpNet], &str, &str, bool)] = &[
            (&local, "/_lb/health", "127.0.0.1", true),
            (&local, "/_lb/health", "::ffff:127.0.0.1", true),
            (&local, "/_lb/health", "127.77.170.200", false),
            (&local, "/_lb/metrics", "::ffff:127.77.170.200", false),
            (&local, "/_lb/health", "fd00::1", true),
            (&local, "/_lb/health", "::1", false),
            (&local, "/_lb", "127.77.170.200", false),
            (&local, "/_lb/live", "127.77.170.200", true),
            (&local, "/_lb/live/", "127.77.170.200", false),
            (&[], "/_lb/health", "127.0.0.1", false),
            (&[], "/_lb/live", "127.0.0.1", true),
            (&everyone, "/_lb/health", "192.0.2.1", true),
            (&everyone, "/_lb/health", "2001:db8::1", true),
        ];
        for (allow, path, peer, want) in table {
            let peer: IpAddr = peer.parse().unwrap();
            assert_eq!(allowed(path, peer, allow), *want, "{path} from {peer}");
        }
    }
}
