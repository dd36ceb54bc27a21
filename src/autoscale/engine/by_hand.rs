//! Manual checks against the real engine, `#[ignore]`d: they need the engine at
//! /var/run/docker.sock, docker-compose, no swarm on the engine, and the images of
//! `SWEEPLB_TAG=engine-check docker/build.sh` (or `SWEEPLB_TAG`'s). Run them with
//! `cargo nextest run --run-ignored only autoscale::engine::by_hand --no-capture`.
//! Each makes its own networks (192.168.77.0/24, 192.168.78.0/24, 10.77.77.0/24), containers
//! and single-node swarm, and a drop guard removes them whether it passes or not. The Docker
//! end-to-end tests (tests/it) are what covers the engine in CI.

use super::*;
use std::process::Command;

const PROJECT: &str = "engtest";
const SUBNET: &str = "192.168.77.0/24";
const SOCKET: &str = "unix:///var/run/docker.sock";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes everything the test made, pass or fail.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={PROJECT}"),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            quiet(&["rm", "-f", "-v", id]);
        }
        quiet(&["rm", "-f", "-v", "engtest_web_2"]);
        quiet(&["network", "rm", PROJECT]);
    }
}

fn show(step: &str, replicas: &[Replica]) {
    println!("{step}:");
    for r in replicas {
        println!(
            "  {} #{:?} {} {:?} id={}",
            r.name,
            r.number,
            r.state,
            r.addr,
            &r.id[..12]
        );
    }
}

/// connect, replicas, create_from (through a 409), stop, start and remove, on containers made
/// with `docker run` and compose's labels, a one-off container and a name taken
/// without labels beside them.
#[tokio::test]
#[ignore = "needs the Docker engine and the images of docker/build.sh; run by hand"]
async fn by_hand() {
    let tag = std::env::var("SWEEPLB_TAG").unwrap_or_else(|_| "engine-check".into());
    let image = format!("sweeplb-webapp:{tag}");
    let subnets: Vec<IpNet> = vec![SUBNET.parse().unwrap()];
    let timeout = Duration::from_secs(10);
    let _cleanup = Cleanup;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();

    docker(&["network", "create", "--subnet", SUBNET, PROJECT]);
    docker(&[
        "run",
        "-d",
        "--network",
        PROJECT,
        "--name",
        "engtest_web_1",
        "--label",
        "com.docker.compose.project=engtest",
        "--label",
        "com.docker.compose.service=web",
        "--label",
        "com.docker.compose.container-number=1",
        "--label",
        "com.docker.compose.oneoff=False",
        // A fixed host port, which a second container could not bind.
        "-p",
        &format!("127.0.0.1:{port}:3000"),
        "--stop-timeout",
        "3",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        &image,
    ]);
    // A one-off `run` container of the service: never a replica.
    docker(&[
        "create",
        "--network",
        PROJECT,
        "--name",
        "engtest_web_run_1",
        "--label",
        "com.docker.compose.project=engtest",
        "--label",
        "com.docker.compose.service=web",
        "--label",
        "com.docker.compose.oneoff=True",
        &image,
    ]);
    // Takes the next number's name without the labels, as another process would have
    // just made it: the create meets 409 and goes on to number 3.
    docker(&["create", "--name", "engtest_web_2", &image]);

    let missing = Engine::connect(SOCKET, "nosuch", &subnets, timeout)
        .await
        .err()
        .expect("no such service");
    println!("connect to service nosuch: {missing}");
    assert_eq!(missing.class(), "service");

    let engine = Engine::connect(SOCKET, "web", &subnets, timeout)
        .await
        .expect("connects");
    println!("mode: {:?}", engine.mode);
    assert_eq!(
        engine.mode,
        Mode::Compose {
            project: PROJECT.into()
        }
    );
    let not_swarm = engine.service_replicas().await.expect_err("compose");
    println!("service_replicas in compose mode: {not_swarm}");

    let replicas = engine.replicas().await.expect("lists");
    show("replicas", &replicas);
    assert_eq!(replicas.len(), 1);
    let template = replicas[0].clone();
    assert!(template.running());
    assert_eq!(template.number, Some(1));
    assert!(template.addr.is_some_and(|a| subnets[0].contains(&a)));

    let new = engine
        .create_from(&template)
        .await
        .expect("creates and starts");
    show("create_from", std::slice::from_ref(&new));
    assert_eq!(new.name, "engtest_web_3");
    assert_eq!(new.number, Some(3));
    assert!(new.running());
    assert!(new.addr.is_some_and(|a| subnets[0].contains(&a)));
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &new.id]);
    println!("its labels: {labels}");
    assert!(
        labels.contains(r#""io.sweeplb.autoscaled":"true""#),
        "{labels}"
    );
    assert!(
        labels.contains(r#""com.docker.compose.container-number":"3""#),
        "{labels}"
    );
    let aliases = docker(&[
        "inspect",
        "-f",
        "{{json .NetworkSettings.Networks.engtest.Aliases}}",
        &new.id,
    ]);
    println!("its aliases: {aliases}");
    assert!(aliases.contains(r#""web""#), "{aliases}");
    let host = docker(&[
        "inspect",
        "-f",
        "{{json .HostConfig.PortBindings}} {{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{.Config.StopTimeout}}",
        &new.id,
    ]);
    println!("its port bindings, read-only, cap_drop, stop timeout: {host}");
    assert_eq!(host, r#"{} true ["ALL"] 3"#);

    let replicas = engine.replicas().await.expect("lists");
    show("replicas", &replicas);
    assert_eq!(replicas.len(), 2);
    assert_eq!(replicas[1].id, new.id, "oldest first");

    engine.stop(&new.id).await.expect("stops");
    engine
        .stop(&new.id)
        .await
        .expect("a stopped one stops (304)");
    let replicas = engine.replicas().await.expect("lists");
    show("after stop", &replicas);
    let stopped = replicas
        .iter()
        .find(|r| r.id == new.id)
        .expect("still there");
    assert_eq!(stopped.state, "exited");
    assert_eq!(stopped.addr, None);

    let restarted = engine.start(&new.id).await.expect("starts");
    show("start", std::slice::from_ref(&restarted));
    assert!(restarted.running());
    assert!(restarted.addr.is_some());
    engine
        .start(&new.id)
        .await
        .expect("a running one starts (304)");

    engine.remove(&new.id).await.expect("removes a running one");
    engine
        .remove(&new.id)
        .await
        .expect("a removed one is removed (404)");
    let replicas = engine.replicas().await.expect("lists");
    show("after remove", &replicas);
    assert_eq!(replicas.len(), 1);

    let gone = engine
        .stop("engtest_nosuch")
        .await
        .expect_err("no such container");
    println!("stop of a missing container: {gone}");
    assert_eq!(gone.class(), "api");
}

/// Removes the swarm the test made, its service and network, and the node's
/// `docker_gwbridge` if the swarm made it.
struct LeaveSwarm {
    had_gwbridge: bool,
}

impl Drop for LeaveSwarm {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| Command::new("docker").args(args).output();
        let _ = quiet(&["service", "rm", "engtest_web"]);
        // The service's containers go after `service rm` returns; its network only then.
        for _ in 0..60 {
            let left = quiet(&[
                "ps",
                "-aq",
                "--filter",
                "label=com.docker.swarm.service.name=engtest_web",
            ]);
            if left.is_ok_and(|o| o.stdout.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = quiet(&["network", "rm", "engtest_sw"]);
        let _ = quiet(&["swarm", "leave", "--force"]);
        if !self.had_gwbridge {
            let _ = quiet(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// The swarm half of [`by_hand`]: a single-node swarm it makes (and leaves), one
/// replicated service on an overlay network of its own (10.77.77.0/24).
#[tokio::test]
#[ignore = "needs the Docker engine, no swarm on it, and the images of docker/build.sh"]
async fn swarm_by_hand() {
    let tag = std::env::var("SWEEPLB_TAG").unwrap_or_else(|_| "engine-check".into());
    let image = format!("sweeplb-webapp:{tag}");
    let subnet = "10.77.77.0/24";
    let subnets: Vec<IpNet> = vec![subnet.parse().unwrap()];
    let state = docker(&["info", "-f", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(state, "inactive", "runs only on an engine in no swarm");
    let had_gwbridge = Command::new("docker")
        .args(["network", "inspect", "docker_gwbridge"])
        .output()
        .is_ok_and(|o| o.status.success());
    let _leave = LeaveSwarm { had_gwbridge };
    docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    docker(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--subnet",
        subnet,
        "engtest_sw",
    ]);
    docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        "engtest_web",
        "--replicas",
        "1",
        "--network",
        "engtest_sw",
        "--endpoint-mode",
        "dnsrr",
        &image,
    ]);
    let spec_before = docker(&[
        "service",
        "inspect",
        "-f",
        "{{json .Spec.TaskTemplate}}",
        "engtest_web",
    ]);

    let engine = Engine::connect(SOCKET, "engtest_web", &subnets, Duration::from_secs(10))
        .await
        .expect("connects");
    println!("mode: {:?}", engine.mode);
    assert!(matches!(engine.mode, Mode::Swarm { .. }));
    assert_eq!(engine.service_replicas().await.expect("reads"), 1);

    engine.scale_service(2).await.expect("scales");
    assert_eq!(engine.service_replicas().await.expect("reads"), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let replicas = loop {
        let replicas = engine.replicas().await.expect("lists");
        if replicas
            .iter()
            .filter(|r| r.running() && r.addr.is_some())
            .count()
            == 2
        {
            break replicas;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two tasks within 60 s: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    show("replicas after scale_service(2)", &replicas);
    let mut numbers: Vec<_> = replicas.iter().map(|r| r.number).collect();
    numbers.sort();
    assert_eq!(numbers, [Some(1), Some(2)]);
    assert!(
        replicas
            .iter()
            .all(|r| r.addr.is_some_and(|a| subnets[0].contains(&a)))
    );
    let spec_after = docker(&[
        "service",
        "inspect",
        "-f",
        "{{json .Spec.TaskTemplate}}",
        "engtest_web",
    ]);
    assert_eq!(spec_after, spec_before, "only the count changed");

    let refused = engine
        .create_from(&replicas[0])
        .await
        .expect_err("swarm's to do");
    println!("create_from in swarm mode: {refused}");
    let refused = engine
        .start(&replicas[0].id)
        .await
        .expect_err("swarm's to do");
    println!("start in swarm mode: {refused}");

    engine.scale_service(1).await.expect("scales down");
    assert_eq!(engine.service_replicas().await.expect("reads"), 1);
}

/// Takes the compose project down, pass or fail.
struct ComposeDown {
    dir: std::path::PathBuf,
}

impl Drop for ComposeDown {
    fn drop(&mut self) {
        let file = self.dir.join("compose.yaml");
        let _ = Command::new("docker-compose")
            .args(["-p", "engcompose", "-f"])
            .arg(&file)
            .args(["down", "-v", "--remove-orphans"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`by_hand`] on a container docker-compose made (v1 here: `{project}_{service}_{n}`),
/// with a published port, a bind-mounted file and compose's hardening options, as in
/// docker/compose.yaml. Its service is `cweb`, not `web`: with [`by_hand`] running beside
/// it, `web` would be in two projects.
#[tokio::test]
#[ignore = "needs the Docker engine, docker-compose and the images of docker/build.sh"]
async fn compose_by_hand() {
    let tag = std::env::var("SWEEPLB_TAG").unwrap_or_else(|_| "engine-check".into());
    let subnet = "192.168.78.0/24";
    let subnets: Vec<IpNet> = vec![subnet.parse().unwrap()];
    let dir = std::env::temp_dir().join(format!("sweeplb-engcompose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _down = ComposeDown { dir: dir.clone() };
    std::fs::write(dir.join("mounted.txt"), "mounted\n").expect("a file to mount");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            "version: \"3.8\"\n\
             services:\n  cweb:\n    image: sweeplb-webapp:{tag}\n\
             \x20   ports: [\"127.0.0.1:{port}:3000\"]\n\
             \x20   volumes: [\"./mounted.txt:/mounted.txt:ro\"]\n\
             \x20   networks: [lab]\n    stop_grace_period: 4s\n    read_only: true\n\
             \x20   cap_drop: [ALL]\n    security_opt: [\"no-new-privileges:true\"]\n\
             networks:\n  lab:\n    ipam:\n      config: [{{subnet: \"{subnet}\"}}]\n"
        ),
    )
    .expect("a compose file");
    let out = Command::new("docker-compose")
        .args(["-p", "engcompose", "-f"])
        .arg(dir.join("compose.yaml"))
        .args(["up", "-d"])
        .output()
        .expect("docker-compose runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let engine = Engine::connect(SOCKET, "cweb", &subnets, Duration::from_secs(10))
        .await
        .expect("connects");
    assert_eq!(
        engine.mode,
        Mode::Compose {
            project: "engcompose".into()
        }
    );
    let replicas = engine.replicas().await.expect("lists");
    show("compose replicas", &replicas);
    assert_eq!(replicas.len(), 1);

    let new = engine
        .create_from(&replicas[0])
        .await
        .expect("creates and starts");
    show("create_from", std::slice::from_ref(&new));
    assert_eq!(new.name, "engcompose_cweb_2");
    assert!(new.running() && new.addr.is_some_and(|a| subnets[0].contains(&a)));
    let host = docker(&[
        "inspect",
        "-f",
        "{{json .HostConfig.PortBindings}} {{json .HostConfig.Binds}} {{.Config.StopTimeout}}",
        &new.id,
    ]);
    println!("its port bindings, binds, stop timeout: {host}");
    assert!(host.starts_with("{} ["), "{host}");
    assert!(host.contains("mounted.txt:/mounted.txt:ro"), "{host}");
    assert!(host.ends_with(" 4"), "{host}");
    let ps = Command::new("docker-compose")
        .args(["-p", "engcompose", "-f"])
        .arg(dir.join("compose.yaml"))
        .args(["ps"])
        .output()
        .expect("docker-compose runs");
    let ps = String::from_utf8_lossy(&ps.stdout);
    println!("docker-compose ps:\n{ps}");
    assert!(
        ps.contains("engcompose_cweb_2"),
        "compose counts it as its own: {ps}"
    );

    engine.stop(&new.id).await.expect("stops");
    engine.remove(&new.id).await.expect("removes");
    assert_eq!(engine.replicas().await.expect("lists").len(), 1);
}
