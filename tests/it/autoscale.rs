//! Autoscaling's faults that need no Docker engine: with the engine's socket missing, the
//! balancer says so (log, `/_lb/health`, `/_lb/metrics`), backs off rather than retrying in a
//! tight loop, serves the backends it finds, and holds no request for a start that cannot
//! come. Scaling itself is tested on the real engine (tests/it/docker.rs).

use std::time::{Duration, Instant};

use crate::metrics::{available, promtool, samples, scrape, value};
use crate::support::{Balancer, Net, client, eventually, webapp};

/// The unreachable-engine errors counted so far.
async fn unreachable(lb: &Balancer) -> f64 {
    let text = scrape(lb).await;
    value(
        &samples(&text),
        "sweeplb_autoscale_engine_errors_total",
        &[("kind", "unreachable")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_docker_socket_the_balancer_serves_what_it_finds_and_holds_nothing() {
    let net = Net::new(190);
    let dir = std::env::temp_dir().join(format!("sweeplb-it-autoscale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let socket = dir.join("docker.sock");
    let app = webapp(net.addr(10));
    // A hold far longer than the client's timeout: a request held for it would fail.
    let yaml = net.config(
        "",
        &format!(
            "autoscale:\n  docker: unix://{}\n  service: webapp\n  hold: 60s\n",
            socket.display()
        ),
    );
    let lb = Balancer::found(&yaml, &[app.addr]).await;

    let resp = client().get(lb.url("/")).send().await.expect("GET /");
    assert_eq!(resp.status(), 200, "the backend it found is served");

    let block = eventually(Duration::from_secs(5), async || {
        let (_, health) = lb.health().await;
        let a = health["autoscale"].clone();
        let engine = a["engine"].as_str().unwrap_or_default().to_string();
        if engine.contains("cannot reach the Docker engine") && engine.contains("No such file") {
            Ok(a)
        } else {
            Err(format!("autoscale block: {a}"))
        }
    })
    .await;
    assert_eq!(block["service"], "webapp");
    assert!(block["mode"].is_null(), "{block}");

    // Counted, and backed off: the first retry comes 5 s after the first failure.
    let first = unreachable(&lb).await;
    assert!(first >= 1.0, "unreachable errors: {first}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = unreachable(&lb).await;
    assert!(
        later <= first + 1.0,
        "retried in a loop: {first} then {later} errors within 2 s"
    );
    let text = scrape(&lb).await;
    assert_eq!(
        value(&samples(&text), "sweeplb_autoscale_engine_up", &[]),
        Some(0.0)
    );
    if available("the autoscale metrics check", "promtool") {
        let (ok, said) = promtool(&text);
        assert!(ok, "promtool refused the exposition: {said}");
    }

    // With nothing routed and no engine to start anything, a request is answered 503 at once,
    // not held for `hold`.
    drop(app);
    lb.wait_healthy(&[], Duration::from_secs(5)).await;
    let asked = Instant::now();
    let resp = client()
        .get(lb.url("/"))
        .send()
        .await
        .expect("answered, not held past the client's timeout");
    assert_eq!(resp.status(), 503);
    let (_, health) = lb.health().await;
    assert_eq!(health["autoscale"]["held"], 0, "{}", health["autoscale"]);
    eprintln!("503 with no engine after {:?}", asked.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
