//! Discovery: the sweep finds backends, joins and leaves follow rise/fall, and only webapps
//! (never the balancer itself, another balancer, or an impostor) join.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::{
    Balancer, CHECK_INTERVAL, Net, RISE, SWEEP_INTERVAL, addrs, client, custom, lab, pages, round,
    tcp, text, users, webapp, webapp_named, webapps,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_every_backend_and_nothing_else() {
    let net = Net::new(1);
    let backends = webapps(&net, &[10, 11, 12]);
    // Decoys where the sweep really probes (in the range, on the port) that answer, but not
    // as a backend: an HTTP server whose every path is 404, and a service that is not HTTP.
    // Each counts the probes it gets, so the test knows the sweep reached it.
    let probed_404 = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&probed_404);
    let not_found = custom(net.addr(13), move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        async { text(404, "no such page") }
    });
    let probed_tcp = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&probed_tcp);
    let not_http = tcp(net.addr(14), move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = s.write_all(b"SSH-2.0-decoy\r\n").await;
        }
    });
    let decoys_up = Instant::now();
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;

    let (status, h) = lb.health().await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["healthy"], 3);
    let sweep = &h["last_sweep"];
    assert_eq!(sweep["addresses"], 254, "{sweep}");
    assert_eq!(sweep["found"], 3, "{sweep}");
    for b in h["backends"].as_array().unwrap() {
        assert_eq!(b["state"], "healthy");
        assert!(b["consecutive_ok"].as_u64().unwrap() >= 2);
        assert!(b["last_check_ms"].as_f64().is_some());
        assert!(b["since"].as_str().unwrap().ends_with('Z'));
    }

    // Long enough for each decoy to be swept and to rise twice over; never listed, not even
    // as joining, at any look.
    let long_enough = (SWEEP_INTERVAL + CHECK_INTERVAL * RISE) * 2;
    let decoys = [not_found.addr.to_string(), not_http.addr.to_string()];
    while decoys_up.elapsed() < long_enough
        || probed_404.load(Ordering::SeqCst) < 2
        || probed_tcp.load(Ordering::SeqCst) < 2
    {
        let listed = lb.listed().await;
        assert!(
            !listed.iter().any(|a| decoys.contains(a)),
            "a decoy is listed: {listed:?}"
        );
        assert!(
            decoys_up.elapsed() < long_enough * 4,
            "the decoys were not probed twice: 404 {probed_404:?}, tcp {probed_tcp:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        lb.healthy().await,
        addrs(&backends)
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_takes_traffic_within_one_sweep_and_rise_checks() {
    let net = Net::new(2);
    let first = webapp(net.addr(10));
    let lb = Balancer::found(&net.config("", ""), &[first.addr]).await;
    let crowd = users(&lb, 40);
    pages(&crowd).await;

    let started = Instant::now();
    let second = webapp(net.addr(11));
    // The spec's bound: sweep_interval + rise x check_interval + 1 s.
    let bound = Duration::from_millis(400 + 2 * 200 + 1000);
    let joined = lb.wait_healthy(&[first.addr, second.addr], bound).await;
    // Pinned users stay where they are; new users are spread over both.
    let newcomers = users(&lb, 40);
    let on_new = pages(&newcomers)
        .await
        .iter()
        .filter(|p| p.backend == net.ip(11))
        .count();
    assert!(on_new > 0, "no new user was routed to the new backend");
    let stayed = pages(&crowd).await;
    assert!(
        stayed
            .iter()
            .all(|p| p.backend == net.ip(10) && p.views == 2),
        "a pinned user moved: {stayed:?}"
    );
    assert!(
        started.elapsed() < bound,
        "joined after {joined:?}, traffic after {:?}",
        started.elapsed()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_leaves_and_no_client_request_fails() {
    let net = Net::new(3);
    let (backends, lb) = lab(&net, &[10, 11, 12], "").await;

    let crowd = users(&lb, 30);
    let before = pages(&crowd).await;
    let victim = &backends[1];
    let victim_ip = victim.addr.ip();
    assert!(
        before.iter().any(|p| p.backend == victim_ip),
        "no client on the victim: {before:?}"
    );

    // Clients keep requesting while the backend dies and while the prober confirms it.
    let deadline = Instant::now() + Duration::from_millis(2 * 200 + 1000);
    victim.kill().await;
    let mut failures = Vec::new();
    let mut last = before.clone();
    let mut rounds = 0;
    while Instant::now() < deadline {
        for (i, page) in round(&crowd).await.into_iter().enumerate() {
            match page {
                Ok(p) => last[i] = p,
                Err(e) => failures.push(e),
            }
        }
        rounds += 1;
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(rounds > 3);
    let left = [backends[0].addr, backends[2].addr];
    lb.wait_healthy(&left, Duration::from_millis(2 * 200 + 1000))
        .await;

    let (_, h) = lb.health().await;
    let gone = &h["recently_left"][0];
    assert_eq!(gone["addr"], victim.addr.to_string());
    assert!(
        gone["reason"].as_str().unwrap().contains("refused"),
        "{gone}"
    );

    // Only the victim's clients moved; everyone else kept counting.
    for (b, a) in before.iter().zip(&last) {
        if b.backend == victim_ip {
            assert_ne!(a.backend, victim_ip);
        } else {
            assert_eq!(a.backend, b.backend);
            assert_eq!(
                a.views,
                b.views + rounds,
                "a client that was not on the victim lost its session"
            );
        }
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_answers_503_at_once() {
    let net = Net::new(4);
    // Waiting for a backend, even for one connect or response timeout, would take seconds.
    let connect = Duration::from_secs(3);
    let lb = Balancer::start(&net.config(
        "",
        &format!(
            "timeouts:\n  connect: {}s\n  response: 5s\n",
            connect.as_secs()
        ),
    ))
    .await;
    let (status, h) = lb.health().await;
    assert_eq!(status, 503);
    assert_eq!(h["healthy"], 0);
    let asked = Instant::now();
    let resp = client().get(lb.url("/")).send().await.unwrap();
    let took = asked.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(
        took < connect / 2,
        "503 after {took:?}: it waited, where it should refuse at once"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no backend is healthy");
    // Still alive, though: a container health check must not restart it for this.
    let live = client().get(lb.url("/_lb/live")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_never_adds_itself_or_another_balancer() {
    let net = Net::new(5);
    let backend = webapp(net.addr(10));
    // This balancer listens inside the swept range on the probed port.
    let cfg = net.config("", "");
    let lb = Balancer::start_on(net.addr(1), &cfg).await;
    // A second balancer in the same range, on the probed port too.
    let other = Balancer::start_on(net.addr(2), &cfg).await;
    lb.wait_healthy(&[backend.addr], Duration::from_secs(5))
        .await;
    other
        .wait_healthy(&[backend.addr], Duration::from_secs(5))
        .await;
    // Several sweeps later neither has taken the other (or itself) in.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, h) = lb.health().await;
    let members: Vec<_> = h["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].clone())
        .collect();
    assert_eq!(members, [serde_json::json!(backend.addr.to_string())]);
    assert_eq!(other.healthy().await, [backend.addr.to_string()]);
    lb.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_status_checks_keep_impostors_out() {
    let net = Net::new(6);
    let real = webapp(net.addr(10));
    let _impostor = webapp_named(net.addr(11), "impostor");
    let _broken = custom(net.addr(12), |_| async {
        text(503, "sweeplb-webapp but down")
    });
    let lb = Balancer::found(
        &net.config("  expect_body: sweeplb-webapp\n", ""),
        &[real.addr],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(lb.healthy().await, [real.addr.to_string()]);
    let (_, h) = lb.health().await;
    assert_eq!(
        h["backends"].as_array().unwrap().len(),
        1,
        "impostors must not even be joining: {h}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_leaves_after_fall_checks_and_rejoins_after_rise() {
    let net = Net::new(7);
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = healthy.clone();
    let backend = custom(net.addr(10), move |req| {
        let flag = flag.clone();
        async move {
            if req.uri().path() == "/health" && !flag.load(std::sync::atomic::Ordering::Relaxed) {
                text(503, "down")
            } else {
                text(200, "ok")
            }
        }
    });
    let lb = Balancer::found(&net.config("", ""), &[backend.addr]).await;
    healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    lb.wait_healthy(&[], Duration::from_secs(3)).await;
    let (status, h) = lb.health().await;
    assert_eq!(status, 503);
    assert_eq!(h["recently_left"][0]["reason"], "status 503");
    healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    lb.wait_healthy(&[backend.addr], Duration::from_secs(3))
        .await;
    lb.stop().await;
}
