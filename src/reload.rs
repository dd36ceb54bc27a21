//! Hot reload: a new config is compared with the running one and either swapped in whole,
//! component by component, without dropping a connection, or refused whole, with the running
//! config kept. It is the only place besides [`crate::run`] that sees every component.
//!
//! What changes live: discovery (the prober keeps the members still inside the ranges with
//! their state), balance settings, timeouts (for new connections and requests), the request
//! head cap, admin settings, and log settings (carried back in [`Outcome::Applied`] for the
//! binary to apply). What is refused: a changed `listen` or `admin.listen` (a restart is
//! needed, see [`diff`]), and a changed `balance.pin_secret` or `balance.key`, which would move
//! every pinned user at once.
//!
//! The binary turns SIGHUP into [`Reload::file`]; `sweeplb reload --pid-file PATH` sends it,
//! and so does `docker kill --signal HUP <container>` in a scratch container.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config, Discovery, Key};
use crate::proxy::Proxy;
use crate::server::LiveSettings;

/// A request to swap in a config, and where its outcome goes.
type Ask = (Config, oneshot::Sender<Outcome>);

/// The sending side: hand a balancer new configs. Cheap to clone.
#[derive(Clone)]
pub struct Reload {
    tx: mpsc::Sender<Ask>,
    counts: Arc<Counts>,
}

/// The balancer's side, given to [`crate::run_with_reload`].
pub struct Reloads {
    rx: mpsc::Receiver<Ask>,
    counts: Arc<Counts>,
}

/// A handle and the balancer's side of it.
pub fn channel() -> (Reload, Reloads) {
    let (tx, rx) = mpsc::channel(4);
    let counts = Arc::new(Counts::default());
    (
        Reload {
            tx,
            counts: Arc::clone(&counts),
        },
        Reloads { rx, counts },
    )
}

/// What became of one reload.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Swapped in. `changed` names the keys that differ (empty if none did); `config` is the
    /// config now running, whose log settings the binary applies.
    Applied {
        changed: Vec<&'static str>,
        config: Box<Config>,
    },
    /// The file is not a valid config: nothing was applied. Every problem, by key.
    Invalid(config::Error),
    /// Valid, but not applied, one reason a line: the running config stays whole.
    Refused(Vec<String>),
    /// The balancer is not running (any more).
    NotRunning,
}

impl Outcome {
    /// `ok`, `invalid`, `refused` (as counted), or `not running`.
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "ok",
            Outcome::Invalid(_) => "invalid",
            Outcome::Refused(_) => "refused",
            Outcome::NotRunning => "not running",
        }
    }
}

impl Reload {
    /// Reads `path` with the rules of `sweeplb check` and swaps it in, or says why not. An
    /// invalid file is logged (every problem, at error) and counted.
    pub async fn file(&self, path: &Path) -> Outcome {
        match config::load(path) {
            Ok(config) => self.apply(config).await,
            Err(e) => self.invalid(e),
        }
    }

    /// Swaps `config` in, or says why not.
    pub async fn apply(&self, config: Config) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((config, tx)).await.is_err() {
            return Outcome::NotRunning;
        }
        rx.await.unwrap_or(Outcome::NotRunning)
    }

    /// A reload whose config did not validate: logged and counted, nothing applied.
    pub fn invalid(&self, e: config::Error) -> Outcome {
        for p in &e.problems {
            error!(key = %p.key, "reload refused, config invalid: {}: {}", p.key, p.message);
        }
        let outcome = Outcome::Invalid(e);
        self.counts.record(&outcome);
        outcome
    }

    /// Reloads so far, by result.
    pub fn counted(&self) -> Counted {
        self.counts.counted()
    }
}

/// Reloads so far, by result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    pub ok: u64,
    pub invalid: u64,
    pub refused: u64,
}

/// The reload counters `/_lb/health` and `/_lb/metrics` show; written only when a reload
/// happens.
pub(crate) struct Counts {
    ok: AtomicU64,
    invalid: AtomicU64,
    refused: AtomicU64,
    last: Mutex<Option<Last>>,
    /// When the config in force was loaded: at start, then by each successful reload.
    loaded: Mutex<SystemTime>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            ok: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last: Mutex::new(None),
            loaded: Mutex::new(SystemTime::now()),
        }
    }
}

/// The latest reload: when, its result, and what changed or why it was not applied.
#[derive(Debug, Clone)]
pub(crate) struct Last {
    pub(crate) at: SystemTime,
    pub(crate) result: &'static str,
    pub(crate) detail: Vec<String>,
}

impl Counts {
    fn record(&self, outcome: &Outcome) {
        let (counter, detail) = match outcome {
            Outcome::Applied { changed, .. } => {
                (&self.ok, changed.iter().map(|k| k.to_string()).collect())
            }
            Outcome::Invalid(e) => (
                &self.invalid,
                e.problems
                    .iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect(),
            ),
            Outcome::Refused(why) => (&self.refused, why.clone()),
            Outcome::NotRunning => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let at = SystemTime::now();
        if matches!(outcome, Outcome::Applied { .. }) {
            *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Last {
            at,
            result: outcome.result(),
            detail,
        });
    }

    pub(crate) fn counted(&self) -> Counted {
        Counted {
            ok: self.ok.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// When the config in force was loaded.
    pub(crate) fn last_success(&self) -> SystemTime {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn last(&self) -> Option<Last> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Reloads {
    pub(crate) fn counts(&self) -> Arc<Counts> {
        Arc::clone(&self.counts)
    }
}

/// Where a reload's settings go: each component's live handle.
pub(crate) struct Live {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) discovery: mpsc::Sender<Discovery>,
    pub(crate) server: LiveSettings,
    /// The admin listener's, when `admin.listen` is set.
    pub(crate) admin_server: Option<LiveSettings>,
    pub(crate) admin: Arc<ArcSwap<config::Admin>>,
    /// The autoscaler's settings, when `autoscale` is set.
    pub(crate) autoscale: Option<tokio::sync::watch::Sender<crate::autoscale::Settings>>,
}

/// Answers reloads until `shutdown`, one at a time, so two never interleave.
pub(crate) async fn serve(
    mut reloads: Reloads,
    mut running: Config,
    live: Live,
    shutdown: CancellationToken,
) {
    loop {
        let (config, reply) = tokio::select! {
            _ = shutdown.cancelled() => break,
            ask = reloads.rx.recv() => match ask {
                Some(ask) => ask,
                None => break,
            },
        };
        let outcome = swap(&mut running, config, &live).await;
        reloads.counts.record(&outcome);
        let _ = reply.send(outcome);
    }
}

/// Applies `new` over `running` unless [`diff`] refuses it.
async fn swap(running: &mut Config, new: Config, live: &Live) -> Outcome {
    let Diff { changed, refused } = diff(running, &new);
    if !refused.is_empty() {
        for why in &refused {
            warn!("reload refused, the running config stays: {why}");
        }
        return Outcome::Refused(refused);
    }
    let discovery = changed.iter().any(|k| k.starts_with("discovery."));
    if discovery && live.discovery.send(new.discovery.clone()).await.is_err() {
        return Outcome::NotRunning;
    }
    live.proxy
        .reconfigure(new.balance.clone(), new.timeouts.clone());
    live.proxy.set_access_log(new.log.access);
    live.server.store(Arc::new(crate::server_settings(&new)));
    if let Some(admin_server) = &live.admin_server {
        admin_server.store(Arc::new(crate::admin_server_settings(&new)));
    }
    live.admin.store(Arc::new(new.admin.clone()));
    if let (Some(autoscale), Some(settings)) = (&live.autoscale, crate::autoscale_settings(&new)) {
        autoscale.send_if_modified(|s| {
            let modified = *s != settings;
            *s = settings;
            modified
        });
    }
    if changed.is_empty() {
        info!("config reloaded: nothing changed");
    } else {
        info!(changed = %changed.join(", "), "config reloaded");
    }
    *running = new.clone();
    Outcome::Applied {
        changed,
        config: Box::new(new),
    }
}

/// What differs between two configs: the keys that changed, and why the new one cannot be
/// swapped in (empty if it can).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Diff {
    pub(crate) changed: Vec<&'static str>,
    pub(crate) refused: Vec<String>,
}

/// Compares `old` and `new` key by key; the refusals are the changes a reload cannot make.
///
/// `listen` and `admin.listen` are not rebound in-process: a rebind that fails half-way (the
/// port taken) would leave the balancer on neither address, and in a container the published
/// port maps to the port the process started on, so a rebind would not follow. A restart is
/// the honest way to move a listener. `balance.pin_secret` and `balance.key` are refused
/// because either change makes every cookie's pin unreadable: every pinned user would move.
pub(crate) fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    let (o, n) = (&old.discovery, &new.discovery);
    let secret = |s: &Option<config::Secret>| s.as_ref().map(|s| s.0.clone());
    let renamed = matches!(
        (&old.balance.key, &new.balance.key),
        (Key::Cookie(a), Key::Cookie(b)) if a != b
    );
    let checks = [
        ("listen", old.listen != new.listen),
        ("discovery.subnets", o.subnets != n.subnets),
        ("discovery.exclude", o.exclude != n.exclude),
        ("discovery.port", o.port != n.port),
        ("discovery.health_path", o.health_path != n.health_path),
        (
            "discovery.expect_status",
            o.expect_status != n.expect_status,
        ),
        ("discovery.expect_body", o.expect_body != n.expect_body),
        (
            "discovery.check_interval",
            o.check_interval != n.check_interval,
        ),
        (
            "discovery.sweep_interval",
            o.sweep_interval != n.sweep_interval,
        ),
        ("discovery.timeout", o.timeout != n.timeout),
        ("discovery.rise", o.rise != n.rise),
        ("discovery.fall", o.fall != n.fall),
        ("discovery.concurrency", o.concurrency != n.concurrency),
        ("discovery.allow_routed", o.allow_routed != n.allow_routed),
        (
            "discovery.identity_secret",
            secret(&o.identity_secret) != secret(&n.identity_secret),
        ),
        ("balance.cookie", renamed),
        (
            "balance.key",
            !renamed && old.balance.key != new.balance.key,
        ),
        (
            "balance.cookie_max_age",
            old.balance.cookie_max_age != new.balance.cookie_max_age,
        ),
        (
            "balance.repin_after",
            old.balance.repin_after != new.balance.repin_after,
        ),
        (
            "balance.session_idle",
            old.balance.session_idle != new.balance.session_idle,
        ),
        (
            "balance.bounded_load",
            old.balance.bounded_load != new.balance.bounded_load,
        ),
        (
            "balance.pin_secret",
            secret(&old.balance.pin_secret) != secret(&new.balance.pin_secret),
        ),
        (
            "timeouts.connect",
            old.timeouts.connect != new.timeouts.connect,
        ),
        (
            "timeouts.response",
            old.timeouts.response != new.timeouts.response,
        ),
        ("timeouts.idle", old.timeouts.idle != new.timeouts.idle),
        (
            "timeouts.header_read",
            old.timeouts.header_read != new.timeouts.header_read,
        ),
        ("timeouts.body", old.timeouts.body != new.timeouts.body),
        (
            "timeouts.shutdown",
            old.timeouts.shutdown != new.timeouts.shutdown,
        ),
        (
            "limits.max_request_head",
            old.limits.max_request_head != new.limits.max_request_head,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("admin.allow", old.admin.allow != new.admin.allow),
        (
            "admin.keep_departed",
            old.admin.keep_departed != new.admin.keep_departed,
        ),
        ("log.format", old.log.format != new.log.format),
        ("log.access", old.log.access != new.log.access),
        (
            "autoscale",
            old.autoscale.is_some() != new.autoscale.is_some(),
        ),
    ];
    let autoscale: Vec<(&'static str, bool)> = match (&old.autoscale, &new.autoscale) {
        (Some(o), Some(n)) => vec![
            ("autoscale.docker", o.docker != n.docker),
            ("autoscale.service", o.service != n.service),
            ("autoscale.min", o.min != n.min),
            ("autoscale.max", o.max != n.max),
            (
                "autoscale.target_inflight",
                o.target_inflight != n.target_inflight,
            ),
            ("autoscale.up_after", o.up_after != n.up_after),
            ("autoscale.down_after", o.down_after != n.down_after),
            ("autoscale.session_idle", o.session_idle != n.session_idle),
            ("autoscale.drain_max", o.drain_max != n.drain_max),
            ("autoscale.hold", o.hold != n.hold),
            ("autoscale.hold_limit", o.hold_limit != n.hold_limit),
            (
                "autoscale.start_timeout",
                o.start_timeout != n.start_timeout,
            ),
        ],
        _ => Vec::new(),
    };
    d.changed = checks
        .iter()
        .chain(&autoscale)
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| *key)
        .collect();
    let show = |a: Option<std::net::SocketAddr>| a.map_or("(unset)".to_string(), |a| a.to_string());
    for key in &d.changed {
        let why = match *key {
            "listen" => format!(
                "listen: {} -> {}: a running balancer does not rebind its listener; restart to \
                 move it (in a container the published port would not follow a rebind anyway)",
                old.listen, new.listen
            ),
            "admin.listen" => format!(
                "admin.listen: {} -> {}: a running balancer does not rebind its listeners; \
                 restart to move it (in a container the published port would not follow a \
                 rebind anyway)",
                show(old.admin.listen),
                show(new.admin.listen)
            ),
            "balance.pin_secret" => "balance.pin_secret: a new secret re-keys every pin, so \
                 every pinned user would move to another backend; keep the running one, or \
                 restart to change it knowingly"
                .to_string(),
            "autoscale" => format!(
                "autoscale: {}: a running balancer does not start or stop autoscaling; restart \
                 to turn it {}",
                if new.autoscale.is_some() {
                    "added"
                } else {
                    "removed"
                },
                if new.autoscale.is_some() { "on" } else { "off" },
            ),
            "balance.key" | "balance.cookie" => format!(
                "{key}: {} -> {}: every user's current pin would go unread, so every pinned \
                 user would move; keep the running one, or restart to change it knowingly",
                key_name(&old.balance.key),
                key_name(&new.balance.key)
            ),
            _ => continue,
        };
        d.refused.push(why);
    }
    d
}

/// A key as the config spells it.
fn key_name(key: &Key) -> String {
    match key {
        Key::Cookie(name) => format!("cookie {name}"),
        Key::Header(name) => format!("header:{name}"),
        Key::ClientIp => "client_ip".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("discovery:\n  subnets: [127.77.170.0/24]\n{extra}");
        config::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn live_keys_change_without_refusal() {
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            (
                "  check_interval: 3s\n  rise: 3\n",
                &["discovery.check_interval", "discovery.rise"],
            ),
            (
                "  subnets: [127.77.170.0/24, 127.77.171.0/28]\n",
                &["discovery.subnets"],
            ),
            (
                "balance:\n  session_idle: 5m\n  bounded_load: 1.5\n",
                &["balance.session_idle", "balance.bounded_load"],
            ),
            (
                "timeouts:\n  response: 3s\n  idle: 9s\n",
                &["timeouts.response", "timeouts.idle"],
            ),
            ("admin:\n  allow: [127.0.0.1/32]\n", &["admin.allow"]),
            ("log:\n  access: true\n", &["log.access"]),
        ];
        let old = config("");
        for (extra, want) in table {
            // A second `subnets` line in the discovery block would be a duplicate key.
            let new = match extra.strip_prefix("  subnets: ") {
                Some(rest) => config::parse(&format!("discovery:\n  subnets: {rest}")).unwrap(),
                None => config(extra),
            };
            let d = diff(&old, &new);
            assert_eq!(d.changed, *want, "{extra:?}");
            assert!(d.refused.is_empty(), "{extra:?}: {:?}", d.refused);
        }
    }

    #[test]
    fn autoscaling_changes_live_but_is_not_turned_on_or_off() {
        let on = "autoscale:\n  service: webapp\n";
        let old = config(on);
        let new = config("autoscale:\n  service: webapp\n  max: 9\n  down_after: 1m\n");
        let d = diff(&old, &new);
        assert_eq!(d.changed, ["autoscale.max", "autoscale.down_after"]);
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        for (from, to, word) in [("", on, "added"), (on, "", "removed")] {
            let d = diff(&config(from), &config(to));
            assert_eq!(d.refused.len(), 1, "{:?}", d.refused);
            assert!(
                d.refused[0].starts_with(&format!("autoscale: {word}")),
                "{:?}",
                d.refused
            );
            assert!(d.refused[0].contains("restart"), "{:?}", d.refused);
        }
    }

    #[test]
    fn listeners_and_pins_are_refused_with_the_key_and_the_reason() {
        let old = config("balance:\n  pin_secret: one-secret-of-enough-length\n");
        let table: &[(&str, &str, &str)] = &[
            (
                "listen: 127.0.0.1:9999\nbalance:\n  pin_secret: one-secret-of-enough-length\n",
                "listen: ",
                "restart",
            ),
            (
                "admin:\n  listen: 127.0.0.1:9998\nbalance:\n  pin_secret: one-secret-of-enough-length\n",
                "admin.listen: (unset) -> 127.0.0.1:9998",
                "restart",
            ),
            (
                "balance:\n  pin_secret: another-secret-of-enough-length\n",
                "balance.pin_secret",
                "every pinned user would move",
            ),
            (
                "balance:\n  cookie: lbpin\n  pin_secret: one-secret-of-enough-length\n",
                "balance.cookie: cookie sweeplb -> cookie lbpin",
                "every pinned user would move",
            ),
        ];
        for (extra, key, why) in table {
            let d = diff(&old, &config(extra));
            assert_eq!(d.refused.len(), 1, "{extra:?}: {:?}", d.refused);
            assert!(d.refused[0].starts_with(key), "{:?}", d.refused);
            assert!(d.refused[0].contains(why), "{:?}", d.refused);
            // A refusal names no secret.
            assert!(!d.refused[0].contains("secret-of"), "{:?}", d.refused);
        }
    }

    #[test]
    fn outcomes_are_counted_by_result_and_the_last_remembered() {
        let c = Counts::default();
        c.record(&Outcome::Refused(vec!["listen: x".into()]));
        c.record(&Outcome::Invalid(config::Error {
            problems: vec![config::Problem {
                key: "discovery.rise".into(),
                message: "0 is out of range".into(),
            }],
        }));
        c.record(&Outcome::NotRunning);
        assert_eq!(
            c.counted(),
            Counted {
                ok: 0,
                invalid: 1,
                refused: 1
            }
        );
        let last = c.last().expect("a last reload");
        assert_eq!(last.result, "invalid");
        assert_eq!(last.detail, ["discovery.rise: 0 is out of range"]);
        // Only a reload that was applied moves the time the config in force was loaded.
        let started = c.last_success();
        assert!(started <= last.at);
        c.record(&Outcome::Applied {
            config: Box::new(config("")),
            changed: vec!["timeouts.connect"],
        });
        assert!(c.last_success() > started);
        assert_eq!(c.counted().ok, 1);
    }
}
