//! The dashboard at `/_lb/`, as a person sees it: rendered by a real headless Chromium driven
//! through chromedriver (WebDriver), it shows backends joining and leaving without a reload,
//! with the reason they left, and says so when the balancer stops answering.
//!
//! Chromium is kept on loopback: it is only ever sent to the balancer's address, with
//! background networking, sync, component updates and DNS turned off. Without chromium or
//! chromedriver the browser test skips loudly, except under `CI=true`, where it fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::support::{Backend, Balancer, Net, client, eventually, webapp};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the page may take to show a change: a poll a second, `rise` or `fall` checks,
/// and a wide margin for a loaded machine.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

/// Where test output goes: `target/test-output/`.
fn output_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-output");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// chromedriver and the Chromium it starts, in a process group of their own, killed whole
/// when this is dropped (the test passed or not); the browser profile goes with them.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// A headless Chromium at `width` x `height`, or `None` (after saying so loudly) when
    /// chromium or chromedriver is missing and CI is not set.
    async fn start(test: &str, width: u32, height: u32) -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let problem = format!("{missing:?} not installed (Debian: chromium chromium-driver)");
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI is set and {test} cannot run: {problem}");
            }
            eprintln!("\n!!! SKIPPED {test}: {problem}. (With CI=true this is a failure.)\n");
            return None;
        }
        let out = output_dir();
        let profile = out.join(format!("chromium-profile-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let port = free_port();
        let log = std::fs::File::create(out.join(format!("chromedriver-{test}.log")))
            .expect("create the chromedriver log");
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}"))
        };
        let mut browser = Browser {
            client: None,
            driver,
            profile,
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        eventually(Duration::from_secs(10), async || {
            match client().get(format!("{webdriver}/status")).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("chromedriver /status answered {}", r.status())),
                Err(e) => Err(format!("chromedriver is not up: {e}")),
            }
        })
        .await;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-breakpad",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-pings",
            "--no-proxy-server",
            // No name resolves, so nothing but the balancer, loaded by its loopback IP, can be
            // reached even if some background fetch escapes the flags above.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--force-device-scale-factor=1",
            "--hide-scrollbars",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            format!("--user-data-dir={}", browser.profile.display()),
            format!("--window-size={width},{height}"),
        ])
        .collect::<Vec<_>>();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let session = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session from chromedriver: {e}"));
        browser.client = Some(session);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session until close")
    }

    /// Runs `script` (a function body that returns a value) in the page.
    async fn eval(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("run in the page: {e}\n{script}"))
    }

    /// The members table as shown: (address, state) of each row, in order.
    async fn members(&self) -> Vec<(String, String)> {
        rows(&self.eval(MEMBERS).await)
    }

    /// The departures table as shown: (address, reason) of each row.
    async fn departures(&self) -> Vec<(String, String)> {
        rows(&self.eval(DEPARTURES).await)
    }

    async fn text(&self, id: &str) -> String {
        let script = format!("return document.getElementById('{id}').textContent.trim();");
        self.eval(&script).await.as_str().unwrap_or("").to_string()
    }

    /// A PNG of the page as shown, written to `path`.
    async fn screenshot(&self, path: &Path) {
        let png = self.client().screenshot().await.expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is no PNG"
        );
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("dashboard screenshot: {}", path.display());
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads a process group; Chromium and its helpers are in it.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A loopback port nothing listens on right now, for chromedriver.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("an ephemeral loopback port")
        .port()
}

/// Rows of a table's body, each cell's text; rows without an address (the "None." row) left
/// out.
const MEMBERS: &str = "return [...document.querySelectorAll('#members tbody tr')]\
     .filter(r => r.cells.length > 2)\
     .map(r => [r.cells[0].textContent.trim(), r.cells[1].textContent.trim()]);";
const DEPARTURES: &str = "return [...document.querySelectorAll('#departures tbody tr')]\
     .filter(r => r.cells.length > 2)\
     .map(r => [r.cells[0].textContent.trim(), r.cells[2].textContent.trim()]);";

fn rows(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let cell = |i: usize| r[i].as_str().unwrap_or_default().to_string();
            (cell(0), cell(1))
        })
        .collect()
}

/// The reason `/_lb/health` gives for `addr`'s departure, if it lists one.
async fn reason_left(lb: &Balancer, addr: SocketAddr) -> Option<String> {
    let (_, h) = lb.health().await;
    h["recently_left"]
        .as_array()?
        .iter()
        .find(|d| d["addr"] == addr.to_string())
        .and_then(|d| d["reason"].as_str().map(str::to_string))
}

/// Waits until the members table is exactly `want` (address, state).
async fn wait_members(page: &Browser, want: &[(SocketAddr, &[&str])]) {
    eventually(SHOWN_WITHIN, async || {
        let shown = page.members().await;
        let matches = shown.len() == want.len()
            && shown.iter().zip(want).all(|((addr, state), (a, states))| {
                *addr == a.to_string() && states.contains(&state.as_str())
            });
        if matches {
            Ok(())
        } else {
            Err(format!("the page shows {shown:?}, wanted {want:?}"))
        }
    })
    .await
}

/// Sends up to `n` requests through the balancer, 50 ms apart, in the background.
fn traffic(lb: &Balancer, n: usize) -> tokio::task::JoinHandle<()> {
    let url = lb.url("/");
    tokio::spawn(async move {
        for _ in 0..n {
            let _ = client().get(&url).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_backends_join_and_leave_live() {
    let net = Net::new(160);
    let first = webapp(net.addr(10));
    // `rise` checks make joining last about 1.75 s, longer than the page's poll, so the page
    // shows it every time.
    let config = format!(
        "discovery:\n  subnets: [{}]\n  port: {}\n  check_interval: 250ms\n  \
         sweep_interval: 400ms\n  timeout: 150ms\n  rise: 8\n  fall: 2\n",
        net.subnet(),
        net.port
    );
    let lb = Balancer::start(&config).await;
    lb.wait_healthy(&[first.addr], SHOWN_WITHIN).await;
    let Some(page) = Browser::start("dashboard", 1200, 900).await else {
        return;
    };
    page.client()
        .goto(&lb.url("/_lb/"))
        .await
        .expect("open the dashboard");

    wait_members(&page, &[(first.addr, &["healthy"])]).await;
    eventually(SHOWN_WITHIN, async || {
        let status = page.text("status").await;
        (status == "1 healthy backend")
            .then_some(())
            .ok_or(format!("the status line says {status:?}"))
    })
    .await;
    // The style sheet was allowed in by the page's policy and applies.
    let weight = page
        .eval("return getComputedStyle(document.getElementById('status')).fontWeight;")
        .await;
    assert_eq!(weight, json!("600"), "dashboard.css did not apply");

    // Traffic shows as a rate on the backend that serves it.
    let load = traffic(&lb, 200);
    eventually(SHOWN_WITHIN, async || {
        let rate = page
            .eval("return document.querySelector('#members tbody tr').cells[4].textContent;")
            .await;
        let rate = rate.as_str().unwrap_or("").to_string();
        match rate.parse::<f64>() {
            Ok(r) if r > 0.0 => Ok(()),
            _ => Err(format!("req/s shows {rate:?}")),
        }
    })
    .await;
    load.abort();

    let second: Backend = webapp(net.addr(11));
    wait_members(
        &page,
        &[(first.addr, &["healthy"]), (second.addr, &["joining"])],
    )
    .await;
    wait_members(
        &page,
        &[(first.addr, &["healthy"]), (second.addr, &["healthy"])],
    )
    .await;

    second.kill().await;
    wait_members(&page, &[(first.addr, &["healthy"])]).await;
    let reason = reason_left(&lb, second.addr)
        .await
        .expect("/_lb/health lists the departure");
    assert!(!reason.is_empty(), "a departure without a reason");
    eventually(SHOWN_WITHIN, async || {
        let gone = page.departures().await;
        gone.iter()
            .any(|(addr, why)| *addr == second.addr.to_string() && *why == reason)
            .then_some(())
            .ok_or(format!(
                "departures show {gone:?}, wanted {} with {reason:?}",
                second.addr
            ))
    })
    .await;
    page.screenshot(&output_dir().join("dashboard.png")).await;

    // The balancer goes away: the page says so instead of showing stale numbers as live.
    lb.stop().await;
    eventually(SHOWN_WITHIN, async || {
        let status = page.text("status").await;
        (status == "connection lost, retrying")
            .then_some(())
            .ok_or(format!("the status line says {status:?}"))
    })
    .await;
    page.close().await;
}

/// Autoscaling's section: "off" without the block; with it, the service, the engine's state
/// (here an engine that cannot be reached) and the containers table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_autoscaling_and_an_unreachable_engine() {
    let net = Net::new(163);
    let app = webapp(net.addr(10));
    let socket = std::env::temp_dir().join(format!("sweeplb-it-dash-{}.sock", std::process::id()));
    let yaml = net.config(
        "",
        &format!(
            "autoscale:\n  docker: unix://{}\n  service: shop\n  min: 2\n  max: 4\n",
            socket.display()
        ),
    );
    let lb = Balancer::found(&yaml, &[app.addr]).await;
    let plain = Balancer::found(&net.config("", ""), &[app.addr]).await;
    let Some(page) = Browser::start("dashboard autoscaling", 1200, 900).await else {
        return;
    };
    page.client()
        .goto(&plain.url("/_lb/"))
        .await
        .expect("open the dashboard");
    eventually(SHOWN_WITHIN, async || {
        let text = page.text("autoscale").await;
        let hidden = page
            .eval("return document.getElementById('scaled').hidden;")
            .await;
        (text == "Autoscalingoff" && hidden == json!(true))
            .then_some(())
            .ok_or(format!(
                "without autoscale: {text:?}, table hidden: {hidden}"
            ))
    })
    .await;

    page.client()
        .goto(&lb.url("/_lb/"))
        .await
        .expect("open the dashboard");
    eventually(SHOWN_WITHIN, async || {
        let text = page.text("autoscale").await;
        let shown = ["shop", "cannot reach the Docker engine", "min 2, max 4"]
            .iter()
            .all(|want| text.contains(want));
        let table = page.text("scaled").await;
        (shown && table.contains("No running container"))
            .then_some(())
            .ok_or(format!("autoscale section: {text:?}; table: {table:?}"))
    })
    .await;
    page.close().await;
    lb.stop().await;
    plain.stop().await;
}

/// The page, its script and its style over HTTP, as a browser gets them: one origin, no
/// caching without revalidation, and HEAD answered like GET without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_whole_and_head_is_get_without_body() {
    let net = Net::new(162);
    let lb = Balancer::start(&net.config("", "")).await;
    for (path, kind) in [
        ("/_lb/", "text/html"),
        ("/_lb", "text/html"),
        ("/_lb/dashboard/dashboard.js", "text/javascript"),
        ("/_lb/dashboard/dashboard.css", "text/css"),
    ] {
        let get = client().get(lb.url(path)).send().await.expect("GET");
        assert_eq!(get.status(), 200, "GET {path}");
        let headers = get.headers().clone();
        let body = get.bytes().await.expect("a body");
        assert!(!body.is_empty(), "GET {path} has no body");
        let head = client().head(lb.url(path)).send().await.expect("HEAD");
        assert_eq!(head.status(), 200, "HEAD {path}");
        for name in ["content-type", "cache-control", "content-security-policy"] {
            assert_eq!(
                head.headers().get(name),
                headers.get(name),
                "HEAD {path}: {name}"
            );
        }
        assert_eq!(
            head.headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some(body.len().to_string().as_str()),
            "HEAD {path} names the length GET sends"
        );
        let ct = headers["content-type"].to_str().unwrap_or("");
        assert!(ct.starts_with(kind), "{path} is {ct}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert!(
            head.bytes().await.expect("HEAD body").is_empty(),
            "HEAD {path} has a body"
        );
    }
    lb.stop().await;
}

/// Writes `docs/dashboard.png`, the README's picture: a few backends, some traffic, one
/// departure. Run by hand, then shrink it (Debian's pngquant and optipng):
///
/// ```text
/// cargo nextest run --run-ignored only -E 'test(/readme_screenshot/)'
/// pngquant --force --quality 70-95 --output docs/dashboard.png docs/dashboard.png
/// optipng -o5 -strip all docs/dashboard.png
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/dashboard.png; run by hand"]
async fn readme_screenshot() {
    let net = Net::new(161);
    let backends: Vec<Backend> = [10, 11, 12, 13]
        .into_iter()
        .map(|i| webapp(net.addr(i)))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = Balancer::found(&net.config("", ""), &addrs).await;
    let Some(page) = Browser::start("readme", 1000, 720).await else {
        return;
    };
    page.client()
        .goto(&lb.url("/_lb/"))
        .await
        .expect("open the dashboard");
    let crowd = crate::support::users(&lb, 40);
    crate::support::pages(&crowd).await;
    backends[3].kill().await;
    let want: Vec<(SocketAddr, &[&str])> =
        addrs[..3].iter().map(|a| (*a, &["healthy"][..])).collect();
    wait_members(&page, &want).await;
    let load = traffic(&lb, 400);
    eventually(SHOWN_WITHIN, async || {
        let rates = page
            .eval(
                "return [...document.querySelectorAll('#members tbody tr')]\
                 .map(r => r.cells[4].textContent);",
            )
            .await;
        let busy = rates.as_array().into_iter().flatten().filter(|r| {
            r.as_str()
                .and_then(|r| r.parse::<f64>().ok())
                .is_some_and(|r| r > 0.0)
        });
        (busy.count() >= 2)
            .then_some(())
            .ok_or(format!("req/s shows {rates}"))
    })
    .await;
    // The window grown to the page's height, so the picture has all of it.
    let height = page
        .eval("return Math.ceil(document.body.getBoundingClientRect().bottom + 32);")
        .await
        .as_u64()
        .unwrap_or(720);
    let (_, inner) = page.client().get_window_size().await.expect("window size");
    let viewport = page
        .eval("return window.innerHeight;")
        .await
        .as_u64()
        .unwrap_or(inner);
    let chrome = u32::try_from(inner.saturating_sub(viewport)).unwrap_or(0);
    let height = u32::try_from(height).unwrap_or(720);
    page.client()
        .set_window_size(1000, height + chrome)
        .await
        .expect("resize the window");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(path.parent().expect("docs/")).expect("create docs/");
    page.screenshot(&path).await;
    load.abort();
    page.close().await;
    lb.stop().await;
}
