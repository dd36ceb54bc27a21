//! The `sweeplb` binary: arguments, logging, config loading, binding, signals, exit codes.
//! Everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sweeplb::config::LogFormat;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "A load balancer that finds its backends by sweeping a subnet"
)]
struct Args {
    /// The config file to run with.
    #[arg(long, short, default_value = "config.yaml", global = true)]
    config: PathBuf,
    /// Running: write the balancer's process id here (removed on exit), for `sweeplb reload`.
    /// With `reload`: the file to read the process id from.
    #[arg(long, value_name = "PATH", global = true)]
    pid_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config and print what it would sweep; exit 2 on errors.
    Check,
    /// Ask a running balancer to reload its config: sends SIGHUP to the process in
    /// `--pid-file`. In a scratch container, `docker kill --signal HUP <container>` does the
    /// same. The outcome is in the balancer's log and in `/_lb/health` (`reloads`).
    Reload,
    /// Start demo webapps on 127.77.0.10-14 and a balancer in front of them, and show it working.
    Demo,
    /// Run the demo webapp (the backend of the demo, the tests and the Docker stack).
    Webapp {
        #[arg(long, default_value = "0.0.0.0:3000")]
        listen: SocketAddr,
        /// The name the health endpoint reports, for `expect_body` identity checks.
        #[arg(long, default_value = "sweeplb-webapp")]
        app: String,
        /// After SIGTERM, answer health checks as draining and keep serving this long, then
        /// exit; a second signal exits at once.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain_grace: std::time::Duration,
        /// A file holding the balancer's `discovery.identity_secret`: health probes are then
        /// answered with the identity proof. A file, not the secret itself, so it never shows
        /// in `ps`.
        #[arg(long, value_name = "PATH")]
        identity_secret_file: Option<PathBuf>,
    },
    /// GET one URL and exit 0 on a 2xx answer, 1 otherwise: a container HEALTHCHECK without a
    /// shell.
    Probe {
        url: String,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let code = command(Args::parse());
    sweeplb::logging::flush();
    code
}

fn command(args: Args) -> ExitCode {
    match args.command {
        Some(Command::Check) => check(&args.config),
        Some(Command::Reload) => exit(signal_reload(args.pid_file.as_deref())),
        Some(Command::Probe { url, timeout }) => {
            let _log = start_log(LogFormat::Text);
            exit(runtime().and_then(|rt| rt.block_on(probe(&url, timeout))))
        }
        Some(Command::Webapp {
            listen,
            app,
            drain_grace,
            identity_secret_file,
        }) => {
            let _log = start_log(LogFormat::Text);
            exit(
                runtime().and_then(|rt| {
                    rt.block_on(webapp(listen, app, drain_grace, identity_secret_file))
                }),
            )
        }
        // The demo always runs its own loopback config, whatever --config says.
        Some(Command::Demo) => match sweeplb::config::parse(sweeplb::demo::CONFIG) {
            Ok(config) => {
                let _log = start_log(config.log().format);
                exit(runtime().and_then(|rt| rt.block_on(demo(config))))
            }
            Err(e) => config_error(std::path::Path::new("(built-in demo config)"), &e),
        },
        // The config is read first, so that the log is written as it says; its errors are
        // printed plainly.
        None => match sweeplb::config::load(&args.config) {
            Ok(config) => {
                let log = start_log(config.log().format);
                exit(runtime().and_then(|rt| {
                    rt.block_on(balance(config, &args.config, args.pid_file.as_deref(), log))
                }))
            }
            Err(e) => config_error(&args.config, &e),
        },
    }
}

/// Starts the log; the handle changes its format while running.
fn start_log(format: LogFormat) -> Option<sweeplb::logging::Handle> {
    sweeplb::logging::start(format)
        .inspect_err(|e| eprintln!("cannot start the log: {e}"))
        .ok()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(path: &std::path::Path, e: &sweeplb::config::Error) -> ExitCode {
    eprintln!("{}: invalid config:", path.display());
    for p in &e.problems {
        eprintln!("  {}: {}", p.key, p.message);
    }
    ExitCode::from(2)
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match sweeplb::config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(path, &e),
    };
    let d = config.discovery();
    println!("{}: ok", path.display());
    println!("listen          {}", config.listen());
    for net in &d.subnets {
        println!(
            "sweep           {net} ({} addresses)",
            sweeplb::config::host_count(net)
        );
    }
    for net in &d.exclude {
        println!("exclude         {net}");
    }
    println!("addresses       {}", config.address_count());
    println!("port            {}", d.port);
    println!(
        "health          GET {} expecting {}-{}{}",
        d.health_path,
        d.expect_status.start(),
        d.expect_status.end(),
        d.expect_body
            .as_ref()
            .map(|b| format!(" and a body containing {b:?}"))
            .unwrap_or_default()
    );
    println!(
        "check_interval  {}",
        humantime::format_duration(d.check_interval)
    );
    println!(
        "sweep_interval  {}",
        humantime::format_duration(d.sweep_interval)
    );
    println!("timeout         {}", humantime::format_duration(d.timeout));
    println!("rise/fall       {}/{}", d.rise, d.fall);
    println!("concurrency     {}", d.concurrency);
    println!(
        "identity        {}",
        if d.identity_secret.is_some() {
            "a proof of the identity secret in every health answer"
        } else {
            "no proof required (discovery.identity_secret unset)"
        }
    );
    match config.autoscale() {
        Some(a) => println!(
            "autoscale       service {}, {}-{} containers, target {} in flight each, via {}",
            a.service, a.min, a.max, a.target_inflight, a.docker
        ),
        None => println!("autoscale       off (no autoscale: block)"),
    }
    ExitCode::SUCCESS
}

/// SIGINT or SIGTERM cancels the token; a second one exits at once.
fn on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        // Both streams are made once: a stream made after a signal arrived may report that same
        // signal again, which would turn one Ctrl-C into "exit at once".
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGINT and SIGTERM");
                return;
            }
        };
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!("signal received: shutting down (again to exit at once)");
                token.cancel();
            } else {
                tracing::warn!("second signal: exiting now");
                sweeplb::logging::flush();
                std::process::exit(1);
            }
        }
    });
}

fn raise_fd_limit() {
    // A sweep holds up to `concurrency` sockets besides the clients' and the backends'.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
}

async fn balance(
    config: sweeplb::Config,
    path: &std::path::Path,
    pid_file: Option<&std::path::Path>,
    log: Option<sweeplb::logging::Handle>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let listener = TcpListener::bind(config.listen())
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen()))?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    let (reload, reloads) = sweeplb::reload::channel();
    // Listening for SIGHUP before the pid file exists: a reload sent as soon as the file
    // appears must not meet SIGHUP's default action, which ends the process.
    on_hangup(reload, path.to_path_buf(), log)?;
    let pid_file = pid_file.map(PidFile::write).transpose()?;
    let result = sweeplb::run_with_reload(config, listener, reloads, shutdown).await;
    drop(pid_file);
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP reloads the config file at `path` with the rules of `check`: an invalid file is
/// logged, problem by problem, and the running config stays. The library applies everything
/// but the log's format, which is the binary's: it is switched here.
fn on_hangup(
    reload: sweeplb::reload::Reload,
    path: PathBuf,
    log: Option<sweeplb::logging::Handle>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
            match reload.file(&path).await {
                sweeplb::reload::Outcome::Applied { config, .. } => {
                    if let Some(Err(e)) = log.as_ref().map(|l| l.apply(config.log())) {
                        tracing::error!(error = %e, "log.format: cannot switch the log's format");
                    }
                }
                sweeplb::reload::Outcome::NotRunning => break,
                _ => {}
            }
        }
    });
    Ok(())
}

/// The pid file of a running balancer, removed when it stops.
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> anyhow::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("--pid-file: cannot write {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the pid file");
        }
    }
}

/// `sweeplb reload`: SIGHUP to the process named in `--pid-file`.
fn signal_reload(pid_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let path = pid_file.context(
        "--pid-file: required; expected the file the balancer was started with \
         (sweeplb --pid-file PATH); in a container, docker kill --signal HUP <container>",
    )?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--pid-file: cannot read {}", path.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| {
            format!(
                "--pid-file: {} holds {:?}; expected a process id",
                path.display(),
                text.trim()
            )
        })?;
    kill(Pid::from_raw(pid), Signal::SIGHUP).with_context(|| {
        format!(
            "--pid-file: cannot signal process {pid} from {}: is the balancer running?",
            path.display()
        )
    })?;
    println!("sent SIGHUP to {pid}: the outcome is in its log and /_lb/health (reloads)");
    Ok(())
}

async fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()?;
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "GET {url}: status {}",
        resp.status()
    );
    Ok(())
}

async fn webapp(
    listen: SocketAddr,
    app: String,
    drain_grace: std::time::Duration,
    identity_secret_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut webapp = sweeplb::webapp::Webapp::new(&app);
    if let Some(path) = &identity_secret_file {
        let secret = sweeplb::webapp::read_identity_secret(path)
            .map_err(|e| anyhow::anyhow!("--identity-secret-file: {e}"))?;
        webapp = webapp.with_identity_secret(&secret);
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen: cannot bind {listen}"))?;
    tracing::info!(%listen, identity_proof = identity_secret_file.is_some(), "webapp listening");
    let app = Arc::new(webapp);
    let (signalled, shutdown) = (CancellationToken::new(), CancellationToken::new());
    on_signal(signalled.clone());
    // The first signal drains: health answers say so, so the balancer sends no new users,
    // while pinned users are served until the grace has passed.
    let draining = (Arc::clone(&app), shutdown.clone());
    tokio::spawn(async move {
        signalled.cancelled().await;
        let (app, shutdown) = draining;
        app.drain();
        tracing::info!(grace = ?drain_grace, "draining, then exiting");
        tokio::time::sleep(drain_grace).await;
        shutdown.cancel();
    });
    sweeplb::webapp::run(listener, app, shutdown).await;
    Ok(())
}

async fn demo(config: sweeplb::Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    sweeplb::demo::run(config, shutdown).await?;
    Ok(())
}
