//! The demo webapp's `GET /work?ms=N`, through the balancer: a request that stays in flight for
//! as long as asked, on the user's own backend and session.

use std::time::Duration;

use crate::support::{Balancer, Net, User, addrs, client, eventually, webapps};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_holds_a_request_in_flight_on_the_users_session() {
    let net = Net::new(185);
    let backends = webapps(&net, &[10, 11]);
    let lb = Balancer::found(&net.config("", ""), &addrs(&backends)).await;
    let user = User::new(&lb);
    let first = user.get().await.expect("a first visit");

    // Work that lasts until the test has seen it in flight (bounded by the webapp's 60 s cap
    // and the client's timeout).
    let backend = std::net::SocketAddr::new(first.backend, net.port);
    let seen_in_flight = eventually(Duration::from_secs(3), async || {
        match lb.member(backend).await["inflight"].as_u64() {
            Some(1) => Ok(()),
            n => Err(format!("in flight on {backend}: {n:?}")),
        }
    });
    let (page, ()) = tokio::join!(user.get_path("work?ms=3000"), seen_in_flight);
    let page = page.expect("the work's answer");
    assert_eq!(
        page.backend, first.backend,
        "the work ran on another backend"
    );
    assert_eq!(
        page.views,
        first.views + 1,
        "the work's answer lost the session"
    );

    // Anything but 0-60000 ms is the client's mistake, said plainly.
    for bad in ["work", "work?ms=60001", "work?ms=soon"] {
        let resp = client()
            .get(lb.url(&format!("/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("expected /work?ms=N with N from 0 to 60000"),
            "{body}"
        );
    }
    lb.stop().await;
}
