//! Stickiness: a user stays on one backend while it lives; when the pool changes only the
//! users who must move are moved; every key mode routes consistently.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{Balancer, Net, addrs, client, lab, round, users, webapp, webapps};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_keeps_its_backend_and_users_spread() {
    let net = Net::new(20);
    let (_backends, lb) = lab(&net, &[10, 11, 12], "").await;

    let crowd = users(&lb, 50).await;
    let first: Vec<_> = round(&crowd)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for n in 2..=5u64 {
        for (page, start) in round(&crowd)
            .await
            .into_iter()
            .map(Result::unwrap)
            .zip(&first)
        {
            assert_eq!(page.backend, start.backend, "a user changed backend");
            assert_eq!(page.views, n, "a user's session was reset");
        }
    }
    let spread: BTreeSet<_> = first.iter().map(|p| p.backend.clone()).collect();
    assert_eq!(
        spread.len(),
        3,
        "50 users should reach all 3 backends: {spread:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_moves_only_users_that_now_hash_to_the_new_backend() {
    let net = Net::new(21);
    let (mut backends, lb) = lab(&net, &[10, 11, 12], "").await;
    let crowd = users(&lb, 60).await;
    let before: Vec<_> = round(&crowd)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    backends.push(webapp(net.addr(13)));
    lb.wait_healthy(&addrs(&backends), Duration::from_secs(5))
        .await;
    let after: Vec<_> = round(&crowd)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let new_ip = net.ip(13).to_string();
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if a.backend == b.backend {
            assert_eq!(a.views, 2, "a user who did not move lost its session");
        } else {
            assert_eq!(a.backend, new_ip, "a user moved between two old backends");
            assert_eq!(a.views, 1);
            moved += 1;
        }
    }
    assert!(
        moved > 0 && moved < 60,
        "{moved} of 60 moved to the new backend"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_set_on_the_first_response_and_honoured_after() {
    let net = Net::new(22);
    let (_backends, lb) = lab(&net, &[10, 11, 12], "").await;

    let resp = client().get(lb.url("/")).send().await.unwrap();
    let first = resp.headers()["x-backend-ip"].to_str().unwrap().to_string();
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let ours = cookies
        .iter()
        .find(|c| c.starts_with("sweeplb="))
        .expect("Set-Cookie: sweeplb=");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(ours.contains(attr), "{ours} lacks {attr}");
    }
    let value = ours.split(';').next().unwrap();
    for _ in 0..10 {
        let resp = client()
            .get(lb.url("/"))
            .header("cookie", value)
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers()
                .get("set-cookie")
                .is_none_or(|c| !c.to_str().unwrap().starts_with("sweeplb="))
        );
        assert_eq!(resp.headers()["x-backend-ip"], first.as_str());
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_client_ip_keys_route_consistently() {
    let net = Net::new(23);
    let backends = webapps(&net, &[10, 11, 12, 13]);
    let addrs = addrs(&backends);

    let lb = Balancer::start(&net.config("", "balance:\n  key: header:X-User\n")).await;
    lb.wait_healthy(&addrs, Duration::from_secs(5)).await;
    let mut placement = BTreeMap::new();
    for user in 0..40 {
        for _ in 0..3 {
            let resp = client()
                .get(lb.url("/"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            assert!(
                resp.headers()
                    .get("set-cookie")
                    .is_none_or(|c| !c.to_str().unwrap().starts_with("sweeplb="))
            );
            let ip = resp.headers()["x-backend-ip"].to_str().unwrap().to_string();
            assert_eq!(
                placement.entry(user).or_insert_with(|| ip.clone()),
                &ip,
                "user-{user} moved"
            );
        }
    }
    let spread: BTreeSet<_> = placement.values().collect();
    assert!(
        spread.len() >= 3,
        "40 header keys over 4 backends reached only {spread:?}"
    );
    lb.stop().await;

    let lb = Balancer::start(&net.config("", "balance:\n  key: client_ip\n")).await;
    lb.wait_healthy(&addrs, Duration::from_secs(5)).await;
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        // A client-supplied X-Forwarded-For must not steer the hash.
        let resp = client()
            .get(lb.url("/"))
            .header("x-forwarded-for", format!("127.1.2.{}", fastrand::u8(..)))
            .send()
            .await
            .unwrap();
        seen.insert(resp.headers()["x-backend-ip"].to_str().unwrap().to_string());
    }
    assert_eq!(
        seen.len(),
        1,
        "one client IP must map to one backend: {seen:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_route_a_cookie_to_the_same_backend() {
    let net = Net::new(24);
    let backends = webapps(&net, &[10, 11, 12, 13, 14]);
    let addrs = addrs(&backends);
    let a = Balancer::start(&net.config("", "")).await;
    let b = Balancer::start(&net.config("", "")).await;
    a.wait_healthy(&addrs, Duration::from_secs(5)).await;
    b.wait_healthy(&addrs, Duration::from_secs(5)).await;
    for i in 0..30 {
        let cookie = format!("sweeplb=user-{i}");
        let via_a = client()
            .get(a.url("/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let via_b = client()
            .get(b.url("/"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(
            via_a.headers()["x-backend-ip"],
            via_b.headers()["x-backend-ip"],
            "{cookie}"
        );
    }
    a.stop().await;
    b.stop().await;
}
