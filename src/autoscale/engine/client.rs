//! The engine's HTTP API through bollard: every call sweeplb makes is a method here, so this
//! file is the whole list a socket proxy in front of the engine has to allow. Each call is
//! bounded in time, and its failure is put in words an operator can act on.

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerCreateResponse, ContainerInspectResponse, ContainerSummary,
    Service, ServiceSpec,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, UpdateServiceOptions,
};

use super::EngineError;

/// bollard's own per-request limit, in seconds. Ours ([`Client::call`]) is the one that
/// applies; this only has to be longer than any of ours, a stop's grace period included.
const BOLLARD_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// A connected engine, at an agreed API version.
pub(super) struct Client {
    docker: Docker,
    /// The address as configured, for the errors.
    at: String,
    /// How long any one call may take (a stop also gets the container's grace period).
    pub(super) timeout: Duration,
}

/// A failed call: the error for the controller, and the engine's HTTP status for the callers
/// to which a status means something else than failure (404 on a remove, 409 on a create).
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) status: Option<u16>,
    pub(super) error: EngineError,
}

impl From<Failed> for EngineError {
    fn from(failed: Failed) -> EngineError {
        failed.error
    }
}

/// Where the engine listens, from `unix:///path`, `tcp://host:port` or `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Unix(String),
    /// `host:port`, spoken to in plain HTTP (the forms with TLS are not supported).
    Http(String),
}

fn address(at: &str) -> Result<Address, EngineError> {
    if let Some(path) = at.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(Address::Unix(path.to_string()));
        }
    } else if let Some(host_port) = at.strip_prefix("tcp://").or(at.strip_prefix("http://")) {
        let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
        if !host_port.is_empty() && !host_port.contains('/') {
            return Ok(Address::Http(host_port.to_string()));
        }
    }
    Err(EngineError::Unreachable {
        at: at.to_string(),
        detail: "not an engine address: expected unix:///absolute/path, tcp://host:port or \
                 http://host:port"
            .into(),
    })
}

impl Client {
    /// Connects and agrees on an API version (`GET /version`): bollard speaks a newer version
    /// than many engines in use (Docker 20.10 is 1.41), and an engine refuses a newer one.
    pub(super) async fn open(at: &str, timeout: Duration) -> Result<Client, EngineError> {
        let docker = match address(at)? {
            Address::Unix(path) => {
                // bollard only says "Socket not found"; the OS says whether the socket is
                // missing or its directory unreadable, which an operator fixes differently.
                std::fs::metadata(&path).map_err(|e| EngineError::Unreachable {
                    at: at.to_string(),
                    detail: format!("{path}: {e}"),
                })?;
                Docker::connect_with_unix(&path, BOLLARD_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Address::Http(host_port) => Docker::connect_with_http(
                &format!("http://{host_port}"),
                BOLLARD_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            ),
        }
        .map_err(|e| failed(at, "connect", e).error)?;
        let docker = bounded(at, "GET /version", timeout, docker.negotiate_version()).await?;
        Ok(Client {
            docker,
            at: at.to_string(),
            timeout,
        })
    }

    async fn call<T>(
        &self,
        call: &'static str,
        limit: Duration,
        fut: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, Failed> {
        bounded(&self.at, call, limit, fut).await
    }

    /// `GET /containers/json?all=true`: every container, running or not, carrying all of
    /// `labels` (`key=value` each).
    pub(super) async fn list(&self, labels: Vec<String>) -> Result<Vec<ContainerSummary>, Failed> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        };
        self.call(
            "GET /containers/json",
            self.timeout,
            self.docker.list_containers(Some(options)),
        )
        .await
    }

    /// `GET /containers/{id}/json`.
    pub(super) async fn inspect(&self, id: &str) -> Result<ContainerInspectResponse, Failed> {
        self.call(
            "GET /containers/{id}/json",
            self.timeout,
            self.docker.inspect_container(id, None),
        )
        .await
    }

    /// `POST /containers/create?name=...`.
    pub(super) async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<ContainerCreateResponse, Failed> {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.call(
            "POST /containers/create",
            self.timeout,
            self.docker.create_container(Some(options), body),
        )
        .await
    }

    /// `POST /containers/{id}/start`; an engine answers 304 for a running container, which
    /// bollard (and so this) takes as success.
    pub(super) async fn start(&self, id: &str) -> Result<(), Failed> {
        self.call(
            "POST /containers/{id}/start",
            self.timeout,
            self.docker.start_container(id, None),
        )
        .await
    }

    /// `POST /containers/{id}/stop` without `t`, so that the container's own stop timeout
    /// (compose's `stop_grace_period`) or the engine's default applies; the engine answers
    /// when the container has exited, so the call gets `grace` on top of the usual limit.
    /// 304 (already stopped) is success.
    pub(super) async fn stop(&self, id: &str, grace: Duration) -> Result<(), Failed> {
        self.call(
            "POST /containers/{id}/stop",
            self.timeout.saturating_add(grace),
            self.docker.stop_container(id, None),
        )
        .await
    }

    /// `DELETE /containers/{id}?force=true&v=true`: force, because the container may run (one
    /// that never became healthy); `v`, because its anonymous volumes belong to it alone and
    /// would otherwise pile up with every container made and removed. Named volumes stay.
    pub(super) async fn remove(&self, id: &str) -> Result<(), Failed> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        self.call(
            "DELETE /containers/{id}",
            self.timeout,
            self.docker.remove_container(id, Some(options)),
        )
        .await
    }

    /// `GET /services/{id}`: by id or name (the engine also matches an id prefix).
    pub(super) async fn inspect_service(&self, id: &str) -> Result<Service, Failed> {
        self.call(
            "GET /services/{id}",
            self.timeout,
            self.docker.inspect_service(id, None),
        )
        .await
    }

    /// `POST /services/{id}/update?version=...`: the version is the one the spec was read at,
    /// so an update made meanwhile by someone else fails instead of being overwritten.
    pub(super) async fn update_service(
        &self,
        id: &str,
        spec: ServiceSpec,
        version: i32,
    ) -> Result<Vec<String>, Failed> {
        let options = UpdateServiceOptions {
            version,
            ..Default::default()
        };
        let answer = self
            .call(
                "POST /services/{id}/update",
                self.timeout,
                self.docker.update_service(id, spec, options, None),
            )
            .await?;
        Ok(answer.warnings.unwrap_or_default())
    }
}

async fn bounded<T>(
    at: &str,
    call: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failed(at, call, e)),
        Err(_) => Err(Failed {
            status: None,
            error: EngineError::Unreachable {
                at: at.to_string(),
                detail: format!(
                    "no answer to {call} within {}",
                    humantime::format_duration(limit)
                ),
            },
        }),
    }
}

/// The engine's own message when it answered; the OS's error (`Connection refused`,
/// `Permission denied`) when it could not be reached; bollard's words otherwise.
fn failed(at: &str, call: &'static str, e: BollardError) -> Failed {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => Failed {
            status: Some(status_code),
            error: EngineError::Api {
                call,
                detail: if message.trim().is_empty() {
                    // A socket proxy that denies a call may answer with no JSON message.
                    format!("HTTP {status_code}")
                } else {
                    message
                },
            },
        },
        BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::RequestTimeoutError => Failed {
            status: None,
            error: EngineError::Unreachable {
                at: at.to_string(),
                detail: format!("{} (on {call})", cause(&e)),
            },
        },
        other => Failed {
            status: None,
            error: EngineError::Api {
                call,
                detail: other.to_string(),
            },
        },
    }
}

/// The OS error somewhere down the chain if there is one (it is what the operator acts on),
/// else the whole chain.
fn cause(e: &BollardError) -> String {
    let mut chain = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        chain.push(s.to_string());
        source = s.source();
    }
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let table: &[(&str, Option<Address>)] = &[
            (
                "unix:///var/run/docker.sock",
                Some(Address::Unix("/var/run/docker.sock".into())),
            ),
            (
                "tcp://127.0.0.1:2375",
                Some(Address::Http("127.0.0.1:2375".into())),
            ),
            (
                "http://docker-proxy:2375",
                Some(Address::Http("docker-proxy:2375".into())),
            ),
            (
                "http://docker-proxy:2375/",
                Some(Address::Http("docker-proxy:2375".into())),
            ),
            ("unix://var/run/docker.sock", None),
            ("https://127.0.0.1:2376", None),
            ("ssh://host", None),
            ("tcp://", None),
            ("/var/run/docker.sock", None),
        ];
        for (at, want) in table {
            let got = address(at).ok();
            assert_eq!(&got, want, "{at}");
        }
    }

    #[test]
    fn a_bad_address_says_what_is_accepted() {
        let e = address("https://127.0.0.1:2376").unwrap_err().to_string();
        assert!(e.contains("https://127.0.0.1:2376"), "{e}");
        assert!(e.contains("unix:///absolute/path, tcp://host:port"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable_with_the_os_error() {
        let e = Client::open("unix:///nonexistent/docker.sock", Duration::from_secs(60))
            .await
            .err()
            .expect("no engine there");
        assert!(matches!(e, EngineError::Unreachable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(text.contains("/nonexistent/docker.sock"), "{text}");
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_unreachable_with_the_os_error() {
        // A path that exists but is no socket: connecting says so (ECONNREFUSED), as for a
        // socket whose engine has gone.
        let dir = std::env::temp_dir().join(format!("sweeplb-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("docker.sock");
        std::fs::write(&path, b"").expect("a plain file");
        let e = Client::open(
            &format!("unix://{}", path.display()),
            Duration::from_secs(5),
        )
        .await
        .err()
        .expect("no engine there");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(e, EngineError::Unreachable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("Connection refused"), "{text}");
        assert!(text.contains("GET /version"), "{text}");
    }
}
