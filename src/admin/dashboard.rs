//! `/_lb/`: the live dashboard, one page and its script and style, compiled into the binary so
//! it works on a network with no internet. The page polls `/_lb/health` once a second and
//! draws it; it holds no state of its own on the server and adds no endpoint of its own.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Where the page's assets live. The page names them by absolute path, as it is served at
/// both `/_lb` and `/_lb/`.
const ASSETS: &str = "/_lb/dashboard/";

/// Nothing but the binary's own files: no inline script or style, no other origin, no
/// framing. `connect-src 'self'` is what lets the script poll `/_lb/health`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const ICON: &str = include_str!("dashboard/icon.svg");

/// The page for `/_lb` and `/_lb/`, an asset for `/_lb/dashboard/NAME`, `None` for any other
/// path. HEAD is answered like GET: the server leaves the body out.
pub(super) fn page(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "/_lb" | "/_lb/" => (INDEX, "text/html; charset=utf-8"),
        _ => match path.strip_prefix(ASSETS)? {
            "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
            "dashboard.css" => (STYLE, "text/css; charset=utf-8"),
            // Named by the page, so the browser does not ask the backends for /favicon.ico.
            "icon.svg" => (ICON, "image/svg+xml"),
            _ => return None,
        },
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so a new binary's page is what the browser shows.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(resp: &Response<Full<Bytes>>, name: header::HeaderName) -> &str {
        resp.headers()
            .get(&name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .expect("ASCII header")
    }

    #[test]
    fn each_path_gets_its_file_and_content_type() {
        let table = [
            ("/_lb", "text/html; charset=utf-8", INDEX),
            ("/_lb/", "text/html; charset=utf-8", INDEX),
            (
                "/_lb/dashboard/dashboard.js",
                "text/javascript; charset=utf-8",
                SCRIPT,
            ),
            (
                "/_lb/dashboard/dashboard.css",
                "text/css; charset=utf-8",
                STYLE,
            ),
            ("/_lb/dashboard/icon.svg", "image/svg+xml", ICON),
        ];
        for (path, content_type, body) in table {
            let resp = page(path).unwrap_or_else(|| panic!("{path} is not served"));
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&resp, header::CONTENT_TYPE), content_type, "{path}");
            assert_eq!(header(&resp, header::CACHE_CONTROL), "no-cache", "{path}");
            let sent =
                futures::executor::block_on(http_body_util::BodyExt::collect(resp.into_body()))
                    .expect("a full body")
                    .to_bytes();
            assert_eq!(sent, body.as_bytes(), "{path}");
        }
    }

    /// Through the admin router: the page for GET and HEAD, the JSON endpoints untouched.
    #[test]
    fn the_admin_router_serves_the_page_beside_the_json() {
        let reloads = crate::reload::Counts::default();
        let metrics = super::super::Metrics::new(Default::default());
        let sources = super::super::Sources {
            snapshot: Default::default(),
            upstream: crate::proxy::UpstreamStats {
                connects: 0,
                reused: 0,
                idle: 0,
                unexpected: 0,
            },
            sticky: crate::proxy::StickyStats {
                moved: Vec::new(),
                diverted: 0,
            },
            traffic: Default::default(),
            reloads: &reloads,
            metrics: &metrics,
            keep_departed: std::time::Duration::from_secs(600),
            autoscale: None,
        };
        let ask = |method: http::Method, path: &str| {
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .expect("a request");
            super::super::respond(&req, &sources)
        };
        for method in [http::Method::GET, http::Method::HEAD] {
            for path in ["/_lb", "/_lb/"] {
                let resp = ask(method.clone(), path);
                assert_eq!(resp.status(), StatusCode::OK, "{method} {path}");
                assert_eq!(
                    header(&resp, header::CONTENT_TYPE),
                    "text/html; charset=utf-8"
                );
            }
        }
        let health = ask(http::Method::GET, "/_lb/health");
        assert_eq!(header(&health, header::CONTENT_TYPE), "application/json");
        let post = ask(http::Method::POST, "/_lb/");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        let unknown = ask(http::Method::GET, "/_lb/dashboard/nothing.js");
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn other_paths_are_not_the_dashboards() {
        for path in [
            "/_lb/health",
            "/_lb/live",
            "/_lb/dashboard/",
            "/_lb/dashboard/index.html",
            "/_lb/dashboard/../health",
            "/_lb//",
            "/_lbx",
            "/",
        ] {
            assert!(
                page(path).is_none(),
                "{path} should not be a dashboard file"
            );
        }
    }

    #[test]
    fn the_policy_allows_only_the_binarys_own_files() {
        let resp = page("/_lb/").expect("the page");
        let csp = header(&resp, header::CONTENT_SECURITY_POLICY);
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for want in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(directives.contains(&want), "{csp} lacks {want}");
        }
        for loose in [
            "unsafe-inline",
            "unsafe-eval",
            "http:",
            "https:",
            "data:",
            "*",
        ] {
            assert!(!csp.contains(loose), "{csp} allows {loose}");
        }
        assert_eq!(header(&resp, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    }

    /// The CSP forbids inline script and style; the page must not rely on any, nor load
    /// anything from elsewhere.
    #[test]
    fn the_page_has_no_inline_script_or_style_and_no_other_origin() {
        for (name, text) in [("index.html", INDEX), ("dashboard.css", STYLE)] {
            for bad in ["http://", "https://", "//fonts", "@import"] {
                assert!(!text.contains(bad), "{name} refers to {bad}");
            }
        }
        assert!(!INDEX.contains("<style"), "inline <style> in the page");
        assert!(
            !INDEX.contains(" style="),
            "inline style attribute in the page"
        );
        let handler = INDEX.split(" on").skip(1).find(|rest| {
            let name = rest.split('=').next().unwrap_or("");
            rest.contains('=') && name.chars().all(|c| c.is_ascii_lowercase())
        });
        let handler = handler.map(|h| h.chars().take(40).collect::<String>());
        assert!(handler.is_none(), "inline event handler: on{handler:?}");
        let scripts: Vec<&str> = INDEX.split("<script").skip(1).collect();
        assert_eq!(scripts.len(), 1, "one script, the binary's own");
        assert!(scripts[0].starts_with(r#" src="/_lb/dashboard/dashboard.js"></script>"#));
        assert!(!SCRIPT.contains("innerHTML"), "data must go in as text");
        assert!(
            !SCRIPT.contains("http"),
            "the script talks only to its own origin"
        );
    }
}
