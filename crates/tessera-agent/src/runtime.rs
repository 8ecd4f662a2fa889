//! A container's metadata from its runtime: the Docker Engine API on a unix socket, which Docker
//! and Podman both serve (`GET /containers/{id}/json`). The ID comes from the kernel (the
//! caller's cgroup, `cgroup.rs`); labels, image and name come from the runtime, never from the
//! process. Answers are cached per container for a short while; a runtime that is unreachable,
//! slow or answers garbage refuses the attestation instead of weakening it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;

use crate::cgroup::ContainerId;

/// The most a runtime may take to answer, connection to last byte.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The largest inspect document read (a container with many labels is a few tens of KB).
const MAX_INSPECT_BYTES: usize = 1024 * 1024;

/// How long a container's metadata is reused. A container's labels and image never change; its
/// name can (`docker rename`), so this bounds how long an old name still matches.
const CACHE_FOR: Duration = Duration::from_secs(10);

/// The longest event line kept (an event with many labels is a few KB).
const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The most containers cached; past it the cache starts over.
const MAX_CACHED: usize = 10_000;

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;
type Connection = hyper::client::conn::http1::Connection<
    hyper_util::rt::TokioIo<tokio::net::UnixStream>,
    Empty<bytes::Bytes>,
>;

/// What the runtime says about a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    /// As started: `registry/name:tag`.
    pub image: String,
    /// `sha256:<64 hex>`.
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    /// Only the keys the agent was told to read (`--container-env`).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container runtime at `{socket}` is unreachable: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("the container runtime did not answer within {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("the container runtime answered {0} for the caller's container")]
    Status(u16),
    #[error("the container runtime's answer is not usable: {0}")]
    Garbage(String),
    #[error("the caller's container is not running")]
    NotRunning,
}

/// The Docker Engine API's inspect document, the members read.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    name: String,
    image: String,
    state: InspectState,
    config: InspectConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    running: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
}

/// A container runtime's API, with the agent's cache of its answers.
#[derive(Debug)]
pub struct Runtime {
    socket: PathBuf,
    env_keys: Vec<String>,
    cache: Mutex<HashMap<String, (Arc<ContainerInfo>, Instant)>>,
}

impl Runtime {
    /// The runtime at `socket`; `env_keys` are the environment variables read into selectors.
    pub fn new(socket: PathBuf, env_keys: Vec<String>) -> Self {
        Self {
            socket,
            env_keys,
            cache: Mutex::default(),
        }
    }

    /// The metadata of running container `id`: cached, or asked of the runtime.
    pub async fn inspect(&self, id: &ContainerId) -> Result<Arc<ContainerInfo>, RuntimeError> {
        if let Some((info, at)) = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.get(id.as_str()).cloned())
        {
            if at.elapsed() < CACHE_FOR {
                return Ok(info);
            }
        }
        let result = tokio::time::timeout(TIMEOUT, self.ask(id))
            .await
            .unwrap_or(Err(RuntimeError::Timeout));
        if let Ok(mut c) = self.cache.lock() {
            match &result {
                Ok(info) => {
                    if c.len() >= MAX_CACHED {
                        c.clear();
                    }
                    c.insert(id.as_str().to_owned(), (info.clone(), Instant::now()));
                }
                // A container that stopped, or that the runtime no longer knows, leaves.
                Err(_) => {
                    c.remove(id.as_str());
                }
            }
        }
        result
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Unreachable {
            socket: self.socket.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// A connection to the runtime and `GET path` to send on it.
    async fn connect(
        &self,
        path: &str,
    ) -> Result<(Sender, Connection, http::Request<Empty<bytes::Bytes>>), RuntimeError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(e))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.unreachable(e))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, "docker")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| self.unreachable(e))?;
        Ok((sender, conn, req))
    }

    /// Runs `work` while driving `conn` beside it, on this task.
    async fn driven<T>(
        &self,
        conn: Connection,
        work: impl std::future::Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        let mut conn = std::pin::pin!(conn);
        let mut work = std::pin::pin!(work);
        tokio::select! {
            r = &mut work => r,
            c = &mut conn => match c {
                Ok(()) => work.await,
                Err(e) => Err(self.unreachable(e)),
            },
        }
    }

    async fn ask(&self, id: &ContainerId) -> Result<Arc<ContainerInfo>, RuntimeError> {
        let unreachable = |reason: String| self.unreachable(reason);
        let (mut sender, conn, req) = self
            .connect(&format!("/containers/{}/json", id.as_str()))
            .await?;
        let request = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(RuntimeError::Status(resp.status().as_u16()));
            }
            Limited::new(resp.into_body(), MAX_INSPECT_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| RuntimeError::Garbage(e.to_string()))
        };
        let body = self.driven(conn, request).await?;
        self.read(id, &body).map(Arc::new)
    }

    /// Follows the runtime's container events (`GET /events`, which Docker and Podman both
    /// stream), dropping a container's metadata the moment it stops, is renamed or removed, so a
    /// renamed container's old name stops matching at once rather than when its entry ages out.
    /// Returns when the stream ends or fails; the caller reconnects.
    pub async fn follow_events(&self) -> Result<(), RuntimeError> {
        let unreachable = |reason: String| self.unreachable(reason);
        // `{"type":["container"]}`, URL-encoded.
        let (mut sender, conn, req) = self
            .connect("/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D")
            .await?;
        let follow = async {
            let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
                .await
                .map_err(|_| RuntimeError::Timeout)?
                .map_err(|e| unreachable(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(RuntimeError::Status(resp.status().as_u16()));
            }
            let mut body = resp.into_body();
            let mut line = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| unreachable(e.to_string()))?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                for &b in data.iter() {
                    if b == b'\n' {
                        self.on_event(&line);
                        line.clear();
                    } else if line.len() < MAX_EVENT_BYTES {
                        line.push(b);
                    }
                }
                // Podman ends each event with a newline; Docker may not: a whole JSON object
                // without one is an event too.
                if !line.is_empty() && serde_json::from_slice::<serde_json::Value>(&line).is_ok() {
                    self.on_event(&line);
                    line.clear();
                }
            }
            Ok(())
        };
        self.driven(conn, follow).await
    }

    /// Drops the metadata of the container an event names, when the event changes what the
    /// metadata says or ends the container.
    fn on_event(&self, line: &[u8]) {
        #[derive(Deserialize)]
        struct Actor {
            #[serde(rename = "ID")]
            id: String,
        }
        #[derive(Deserialize)]
        struct Event {
            #[serde(rename = "Action", default)]
            action: String,
            #[serde(rename = "Actor")]
            actor: Actor,
        }
        let Ok(e) = serde_json::from_slice::<Event>(line) else {
            return;
        };
        if matches!(
            e.action.as_str(),
            "die"
                | "stop"
                | "kill"
                | "destroy"
                | "remove"
                | "rename"
                | "update"
                | "died"
                | "cleanup"
        ) {
            self.forget(&e.actor.id);
        }
    }

    /// Drops what is cached of container `id`: the next attestation asks the runtime.
    pub fn forget(&self, id: &str) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(id);
        }
    }

    /// Whether the metadata of container `id` is cached (for tests and `agent attest`).
    pub fn is_cached(&self, id: &str) -> bool {
        self.cache.lock().is_ok_and(|c| c.contains_key(id))
    }

    /// The inspect document, checked: it must be about `id`, which must be running.
    fn read(&self, id: &ContainerId, body: &[u8]) -> Result<ContainerInfo, RuntimeError> {
        let doc: Inspect =
            serde_json::from_slice(body).map_err(|e| RuntimeError::Garbage(e.to_string()))?;
        if doc.id != id.as_str() {
            return Err(RuntimeError::Garbage(format!(
                "it describes another container (`{}`)",
                doc.id.chars().take(80).collect::<String>()
            )));
        }
        if !doc.state.running {
            return Err(RuntimeError::NotRunning);
        }
        let env = doc
            .config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                self.env_keys
                    .iter()
                    .any(|w| w == k)
                    .then(|| (k.to_owned(), v.to_owned()))
            })
            .collect();
        Ok(ContainerInfo {
            id: doc.id,
            name: doc.name.trim_start_matches('/').to_owned(),
            image: doc.config.image,
            image_id: doc.image,
            labels: doc.config.labels.unwrap_or_default(),
            env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "3f1c5e0a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";

    fn id() -> ContainerId {
        crate::cgroup::Placement::parse(&format!("0::/docker/{ID}\n"))
            .unwrap()
            .container
            .unwrap()
            .1
    }

    fn doc(running: bool, the_id: &str) -> Vec<u8> {
        json!({
            "Id": the_id, "Name": "/orders-1", "Image": "sha256:abc",
            "State": {"Running": running},
            "Config": {"Image": "localhost/orders:1", "Labels": {"team": "orders"},
                       "Env": ["ROLE=api", "SECRET=hunter2", "PATH=/bin"]}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reads_only_what_it_is_told_and_only_for_the_container_asked() {
        let rt = Runtime::new(PathBuf::from("/nonexistent"), vec!["ROLE".into()]);
        let info = rt.read(&id(), &doc(true, ID)).unwrap();
        assert_eq!(info.name, "orders-1");
        assert_eq!(info.image, "localhost/orders:1");
        assert_eq!(info.labels.get("team").map(String::as_str), Some("orders"));
        assert_eq!(
            info.env.into_iter().collect::<Vec<_>>(),
            [("ROLE".to_owned(), "api".to_owned())],
            "unlisted variables (a secret) are never read"
        );
        assert_eq!(
            rt.read(&id(), &doc(false, ID)),
            Err(RuntimeError::NotRunning)
        );
        let other = "a".repeat(64);
        assert!(matches!(
            rt.read(&id(), &doc(true, &other)),
            Err(RuntimeError::Garbage(_))
        ));
        assert!(matches!(
            rt.read(&id(), b"<html>"),
            Err(RuntimeError::Garbage(_))
        ));
    }

    #[test]
    fn a_stop_or_rename_event_drops_the_container() {
        let rt = Runtime::new(PathBuf::from("/nonexistent"), vec![]);
        let info = Arc::new(rt.read(&id(), &doc(true, ID)).unwrap());
        let put = || {
            rt.cache
                .lock()
                .unwrap()
                .insert(ID.to_owned(), (info.clone(), Instant::now()));
        };
        put();
        let event = |action: &str, who: &str| {
            json!({"Type": "container", "Action": action, "Actor": {"ID": who, "Attributes": {"name": "x"}}})
                .to_string()
                .into_bytes()
        };
        rt.on_event(&event("start", ID));
        rt.on_event(&event("die", &"b".repeat(64)));
        rt.on_event(b"garbage");
        assert!(
            rt.is_cached(ID),
            "other events and other containers leave it"
        );
        for action in ["die", "rename", "destroy"] {
            put();
            rt.on_event(&event(action, ID));
            assert!(!rt.is_cached(ID), "{action}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_runtime_refuses() {
        let rt = Runtime::new(PathBuf::from("/nonexistent/docker.sock"), vec![]);
        assert!(matches!(
            rt.inspect(&id()).await,
            Err(RuntimeError::Unreachable { .. })
        ));
    }
}
