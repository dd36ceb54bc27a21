//! Browser-like users of the demo webapp behind a balancer: each has its own cookie jar and
//! keep-alive connections, and reads which backend answered and its session count.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Balancer;

/// One page of the webapp: who served it, the session's count, how long it took.
#[derive(Debug, Clone)]
pub struct Page {
    pub backend: IpAddr,
    pub views: u64,
    pub took: Duration,
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

    /// New connections, same cookies: what a browser does after its connections died.
    pub fn reconnect(&mut self) {
        self.http = user_client(&self.jar);
    }

    pub async fn get(&self) -> Result<Page, String> {
        visit(&self.http, &self.url, None).await
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
