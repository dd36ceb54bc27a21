//! Header rules of the forwarding path: hop-by-hop headers removed both ways (with those
//! `Connection` names), `X-Forwarded-*` added, the target made origin-form, and the one
//! upgrade a request may ask for.

use std::net::SocketAddr;

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), besides those named in
/// `Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

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

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than nine removals.
    if !headers
        .keys()
        .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
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
