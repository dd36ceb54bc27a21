//! `sweeplb demo`: the one-command tour. Starts demo webapps on loopback addresses, a balancer
//! sweeping that loopback range, and a few scripted clients that show stickiness, spread, a
//! scale-up that moves nobody, and a backend that dies (its users move once) and comes back
//! (nobody moves back). Everything stays on 127.77.0.0/24.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::webapp::Webapp;

/// The demo's config: the repository's `config.yaml`, which sweeps 127.77.0.0/24.
pub const CONFIG: &str = include_str!("../config.yaml");

/// The demo webapps' addresses: 127.77.0.10 to 127.77.0.14.
const BACKENDS: std::ops::Range<u8> = 10..15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("demo client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("{0}")]
    Timeout(String),
    #[error("balancer: {0}")]
    Balancer(std::io::Error),
}

struct Backend {
    addr: SocketAddr,
    stop: CancellationToken,
}

async fn start_backend(
    addr: SocketAddr,
    tasks: &TaskTracker,
    parent: &CancellationToken,
) -> Result<Backend, Error> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|source| Error::Bind { addr, source })?;
    let _ = socket.set_reuseaddr(true);
    socket
        .bind(addr)
        .map_err(|source| Error::Bind { addr, source })?;
    let listener = socket
        .listen(1024)
        .map_err(|source| Error::Bind { addr, source })?;
    let stop = parent.child_token();
    tasks.spawn(crate::webapp::run(
        listener,
        Arc::new(Webapp::new("sweeplb-webapp")),
        stop.clone(),
    ));
    Ok(Backend { addr, stop })
}

#[derive(serde::Deserialize)]
struct Page {
    ip: String,
    #[serde(rename = "sessionViews")]
    views: u64,
}

#[derive(serde::Deserialize)]
struct Health {
    healthy: usize,
    backends: Vec<Member>,
    sessions_moved: BTreeMap<String, u64>,
}

#[derive(serde::Deserialize)]
struct Member {
    addr: String,
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(url: &str) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client {
            http,
            url: url.to_string(),
        })
    }

    async fn get(&self) -> Result<Page, Error> {
        Ok(self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// Polls `/_lb/health` until `done` says yes; how long that took.
async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&Health) -> bool,
) -> Result<Duration, Error> {
    let start = Instant::now();
    loop {
        if let Ok(resp) = http.get(format!("{base}/_lb/health")).send().await {
            if let Ok(h) = resp.json::<Health>().await {
                if done(&h) {
                    return Ok(start.elapsed());
                }
            }
        }
        if start.elapsed() > within {
            return Err(Error::Timeout(format!(
                "{what} did not happen within {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` new clients, each with its first page.
async fn arrive(n: usize, base: &str) -> Result<(Vec<Client>, Vec<Page>), Error> {
    let mut clients = Vec::new();
    let mut pages = Vec::new();
    for _ in 0..n {
        let c = Client::new(&format!("{base}/"))?;
        pages.push(c.get().await?);
        clients.push(c);
    }
    Ok((clients, pages))
}

/// Where `pages` landed, as "ip: count" pairs.
fn spread(pages: &[Page]) -> String {
    let mut by_ip: BTreeMap<&str, usize> = BTreeMap::new();
    for p in pages {
        *by_ip.entry(p.ip.as_str()).or_default() += 1;
    }
    by_ip
        .iter()
        .map(|(ip, n)| format!("{ip}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each client's next page: how many kept their backend and session, and how many moved.
/// `last` holds each client's previous page and is brought up to date.
async fn revisit(clients: &[Client], last: &mut [Page]) -> Result<(usize, usize), Error> {
    let (mut kept, mut moved) = (0, 0);
    for (c, before) in clients.iter().zip(last.iter_mut()) {
        let page = c.get().await?;
        if page.ip == before.ip && page.views == before.views + 1 {
            kept += 1;
        } else {
            moved += 1;
        }
        *before = page;
    }
    Ok((kept, moved))
}

async fn wait_healthy(
    http: &reqwest::Client,
    base: &str,
    want: usize,
    within: Duration,
) -> Result<Duration, Error> {
    let what = format!("reaching {want} healthy backends");
    wait_for(http, base, &what, within, |h| h.healthy == want).await
}

pub async fn run(config: crate::Config, shutdown: CancellationToken) -> Result<(), Error> {
    let tasks = TaskTracker::new();
    let port = config.discovery.port;
    let addr_of = |last| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, last)), port);
    // All but the last start now; the last joins later, to show a scale-up.
    let mut backends = Vec::new();
    for last in BACKENDS.start..BACKENDS.end - 1 {
        backends.push(start_backend(addr_of(last), &tasks, &shutdown).await?);
    }
    let listen = config.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    let balancer = {
        let shutdown = shutdown.clone();
        tokio::spawn(crate::run(config.clone(), listener, shutdown))
    };
    let base = format!("http://{listen}");
    let d = &config.discovery;
    println!();
    println!(
        "sweeplb demo: {} webapps on 127.77.0.{}-{}:{port} (one more joins later), balancer on {base}",
        backends.len(),
        BACKENDS.start,
        BACKENDS.end - 2
    );
    println!(
        "  sweeping {:?} every {}, checking members every {}, rise {} fall {}",
        d.subnets.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        humantime::format_duration(d.sweep_interval),
        humantime::format_duration(d.check_interval),
        d.rise,
        d.fall
    );
    println!("  open {base}/ in a browser (reload: sessionViews counts up)");
    println!("  and {base}/_lb/ to watch the pool live ({base}/_lb/metrics for Prometheus)");
    println!();

    let story = async {
        let probe = reqwest::Client::builder().no_proxy().build()?;
        let took = wait_healthy(&probe, &base, backends.len(), Duration::from_secs(20)).await?;
        println!(
            "discovered all {} backends in {:.1}s, with no list of backends anywhere",
            backends.len(),
            took.as_secs_f64()
        );

        let alice = Client::new(&format!("{base}/"))?;
        print!("alice, 5 requests with her cookies:");
        let mut home = String::new();
        for _ in 0..5 {
            let page = alice.get().await?;
            print!(" {}#{}", page.ip, page.views);
            home = page.ip;
        }
        println!("  (same backend, session counting up)");

        let (crowd, mut placed) = arrive(30, &base).await?;
        println!("30 more clients spread over the pool: {}", spread(&placed));

        println!();
        let joining = addr_of(BACKENDS.end - 1);
        println!("scaling up: a webapp starts on {joining} ...");
        backends.push(start_backend(joining, &tasks, &shutdown).await?);
        let took = wait_healthy(&probe, &base, backends.len(), Duration::from_secs(20)).await?;
        println!("  found and routed {:.1}s later", took.as_secs_f64());
        let (kept, moved) = revisit(&crowd, &mut placed).await?;
        println!(
            "  of the 30 clients, {kept} kept their backend and session, {moved} moved: the hash \
             chose only their first backend, their cookie pins them there"
        );
        let (_, fresh) = arrive(30, &base).await?;
        println!("  30 new clients: {}", spread(&fresh));

        let victim = backends
            .iter()
            .find(|b| b.addr.ip().to_string() == home)
            .map(|b| (b.addr, b.stop.clone()));
        if let Some((addr, stop)) = victim {
            println!();
            println!("stopping alice's backend {addr} ...");
            stop.cancel();
            let page = alice.get().await?;
            println!(
                "alice's next request: {}#{} (moved at once to her fallback backend; a new session)",
                page.ip, page.views
            );
            let (kept, moved) = revisit(&crowd, &mut placed).await?;
            println!(
                "of the 30 others, {kept} kept their backend and session; {moved} had been on {addr} and moved"
            );
            let gone = addr.to_string();
            let took = wait_for(
                &probe,
                &base,
                &format!("{addr} leaving"),
                Duration::from_secs(10),
                |h| h.backends.iter().all(|b| b.addr != gone),
            )
            .await?;
            println!(
                "{addr} was out of routing at once; the prober's checks confirmed it gone {:.1}s later",
                took.as_secs_f64()
            );
            let revived = start_backend(addr, &tasks, &shutdown).await?;
            let took = wait_healthy(&probe, &base, backends.len(), Duration::from_secs(20)).await?;
            println!(
                "restarted {addr}: back in the pool after {:.1}s. alice stays where her session is:",
                took.as_secs_f64()
            );
            let page = alice.get().await?;
            println!(
                "alice: {}#{} (her new session goes on; nobody moves back to {addr})",
                page.ip, page.views
            );
            let (kept, moved) = revisit(&crowd, &mut placed).await?;
            println!("of the 30 others, {kept} kept their backend and session, {moved} moved");
            backends.retain(|b| b.addr != addr);
            backends.push(revived);
        }
        if let Ok(resp) = probe.get(format!("{base}/_lb/health")).send().await {
            if let Ok(h) = resp.json::<Health>().await {
                let moved: Vec<String> = h
                    .sessions_moved
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(why, n)| format!("{n} ({why})"))
                    .collect();
                println!(
                    "/_lb/health counts the users who had to move: {}",
                    if moved.is_empty() {
                        "none".to_string()
                    } else {
                        moved.join(", ")
                    }
                );
            }
        }
        println!();
        println!("demo running on {base}/ - Ctrl-C to stop");
        Ok::<(), Error>(())
    };
    tokio::select! {
        r = story => r?,
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancelled().await;
    tasks.close();
    tasks.wait().await;
    match balancer.await {
        Ok(r) => r.map_err(Error::Balancer),
        Err(e) => Err(Error::Balancer(std::io::Error::other(e))),
    }
}
