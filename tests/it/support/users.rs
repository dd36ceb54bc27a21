//! Browser-like users of the demo webapp behind a balancer: each has its own cookie jar and
//! keep-alive connections, and reads which backend answered and its session count.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Balancer;

/// One page of the webapp: who served it, the session's count, how long it took, and the
/// balancer's cookie if the response set one.
#[derive(Debug, Clone)]
pub struct Page {
    pub backend: IpAddr,
    pub views: u64,
    pub took: Duration,
    /// The response's `Set-Cookie: sweeplb=...`, attributes and all.
    pub set_cookie: Option<String>,
}

/// The balancer's cookie, as the pinned-sessions tests read it.
const COOKIE: &str = "sweeplb";

/// A `sweeplb` cookie value taken apart: `KEY.PIN.T`, checked against the documented shape
/// (32 hex digits, 16 hex digits, Unix seconds) rather than parsed by the library's own code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub key: String,
    pub pin: String,
    pub at: u64,
}

impl Pinned {
    /// Parses a cookie value, or a whole `Set-Cookie` header (name and attributes are
    /// dropped); panics if it is not `KEY.PIN.T`.
    pub fn parse(cookie: &str) -> Pinned {
        let value = cookie.split(';').next().unwrap_or_default().trim();
        let value = value.strip_prefix(&format!("{COOKIE}=")).unwrap_or(value);
        let parts: Vec<&str> = value.split('.').collect();
        let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        match parts[..] {
            [key, pin, at] if hex(key, 32) && hex(pin, 16) => Pinned {
                key: key.to_string(),
                pin: pin.to_string(),
                at: at
                    .parse()
                    .unwrap_or_else(|_| panic!("T of {value:?} is not Unix seconds")),
            },
            _ => panic!("{value:?} is not KEY.PIN.T (32 hex, 16 hex, Unix seconds)"),
        }
    }
}

pub struct User {
    jar: Arc<reqwest::cookie::Jar>,
    http: reqwest::Client,
    url: String,
}

impl User {
    pub fn new(balancer: &Balancer) -> User {
        User::at(&balancer.url(""))
    }

    /// A user of the balancer at `base` (`http://host:port`).
    pub fn at(base: &str) -> User {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        User {
            http: user_client(&jar),
            jar,
            url: format!("{base}/"),
        }
    }

    /// A user who arrives with a `sweeplb` cookie of the test's making: a key of its choice,
    /// or a forged pin.
    pub fn with_cookie(balancer: &Balancer, value: &str) -> User {
        let user = User::new(balancer);
        let url = reqwest::Url::parse(&user.url).expect("the balancer's URL");
        user.jar
            .add_cookie_str(&format!("{COOKIE}={value}; Path=/"), &url);
        user
    }

    /// The same user (the same cookie jar) going through another balancer, on connections of
    /// its own: a browser behind a restarted balancer, or behind the second of two.
    pub fn via(&self, balancer: &Balancer) -> User {
        User {
            jar: Arc::clone(&self.jar),
            http: user_client(&self.jar),
            url: balancer.url("/"),
        }
    }

    /// New connections, same cookies: what a browser does after its connections died.
    pub fn reconnect(&mut self) {
        self.http = user_client(&self.jar);
    }

    /// The `sweeplb` cookie in the user's jar, if the balancer set one.
    pub fn cookie(&self) -> Option<Pinned> {
        use reqwest::cookie::CookieStore;
        let url = reqwest::Url::parse(&self.url).expect("the balancer's URL");
        let header = self.jar.cookies(&url)?;
        let prefix = format!("{COOKIE}=");
        header
            .to_str()
            .ok()?
            .split("; ")
            .find(|c| c.starts_with(&prefix))
            .map(Pinned::parse)
    }

    pub async fn get(&self) -> Result<Page, String> {
        visit(&self.http, &self.url, None).await
    }

    /// Visits `path` (after the base, like `work?ms=300`) with the user's cookies.
    pub async fn get_path(&self, path: &str) -> Result<Page, String> {
        visit(&self.http, &format!("{}{path}", self.url), None).await
    }
}

fn user_client(jar: &Arc<reqwest::cookie::Jar>) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .cookie_provider(Arc::clone(jar))
        // Longer than anything the balancer may legitimately take while a backend dies.
        .timeout(Duration::from_secs(15))
        .build()
        .expect("a reqwest client")
}

pub fn users(balancer: &Balancer, n: usize) -> Vec<User> {
    (0..n).map(|_| User::new(balancer)).collect()
}

/// Every user's next page, in order, all at once.
pub async fn round(users: &[User]) -> Vec<Result<Page, String>> {
    futures::future::join_all(users.iter().map(User::get)).await
}

/// A round in which every request must succeed.
pub async fn pages(users: &[User]) -> Vec<Page> {
    round(users)
        .await
        .into_iter()
        .map(|p| p.unwrap_or_else(|e| panic!("a user's request failed: {e}")))
        .collect()
}

/// `GET url` of the webapp: the backend that answered (its `x-backend-ip`, which must agree
/// with the page) and its `sessionViews`; any failure or other status, said in words.
pub async fn visit(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> Result<Page, String> {
    let t = Instant::now();
    let fail = |e: String| format!("after {:.1?}: {e}", t.elapsed());
    let mut req = http.get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.map_err(|e| fail(chain(&e)))?;
    let status = resp.status();
    let header = resp
        .headers()
        .get("x-backend-ip")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let set_cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{COOKIE}=")))
        .map(str::to_string);
    let body = resp.text().await.map_err(|e| fail(chain(&e)))?;
    if status != 200 {
        return Err(fail(format!("status {status}: {body}")));
    }
    let page: Value = serde_json::from_str(&body).map_err(|e| fail(format!("{e}: {body}")))?;
    let backend: IpAddr = header
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| fail(format!("no x-backend-ip header: {body}")))?;
    if page["ip"].as_str() != Some(&backend.to_string()) {
        return Err(fail(format!(
            "x-backend-ip {backend} but the body says {body}"
        )));
    }
    let views = page["sessionViews"]
        .as_u64()
        .ok_or_else(|| fail(format!("no sessionViews: {body}")))?;
    Ok(Page {
        backend,
        views,
        took: t.elapsed(),
        set_cookie,
    })
}

/// An error and its causes, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
