//! `/_lb/metrics`: what a user of Prometheus observes. The exposition passes the real
//! `promtool check metrics` and counts what the test did; a real Prometheus scrapes it; backends
//! that come and go leave nothing behind once `admin.keep_departed` has passed.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package. Without them these
//! tests skip loudly, except under `CI=true`, where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::{
    Balancer, Net, addrs, backend_ip, candidates, client, custom, eventually, get, raw, text,
    webapps,
};

/// One sample of the exposition: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a text exposition (format 0.0.4), comments left out. Label values here
/// are addresses, words and versions: no escapes to undo.
pub(crate) fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("labels end with }");
                    let labels = rest
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_string(),
                labels,
                value,
            }
        })
        .collect()
}

/// The value of the series `name` with exactly `labels` (`pool="default"` is added unless
/// `labels` names a pool or the series is about the process), if it is exported.
pub(crate) fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let process = ["sweeplb_build_info", "sweeplb_config_"];
    if !process.iter().any(|p| name.starts_with(p)) {
        want.entry("pool".into()).or_insert("default".into());
    }
    all.iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// Like [`value`], for a series that must be there.
fn must(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(all, name, labels).unwrap_or_else(|| {
        let near: Vec<_> = all.iter().filter(|s| s.name == name).collect();
        panic!("no {name} {labels:?}; {name} series: {near:?}")
    })
}

/// The exposition as a scraper gets it: checks the status and content type.
pub(crate) async fn scrape(lb: &Balancer) -> String {
    let resp = client()
        .get(lb.url("/_lb/metrics"))
        .send()
        .await
        .expect("GET /_lb/metrics");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    resp.text().await.expect("a text body")
}

/// Whether `program` can run; under `CI=true` a missing one is a failure, not a skip.
pub(crate) fn available(test: &str, program: &str) -> bool {
    match Command::new(program).arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let problem = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI is set and {test} cannot run `{program}`: {problem}");
            }
            eprintln!(
                "\n!!! SKIPPED {test}: cannot run `{program}` ({problem}); install Debian's \
                 `prometheus` package. (With CI=true this is a failure.)\n"
            );
            false
        }
    }
}

/// `promtool check metrics` on `text`: its verdict and what it said.
pub(crate) fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// A backend that answers `GET /health` 200 and `/s/CODE` with that status.
fn statuses(addr: SocketAddr) -> crate::support::Backend {
    custom(addr, |req| async move {
        let path = req.uri().path().to_string();
        let code = path
            .strip_prefix("/s/")
            .and_then(|c| c.parse().ok())
            .unwrap_or(200);
        text(code, "ok")
    })
}

fn class(status: u16) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(status / 100 - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_passes_promtool_and_counts_what_happened() {
    if !available("metrics exposition", "promtool") {
        return;
    }
    let net = Net::new(150);
    // Members are checked every 3 s: a killed backend stays in routing until a real request
    // fails to connect to it, which is the retry this test counts.
    let yaml = format!(
        "discovery:\n  subnets: [{}]\n  port: {}\n  check_interval: 3s\n  sweep_interval: \
         400ms\n  timeout: 150ms\n  rise: 1\n  fall: 2\nbalance:\n  key: header:X-User\n",
        net.subnet(),
        net.port
    );
    let lb = Balancer::start(&yaml).await;

    // The balancer's own answers: no backend yet (503), no Host (400).
    assert_eq!(get(&lb.url("/"), &[]).await.status(), 503);
    let mut raw = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(
        crate::support::read_head(&mut raw)
            .await
            .starts_with("http/1.1 400")
    );

    let backends = [statuses(net.addr(10)), statuses(net.addr(11))];
    let (a, b) = (net.addr(10), net.addr(11));
    lb.wait_healthy(&[a, b], Duration::from_secs(5)).await;

    // Traffic of known statuses; which backend answered each is in its `x-backend-ip`.
    let mut tally: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for i in 0..30u16 {
        let status = [200, 200, 204, 404, 500][usize::from(i % 5)];
        let user = format!("user-{i}");
        let resp = get(&lb.url(&format!("/s/{status}")), &[("x-user", &user)]).await;
        assert_eq!(resp.status(), status);
        *tally.entry((backend_ip(&resp), class(status))).or_default() += 1;
    }

    // A user whose first choice is b, sent right after b died: it cannot connect, and the
    // request goes on to a.
    backends[1].kill().await;
    let user = (0..)
        .map(|i| format!("moved-{i}"))
        .find(|u| candidates(&[a, b], u.as_bytes())[0] == b)
        .expect("some key prefers b");
    let resp = get(&lb.url("/s/200"), &[("x-user", &user)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(backend_ip(&resp), a.ip().to_string());
    *tally.entry((a.ip().to_string(), "2xx")).or_default() += 1;

    // Once the prober has taken b out of routing (the failed connect told it) and a sweep
    // has finished, nothing changes for seconds.
    let text = eventually(Duration::from_secs(5), async || {
        let text = scrape(&lb).await;
        let all = samples(&text);
        let leaving = value(&all, "sweeplb_backends", &[("state", "leaving")]);
        let sweeps = value(&all, "sweeplb_sweeps_total", &[]);
        // The counter is the prober's, the last sweep's gauges come with the next snapshot it
        // publishes (within 200 ms): wait for both.
        let published = value(&all, "sweeplb_last_sweep_addresses", &[]).is_some();
        match (leaving, sweeps) {
            (Some(1.0), Some(n)) if n >= 1.0 && published => Ok(text),
            _ => Err(format!(
                "b is not leaving, or no sweep finished: {leaving:?} {sweeps:?}"
            )),
        }
    })
    .await;
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics failed:\n{said}\n---\n{text}");
    let all = samples(&text);

    for addr in [a, b] {
        let backend = addr.to_string();
        let mut total = 0.0;
        for c in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let want = tally.get(&(addr.ip().to_string(), c)).copied().unwrap_or(0);
            let got = must(
                &all,
                "sweeplb_requests_total",
                &[("backend", &backend), ("class", c)],
            );
            assert_eq!(got, want as f64, "{backend} {c}");
            total += got;
        }
        let hist = [("backend", backend.as_str())];
        let count = must(&all, "sweeplb_request_duration_seconds_count", &hist);
        assert_eq!(count, total, "{backend}: one duration per response");
        let inf = [("backend", backend.as_str()), ("le", "+Inf")];
        assert_eq!(
            must(&all, "sweeplb_request_duration_seconds_bucket", &inf),
            total
        );
        assert!(must(&all, "sweeplb_request_duration_seconds_sum", &hist) > 0.0);
        assert_eq!(must(&all, "sweeplb_requests_in_flight", &hist), 0.0);
        must(&all, "sweeplb_sessions_active", &hist);
    }
    // The balancer's own answers carry no backend.
    for (c, want) in [
        ("1xx", 0.0),
        ("2xx", 0.0),
        ("3xx", 0.0),
        ("4xx", 1.0),
        ("5xx", 1.0),
    ] {
        assert_eq!(
            must(&all, "sweeplb_requests_total", &[("class", c)]),
            want,
            "own {c}"
        );
    }
    assert_eq!(
        must(&all, "sweeplb_request_duration_seconds_count", &[]),
        2.0
    );

    let retried = [("decision", "next_backend"), ("cause", "connect")];
    assert_eq!(must(&all, "sweeplb_retries_total", &retried), 1.0);
    let retries: f64 = all
        .iter()
        .filter(|s| s.name == "sweeplb_retries_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(retries, 1.0, "no other retry happened");

    // The pool as /_lb/health shows it: b is out of routing, leaving.
    let (_, health) = lb.health().await;
    for state in ["joining", "healthy", "draining", "leaving"] {
        let listed = health["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == state)
            .count();
        assert_eq!(
            must(&all, "sweeplb_backends", &[("state", state)]),
            listed as f64,
            "{state}"
        );
    }
    assert_eq!(must(&all, "sweeplb_backends", &[("state", "leaving")]), 1.0);
    assert_eq!(
        must(&all, "sweeplb_backend_joins_total", &[("reason", "found")]),
        2.0
    );
    assert_eq!(
        must(
            &all,
            "sweeplb_backend_leaves_total",
            &[("reason", "refused")]
        ),
        0.0
    );
    let sweep_ok = [("kind", "sweep"), ("result", "ok")];
    assert!(must(&all, "sweeplb_probes_total", &sweep_ok) >= 2.0);
    let refused = [("kind", "sweep"), ("result", "refused")];
    assert!(must(&all, "sweeplb_probes_total", &refused) > 0.0);
    assert!(must(&all, "sweeplb_sweeps_total", &[]) >= 1.0);
    let covered = must(&all, "sweeplb_last_sweep_addresses", &[]);
    assert!(covered >= 250.0, "a /24 less the balancer's own: {covered}");
    must(&all, "sweeplb_last_sweep_duration_seconds", &[]);
    must(&all, "sweeplb_last_sweep_found", &[]);
    assert!(must(&all, "sweeplb_upstream_connections_opened_total", &[]) >= 2.0);
    must(&all, "sweeplb_upstream_requests_reused_total", &[]);
    must(&all, "sweeplb_upstream_connections_idle", &[]);
    must(
        &all,
        "sweeplb_upstream_connections_unexpected_data_total",
        &[],
    );
    must(
        &all,
        "sweeplb_sessions_moved_total",
        &[("reason", "backend_left")],
    );
    must(&all, "sweeplb_bounded_load_diverted_total", &[]);
    for result in ["ok", "invalid", "refused"] {
        let reloads = [("result", result)];
        assert_eq!(must(&all, "sweeplb_config_reloads_total", &reloads), 0.0);
    }
    assert!(
        must(
            &all,
            "sweeplb_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(must(&all, "sweeplb_build_info", &version), 1.0);
    lb.stop().await;
}

/// Kills the Prometheus server and removes its files, however the test ends.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_balancer() {
    if !available("prometheus scrape", "prometheus") {
        return;
    }
    let net = Net::new(151);
    let backends = webapps(&net, &[10]);
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;
    for _ in 0..7 {
        assert_eq!(get(&lb.url("/"), &[]).await.status(), 200);
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!(
        "sweeplb-prometheus-{}-{}",
        std::process::id(),
        port
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: \
         sweeplb\n    metrics_path: /_lb/metrics\n    static_configs:\n      - targets: \
         ['{}']\n",
        lb.addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
    let log = std::fs::File::create(dir.join("log")).expect("a log file");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus { child, dir };

    let backend = backends[0].addr.to_string();
    let query = format!(
        "sweeplb_requests_total{{job=\"sweeplb\",pool=\"default\",backend=\"{backend}\",class=\"2xx\"}}"
    );
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let found = eventually(Duration::from_secs(30), async || {
        let resp = client()
            .get(&url)
            .query(&[("query", query.as_str())])
            .send()
            .await
            .map_err(|e| format!("prometheus API: {e}"))?;
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        let result = &body["data"]["result"];
        match result.as_array().map(Vec::len) {
            Some(1) => Ok(result[0].clone()),
            _ => Err(format!("{query} gave {body}")),
        }
    })
    .await;
    assert_eq!(found["value"][1], "7", "{found}");
    assert_eq!(found["metric"]["instance"], lb.addr.to_string());

    // Every sweeplb series got in under the names the balancer gave them.
    let names: serde_json::Value = client()
        .get(format!(
            "http://127.0.0.1:{port}/api/v1/label/__name__/values"
        ))
        .send()
        .await
        .expect("prometheus API")
        .json()
        .await
        .expect("JSON");
    let names: BTreeSet<&str> = names["data"]
        .as_array()
        .expect("a list of names")
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.starts_with("sweeplb_"))
        .collect();
    let exported: BTreeSet<String> = samples(&scrape(&lb).await)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let exported: BTreeSet<&str> = exported.iter().map(String::as_str).collect();
    assert_eq!(names, exported);
    drop(prometheus);
    lb.stop().await;
}

/// The backends a scrape exports a series for.
fn backends_exported(all: &[Sample]) -> BTreeSet<String> {
    all.iter()
        .filter_map(|s| s.labels.get("backend").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_backends_are_forgotten_after_keep_departed() {
    let net = Net::new(152);
    let keep = Duration::from_secs(3);
    let lb = Balancer::start(&net.config("", "admin:\n  keep_departed: 3s\n")).await;
    // The exposition of an empty pool, once a sweep has finished.
    let baseline = eventually(Duration::from_secs(5), async || {
        let all = samples(&scrape(&lb).await);
        match value(&all, "sweeplb_sweeps_total", &[]) {
            Some(n) if n >= 1.0 => Ok(all.len()),
            _ => Err("no sweep finished yet".to_string()),
        }
    })
    .await;

    // 40 distinct backends, 10 at a time: each wave joins, is scraped, and dies.
    let mut every = BTreeSet::new();
    for wave in 0..4u8 {
        let lasts: Vec<u8> = (0..10).map(|i| 10 + wave * 10 + i).collect();
        let backends = webapps(&net, &lasts);
        lb.wait_healthy(&addrs(&backends), Duration::from_secs(10))
            .await;
        let _ = get(&lb.url("/"), &[]).await;
        let members: BTreeSet<String> = addrs(&backends).iter().map(|a| a.to_string()).collect();
        let seen = backends_exported(&samples(&scrape(&lb).await));
        assert!(seen.is_superset(&members), "wave {wave} exported: {seen:?}");
        for b in &backends {
            b.kill().await;
        }
        lb.wait_healthy(&[], Duration::from_secs(10)).await;
        let left = Instant::now();
        let seen = backends_exported(&samples(&scrape(&lb).await));
        if left.elapsed() < keep {
            assert!(
                seen.is_superset(&members),
                "wave {wave} was forgotten at once: {seen:?}"
            );
        }
        every.extend(members);
    }
    assert_eq!(every.len(), 40);

    let all = eventually(keep * 3, async || {
        let all = samples(&scrape(&lb).await);
        let seen = backends_exported(&all);
        if seen.is_empty() {
            Ok(all)
        } else {
            Err(format!("still exported: {seen:?}"))
        }
    })
    .await;
    assert_eq!(
        all.len(),
        baseline,
        "the exposition is back to an empty pool's"
    );
    assert_eq!(
        must(&all, "sweeplb_backend_joins_total", &[("reason", "found")]),
        40.0
    );
    assert_eq!(
        must(
            &all,
            "sweeplb_backend_leaves_total",
            &[("reason", "refused")]
        ),
        40.0
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_counts_when_its_body_ends() {
    let net = Net::new(154);
    // Sends the head at once and the body when the test says.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = std::sync::Arc::clone(&release);
    let _backend = raw(net.addr(10), move |mut s, _| {
        let go = std::sync::Arc::clone(&go);
        async move {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n";
            if s.write_all(head).await.is_ok() {
                go.notified().await;
                let _ = s.write_all(b"done").await;
            }
        }
    });
    let lb = Balancer::found(&net.config("", ""), &[net.addr(10)]).await;
    let backend = net.addr(10).to_string();
    let this = [("backend", backend.as_str())];
    let ok = [("backend", backend.as_str()), ("class", "2xx")];

    let resp = client()
        .get(lb.url("/"))
        .send()
        .await
        .expect("a response head");
    assert_eq!(resp.status(), 200);
    let all = samples(&scrape(&lb).await);
    assert_eq!(must(&all, "sweeplb_requests_in_flight", &this), 1.0);
    assert_eq!(
        must(&all, "sweeplb_requests_total", &ok),
        0.0,
        "counted at its head"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    release.notify_one();
    assert_eq!(resp.text().await.expect("the body"), "done");
    let all = samples(&scrape(&lb).await);
    assert_eq!(must(&all, "sweeplb_requests_in_flight", &this), 0.0);
    assert_eq!(must(&all, "sweeplb_requests_total", &ok), 1.0);
    let le = |bound| [("backend", backend.as_str()), ("le", bound)];
    // It took at least the 300 ms the body was held back.
    assert_eq!(
        must(&all, "sweeplb_request_duration_seconds_bucket", &le("0.25")),
        0.0
    );
    assert_eq!(
        must(&all, "sweeplb_request_duration_seconds_bucket", &le("+Inf")),
        1.0
    );
    assert!(must(&all, "sweeplb_request_duration_seconds_sum", &this) >= 0.3);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_add_up_under_concurrent_traffic_and_scrapes() {
    if !available("metrics under load", "promtool") {
        return;
    }
    let net = Net::new(155);
    let backends = webapps(&net, &[10, 11]);
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;
    let (clients, each) = (8, 50);

    // Clients with connections of their own, spread over the workers, while scrapes go on.
    let traffic: Vec<_> = (0..clients)
        .map(|_| {
            let url = lb.url("/");
            tokio::spawn(async move {
                let c = client();
                for _ in 0..each {
                    let resp = c.get(&url).send().await.expect("a response");
                    assert_eq!(resp.status(), 200);
                    resp.bytes().await.expect("a body");
                }
            })
        })
        .collect();
    let mut scrapes = Vec::new();
    while !traffic.iter().all(|t| t.is_finished()) {
        scrapes.push(scrape(&lb).await);
    }
    for t in traffic {
        t.await.expect("a client task");
    }
    scrapes.push(scrape(&lb).await);

    let total = |text: &str, name: &str| -> f64 {
        samples(text)
            .iter()
            .filter(|s| s.name == name && s.labels.contains_key("backend"))
            .map(|s| s.value)
            .sum()
    };
    let mut before = 0.0;
    for text in &scrapes {
        let now = total(text, "sweeplb_requests_total");
        assert!(now >= before, "a counter went down: {before} then {now}");
        before = now;
    }
    let last = scrapes.last().expect("a scrape");
    let (ok, said) = promtool(last);
    assert!(ok, "promtool check metrics failed:\n{said}");
    let done = f64::from(clients * each);
    assert_eq!(total(last, "sweeplb_requests_total"), done);
    assert_eq!(total(last, "sweeplb_request_duration_seconds_count"), done);
    assert_eq!(total(last, "sweeplb_requests_in_flight"), 0.0);
    assert!(scrapes.len() >= 2, "scraped while traffic went on");
    lb.stop().await;
}
