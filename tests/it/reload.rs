//! Hot reload: a new config swapped in under load moves no user and fails no request; a
//! removed range's members leave and the kept ones keep their standing; the changes a reload
//! cannot make are refused whole; and the binary reloads on `sweeplb reload --pid-file`.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use tokio::io::AsyncWriteExt;

use crate::admin::get_from;
use crate::support::{
    Balancer, Net, Request, User, addrs, client, custom, eventually, lab, pages, read_response,
    text, users, webapp, webapps,
};

/// A config file of this test process, named `name`.
fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sweeplb-it-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn parse(yaml: &str) -> sweeplb::Config {
    sweeplb::config::parse(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

/// `reloads` of `/_lb/health`: ok, invalid, refused.
fn reloads(h: &Value) -> (u64, u64, u64) {
    let r = &h["reloads"];
    let n = |k: &str| {
        r[k].as_u64()
            .unwrap_or_else(|| panic!("no reloads.{k} in {h}"))
    };
    (n("ok"), n("invalid"), n("refused"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request_and_move_no_user() {
    let net = Net::new(174);
    // A: the lab's settings. B: other live keys everywhere, and an extra range with nothing
    // in it (127.77.173.0/28: the admin test that uses net 173 binds only .252).
    let a = net.config(
        "",
        "balance:\n  session_idle: 2m\ntimeouts:\n  response: 10s\n",
    );
    let b = net
        .config(
            "",
            "balance:\n  session_idle: 90s\n  bounded_load: 1.5\n\
             timeouts:\n  response: 20s\n  idle: 30s\n  connect: 2s\n",
        )
        .replace(
            &format!("subnets: [{}]", net.subnet()),
            &format!("subnets: [{}, 127.77.173.0/28]", net.subnet()),
        )
        .replace("check_interval: 200ms", "check_interval: 300ms");
    let invalid = a.replace(
        "session_idle: 2m\n",
        "session_idle: 2m\n  bounded_load: 0.5\n",
    );
    let invalid = write("invalid-174.yaml", &invalid);
    let (a, b) = (write("a-174.yaml", &a), write("b-174.yaml", &b));
    let (backends, lb) = lab(&net, &[10, 11, 12], "balance:\n  session_idle: 2m\n").await;

    let crowd = users(&lb, 20);
    let first = pages(&crowd).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Each user keeps asking, one request at a time, until the reloads are done: bounded by
    // CAP requests each and 30 s.
    const CAP: u64 = 5000;
    let load = crowd.into_iter().zip(first.clone()).map(|(user, start)| {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut views = start.views;
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) && served < CAP && Instant::now() < deadline {
                let page = user.get().await?;
                if page.backend != start.backend {
                    return Err(format!("moved from {} to {}", start.backend, page.backend));
                }
                if page.views != views + 1 {
                    return Err(format!("session views {} after {views}", page.views));
                }
                views = page.views;
                served += 1;
            }
            Ok::<u64, String>(served)
        })
    });
    let load: Vec<_> = load.collect();

    let mut expected = (0, 0);
    for i in 0..20 {
        let (path, want) = match i % 3 {
            0 => (&b, "ok"),
            1 => (&a, "ok"),
            _ => (&invalid, "invalid"),
        };
        let outcome = lb.reload.file(path).await;
        assert_eq!(outcome.result(), want, "reload {i}: {outcome:?}");
        match want {
            "ok" => expected.0 += 1,
            _ => expected.1 += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for user in load {
        let n = user
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a user's request: {e}"));
        assert!(n < CAP, "a user stopped before the reloads were done");
        served += n;
    }
    assert!(served >= 20, "the load loop hardly ran: {served} requests");

    let (status, h) = lb.health().await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(lb.moved_total().await, 0, "sessions moved: {h}");
    assert_eq!(reloads(&h), (expected.0, expected.1, 0), "{}", h["reloads"]);
    // The last one went from B back to A: it names what changed.
    let detail = h["reloads"]["last"]["detail"].to_string();
    assert!(detail.contains("balance.bounded_load"), "{detail}");
    assert!(detail.contains("discovery.subnets"), "{detail}");
    // Prometheus sees the same counts.
    let metrics = reqwest::get(lb.url("/_lb/metrics"))
        .await
        .expect("GET /_lb/metrics")
        .text()
        .await
        .expect("the exposition");
    for (result, n) in [("ok", expected.0), ("invalid", expected.1), ("refused", 0)] {
        let line = format!("sweeplb_config_reloads_total{{result=\"{result}\"}} {n}");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing from:\n{metrics}"
        );
    }
    assert_eq!(
        lb.healthy().await.len(),
        backends.len(),
        "a member was lost: {h}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_range_loses_its_members_and_a_kept_one_keeps_their_standing() {
    let kept = Net::new(176);
    // One port for the three ranges, as one `discovery.port` sweeps them all.
    let removed = Net {
        n: 177,
        port: kept.port,
    };
    let added = Net {
        n: 178,
        port: kept.port,
    };
    let with = |nets: &[&Net]| {
        let list: Vec<String> = nets.iter().map(|n| n.subnet()).collect();
        kept.config("", "").replace(
            &format!("subnets: [{}]", kept.subnet()),
            &format!("subnets: [{}]", list.join(", ")),
        )
    };
    let (stays, goes, joins) = (
        webapp(kept.addr(10)),
        webapp(removed.addr(10)),
        webapp(added.addr(10)),
    );
    let lb = Balancer::found(&with(&[&kept, &removed]), &[stays.addr, goes.addr]).await;
    // `since` is shown to the second: a reload in a later second than the join tells a
    // member that rose again from one that did not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = lb.member(stays.addr).await;
    let user = User::new(&lb);
    let page = user.get().await.unwrap();

    let outcome = lb.reload.apply(parse(&with(&[&kept, &added]))).await;
    assert_eq!(outcome.result(), "ok", "{outcome:?}");
    lb.wait_healthy(&[stays.addr, joins.addr], Duration::from_secs(5))
        .await;
    let (_, h) = lb.health().await;
    let left = h["recently_left"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["addr"] == goes.addr.to_string())
        .unwrap_or_else(|| panic!("{} did not leave: {h}", goes.addr));
    assert_eq!(left["reason"], "range removed from config", "{left}");
    let departed: Vec<&Value> = h["recently_left"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        departed.len(),
        1,
        "only the removed range's member left: {h}"
    );
    let after = lb.member(stays.addr).await;
    assert_eq!(after["state"], "healthy", "{after}");
    assert_eq!(
        after["since"], before["since"],
        "the kept member rose again"
    );
    assert!(
        after["consecutive_ok"].as_u64() >= before["consecutive_ok"].as_u64(),
        "its checks started over: {before} then {after}"
    );
    // A user of the kept member stays; one of the removed member moves, counted.
    if page.backend == stays.addr.ip() {
        assert_eq!(user.get().await.unwrap().backend, page.backend);
    } else {
        assert_ne!(user.get().await.unwrap().backend, page.backend);
        assert_eq!(lb.moved_total().await, 1);
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_move_every_user_or_rebind_is_refused_whole() {
    let net = Net::new(179);
    let secret = "balance:\n  pin_secret: the-first-secret-of-this-test\n";
    let (_backends, lb) = lab(&net, &[10, 11, 12], secret).await;
    let crowd = users(&lb, 12);
    let first = pages(&crowd).await;

    // Each refused config also narrows admin.allow: had any of it been applied, this client
    // (127.0.0.1) would be refused /_lb/health.
    let narrow = "admin:\n  allow: [127.0.0.2/32]\n";
    let new_secret = net.config(
        "",
        &format!("balance:\n  pin_secret: another-secret-of-this-test\n{narrow}"),
    );
    let new_listen = net.config("", &format!("listen: 127.0.0.1:1\n{secret}{narrow}"));
    let new_admin = net.config("", &format!("{secret}admin:\n  listen: 127.0.0.1:1\n"));
    for (yaml, key) in [
        (new_secret, "balance.pin_secret"),
        (new_listen, "listen"),
        (new_admin, "admin.listen"),
    ] {
        match lb.reload.apply(parse(&yaml)).await {
            sweeplb::reload::Outcome::Refused(why) => {
                assert_eq!(why.len(), 1, "{why:?}");
                assert!(why[0].starts_with(&format!("{key}: ")), "{why:?}");
                assert!(
                    why[0].contains("restart"),
                    "the message says what to do: {why:?}"
                );
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    let (status, h) = lb.health().await;
    assert_eq!(status, 200, "the narrowed admin.allow was applied: {h}");
    assert_eq!(reloads(&h), (0, 0, 3), "{}", h["reloads"]);
    assert_eq!(h["reloads"]["last"]["result"], "refused");
    for (page, start) in pages(&crowd).await.into_iter().zip(&first) {
        assert_eq!(page.backend, start.backend, "a user moved");
        assert_eq!(page.views, 2, "a user lost their session");
    }
    assert_eq!(lb.moved_total().await, 0);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_allow_timeouts_and_the_head_cap_change_with_a_reload() {
    let net = Net::new(171);
    let backend = custom(net.addr(10), |req: Request| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        text(200, "ok")
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    let outside = net.ip(200);
    let big = format!("x-big: {}", "a".repeat(4000));
    let head = async |path: &str, extra: &str| -> u16 {
        let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n{extra}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_response(&mut s).await;
        head[9..12].parse().unwrap_or_else(|_| panic!("{head}"))
    };
    // The defaults: everyone reads /_lb/health, a 4 KB head and a 1.5 s answer pass.
    assert_eq!(get_from(outside, lb.addr, "/_lb/health").await.0, 200);
    assert_eq!(head("/", &big).await, 200);
    assert_eq!(head("/slow", "x-a: b").await, 200);

    let narrow = net.config(
        "",
        "admin:\n  allow: [127.0.0.1/32]\ntimeouts:\n  response: 300ms\n\
         limits:\n  max_request_head: 2048\n",
    );
    let outcome = lb.reload.apply(parse(&narrow)).await;
    assert_eq!(outcome.result(), "ok", "{outcome:?}");
    assert_eq!(get_from(outside, lb.addr, "/_lb/health").await.0, 403);
    assert_eq!(get_from(outside, lb.addr, "/_lb/live").await.0, 200);
    assert_eq!(
        head("/", &big).await,
        431,
        "the head cap of a new connection"
    );
    assert_eq!(head("/slow", "x-a: b").await, 504, "the response timeout");
    lb.stop().await;
}

/// The binary's stderr, collected as it runs.
struct Running {
    child: std::process::Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sweeplb_reload_and_keeps_serving_on_an_invalid_file() {
    let net = Net::new(175);
    // Two ranges of one /24: the second one's backend joins when the reload adds it. The
    // balancer listens on .250 at the net's port, which `Net::new` found free there.
    let listen = net.addr(250);
    let config = |ranges: &str, extra: &str| {
        net.config(extra, "")
            .replace(&format!("subnets: [{}]", net.subnet()), ranges)
            .replacen("discovery:", &format!("listen: {listen}\ndiscovery:"), 1)
    };
    let first = format!("subnets: [127.77.{}.0/28]", net.n);
    let both = format!("subnets: [127.77.{0}.0/28, 127.77.{0}.32/28]", net.n);
    let backends = webapps(&net, &[10, 40]);
    let path = write("binary-175.yaml", &config(&first, ""));
    let pid_file = std::env::temp_dir().join(format!("sweeplb-it-{}.pid", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);

    let mut child = Command::new(env!("CARGO_BIN_EXE_sweeplb"))
        .args(["--config", path.to_str().unwrap()])
        .args(["--pid-file", pid_file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sweeplb");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let lb = Running { child, stderr };
    let health = async || -> Result<Value, String> {
        let resp = client()
            .get(format!("http://{listen}/_lb/health"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.json().await.map_err(|e| e.to_string())
    };
    let routed = async |want: &[SocketAddr]| {
        let want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
        eventually(Duration::from_secs(10), async || {
            let h = health().await?;
            let mut got: Vec<String> = h["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["state"] == "healthy")
                .filter_map(|b| b["addr"].as_str().map(str::to_string))
                .collect();
            got.sort();
            if got == want {
                Ok(h)
            } else {
                Err(format!("routed {got:?}, wanted {want:?}"))
            }
        })
        .await
    };
    routed(&addrs(&backends[..1])).await;
    assert!(pid_file.exists(), "no pid file: {}", lb.stderr());

    let reload = || {
        let out = Command::new(env!("CARGO_BIN_EXE_sweeplb"))
            .args(["reload", "--pid-file", pid_file.to_str().unwrap()])
            .output()
            .expect("run sweeplb reload");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(&path, config(&both, "")).unwrap();
    reload();
    let h = routed(&addrs(&backends)).await;
    assert_eq!(reloads(&h), (1, 0, 0), "{}", h["reloads"]);

    std::fs::write(&path, config(&both, "").replace("rise: 2", "rise: 0")).unwrap();
    reload();
    eventually(Duration::from_secs(10), async || {
        let h = health().await?;
        match reloads(&h) {
            (1, 1, 0) => Ok(()),
            other => Err(format!("reloads {other:?}")),
        }
    })
    .await;
    let err = lb.stderr();
    assert!(err.contains("discovery.rise: 0 is out of range"), "{err}");
    // Still serving, on the config it had.
    let resp = client()
        .get(format!("http://{listen}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    routed(&addrs(&backends)).await;

    // SIGTERM: it stops and takes its pid file with it.
    let pid = nix::unistd::Pid::from_raw(lb.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut lb = lb;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lb.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lb.child.try_wait().unwrap().is_some(), "still running");
    assert!(!pid_file.exists(), "the pid file was left behind");
}
