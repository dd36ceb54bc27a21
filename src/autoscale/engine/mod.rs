//! The Docker Engine API, and nothing else of Docker: the only calls sweeplb makes are listing
//! and inspecting containers, creating, starting, stopping and removing them, and (in a swarm)
//! inspecting and updating a service's replica count.
//!
//! It knows nothing of scaling: the controller (`autoscale/mod.rs`) decides, this carries out
//! one step at a time and says what the engine answered, so the decisions can be tested without
//! an engine and this without a controller.
//!
//! Parts: `client.rs` is every API call (the list a socket proxy must allow), each bounded in
//! time, with its failure in an operator's words; `replica.rs` reads the engine's answers
//! into [`Replica`]s; `create.rs` builds a new container's request from a template;
//! `by_hand.rs` holds the manual tests against a real engine.

#[cfg(test)]
mod by_hand;
mod client;
mod create;
mod replica;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bollard::models::ServiceSpec;
use ipnet::IpNet;

use client::{Client, Failed};
use replica::{PROJECT_LABEL, SERVICE_LABEL, SWARM_SERVICE_LABEL};

/// What went wrong talking to the engine, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    /// The socket is missing, refuses, or the engine does not answer in time.
    #[error("cannot reach the Docker engine at {at}: {detail}")]
    Unreachable { at: String, detail: String },
    /// The engine answered with an error.
    #[error("Docker engine refused {call}: {detail}")]
    Api { call: &'static str, detail: String },
    /// No container or service of that name, or it is not one sweeplb can scale.
    #[error("{0}")]
    Service(String),
}

impl EngineError {
    /// A bounded class for the metrics: `unreachable`, `api` or `service`.
    pub(crate) fn class(&self) -> &'static str {
        match self {
            EngineError::Unreachable { .. } => "unreachable",
            EngineError::Api { .. } => "api",
            EngineError::Service(_) => "service",
        }
    }
}

/// How the service is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Containers labelled `com.docker.compose.service=<service>` of this compose project.
    Compose { project: String },
    /// A swarm service of that name: its replica count is what sweeplb changes.
    Swarm { id: String },
}

/// One container of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replica {
    pub(crate) id: String,
    /// Without the leading `/`.
    pub(crate) name: String,
    /// `com.docker.compose.container-number` (compose) or the task slot (swarm), if any.
    pub(crate) number: Option<u32>,
    /// The engine's state: `running`, `exited`, `created`, `restarting`, `paused`, `dead`.
    pub(crate) state: String,
    /// Its address on a network inside the swept ranges, if it has one (a stopped container
    /// keeps its network attachment but has no address until it starts).
    pub(crate) addr: Option<IpAddr>,
    pub(crate) created: SystemTime,
}

impl Replica {
    pub(crate) fn running(&self) -> bool {
        self.state == "running"
    }
}

/// A connected engine and the service found on it.
pub(crate) struct Engine {
    pub(crate) mode: Mode,
    client: Client,
    /// The compose service, or the swarm service's name.
    service: String,
    /// The swept ranges: a replica's address is the one it has inside them.
    subnets: Vec<IpNet>,
}

/// Docker's stop timeout when a container sets none.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Engine {
    /// Connects to `docker` (`unix:///path`, or `tcp://host:port` / `http://host:port` in
    /// plain HTTP), agrees on an API version, and finds `service`: a swarm service of that
    /// name if the engine is a swarm manager that has one, else the compose service's
    /// containers (running or not). With containers
    /// of that service in several compose projects, the balancer's own project is taken (its
    /// container is found by its hostname); if that does not settle it, an error names them.
    /// `subnets` are the swept ranges: a replica's address is the one it has inside them.
    /// Every call gives up after `timeout`.
    pub(crate) async fn connect(
        docker: &str,
        service: &str,
        subnets: &[IpNet],
        timeout: Duration,
    ) -> Result<Engine, EngineError> {
        let client = Client::open(docker, timeout).await?;
        let mode = match swarm_service(&client, service).await? {
            Some(id) => Mode::Swarm { id },
            None => Mode::Compose {
                project: compose_project(&client, service).await?,
            },
        };
        Ok(Engine {
            mode,
            client,
            service: service.to_string(),
            subnets: subnets.to_vec(),
        })
    }

    /// Every container of the service, running or not, oldest first. In a swarm, the
    /// containers of this node's tasks, with the exited ones of replaced tasks that swarm keeps
    /// as history: there the count to go by is [`Engine::service_replicas`].
    pub(crate) async fn replicas(&self) -> Result<Vec<Replica>, EngineError> {
        let labels = match &self.mode {
            Mode::Compose { project } => vec![
                format!("{SERVICE_LABEL}={}", self.service),
                format!("{PROJECT_LABEL}={project}"),
            ],
            // Only this node's: the engine lists its own containers, and a task elsewhere has
            // no container here to start or stop anyway.
            Mode::Swarm { id } => vec![format!("{SWARM_SERVICE_LABEL}={id}")],
        };
        let mut replicas: Vec<Replica> = self
            .client
            .list(labels)
            .await?
            .iter()
            .filter(|c| !replica::oneoff(c.labels.as_ref()))
            .filter_map(|c| replica::from_summary(c, &self.mode, &self.service, &self.subnets))
            .collect();
        replica::sort(&mut replicas);
        Ok(replicas)
    }

    /// Starts a stopped container of the service; its address once started.
    pub(crate) async fn start(&self, id: &str) -> Result<Replica, EngineError> {
        self.compose_only("start a container")?;
        self.client.start(id).await?;
        let container = self.client.inspect(id).await?;
        let started = replica::from_inspect(&container, &self.mode, &self.service, &self.subnets)
            .ok_or_else(|| EngineError::Service(format!("container {id} has no id")))?;
        if started.addr.is_none() {
            let ranges: Vec<String> = self.subnets.iter().map(|n| n.to_string()).collect();
            return Err(EngineError::Service(format!(
                "container {} ({}) has no address in the swept ranges ({}); its networks: {}",
                started.name,
                started.state,
                ranges.join(", "),
                replica::networks_text(
                    container
                        .network_settings
                        .as_ref()
                        .and_then(|n| n.networks.as_ref())
                ),
            )));
        }
        Ok(started)
    }

    /// Creates and starts a new container from `template`'s configuration (image, command,
    /// entrypoint, environment, labels with the next container number, user, mounts, restart
    /// policy, security options, its network in the swept ranges with the service's alias),
    /// named as compose names its containers; the new container, started.
    ///
    /// The number is the next after every container of the service, running or not; if
    /// another process took it meanwhile (409), the one after. A container that was created
    /// but cannot be started (or starts with no address in the swept ranges) is removed again,
    /// so a failed attempt leaves nothing behind for the next one to trip on.
    pub(crate) async fn create_from(&self, template: &Replica) -> Result<Replica, EngineError> {
        let project = match &self.mode {
            Mode::Compose { project } => project.clone(),
            Mode::Swarm { .. } => return Err(self.swarm_refuses("create a container")),
        };
        let inspect = self.client.inspect(&template.id).await?;
        let mut number = create::next_number(self.replicas().await?.iter().map(|r| r.number));
        let mut retried = false;
        let created = loop {
            let request =
                create::request(&inspect, &self.service, &project, number, &self.subnets)?;
            match self.client.create(&request.name, request.body).await {
                Ok(created) => break created,
                Err(Failed {
                    status: Some(409), ..
                }) if !retried => {
                    retried = true;
                    number = number.saturating_add(1);
                }
                Err(failed) => return Err(failed.into()),
            }
        };
        for warning in &created.warnings {
            tracing::warn!(container = %created.id, "the Docker engine warns: {warning}");
        }
        match self.start(&created.id).await {
            Ok(started) => Ok(started),
            Err(e) => {
                if let Err(removal) = self.client.remove(&created.id).await {
                    tracing::warn!(
                        container = %created.id,
                        "a container that did not start could not be removed: {}",
                        EngineError::from(removal)
                    );
                }
                Err(e)
            }
        }
    }

    /// Stops a container with its own grace period (its `StopTimeout`, else the engine's 10 s).
    pub(crate) async fn stop(&self, id: &str) -> Result<(), EngineError> {
        let container = self.client.inspect(id).await?;
        let grace = container
            .config
            .and_then(|c| c.stop_timeout)
            .map_or(DEFAULT_STOP_TIMEOUT, |t| {
                Duration::from_secs(u64::try_from(t).unwrap_or(0))
            });
        Ok(self.client.stop(id, grace).await?)
    }

    /// Removes a container (stopping it first if it runs). One already gone is removed.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), EngineError> {
        match self.client.remove(id).await {
            Ok(())
            | Err(Failed {
                status: Some(404), ..
            }) => Ok(()),
            Err(failed) => Err(failed.into()),
        }
    }

    /// Swarm mode: the service's replica count.
    pub(crate) async fn service_replicas(&self) -> Result<u64, EngineError> {
        let swarm = self.swarm_spec().await?;
        let replicas = swarm
            .spec
            .mode
            .and_then(|m| m.replicated)
            .and_then(|r| r.replicas)
            .unwrap_or(0);
        Ok(u64::try_from(replicas).unwrap_or(0))
    }

    /// Swarm mode: sets the service's replica count. The spec is sent back as read, with only
    /// the count changed, at the version it was read at: an update someone made in between
    /// makes the engine refuse this one rather than lose theirs.
    pub(crate) async fn scale_service(&self, replicas: u64) -> Result<(), EngineError> {
        let SwarmSpec {
            id,
            mut spec,
            version,
        } = self.swarm_spec().await?;
        let count = i64::try_from(replicas).map_err(|_| {
            EngineError::Service(format!("{replicas} replicas is more than the engine takes"))
        })?;
        if let Some(replicated) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
            replicated.replicas = Some(count);
        }
        let warnings = self.client.update_service(&id, spec, version).await?;
        for warning in warnings {
            tracing::warn!(service = %self.service, "the Docker engine warns: {warning}");
        }
        Ok(())
    }

    /// The swarm service's spec as it is now; an error for compose, or for a service that is
    /// not replicated (a global service has no count to change).
    async fn swarm_spec(&self) -> Result<SwarmSpec, EngineError> {
        let Mode::Swarm { id } = &self.mode else {
            return Err(EngineError::Service(format!(
                "{} is a compose service: its replica count is its containers, not a swarm \
                 setting",
                self.service
            )));
        };
        let service = self.client.inspect_service(id).await?;
        let spec = service.spec.unwrap_or_default();
        if spec
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .is_none()
        {
            return Err(EngineError::Service(format!(
                "swarm service {} is not replicated (global or a job): sweeplb scales only a \
                 replicated service",
                self.service
            )));
        }
        let index = service.version.and_then(|v| v.index).unwrap_or(0);
        // bollard sends the version as an i32; a swarm's index stays far below that.
        let version = i32::try_from(index).map_err(|_| EngineError::Api {
            call: "POST /services/{id}/update",
            detail: format!("service version {index} is beyond what bollard can send"),
        })?;
        Ok(SwarmSpec {
            id: id.clone(),
            spec,
            version,
        })
    }

    /// In a swarm the replica count is the service's: swarm starts and stops its tasks'
    /// containers itself, and would undo (or fight) a container made or started beside it.
    fn compose_only(&self, what: &str) -> Result<(), EngineError> {
        match self.mode {
            Mode::Compose { .. } => Ok(()),
            Mode::Swarm { .. } => Err(self.swarm_refuses(what)),
        }
    }

    fn swarm_refuses(&self, what: &str) -> EngineError {
        EngineError::Service(format!(
            "{} is a swarm service: sweeplb changes its replica count, it does not {what}",
            self.service
        ))
    }
}

/// A swarm service's spec and the version it was read at.
struct SwarmSpec {
    id: String,
    spec: ServiceSpec,
    version: i32,
}

/// The swarm service of that name, if the engine is a swarm manager that has one. 503 (not a
/// manager, or no swarm), 404 (no such service) and 403 (a socket proxy that does not allow
/// `/services`, which says the operator runs no swarm) all mean: not swarm.
async fn swarm_service(client: &Client, service: &str) -> Result<Option<String>, EngineError> {
    match client.inspect_service(service).await {
        // The engine also matches an id prefix: only a service of exactly that name counts.
        Ok(found) if found.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(service) => {
            Ok(found.id)
        }
        Ok(_)
        | Err(Failed {
            status: Some(403 | 404 | 503),
            ..
        }) => Ok(None),
        Err(failed) => Err(failed.into()),
    }
}

/// The compose project of the service's containers (running or not, so that a service scaled
/// to zero is still found; one-off `run` containers aside).
async fn compose_project(client: &Client, service: &str) -> Result<String, EngineError> {
    let containers = client
        .list(vec![format!("{SERVICE_LABEL}={service}")])
        .await?;
    let projects: BTreeSet<String> = containers
        .iter()
        .filter(|c| !replica::oneoff(c.labels.as_ref()))
        .filter_map(|c| c.labels.as_ref()?.get(PROJECT_LABEL).cloned())
        .collect();
    let own = if projects.len() > 1 {
        own_project(client).await?
    } else {
        None
    };
    replica::project(service, &projects, own.as_deref())
}

/// The compose project of the balancer's own container, found by its hostname (the engine
/// makes it the container id's prefix unless compose sets one; either way the container's
/// inspect says so). `None` when not in a container, or in one without a project.
async fn own_project(client: &Client) -> Result<Option<String>, EngineError> {
    let Some(hostname) = own_hostname() else {
        return Ok(None);
    };
    let container = match client.inspect(&hostname).await {
        Ok(container) => container,
        Err(Failed {
            status: Some(404), ..
        }) => return Ok(None),
        Err(failed) => return Err(failed.into()),
    };
    let config = container.config.unwrap_or_default();
    let ours = container
        .id
        .as_deref()
        .is_some_and(|id| id.starts_with(&hostname))
        || config.hostname.as_deref() == Some(hostname.as_str());
    if !ours {
        return Ok(None);
    }
    Ok(config.labels.and_then(|mut l| l.remove(PROJECT_LABEL)))
}

fn own_hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
