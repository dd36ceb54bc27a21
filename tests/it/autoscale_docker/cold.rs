//! c. Scale to zero and back: with `min: 0` and no users no webapp runs, and the next request
//! is held and answered by the container started for it; its latency beside that container's
//! own start-to-healthy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{ConfigFile, FEW_SECONDS, SLACK, Settings, WEBAPP_PORT};
use crate::support::User;
use crate::support::docker::{
    Compose, Lab, container_ip, docker, engine_start, inspect, run, run_async, started_at,
    timestamped_logs,
};

/// c. Scale to zero and back: with `min: 0` (a hot reload) and no users, no webapp runs; the
/// next request is held and answered by the container started for it.
pub(super) async fn scale_to_zero(
    lab: &Compose,
    network: &str,
    lb: &mut Lab,
    s: &Settings,
    config: &mut ConfigFile,
) {
    let reloads = lb
        .health()
        .await
        .map(|h| h.body["reloads"]["ok"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    config.set("min", serde_yaml::Value::from(0u64));
    run(&mut lab.command(&["kill", "-s", "HUP", "balancer"]));
    lb.wait(FEW_SECONDS, "the reload to min 0", |h| {
        h.body["reloads"]["ok"].as_u64() == Some(reloads + 1) && h.autoscale()["min"] == 0
    })
    .await;
    let reloaded = Instant::now();
    let bound = s.down_after + s.session_idle + s.drain_max + SLACK;
    // The pool lets a container go when its stop begins; `docker ps` when it has exited.
    let (h, _) = lb
        .wait(bound, "no webapp running or listed", |h| {
            h.scale("running") + h.scale("starting") + h.scale("draining") + h.scale("stopping")
                == 0
                && h.listed.is_empty()
                && lab.webapps().is_empty()
        })
        .await;
    let to_zero = reloaded.elapsed();
    let desired = h.scale("desired");
    assert_eq!(desired, 0, "{:#}", h.body);

    // One request, while a second look at /_lb/health watches it held.
    let held = Arc::new(AtomicBool::new(false));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (held, sampling) = (Arc::clone(&held), Arc::clone(&sampling));
        let mut watcher = Lab::at(lb.base.clone(), BTreeMap::new());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while sampling.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok(h) = watcher.health().await {
                    if h.scale("held") > 0 {
                        held.store(true, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let sent = SystemTime::now();
    let t = Instant::now();
    let page = User::at(&lb.base).get().await;
    let latency = t.elapsed();
    sampling.store(false, Ordering::SeqCst);
    sampler.await.expect("the health sampler");
    let page = page.unwrap_or_else(|e| panic!("the cold request is answered 200: {e}"));
    let running = lab.webapps();
    assert_eq!(
        running.len(),
        1,
        "one webapp started for the request: {running:?}"
    );
    let id = running[0].clone();
    assert_eq!(
        container_ip(&id, network),
        page.backend,
        "the started container answered"
    );
    let started = started_at(&id);
    assert!(
        started >= sent,
        "the container was started for the request (started {started:?}, request {sent:?})"
    );
    assert!(
        held.load(Ordering::SeqCst),
        "/_lb/health counted the request held"
    );
    let name = inspect(&["container", "inspect", &id])["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    // The controller notes the start at its next tick after the pool routed it.
    let (h, _) = lb
        .wait(
            FEW_SECONDS,
            "last_start naming the started container",
            |h| h.autoscale()["last_start"]["container"] == name.as_str(),
        )
        .await;
    let last_start = h.autoscale()["last_start"].clone();

    // The same container's own start-to-healthy, measured from here: stopped, then started
    // with the engine call the balancer makes, and its /health polled every 5 ms from the
    // moment the call returns. Not before: probing an address whose interface does not exist
    // yet leaves the host's ARP entry unresolved for up to a second after it appears (it read
    // 1.0-1.2 s for a start the webapp's own log put at 0.5 s). Its log's "webapp listening"
    // line, stamped by the engine, is a second measure.
    let old = container_ip(&id, network);
    run_async(docker(&["stop", &id])).await;
    let (t, t_wall) = (Instant::now(), SystemTime::now());
    let status = engine_start(&id).await;
    let call = t.elapsed();
    assert_eq!(status, Ok(204), "POST /containers/{id}/start");
    let addr = container_ip(&id, network);
    let url = format!("http://{addr}:{WEBAPP_PORT}/health");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("a client");
    let healthy = loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{url} healthy within 10 s of the start call"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let log = timestamped_logs(&id, t_wall - Duration::from_secs(1));
    let listening = log
        .lines()
        .filter(|l| l.contains("webapp listening"))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .filter_map(|at| at.duration_since(t_wall).ok())
        .next_back();
    let same = if container_ip(&id, network) == old {
        "the same address"
    } else {
        "another address"
    };
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let added = (latency.as_secs_f64() - healthy.as_secs_f64()) * 1e3;
    eprintln!(
        "[autoscale] scale to zero: reloaded to min 0, no webapp running {to_zero:.1?} later; \
         the next request held and answered 200 by {name} (started for it) in {}; the \
         balancer's last_start {last_start}; the container's own start-to-healthy, from \
         `POST /containers/{{id}}/start` (which returned after {}; {same}) to its /health \
         answering (polled every 5 ms once the call returned): {} (its log says listening \
         at {}); added {added:+.0} ms",
        ms(latency),
        ms(call),
        ms(healthy),
        listening.map_or("?".to_string(), ms),
    );
}
