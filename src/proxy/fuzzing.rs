//! Fuzzing entry points into the proxy's private parts: the stickiness plan over a fixed pool,
//! and the header rules over arbitrary request heads. Reached through [`crate::fuzzing`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use super::headers::{prepare_request, strip_hop_by_hop, upgrade_asked};
use super::sticky::Sticky;
use crate::balancer::pin::Cookie;
use crate::balancer::{Lookup, Moved, PinKey};
use crate::config::{Balance, Key};
use crate::message;
use crate::pool::{Backend, Routing};

/// The cookie name the targets use, the default one.
pub(crate) const COOKIE: &str = "sweeplb";

/// The pool every plan is made over: three routed members (127.77.0.10-12:3000), one draining
/// (.13, instance `web-3`), one joining (.14) and two gone (.15 left, .16/`old` replaced), with
/// the public pin key, so seeds can carry their real pins. One routing has settled (an unknown
/// pin is stale), one has not (an unknown pin may be early).
fn routings() -> &'static [Routing; 2] {
    static ROUTINGS: OnceLock<[Routing; 2]> = OnceLock::new();
    ROUTINGS.get_or_init(|| {
        let key = PinKey::new(None);
        let backend = |last: u8, instance: Option<&str>| {
            let addr = SocketAddr::from(([127, 77, 0, last], 3000));
            Arc::new(Backend::new(addr, instance.map(String::from), &key))
        };
        let pin = |last: u8, instance: Option<&str>| backend(last, instance).pin;
        let make = |settled| {
            Routing::new(
                (10..=12).map(|i| backend(i, None)).collect(),
                vec![backend(13, Some("web-3"))],
                &[pin(14, None)],
                &[
                    (pin(15, None), Moved::BackendLeft),
                    (pin(16, Some("old")), Moved::InstanceReplaced),
                ],
                settled,
                &Routing::default(),
            )
        };
        [make(true), make(false)]
    })
}

/// The stickiness rules a plan is made under: the defaults, and every option on.
fn balances() -> [Balance; 2] {
    let plain = Balance {
        key: Key::Cookie(COOKIE.to_string()),
        cookie_max_age: None,
        repin_after: None,
        session_idle: Duration::from_secs(60),
        bounded_load: None,
        pin_secret: None,
    };
    let options = Balance {
        cookie_max_age: Some(Duration::from_secs(86_400)),
        repin_after: Some(Duration::from_secs(60)),
        bounded_load: Some(1.25),
        ..plain.clone()
    };
    [plain, options]
}

/// A request's `Cookie` headers through the plan and the answer: every request is offered to a
/// backend, a pin to a member or a draining member is honoured, and a `Set-Cookie` carries the
/// request's own key and the pin of the backend that served it, readable by the same lookup.
pub(crate) fn sticky(headers: &HeaderMap) {
    let peer = SocketAddr::from(([127, 0, 0, 1], 5555));
    let asked = message::cookie(headers, COOKIE)
        .map(Cookie::parse)
        .filter(|c| !c.key.is_empty());
    for r in routings() {
        for balance in balances() {
            let repin = balance.repin_after.is_some();
            let sticky = Sticky::new(balance);
            let _ = sticky.pending(headers, r);
            let plan = sticky
                .plan(headers, peer, r)
                .expect("a pool with routed members takes every request");
            let order = plan.candidates.as_slice();
            assert!(order.iter().all(|&i| i < r.backends.len()), "{order:?}");
            let lookup = asked.and_then(|c| c.pin).map(|p| r.lookup(p.pin));
            match lookup {
                Some(Lookup::Draining(i)) => assert_eq!(order[0], i, "draining pin not honoured"),
                Some(Lookup::Member(i)) if !repin => assert_eq!(order[0], i, "pin not honoured"),
                _ => {}
            }
            let served = order[0];
            let Some(set) = sticky.served(plan, r, served) else {
                continue;
            };
            let set = set.to_str().expect("a Set-Cookie we make is text");
            let pair = set.split(';').next().unwrap_or_default();
            let mut back = HeaderMap::new();
            back.insert(
                header::COOKIE,
                HeaderValue::from_str(pair).expect("a cookie pair we made is a header value"),
            );
            let again = message::cookie(&back, COOKIE)
                .map(Cookie::parse)
                .expect("the cookie we set is found");
            if let Some(c) = asked {
                assert_eq!(again.key, c.key, "the Set-Cookie changed the user's key");
            }
            let pin = again.pin.expect("the cookie we set carries a pin");
            assert_eq!(
                pin.pin, r.backends[served].pin,
                "pinned elsewhere than served"
            );
        }
    }
}

/// Headers that describe one hop: none may be forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A request head (`METHOD TARGET VERSION`, then `name: value` lines; unusable lines are
/// skipped, as hyper would refuse them) through the header rules, on both directions.
pub(crate) fn headers(data: &[u8]) {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut start = lines.next().unwrap_or_default().splitn(3, |&b| b == b' ');
    let method = Method::from_bytes(start.next().unwrap_or_default()).unwrap_or(Method::GET);
    let uri =
        Uri::try_from(start.next().unwrap_or_default()).unwrap_or_else(|_| Uri::from_static("/"));
    let version = match start.next().unwrap_or_default() {
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/2" => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .expect("parts that parsed make a request");
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            request.headers_mut().append(n, v);
        }
    }
    let (parts, ()) = request.into_parts();

    if let Some(protocol) = upgrade_asked(&parts) {
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers.get(header::UPGRADE), Some(&protocol));
    }

    // The names `Connection` lists, as the rule reads them.
    let named: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let removed = |name: &HeaderName| HOP_BY_HOP.contains(&name.as_str()) || named.contains(name);
    let check_stripped = |before: &HeaderMap, after: &HeaderMap| {
        for name in after.keys() {
            assert!(!removed(name), "{name} was forwarded");
        }
        for name in before.keys().filter(|n| !removed(n)) {
            assert!(
                before.get_all(name).iter().eq(after.get_all(name).iter()),
                "{name} was changed"
            );
        }
    };

    // A response's headers, stripped on their way back.
    let mut response = parts.headers.clone();
    strip_hop_by_hop(&mut response);
    check_stripped(&parts.headers, &response);

    for peer in [
        SocketAddr::from(([127, 0, 0, 1], 5555)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5555)),
    ] {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).ok();
        for given in [None, peer_ip.as_ref()] {
            let mut forwarded = parts.clone();
            prepare_request(&mut forwarded, peer, given);
            let h = &forwarded.headers;
            assert_eq!(forwarded.version, Version::HTTP_11);
            assert_eq!(h["x-forwarded-proto"], "http");
            let xff = h["x-forwarded-for"]
                .to_str()
                .expect("X-Forwarded-For is text");
            assert!(xff.ends_with(&peer.ip().to_string()), "{xff:?}");
            if let Some(host) = h.get(header::HOST) {
                assert_eq!(h.get("x-forwarded-host"), Some(host));
            }
            // What the proxy sets itself is forwarded even when `Connection` named it.
            let own = [
                "host",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
            ];
            for name in h.keys().filter(|n| !own.contains(&n.as_str())) {
                assert!(!removed(name), "{name} was forwarded");
            }
        }
    }
}

/// A backend's response through the head parser and the body's framing, fed whole and then in
/// pieces: both must come to the same thing. The first byte picks the request method (`HEAD`
/// when odd) and the size of the pieces.
pub(crate) fn response(data: &[u8]) {
    use super::upstream::codec::read_through;
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let step = usize::from(first >> 1).max(1);
    let whole = read_through(bytes, &method, bytes.len());
    let pieces = read_through(bytes, &method, step);
    assert_eq!(
        whole, pieces,
        "fed whole and in pieces of {step}, the same bytes read differently"
    );
}
