//! The Docker Engine API, and nothing else of Docker: the only calls sweeplb makes are listing
//! and inspecting containers, creating, starting, stopping and removing them, and (in a swarm)
//! inspecting and updating a service's replica count.
//!
//! SKELETON: the signatures the controller codes against; the bollard implementation replaces
//! the bodies.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

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
}

impl Engine {
    /// Connects to `docker` (`unix:///path` or `tcp://host:port`), agrees on an API version,
    /// and finds `service`: a swarm service of that name if the engine is a swarm manager
    /// that has one, else the compose service's containers (running or not). With containers
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
        let _ = (service, subnets, timeout);
        Err(EngineError::Unreachable {
            at: docker.to_string(),
            detail: "not built yet".into(),
        })
    }

    /// Every container of the service, running or not, oldest first.
    pub(crate) async fn replicas(&self) -> Result<Vec<Replica>, EngineError> {
        Err(EngineError::Service("not built yet".into()))
    }

    /// Starts a stopped container of the service; its address once started.
    pub(crate) async fn start(&self, id: &str) -> Result<Replica, EngineError> {
        let _ = id;
        Err(EngineError::Service("not built yet".into()))
    }

    /// Creates and starts a new container from `template`'s configuration (image, command,
    /// entrypoint, environment, labels with the next container number, user, mounts, restart
    /// policy, security options, its network in the swept ranges with the service's alias),
    /// named as compose names its containers; the new container, started.
    pub(crate) async fn create_from(&self, template: &Replica) -> Result<Replica, EngineError> {
        let _ = template;
        Err(EngineError::Service("not built yet".into()))
    }

    /// Stops a container with its own grace period (its `StopTimeout`, else the engine's 10 s).
    pub(crate) async fn stop(&self, id: &str) -> Result<(), EngineError> {
        let _ = id;
        Err(EngineError::Service("not built yet".into()))
    }

    /// Removes a container (stopping it first if it runs).
    pub(crate) async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let _ = id;
        Err(EngineError::Service("not built yet".into()))
    }

    /// Swarm mode: the service's replica count.
    pub(crate) async fn service_replicas(&self) -> Result<u64, EngineError> {
        Err(EngineError::Service("not built yet".into()))
    }

    /// Swarm mode: sets the service's replica count.
    pub(crate) async fn scale_service(&self, replicas: u64) -> Result<(), EngineError> {
        let _ = replicas;
        Err(EngineError::Service("not built yet".into()))
    }
}
