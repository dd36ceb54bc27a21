//! The engine's answers read into [`Replica`]s: which address counts (the one inside the swept
//! ranges), which number a container has, and which compose project is the service's. Pure, so
//! every rule is a table test.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerSummary, EndpointSettings};
use ipnet::IpNet;

use super::{EngineError, Mode, Replica};

/// Compose's labels, the same in compose v1 and v2.
pub(super) const SERVICE_LABEL: &str = "com.docker.compose.service";
pub(super) const PROJECT_LABEL: &str = "com.docker.compose.project";
pub(super) const NUMBER_LABEL: &str = "com.docker.compose.container-number";
/// `docker-compose run` containers: of the service, but not replicas of it.
pub(super) const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";
/// Swarm's labels on a task's container.
pub(super) const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.id";
const SWARM_TASK_LABEL: &str = "com.docker.swarm.task.name";

/// A one-off container (`docker-compose run`): compose v1 writes `True`, v2 `True`/`False`.
pub(super) fn oneoff(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(ONEOFF_LABEL))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The container's number: compose's `container-number`, or the slot in a swarm task's name
/// (`{service}.{slot}.{task id}`; a global service's tasks have a node id there, so none).
pub(super) fn number(
    mode: &Mode,
    service: &str,
    labels: Option<&HashMap<String, String>>,
) -> Option<u32> {
    let labels = labels?;
    match mode {
        Mode::Compose { .. } => labels.get(NUMBER_LABEL)?.parse().ok(),
        Mode::Swarm { .. } => labels
            .get(SWARM_TASK_LABEL)?
            .strip_prefix(service)?
            .strip_prefix('.')?
            .split('.')
            .next()?
            .parse()
            .ok(),
    }
}

/// The address the container has on a network inside `subnets`. Networks are taken in name
/// order, so a container on two such networks always gives the same one.
pub(super) fn address(
    networks: Option<&HashMap<String, EndpointSettings>>,
    subnets: &[IpNet],
) -> Option<IpAddr> {
    let mut networks: Vec<_> = networks?.iter().collect();
    networks.sort_by(|a, b| a.0.cmp(b.0));
    networks
        .into_iter()
        .flat_map(|(_, endpoint)| endpoint_addresses(endpoint))
        .find(|ip| subnets.iter().any(|net| net.contains(ip)))
}

/// The network (by name) on which the container has its address inside `subnets`.
pub(super) fn network_in(
    networks: Option<&HashMap<String, EndpointSettings>>,
    subnets: &[IpNet],
) -> Option<String> {
    let mut networks: Vec<_> = networks?.iter().collect();
    networks.sort_by(|a, b| a.0.cmp(b.0));
    networks
        .into_iter()
        .find(|(_, endpoint)| {
            endpoint_addresses(endpoint).any(|ip| subnets.iter().any(|net| net.contains(&ip)))
        })
        .map(|(name, _)| name.clone())
}

fn endpoint_addresses(endpoint: &EndpointSettings) -> impl Iterator<Item = IpAddr> + '_ {
    [&endpoint.ip_address, &endpoint.global_ipv6_address]
        .into_iter()
        .filter_map(|a| a.as_deref()?.parse().ok())
}

/// The container's networks and addresses, for an error that says why none would do:
/// `lab (192.168.42.3), bridge (no address)`.
pub(super) fn networks_text(networks: Option<&HashMap<String, EndpointSettings>>) -> String {
    let mut networks: Vec<_> = networks.into_iter().flatten().collect();
    if networks.is_empty() {
        return "none".into();
    }
    networks.sort_by(|a, b| a.0.cmp(b.0));
    networks
        .iter()
        .map(|(name, endpoint)| {
            let addresses: Vec<String> = endpoint_addresses(endpoint)
                .map(|ip| ip.to_string())
                .collect();
            if addresses.is_empty() {
                format!("{name} (no address)")
            } else {
                format!("{name} ({})", addresses.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A container from the list. `None` for an entry without an id (the engine always sends one).
pub(super) fn from_summary(
    summary: &ContainerSummary,
    mode: &Mode,
    service: &str,
    subnets: &[IpNet],
) -> Option<Replica> {
    let id = summary.id.clone()?;
    // The list also gives a container's legacy link names (`/other/alias`); its own name is the
    // one without a second slash.
    let name = summary
        .names
        .iter()
        .flatten()
        .map(|n| n.trim_start_matches('/'))
        .find(|n| !n.contains('/'))
        .unwrap_or_default()
        .to_string();
    let networks = summary
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    Some(Replica {
        id,
        name,
        number: number(mode, service, summary.labels.as_ref()),
        state: summary.state.map(|s| s.to_string()).unwrap_or_default(),
        addr: address(networks, subnets),
        created: UNIX_EPOCH
            + Duration::from_secs(
                summary
                    .created
                    .and_then(|c| u64::try_from(c).ok())
                    .unwrap_or(0),
            ),
    })
}

/// A container from an inspect.
pub(super) fn from_inspect(
    container: &ContainerInspectResponse,
    mode: &Mode,
    service: &str,
    subnets: &[IpNet],
) -> Option<Replica> {
    let id = container.id.clone()?;
    let labels = container.config.as_ref().and_then(|c| c.labels.as_ref());
    let networks = container
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    Some(Replica {
        id,
        name: container
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        number: number(mode, service, labels),
        state: container
            .state
            .as_ref()
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        addr: address(networks, subnets),
        // RFC 3339 in UTC with nanoseconds; an unreadable one sorts first, as the oldest.
        created: container
            .created
            .as_deref()
            .and_then(|c| humantime::parse_rfc3339(c).ok())
            .unwrap_or(UNIX_EPOCH),
    })
}

/// Oldest first; the same creation second (the list's resolution) by number, then name.
pub(super) fn sort(replicas: &mut [Replica]) {
    replicas.sort_by(|a, b| (a.created, a.number, &a.name).cmp(&(b.created, b.number, &b.name)));
}

/// The compose project whose containers are the service's: the only one, or, with the service
/// in several projects, the balancer's own (`own`, from its own container's labels).
pub(super) fn project(
    service: &str,
    projects: &BTreeSet<String>,
    own: Option<&str>,
) -> Result<String, EngineError> {
    match projects.len() {
        0 => Err(EngineError::Service(format!(
            "no container of compose service {service} found (label \
             {SERVICE_LABEL}={service}); start one with docker-compose up first"
        ))),
        1 => Ok(projects.first().cloned().unwrap_or_default()),
        _ => match own {
            Some(own) if projects.contains(own) => Ok(own.to_string()),
            _ => Err(EngineError::Service(format!(
                "compose service {service} has containers in several projects ({}), and the \
                 balancer is not a container of one of them{}: run it in the service's \
                 project, or give each project its own service name",
                projects.iter().cloned().collect::<Vec<_>>().join(", "),
                match own {
                    Some(own) => format!(" (its project: {own})"),
                    None => String::new(),
                }
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Networks and their addresses, or labels and their values.
    type Pairs = &'static [(&'static str, &'static str)];

    fn net(s: &str) -> IpNet {
        s.parse().expect("a test subnet")
    }

    fn endpoint(ip: &str) -> EndpointSettings {
        EndpointSettings {
            ip_address: Some(ip.to_string()),
            ..Default::default()
        }
    }

    fn networks(list: &[(&str, &str)]) -> HashMap<String, EndpointSettings> {
        list.iter()
            .map(|(name, ip)| (name.to_string(), endpoint(ip)))
            .collect()
    }

    fn labels(list: &[(&str, &str)]) -> HashMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_address_is_the_one_inside_the_swept_ranges() {
        let swept = [net("192.168.42.0/24"), net("fd00:42::/64")];
        let table: &[(Pairs, Option<&str>)] = &[
            (&[("lab", "192.168.42.7")], Some("192.168.42.7")),
            (
                &[("bridge", "172.17.0.2"), ("lab", "192.168.42.7")],
                Some("192.168.42.7"),
            ),
            (&[("bridge", "172.17.0.2")], None),
            // A stopped container keeps its attachment but has no address.
            (&[("lab", "")], None),
            (&[], None),
            // Two networks in range: the first by name, every time.
            (
                &[("b", "192.168.42.9"), ("a", "192.168.42.8")],
                Some("192.168.42.8"),
            ),
        ];
        for (list, want) in table {
            let nets = networks(list);
            let got = address(Some(&nets), &swept);
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{list:?}");
        }
        let v6 = HashMap::from([(
            "lab6".to_string(),
            EndpointSettings {
                ip_address: Some("172.30.0.2".into()),
                global_ipv6_address: Some("fd00:42::5".into()),
                ..Default::default()
            },
        )]);
        assert_eq!(
            address(Some(&v6), &swept),
            Some("fd00:42::5".parse().unwrap())
        );
        assert_eq!(address(None, &swept), None);
    }

    #[test]
    fn the_network_is_named_by_its_address_in_range() {
        let swept = [net("192.168.42.0/24")];
        let nets = networks(&[("bridge", "172.17.0.2"), ("lab_lab", "192.168.42.7")]);
        assert_eq!(network_in(Some(&nets), &swept).as_deref(), Some("lab_lab"));
        assert_eq!(network_in(Some(&nets), &[net("10.0.0.0/8")]), None);
        assert_eq!(
            networks_text(Some(&networks(&[("lab", ""), ("bridge", "172.17.0.2")]))),
            "bridge (172.17.0.2), lab (no address)"
        );
        assert_eq!(networks_text(None), "none");
    }

    #[test]
    fn numbers_from_compose_labels_and_swarm_task_names() {
        let compose = Mode::Compose {
            project: "lab".into(),
        };
        let swarm = Mode::Swarm { id: "x".into() };
        let table: &[(&Mode, &str, Pairs, Option<u32>)] = &[
            (&compose, "web", &[(NUMBER_LABEL, "3")], Some(3)),
            (&compose, "web", &[(NUMBER_LABEL, "three")], None),
            (&compose, "web", &[], None),
            (
                &swarm,
                "lab_web",
                &[(SWARM_TASK_LABEL, "lab_web.2.k3j4h5g6")],
                Some(2),
            ),
            (
                &swarm,
                "lab.web",
                &[(SWARM_TASK_LABEL, "lab.web.12.k3j4h5g6")],
                Some(12),
            ),
            // A global service's task: the node id where a replicated one has its slot.
            (
                &swarm,
                "lab_web",
                &[(SWARM_TASK_LABEL, "lab_web.n0d3id.k3j4h5g6")],
                None,
            ),
            (
                &swarm,
                "lab_web",
                &[(SWARM_TASK_LABEL, "other.2.k3j4h5g6")],
                None,
            ),
            (&swarm, "lab_web", &[(NUMBER_LABEL, "2")], None),
        ];
        for (mode, service, list, want) in table {
            let l = labels(list);
            assert_eq!(
                number(mode, service, Some(&l)),
                *want,
                "{mode:?} {service} {list:?}"
            );
        }
        assert_eq!(number(&compose, "web", None), None);
    }

    #[test]
    fn oneoff_containers_are_told_apart() {
        assert!(oneoff(Some(&labels(&[(ONEOFF_LABEL, "True")]))));
        assert!(!oneoff(Some(&labels(&[(ONEOFF_LABEL, "False")]))));
        assert!(!oneoff(Some(&labels(&[]))));
        assert!(!oneoff(None));
    }

    #[test]
    fn a_list_entry_and_an_inspect_read_alike() {
        let swept = [net("192.168.77.0/24")];
        let mode = Mode::Compose {
            project: "engtest".into(),
        };
        let summary: ContainerSummary = serde_json::from_value(serde_json::json!({
            "Id": "abc123",
            "Names": ["/engtest_db_1/web", "/engtest_web_1"],
            "Created": 1_764_000_000,
            "State": "running",
            "Labels": {NUMBER_LABEL: "1"},
            "NetworkSettings": {"Networks": {"engtest": {"IPAddress": "192.168.77.2"}}}
        }))
        .expect("a list entry");
        let inspect: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "Id": "abc123",
            "Name": "/engtest_web_1",
            "Created": "2025-11-24T16:00:00.123456789Z",
            "State": {"Status": "running"},
            "Config": {"Labels": {NUMBER_LABEL: "1"}},
            "NetworkSettings": {"Networks": {"engtest": {"IPAddress": "192.168.77.2"}}}
        }))
        .expect("an inspect");
        let want = Replica {
            id: "abc123".into(),
            name: "engtest_web_1".into(),
            number: Some(1),
            state: "running".into(),
            addr: Some("192.168.77.2".parse().unwrap()),
            created: UNIX_EPOCH + Duration::from_secs(1_764_000_000),
        };
        assert_eq!(
            from_summary(&summary, &mode, "web", &swept),
            Some(want.clone())
        );
        let from_inspect = from_inspect(&inspect, &mode, "web", &swept).expect("has an id");
        assert_eq!(
            from_inspect.created,
            want.created + Duration::from_nanos(123_456_789)
        );
        assert_eq!(
            Replica {
                created: want.created,
                ..from_inspect
            },
            want
        );
    }

    #[test]
    fn oldest_first() {
        let at = |secs: u64, number: u32, name: &str| Replica {
            id: name.into(),
            name: name.into(),
            number: Some(number),
            state: "running".into(),
            addr: None,
            created: UNIX_EPOCH + Duration::from_secs(secs),
        };
        let mut replicas = vec![
            at(30, 1, "c"),
            at(10, 3, "b"),
            at(10, 2, "a"),
            at(20, 9, "d"),
        ];
        sort(&mut replicas);
        let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "d", "c"]);
    }

    #[test]
    fn the_project_is_the_only_one_or_the_balancers_own() {
        let set = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(project("web", &set(&["lab"]), None).unwrap(), "lab");
        assert_eq!(
            project("web", &set(&["lab"]), Some("other")).unwrap(),
            "lab"
        );
        assert_eq!(project("web", &set(&["a", "b"]), Some("b")).unwrap(), "b");

        let none = project("web", &set(&[]), None).unwrap_err().to_string();
        assert_eq!(
            none,
            "no container of compose service web found (label \
             com.docker.compose.service=web); start one with docker-compose up first"
        );
        let several = project("web", &set(&["a", "b"]), None)
            .unwrap_err()
            .to_string();
        assert!(several.contains("several projects (a, b)"), "{several}");
        let elsewhere = project("web", &set(&["a", "b"]), Some("c"))
            .unwrap_err()
            .to_string();
        assert!(elsewhere.contains("(its project: c)"), "{elsewhere}");
    }
}
