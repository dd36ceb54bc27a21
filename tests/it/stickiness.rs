//! Stickiness: a user stays on one backend while it lives; when the pool changes only the
//! users who must move are moved; every key mode routes consistently.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{
    Balancer, Net, addrs, backend_ip, candidates, client, get, lab, pages, users, webapp, webapps,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_keeps_its_backend_and_users_spread() {
    let net = Net::new(20);
    let (_backends, lb) = lab(&net, &[10, 11, 12], "").await;

    let crowd = users(&lb, 50);
    let first = pages(&crowd).await;
    for n in 2..=5u64 {
        for (page, start) in pages(&crowd).await.into_iter().zip(&first) {
            assert_eq!(page.backend, start.backend, "a user changed backend");
            assert_eq!(page.views, n, "a user's session was reset");
        }
    }
    let spread: BTreeSet<_> = first.iter().map(|p| p.backend).collect();
    assert_eq!(
        spread.len(),
        3,
        "50 users should reach all 3 backends: {spread:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_moves_no_pinned_user() {
    let net = Net::new(21);
    let (mut backends, lb) = lab(&net, &[10, 11, 12], "").await;
    let crowd = users(&lb, 60);
    let before = pages(&crowd).await;

    backends.push(webapp(net.addr(13)));
    lb.wait_healthy(&addrs(&backends), Duration::from_secs(5))
        .await;
    let after = pages(&crowd).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.backend, b.backend, "a pinned user moved");
        assert_eq!(a.views, 2, "a user lost its session");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_set_on_the_first_response_and_honoured_after() {
    let net = Net::new(22);
    let (_backends, lb) = lab(&net, &[10, 11, 12], "").await;

    let resp = client().get(lb.url("/")).send().await.unwrap();
    let first = backend_ip(&resp);
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
        let resp = get(&lb.url("/"), &[("cookie", value)]).await;
        assert!(
            resp.headers()
                .get("set-cookie")
                .is_none_or(|c| !c.to_str().unwrap().starts_with("sweeplb="))
        );
        assert_eq!(backend_ip(&resp), first);
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_client_ip_keys_route_consistently() {
    let net = Net::new(23);
    let backends = webapps(&net, &[10, 11, 12, 13]);
    let addrs = addrs(&backends);

    let lb = Balancer::found(&net.config("", "balance:\n  key: header:X-User\n"), &addrs).await;
    let mut placement = BTreeMap::new();
    for user in 0..40 {
        for _ in 0..3 {
            let resp = get(&lb.url("/"), &[("x-user", format!("user-{user}").as_str())]).await;
            assert!(
                resp.headers()
                    .get("set-cookie")
                    .is_none_or(|c| !c.to_str().unwrap().starts_with("sweeplb="))
            );
            let ip = backend_ip(&resp);
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

    // Each client connects from a source address of its own; the ring says where each IP
    // belongs, and a client-supplied X-Forwarded-For must not steer it.
    let lb = Balancer::found(&net.config("", "balance:\n  key: client_ip\n"), &addrs).await;
    let mut placement = BTreeMap::new();
    for last in 100..140 {
        let ip = net.ip(last);
        let std::net::IpAddr::V4(v4) = ip else {
            unreachable!("Net is IPv4")
        };
        let home = candidates(&addrs, &v4.octets())[0].ip();
        let from = reqwest::Client::builder()
            .no_proxy()
            .local_address(ip)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for _ in 0..3 {
            let resp = from
                .get(lb.url("/"))
                .header("x-forwarded-for", format!("127.1.2.{}", fastrand::u8(..)))
                .send()
                .await
                .unwrap();
            assert_eq!(backend_ip(&resp), home.to_string(), "client {ip}");
        }
        placement.insert(ip, home);
    }
    let spread: BTreeSet<_> = placement.values().collect();
    assert!(
        spread.len() > 1,
        "40 client IPs over 4 backends reached only {spread:?}"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_balancers_route_a_cookie_to_the_same_backend() {
    let net = Net::new(24);
    let backends = webapps(&net, &[10, 11, 12, 13, 14]);
    let addrs = addrs(&backends);
    let a = Balancer::found(&net.config("", ""), &addrs).await;
    let b = Balancer::found(&net.config("", ""), &addrs).await;
    for i in 0..30 {
        let cookie = format!("sweeplb=user-{i}");
        let via_a = get(&a.url("/"), &[("cookie", cookie.as_str())]).await;
        let via_b = get(&b.url("/"), &[("cookie", cookie.as_str())]).await;
        assert_eq!(backend_ip(&via_a), backend_ip(&via_b), "{cookie}");
    }
    a.stop().await;
    b.stop().await;
}
