//! HTTP message pieces that every part of sweeplb speaks alike: the JSON responses it writes
//! itself (errors, `/_lb/*`, the demo webapp) and reading one cookie out of a request.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// A JSON response that no cache keeps.
pub(crate) fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The value of cookie `name` in the request's `Cookie` headers; an empty value counts as
/// none.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // A byte scan: this runs on every request. `to_str` admits only visible ASCII, space and
    // tab, so ASCII trimming is all the trimming there is.
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for pair in value.split(';') {
            if let Some((k, v)) = pair.trim_ascii().split_once('=') {
                let v = v.trim_matches('"');
                if k == name && !v.is_empty() {
                    return Some(v);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; sweeplb=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "sweeplb"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "sweep"), None);
        h.insert(header::COOKIE, HeaderValue::from_static("sweeplb="));
        assert_eq!(cookie(&h, "sweeplb"), None);
        // An empty quoted value is none either: a later one of the same name counts.
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("sweeplb=\"\"; sweeplb=abc"),
        );
        assert_eq!(cookie(&h, "sweeplb"), Some("abc"));
    }
}
