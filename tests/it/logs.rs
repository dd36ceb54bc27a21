//! Logs: the real binary's stderr with `log.format` and `log.access`: JSON lines with their
//! stable fields, one access line per request with what happened to it, none when it is off.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::support::{
    Net, backend_ip, client, custom, eventually, read_head, read_response, webapps,
};

/// The `sweeplb` binary balancing `net`, its stderr collected line by line.
struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    /// The config file it runs with.
    config: std::path::PathBuf,
}

impl Process {
    /// Starts the binary on `net.config` plus `rest`, listening on `127.77.N.1`.
    fn start(net: &Net, rest: &str) -> Process {
        let addr = SocketAddr::new(net.ip(1), net.port);
        let yaml = format!("listen: {addr}\n{}", net.config("", rest));
        let dir = std::env::temp_dir().join(format!("sweeplb-it-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("net{}.yaml", net.n));
        std::fs::write(&path, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sweeplb"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sweeplb");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            child,
            lines,
            addr,
            config: path,
        }
    }

    /// Rewrites its config file with `rest` in place of the start's, and sends SIGHUP.
    fn reload(&self, net: &Net, rest: &str) {
        let yaml = format!("listen: {}\n{}", self.addr, net.config("", rest));
        std::fs::write(&self.config, yaml).unwrap();
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until the balancer routes to exactly `want`.
    async fn wait_routed(&self, want: &[SocketAddr]) {
        let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
        want.sort();
        let url = self.url("/_lb/health");
        eventually(Duration::from_secs(10), async || {
            let health: Value = client()
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let mut routed: Vec<String> = health["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["state"] != "joining" && b["routed"] == true)
                .filter_map(|b| b["addr"].as_str().map(str::to_string))
                .collect();
            routed.sort();
            if routed == want {
                Ok(())
            } else {
                Err(format!("routed {routed:?}, wanted {want:?}"))
            }
        })
        .await;
    }

    /// SIGTERM, then every line it wrote up to its exit.
    fn stop(mut self) -> Vec<String> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sweeplb exited with {status}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sweeplb still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The reader thread takes the last lines off the pipe after the exit.
        std::thread::sleep(Duration::from_millis(200));
        self.lines()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The access lines among `lines`, parsed.
fn access_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "sweeplb::access")
        .collect()
}

/// Waits until `p` has written `n` access lines, and returns the last.
async fn access_line(p: &Process, n: usize) -> Value {
    eventually(Duration::from_secs(5), async || {
        let lines = access_lines(&p.lines());
        match lines.len() {
            len if len == n => Ok(lines[n - 1].clone()),
            len => Err(format!("{len} access lines, wanted {n}: {lines:?}")),
        }
    })
    .await
}

/// Checks an access line's fields against what the client saw.
fn assert_access(
    line: &Value,
    path: &str,
    status: u16,
    backend: &str,
    bytes: usize,
    session: &str,
) {
    let want = [
        ("method", Value::from("GET")),
        ("path", Value::from(path)),
        ("status", Value::from(status)),
        ("backend", Value::from(backend)),
        ("bytes", Value::from(bytes)),
        ("session", Value::from(session)),
        ("level", Value::from("INFO")),
    ];
    for (field, value) in want {
        assert_eq!(line[field], value, "{field} in {line}");
    }
    let client: SocketAddr = line["client"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("client is no ip:port in {line}"));
    assert!(client.ip().is_loopback(), "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "duration_ms in {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_say_what_each_request_got() {
    let net = Net::new(180);
    let backends = webapps(&net, &[10, 11]);
    let lb = Process::start(&net, "log:\n  format: json\n  access: true\n");
    lb.wait_routed(&[net.addr(10), net.addr(11)]).await;
    // A browser-like user: it keeps the cookies it is given.
    let user = reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = async |path: &str| user.get(lb.url(path)).send().await.unwrap();
    let backend_of = |ip: &str| SocketAddr::new(ip.parse().unwrap(), net.port).to_string();

    // A new user, then the same user with the cookie it was given.
    let mut seen = 0;
    let mut first = String::new();
    for (path, session) in [("/", "new"), ("/", "pinned")] {
        let resp = get(path).await;
        let (status, ip) = (resp.status().as_u16(), backend_ip(&resp));
        let body = resp.bytes().await.unwrap();
        seen += 1;
        let line = access_line(&lb, seen).await;
        assert_access(&line, path, status, &backend_of(&ip), body.len(), session);
        first = backend_of(&ip);
    }
    // The query string stays out of the log, and so does the cookie.
    let resp = get("/missing?token=s3cr3t").await;
    let ip = backend_ip(&resp);
    let body = resp.bytes().await.unwrap();
    seen += 1;
    let line = access_line(&lb, seen).await;
    assert_access(
        &line,
        "/missing",
        404,
        &backend_of(&ip),
        body.len(),
        "pinned",
    );

    // Its backend leaves: the user is moved to the other one.
    let (gone, stays) = if first == net.addr(10).to_string() {
        (&backends[0], net.addr(11))
    } else {
        (&backends[1], net.addr(10))
    };
    gone.kill().await;
    lb.wait_routed(&[stays]).await;
    let resp = get("/").await;
    let body = resp.bytes().await.unwrap();
    seen += 1;
    let line = access_line(&lb, seen).await;
    assert_access(&line, "/", 200, &stays.to_string(), body.len(), "moved");

    // Answers of the balancer's own: a request without Host, and no backend left.
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /nohost HTTP/1.1\r\n\r\n").await.unwrap();
    let head = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    seen += 1;
    let line = access_line(&lb, seen).await;
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["backend"], "-", "{line}");
    assert_eq!(line["session"], "-", "{line}");
    assert_eq!(line["path"], "/nohost", "{line}");

    for b in &backends {
        b.kill().await;
    }
    lb.wait_routed(&[]).await;
    let resp = client().get(lb.url("/empty")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.bytes().await.unwrap();
    seen += 1;
    let line = access_line(&lb, seen).await;
    assert_access(&line, "/empty", 503, "-", body.len(), "-");

    let lines = lb.stop();
    // The admin requests of the waits above are not logged.
    assert_eq!(access_lines(&lines).len(), seen, "{lines:#?}");
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v[field].is_string(), "no {field} in {line}");
        }
        assert!(
            !line.contains("s3cr3t"),
            "the query string was logged: {line}"
        );
        assert!(!line.contains("sweeplb="), "a cookie was logged: {line}");
    }
    // Written out at exit: the last line is the last event.
    let last: Value = serde_json::from_str(lines.last().expect("lines")).unwrap();
    assert_eq!(last["message"], "stopped", "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_access_lines_when_access_is_off_and_text_by_default() {
    let net = Net::new(181);
    let _backends = webapps(&net, &[10]);
    let lb = Process::start(&net, "log:\n  access: false\n");
    lb.wait_routed(&[net.addr(10)]).await;
    for _ in 0..3 {
        let resp = client().get(lb.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let lines = lb.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("listening")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(|l| l.ends_with("stopped")),
        Some(true),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line in the text log: {line}"
        );
        assert!(!line.contains("sweeplb::access"), "an access line: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_still_gets_its_access_line() {
    let net = Net::new(182);
    // Far more than the sockets between the backend and the client can buffer: the response
    // cannot be over when the client leaves.
    const LEN: usize = 64 << 20;
    let body = bytes::Bytes::from(vec![b'x'; LEN]);
    let _backend = custom(net.addr(10), move |_| {
        let body = body.clone();
        async move { http::Response::new(http_body_util::Full::new(body)) }
    });
    let lb = Process::start(&net, "log:\n  format: json\n  access: true\n");
    lb.wait_routed(&[net.addr(10)]).await;

    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    drop(s);

    let line = access_line(&lb, 1).await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["backend"], net.addr(10).to_string(), "{line}");
    let bytes = line["bytes"].as_u64().expect("bytes");
    assert!(bytes < LEN as u64, "the whole body counted as sent: {line}");
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_is_logged_499() {
    let net = Net::new(183);
    let _backend = custom(net.addr(10), |req: crate::support::Request| async move {
        if req.uri().path() != "/health" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        crate::support::text(200, "late")
    });
    let lb = Process::start(&net, "log:\n  format: json\n  access: true\n");
    lb.wait_routed(&[net.addr(10)]).await;

    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);

    let line = access_line(&lb, 1).await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["path"], "/slow", "{line}");
    assert_eq!(line["bytes"], 0, "{line}");
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_the_format_and_the_access_log_live() {
    let net = Net::new(184);
    let _backends = webapps(&net, &[10]);
    let lb = Process::start(&net, "log:\n  format: text\n  access: false\n");
    lb.wait_routed(&[net.addr(10)]).await;
    // The webapp answers 404 on other paths: which is as good a request as any here.
    let resp = client().get(lb.url("/before")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    lb.reload(&net, "log:\n  format: json\n  access: true\n");
    // The reload's own line is the last text line; from then on every request has a JSON
    // access line.
    eventually(Duration::from_secs(10), async || {
        let resp = client()
            .get(lb.url("/after"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let _ = resp.bytes().await;
        match access_lines(&lb.lines()).last() {
            Some(line) if line["path"] == "/after" => Ok(()),
            _ => Err(format!("no JSON access line yet: {:#?}", lb.lines())),
        }
    })
    .await;
    let lines = lb.stop();
    let first_json = lines
        .iter()
        .position(|l| serde_json::from_str::<Value>(l).is_ok())
        .expect("JSON lines after the reload");
    assert!(
        first_json > 0,
        "the log was JSON from the start: {lines:#?}"
    );
    for line in &lines[..first_json] {
        assert!(
            !line.contains("/before"),
            "an access line before the reload: {line}"
        );
    }
    for line in &lines[first_json..] {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "a text line after the switch: {line}"
        );
    }
}
