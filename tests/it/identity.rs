//! The identity proof (`discovery.identity_secret`): with it, only backends holding the secret
//! join. An impostor whose health body carries the `expect_body` token, a backend with another
//! secret, one relaying a real member's proof made for another address, and one replaying a
//! proof recorded for an earlier nonce all answer 200 and never join.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sweeplb::webapp::Webapp;

use crate::support::{
    Backend, Balancer, CHECK_INTERVAL, Net, RISE, SWEEP_INTERVAL, custom, serve_webapp,
};

const SECRET: &str = "lab-secret-0123456789";
const NONCE: &str = "x-sweeplb-nonce";
const PROOF: &str = "x-sweeplb-proof";

fn config(net: &Net, secret: bool) -> String {
    let secret = if secret {
        format!("  identity_secret: {SECRET}\n")
    } else {
        String::new()
    };
    net.config(&format!("  expect_body: sweeplb-webapp\n{secret}"), "")
}

/// `app` served on `addr` as though it were at `answers_as` (a relay in front of a member
/// elsewhere), counting the health probes that carried a nonce.
fn counted(addr: SocketAddr, answers_as: SocketAddr, app: Webapp) -> (Backend, Arc<AtomicUsize>) {
    let app = Arc::new(app);
    let probes = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&probes);
    let backend = custom(addr, move |req| {
        let (app, count) = (Arc::clone(&app), Arc::clone(&count));
        async move {
            if req.headers().contains_key(NONCE) {
                count.fetch_add(1, Ordering::SeqCst);
            }
            app.handle(req, answers_as).await
        }
    });
    (backend, probes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_backends_holding_the_secret_join() {
    let net = Net::new(140);
    let real = serve_webapp(
        net.addr(10),
        Arc::new(Webapp::new("sweeplb-webapp").with_identity_secret(SECRET)),
    );
    // Each answers 200 with the expect_body token in its body.
    let (impostor, impostor_probes) =
        counted(net.addr(11), net.addr(11), Webapp::new("sweeplb-webapp"));
    let (wrong, wrong_probes) = counted(
        net.addr(12),
        net.addr(12),
        Webapp::new("sweeplb-webapp").with_identity_secret("another-secret-0123456789"),
    );
    // Holds the secret but answers with the proof for the real member's address: what an
    // impostor gets by relaying each probe live to a real member.
    let (relay, relay_probes) = counted(
        net.addr(13),
        real.addr,
        Webapp::new("sweeplb-webapp").with_identity_secret(SECRET),
    );
    let decoys = [impostor.addr, wrong.addr, relay.addr];

    // Without the proof, expect_body alone lets all of them in: the finding.
    let open = Balancer::found(
        &config(&net, false),
        &[real.addr, decoys[0], decoys[1], decoys[2]],
    )
    .await;
    open.stop().await;

    let since = Instant::now();
    let lb = Balancer::found(&config(&net, true), &[real.addr]).await;
    let counts =
        || [&impostor_probes, &wrong_probes, &relay_probes].map(|c| c.load(Ordering::SeqCst));
    let at_start = counts();
    // Long enough for each decoy to be swept and to rise twice over, and probed at least twice
    // by this balancer; never listed, not even as joining, at any look.
    let long_enough = (SWEEP_INTERVAL + CHECK_INTERVAL * RISE) * 2;
    let decoy_names: Vec<String> = decoys.iter().map(|a| a.to_string()).collect();
    while since.elapsed() < long_enough || counts().iter().zip(at_start).any(|(n, s)| n - s < 2) {
        let listed = lb.listed().await;
        assert!(
            !listed.iter().any(|a| decoy_names.contains(a)),
            "a backend without a valid proof is listed: {listed:?}"
        );
        assert!(
            since.elapsed() < long_enough * 4,
            "the decoys were not probed twice: {:?} since {at_start:?}",
            counts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let member = lb.member(real.addr).await;
    assert_eq!(member["state"], "healthy", "{member}");
    assert!(member["last_error"].is_null(), "{member}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_proof_never_passes() {
    let net = Net::new(141);
    let addr = net.addr(10);
    // A real member until `replay` is set; then an impostor at the same address (the member
    // died, its address was taken) that answers every probe with the last proof it saw.
    let real = Arc::new(Webapp::new("sweeplb-webapp").with_identity_secret(SECRET));
    let impostor = Arc::new(Webapp::new("sweeplb-webapp"));
    let replay = Arc::new(AtomicBool::new(false));
    let recorded: Arc<Mutex<Option<http::HeaderValue>>> = Arc::default();
    let replayed = Arc::new(AtomicUsize::new(0));
    let backend = custom(addr, {
        let (replay, recorded, replayed) = (replay.clone(), recorded.clone(), replayed.clone());
        move |req| {
            let (real, impostor) = (Arc::clone(&real), Arc::clone(&impostor));
            let (replay, recorded, replayed) = (replay.clone(), recorded.clone(), replayed.clone());
            async move {
                let probe = req.headers().contains_key(NONCE);
                if !replay.load(Ordering::SeqCst) {
                    let resp = real.handle(req, addr).await;
                    if let Some(proof) = resp.headers().get(PROOF) {
                        *recorded.lock().unwrap() = Some(proof.clone());
                    }
                    return resp;
                }
                let mut resp = impostor.handle(req, addr).await;
                let proof = recorded.lock().unwrap().clone();
                if let (true, Some(proof)) = (probe, proof) {
                    replayed.fetch_add(1, Ordering::SeqCst);
                    resp.headers_mut().insert(PROOF, proof);
                }
                resp
            }
        }
    });
    let lb = Balancer::found(&config(&net, true), &[backend.addr]).await;
    assert!(recorded.lock().unwrap().is_some(), "no proof was recorded");

    replay.store(true, Ordering::SeqCst);
    let since = Instant::now();
    lb.wait_healthy(&[], Duration::from_secs(3)).await;
    let (_, h) = lb.health().await;
    let gone = &h["recently_left"][0];
    assert_eq!(gone["addr"], addr.to_string(), "{h}");
    assert_eq!(gone["reason"], "identity proof wrong", "{h}");

    // The sweep keeps probing it, and the recorded proof never brings it back.
    let long_enough = (SWEEP_INTERVAL + CHECK_INTERVAL * RISE) * 2;
    let at_left = replayed.load(Ordering::SeqCst);
    while since.elapsed() < long_enough || replayed.load(Ordering::SeqCst) < at_left + 2 {
        let listed = lb.listed().await;
        assert!(
            listed.is_empty(),
            "a replayed proof is accepted: {listed:?}"
        );
        assert!(
            since.elapsed() < long_enough * 4,
            "the impostor was not probed twice after it left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lb.stop().await;
}
