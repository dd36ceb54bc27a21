//! A new container of the service, made the way `docker-compose up --scale` makes one: the
//! template's configuration with the next container number, named as compose names. Pure
//! (an inspect in, a create request out), so every rule is a table test; the engine calls
//! around it are in `mod.rs`.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, NetworkingConfig, PortMap,
};
use ipnet::IpNet;

use super::EngineError;
use super::replica::{self, NUMBER_LABEL};

/// Marks a container sweeplb made, so that an operator can tell (`docker ps --filter
/// label=io.sweeplb.autoscaled`). Nothing in sweeplb reads it: a container it made and one
/// compose made are the same replicas.
pub(super) const AUTOSCALED_LABEL: &str = "io.sweeplb.autoscaled";

/// What `POST /containers/create` is sent.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Request {
    pub(super) name: String,
    pub(super) body: ContainerCreateBody,
}

/// The number after the highest any container of the service has, running or not: compose
/// counts the same way, so a later `docker-compose up --scale` does not reuse one.
pub(super) fn next_number(numbers: impl IntoIterator<Item = Option<u32>>) -> u32 {
    numbers
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
        .saturating_add(1)
}

/// The create request for container `number` of `project`'s `service`, from `template`'s
/// inspect.
///
/// Copied from the template's `Config`: image, command, entrypoint, environment, labels, user,
/// working directory, exposed ports, healthcheck, stop signal and timeout, tty and stdin
/// (compose service options all). Not copied: the hostname (the engine gives each container its
/// id), the attach flags. The `HostConfig` is copied whole (mounts, restart policy, security
/// options, capabilities, resources, logging), except a port binding to a fixed host port,
/// which a second container cannot have, and legacy links, rewritten from how an inspect shows
/// them to how a create takes them. Of the template's networks only the one in `subnets` is
/// joined (API 1.41 takes one network at create), with the service's name as an alias, as
/// compose does.
pub(super) fn request(
    template: &ContainerInspectResponse,
    service: &str,
    project: &str,
    number: u32,
    subnets: &[IpNet],
) -> Result<Request, EngineError> {
    let template_name = template
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/');
    let config = template.config.as_ref().ok_or_else(|| {
        EngineError::Service(format!(
            "container {template_name} has no configuration in its inspect"
        ))
    })?;
    let image = config
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| EngineError::Service(format!("container {template_name} has no image")))?;
    let network = network(template, template_name, subnets)?;

    let mut labels = config.labels.clone().unwrap_or_default();
    labels.insert(NUMBER_LABEL.to_string(), number.to_string());
    labels.insert(AUTOSCALED_LABEL.to_string(), "true".to_string());

    let mut host_config = template.host_config.clone().unwrap_or_default();
    host_config.network_mode = Some(network.clone());
    host_config.port_bindings = host_config.port_bindings.map(free_ports_only);
    host_config.links = host_config
        .links
        .map(|links| links.iter().filter_map(|l| link(l)).collect());

    let body = ContainerCreateBody {
        image: Some(image),
        cmd: config.cmd.clone(),
        entrypoint: config.entrypoint.clone(),
        env: config.env.clone(),
        labels: Some(labels),
        user: config.user.clone(),
        working_dir: config.working_dir.clone(),
        exposed_ports: config.exposed_ports.clone(),
        healthcheck: config.healthcheck.clone(),
        stop_signal: config.stop_signal.clone(),
        stop_timeout: config.stop_timeout,
        tty: config.tty,
        open_stdin: config.open_stdin,
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network,
                EndpointSettings {
                    aliases: Some(vec![service.to_string()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    Ok(Request {
        name: name(template_name, project, service, number),
        body,
    })
}

/// Compose v1 names `{project}_{service}_{n}`, v2 `{project}-{service}-{n}`: the new container
/// follows the template, so `docker ps` lists the service's containers together; a template
/// named otherwise (by hand) gets v2's form.
fn name(template: &str, project: &str, service: &str, number: u32) -> String {
    let v1 = template
        .strip_prefix(&format!("{project}_{service}_"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if v1 {
        format!("{project}_{service}_{number}")
    } else {
        format!("{project}-{service}-{number}")
    }
}

/// The template's network whose address is in the swept ranges. A stopped template has no
/// address on any network: then its one network, if it has only one, since the new container
/// must join the network the balancer sweeps and there is no other to choose.
fn network(
    template: &ContainerInspectResponse,
    template_name: &str,
    subnets: &[IpNet],
) -> Result<String, EngineError> {
    let networks = template
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    if let Some(name) = replica::network_in(networks, subnets) {
        return Ok(name);
    }
    let stopped = networks
        .into_iter()
        .flatten()
        .all(|(_, e)| e.ip_address.as_deref().unwrap_or_default().is_empty());
    let only = match networks {
        Some(networks) if networks.len() == 1 => networks.keys().next(),
        _ => None,
    };
    if let Some(only) = only.filter(|n| stopped && !matches!(n.as_str(), "host" | "none")) {
        return Ok(only.clone());
    }
    let ranges: Vec<String> = subnets.iter().map(|n| n.to_string()).collect();
    Err(EngineError::Service(format!(
        "cannot tell which network a new container of {template_name} should join: none of its \
         addresses is in the swept ranges ({}); its networks: {}",
        ranges.join(", "),
        replica::networks_text(networks)
    )))
}

/// Drops the bindings to a fixed host port: the template holds that port, so a second
/// container could not start. An empty host port (or 0) lets the engine pick a free one and a
/// range lets it pick one of the range, so those stay.
fn free_ports_only(bindings: PortMap) -> PortMap {
    bindings
        .into_iter()
        .filter_map(|(port, list)| {
            let kept: Vec<_> = list
                .into_iter()
                .flatten()
                .filter(|b| {
                    let host = b.host_port.as_deref().unwrap_or_default();
                    host.is_empty() || host == "0" || host.contains('-')
                })
                .collect();
            (!kept.is_empty()).then_some((port, Some(kept)))
        })
        .collect()
}

/// An inspect shows a legacy link as `/target:/this-container/alias`; a create takes
/// `target:alias` (and would refuse the template's own name in it).
fn link(shown: &str) -> Option<String> {
    let (target, alias) = shown.split_once(':')?;
    let alias = alias.rsplit('/').next().filter(|a| !a.is_empty())?;
    Some(format!("{}:{alias}", target.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::PortBinding;
    use serde_json::json;

    const SWEPT: &str = "192.168.42.0/24";

    fn swept() -> Vec<IpNet> {
        vec![SWEPT.parse().unwrap()]
    }

    /// What Docker 20.10 answers for a compose v2 webapp of docker/compose.yaml (trimmed to
    /// what matters, with a published port added).
    fn template() -> serde_json::Value {
        json!({
            "Id": "5e1c0ffee",
            "Created": "2026-12-03T08:00:00.000000001Z",
            "Name": "/lab-webapp-2",
            "State": {"Status": "running", "Running": true},
            "Image": "sha256:0123456789abcdef",
            "Config": {
                "Hostname": "5e1c0ffee",
                "User": "65534:65534",
                "AttachStdout": true,
                "ExposedPorts": {"3000/tcp": {}},
                "Tty": false,
                "OpenStdin": false,
                "Env": ["RUST_LOG=info", "PATH=/bin"],
                "Cmd": ["--listen", "0.0.0.0:3000"],
                "Image": "sweeplb-webapp:latest",
                "WorkingDir": "/",
                "Entrypoint": ["/sweeplb", "webapp"],
                "Labels": {
                    "com.docker.compose.project": "lab",
                    "com.docker.compose.service": "webapp",
                    "com.docker.compose.container-number": "2",
                    "com.docker.compose.oneoff": "False"
                },
                "StopSignal": "SIGTERM",
                "StopTimeout": 15,
                "Healthcheck": {"Test": ["CMD", "/sweeplb", "health"], "Interval": 1000000000}
            },
            "HostConfig": {
                "NetworkMode": "lab_lab",
                "PortBindings": {
                    "3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}],
                    "3001/tcp": [{"HostIp": "", "HostPort": ""}],
                    "3002/tcp": [
                        {"HostIp": "", "HostPort": "9000"},
                        {"HostIp": "", "HostPort": "0"}
                    ],
                    "3003/tcp": [{"HostIp": "", "HostPort": "9100-9199"}]
                },
                "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                "Binds": ["/srv/secret:/run/secrets/sweeplb-identity:ro"],
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges:true"],
                "ReadonlyRootfs": true,
                "Links": ["/lab-db-1:/lab-webapp-2/db"],
                "Isolation": "",
                "CgroupnsMode": "private"
            },
            "NetworkSettings": {
                "Networks": {
                    "bridge": {"IPAddress": "172.17.0.5"},
                    "lab_lab": {"IPAddress": "192.168.42.3", "Aliases": ["webapp", "5e1c0ffee"]}
                }
            }
        })
    }

    fn with(
        mut value: serde_json::Value,
        path: &[&str],
        new: serde_json::Value,
    ) -> serde_json::Value {
        let mut at = &mut value;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = new;
        value
    }

    fn inspect(value: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(value).expect("an inspect as the engine sends it")
    }

    fn built(value: serde_json::Value, number: u32) -> Result<Request, EngineError> {
        request(&inspect(value), "webapp", "lab", number, &swept())
    }

    #[test]
    fn the_new_container_is_the_template_with_the_next_number() {
        let r = built(template(), 5).expect("a request");
        assert_eq!(r.name, "lab-webapp-5");
        let b = &r.body;
        assert_eq!(b.image.as_deref(), Some("sweeplb-webapp:latest"));
        assert_eq!(b.cmd, Some(vec!["--listen".into(), "0.0.0.0:3000".into()]));
        assert_eq!(b.entrypoint, Some(vec!["/sweeplb".into(), "webapp".into()]));
        assert_eq!(
            b.env,
            Some(vec!["RUST_LOG=info".into(), "PATH=/bin".into()])
        );
        assert_eq!(b.user.as_deref(), Some("65534:65534"));
        assert_eq!(b.working_dir.as_deref(), Some("/"));
        assert_eq!(b.exposed_ports, Some(vec!["3000/tcp".into()]));
        assert_eq!(b.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(b.stop_timeout, Some(15));
        assert!(b.healthcheck.is_some());
        assert_eq!(b.hostname, None, "each container keeps its own hostname");
        assert_eq!(b.attach_stdout, None);

        let labels = b.labels.as_ref().expect("labels");
        assert_eq!(labels[NUMBER_LABEL], "5");
        assert_eq!(labels[AUTOSCALED_LABEL], "true");
        assert_eq!(labels["com.docker.compose.project"], "lab");
        assert_eq!(labels["com.docker.compose.service"], "webapp");
        assert_eq!(labels["com.docker.compose.oneoff"], "False");
        assert_eq!(labels.len(), 5);

        let host = b.host_config.as_ref().expect("host config");
        assert_eq!(
            host.binds,
            Some(vec!["/srv/secret:/run/secrets/sweeplb-identity:ro".into()])
        );
        assert_eq!(host.cap_drop, Some(vec!["ALL".into()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".into()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(
            host.restart_policy
                .as_ref()
                .and_then(|p| p.name)
                .map(|n| n.to_string())
                .as_deref(),
            Some("unless-stopped")
        );
        assert_eq!(host.links, Some(vec!["lab-db-1:db".into()]));
        assert_eq!(host.network_mode.as_deref(), Some("lab_lab"));
    }

    #[test]
    fn only_the_network_in_the_swept_ranges_is_joined_with_the_service_alias() {
        let r = built(template(), 5).expect("a request");
        let endpoints = r
            .body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(endpoints.len(), 1, "{endpoints:?}");
        let lab = &endpoints["lab_lab"];
        assert_eq!(lab.aliases, Some(vec!["webapp".into()]));
        assert_eq!(lab.ip_address, None, "the engine picks the address");

        // The same template with its addresses the other way round joins the other network.
        let swapped = with(
            with(
                template(),
                &["NetworkSettings", "Networks", "bridge", "IPAddress"],
                json!("192.168.42.9"),
            ),
            &["NetworkSettings", "Networks", "lab_lab", "IPAddress"],
            json!("172.18.0.3"),
        );
        let r = built(swapped, 5).expect("a request");
        assert_eq!(
            r.body.host_config.unwrap().network_mode.as_deref(),
            Some("bridge")
        );
    }

    #[test]
    fn a_network_that_cannot_be_told_is_an_error_naming_the_networks() {
        let elsewhere = with(
            template(),
            &["NetworkSettings", "Networks", "lab_lab", "IPAddress"],
            json!("10.1.2.3"),
        );
        let e = built(elsewhere, 5).unwrap_err().to_string();
        assert!(e.contains("lab-webapp-2"), "{e}");
        assert!(e.contains(SWEPT), "{e}");
        assert!(e.contains("bridge (172.17.0.5), lab_lab (10.1.2.3)"), "{e}");

        // Stopped, on two networks: no address says which.
        let stopped = with(
            with(
                template(),
                &["NetworkSettings", "Networks", "bridge", "IPAddress"],
                json!(""),
            ),
            &["NetworkSettings", "Networks", "lab_lab", "IPAddress"],
            json!(""),
        );
        let e = built(stopped, 5).unwrap_err().to_string();
        assert!(
            e.contains("bridge (no address), lab_lab (no address)"),
            "{e}"
        );
    }

    #[test]
    fn a_stopped_template_on_one_network_gives_that_network() {
        let stopped = with(
            template(),
            &["NetworkSettings", "Networks"],
            json!({"lab_lab": {"IPAddress": ""}}),
        );
        let r = built(stopped, 5).expect("a request");
        assert_eq!(
            r.body.host_config.unwrap().network_mode.as_deref(),
            Some("lab_lab")
        );
    }

    #[test]
    fn fixed_host_ports_are_dropped_and_free_ones_kept() {
        let r = built(template(), 5).expect("a request");
        let ports = r.body.host_config.unwrap().port_bindings.expect("bindings");
        let binding = |host: &str| PortBinding {
            host_ip: Some(String::new()),
            host_port: Some(host.to_string()),
        };
        let want: PortMap = HashMap::from([
            ("3001/tcp".to_string(), Some(vec![binding("")])),
            ("3002/tcp".to_string(), Some(vec![binding("0")])),
            ("3003/tcp".to_string(), Some(vec![binding("9100-9199")])),
        ]);
        assert_eq!(ports, want);
    }

    #[test]
    fn names_follow_the_templates_compose_version() {
        let table: &[(&str, &str)] = &[
            ("/lab-webapp-2", "lab-webapp-7"),
            ("/lab_webapp_2", "lab_webapp_7"),
            ("/lab_webapp_12", "lab_webapp_7"),
            // Renamed by hand, or compose v1's temporary name during a recreate.
            ("/my-webapp", "lab-webapp-7"),
            ("/lab_webapp_2_5e1c0ffee", "lab-webapp-7"),
            ("/lab_webapp_", "lab-webapp-7"),
        ];
        for (template_name, want) in table {
            let r = built(with(template(), &["Name"], json!(template_name)), 7).expect("a request");
            assert_eq!(&r.name, want, "{template_name}");
        }
    }

    #[test]
    fn the_next_number_is_after_the_highest_of_all() {
        let table: &[(&[Option<u32>], u32)] = &[
            (&[], 1),
            (&[None], 1),
            (&[Some(1), Some(2), Some(3)], 4),
            // Stopped and removed ones leave gaps; the gap is not reused.
            (&[Some(1), Some(5), None, Some(3)], 6),
            (&[Some(u32::MAX)], u32::MAX),
        ];
        for (numbers, want) in table {
            assert_eq!(next_number(numbers.iter().copied()), *want, "{numbers:?}");
        }
    }

    #[test]
    fn a_template_without_an_image_is_refused() {
        let e = built(with(template(), &["Config", "Image"], json!("")), 5)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "container lab-webapp-2 has no image");
    }

    #[test]
    fn links_are_rewritten_for_create() {
        assert_eq!(
            link("/lab_db_1:/lab_web_1/db").as_deref(),
            Some("lab_db_1:db")
        );
        assert_eq!(link("/lab_db_1:/lab_web_1/"), None);
        assert_eq!(link("nonsense"), None);
    }
}
