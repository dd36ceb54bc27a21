//! Header rules of the forwarding path: the request's `Host` checked, hop-by-hop headers removed
//! both ways (with those `Connection` names, save the few it may never remove),
//! `X-Forwarded-*` added, the target made origin-form, and the one upgrade a request may ask
//! for.

use std::net::SocketAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOPS: usize = 8;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), besides those named in
/// `Connection`.
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers a `Connection` option can never remove, though RFC 9110 §7.6.1 has intermediaries
/// drop whatever it names. `Host` names the site: without it the backend gets a request
/// HTTP/1.1 calls invalid, or picks its default site for it (RFC 9112 §3.2). `Content-Length`
/// is the framing the client sent, and of a response to `HEAD` the only size the client gets;
/// dropped, the message would be reframed as chunked, which some backends refuse. Nothing
/// else needs it: `Transfer-Encoding` is hop-by-hop anyway (the body is decoded and
/// re-encoded), and `X-Forwarded-*` are set after the removal, so a client can drop the list it
/// brought but never the address sweeplb appends.
const NEVER_NAMED_AWAY: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` header, when
/// `Connection` names `upgrade` (RFC 9110 §7.8).
pub(super) fn upgrade_asked(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?;
    parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| protocol.clone())
}

/// Why a request is refused for its `Host` (RFC 9112 §3.2), or `None`: the request must carry
/// one valid `Host`, `uri-host[:port]` with no userinfo, except that an HTTP/1.0 request may
/// carry none and an absolute-form target's authority stands for a missing one (and replaces a
/// present one when forwarding, §3.2.2). More than one `Host` line is refused even when they
/// agree, as the RFC says: proxies and backends that pick a different one of two is what
/// makes host confusion possible.
pub(crate) fn host_problem(parts: &http::request::Parts) -> Option<&'static str> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Some("userinfo in the request target");
        }
    }
    match host {
        Some(value) if !valid_host(value.as_bytes()) => Some("an invalid Host header"),
        Some(_) => None,
        None if parts.version == Version::HTTP_11 && parts.uri.authority().is_none() => {
            Some("no Host header")
        }
        None => None,
    }
}

/// `uri-host [":" port]` (RFC 9110 §7.2): an IP literal in brackets, or a non-empty reg-name
/// or IPv4 address, then digits after a colon. No userinfo, path or space. A byte scan rather
/// than `http::uri::Authority`, which copies the value, as this runs on every request.
fn valid_host(value: &[u8]) -> bool {
    let (host, port): (&[u8], &[u8]) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let (literal, rest) = value.split_at(end + 1);
        let inside = &literal[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        match rest {
            [] => return true,
            [b':', port @ ..] => (literal, port),
            _ => return false,
        }
    } else {
        let (host, port) = match value.iter().rposition(|&b| b == b':') {
            Some(at) => (&value[..at], &value[at + 1..]),
            None => (value, &[][..]),
        };
        let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
        if host.is_empty() || !host.iter().all(reg_name) {
            return false;
        }
        (host, port)
    };
    !host.is_empty() && port.iter().all(u8::is_ascii_digit)
}

/// Removes hop-by-hop headers, including every header that `Connection` names, except those
/// it may never name away ([`NEVER_NAMED_AWAY`]).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the fields finds what is there. Most messages carry no hop-by-hop field,
    // or only `Connection: keep-alive` (every nginx response): then nothing is allocated and
    // only the fields present are removed, each one lookup.
    let mut present = [false; HOPS];
    let mut upgrade = false;
    let mut names_others = false;
    for (name, value) in headers.iter() {
        if name == header::UPGRADE {
            upgrade = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            if *name == header::CONNECTION {
                names_others |= value.as_bytes().split(|&b| b == b',').any(|token| {
                    let token = token.trim_ascii();
                    !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive")
                });
            }
        }
    }
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !NEVER_NAMED_AWAY.contains(name))
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.remove(header::UPGRADE);
    }
}

pub(super) fn prepare_request(
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    peer_ip: Option<&HeaderValue>,
) {
    strip_hop_by_hop(&mut parts.headers);
    // Upstream speaks HTTP/1.1 whatever the client spoke, with an origin-form target.
    parts.version = Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let authority = parts.uri.authority().map(|a| a.as_str().to_string());
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        if let Ok(uri) = path.parse() {
            parts.uri = uri;
        }
        if let Some(host) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    let forwarded_for = match (combined(&parts.headers, &X_FORWARDED_FOR), peer_ip) {
        (None, Some(ip)) => Some(ip.clone()),
        (prior, _) => {
            let ip = peer.ip();
            let list = prior.map_or_else(|| ip.to_string(), |p| format!("{p}, {ip}"));
            HeaderValue::from_str(&list).ok()
        }
    };
    if let Some(v) = forwarded_for {
        parts.headers.insert(X_FORWARDED_FOR, v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = parts.headers.get(header::HOST).cloned() {
        parts.headers.insert(X_FORWARDED_HOST, host);
    }
}

/// All values of a header joined as one list, as a recipient may combine them.
fn combined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_connection_that_names_only_keep_alive_loses_just_the_hop_by_hop_fields() {
        // nginx's every response: the path that allocates nothing.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive, "));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn connection_never_names_host_or_content_length_away() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, content-length, x-gone"),
        );
        h.insert(header::HOST, HeaderValue::from_static("shop.test"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host"]);
    }

    #[test]
    fn host_rules() {
        use http::Version as V;
        let none: Option<&str> = None;
        let cases: &[(&str, V, &[&str], Option<&str>)] = &[
            ("/", V::HTTP_11, &["shop.test"], none),
            ("/", V::HTTP_11, &["shop.test:8080"], none),
            ("/", V::HTTP_11, &["127.0.0.1:80"], none),
            ("/", V::HTTP_11, &["[::1]:8080"], none),
            ("/", V::HTTP_11, &["[::1]"], none),
            ("/", V::HTTP_11, &[], Some("no Host header")),
            ("/", V::HTTP_10, &[], none),
            (
                "/",
                V::HTTP_11,
                &["a.test", "b.test"],
                Some("more than one Host header"),
            ),
            (
                "/",
                V::HTTP_11,
                &["a.test", "a.test"],
                Some("more than one Host header"),
            ),
            (
                "/",
                V::HTTP_10,
                &["a.test", "b.test"],
                Some("more than one Host header"),
            ),
            ("/", V::HTTP_11, &[""], Some("an invalid Host header")),
            (
                "/",
                V::HTTP_11,
                &["user@shop.test"],
                Some("an invalid Host header"),
            ),
            (
                "/",
                V::HTTP_11,
                &["shop.test:http"],
                Some("an invalid Host header"),
            ),
            (
                "/",
                V::HTTP_11,
                &["a.test/b"],
                Some("an invalid Host header"),
            ),
            (
                "/",
                V::HTTP_11,
                &["a.test, b.test"],
                Some("an invalid Host header"),
            ),
            ("/", V::HTTP_11, &[":80"], Some("an invalid Host header")),
            ("/", V::HTTP_11, &["[::1"], Some("an invalid Host header")),
            ("/", V::HTTP_11, &["[::1]x"], Some("an invalid Host header")),
            ("/", V::HTTP_11, &["a:b:80"], Some("an invalid Host header")),
            // The target's authority is the host; a Host line, if any, is replaced.
            ("http://shop.test/a", V::HTTP_11, &[], none),
            ("http://shop.test/a", V::HTTP_11, &["other.test"], none),
            (
                "http://shop.test/a",
                V::HTTP_11,
                &["a.test", "b.test"],
                Some("more than one Host header"),
            ),
            (
                "http://u:p@shop.test/a",
                V::HTTP_11,
                &["shop.test"],
                Some("userinfo in the request target"),
            ),
        ];
        for &(target, version, hosts, expected) in cases {
            let mut req = Request::get(target).version(version);
            for host in hosts {
                req = req.header(header::HOST, *host);
            }
            let (parts, ()) = req.body(()).unwrap().into_parts();
            assert_eq!(
                host_problem(&parts),
                expected,
                "{target} {version:?} Host: {hosts:?}"
            );
        }
    }

    #[test]
    fn forwarded_headers_append_the_peer() {
        let req = Request::get("http://example.test/a?b")
            .header(X_FORWARDED_FOR, "127.9.8.7")
            .header(X_FORWARDED_PROTO, "https")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare_request(&mut parts, "127.0.0.1:5555".parse().unwrap(), None);
        assert_eq!(parts.uri, "/a?b");
        assert_eq!(parts.headers[header::HOST], "example.test");
        assert_eq!(parts.headers[X_FORWARDED_FOR], "127.9.8.7, 127.0.0.1");
        assert_eq!(parts.headers[X_FORWARDED_PROTO], "http");
        assert_eq!(parts.headers[X_FORWARDED_HOST], "example.test");
    }
}
