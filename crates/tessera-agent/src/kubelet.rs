//! A Kubernetes pod's metadata from its node's kubelet: the pod list on the kubelet's
//! authenticated port (`GET /pods`, HTTPS, a bearer token), read for the pod UID and container ID
//! the caller's cgroup names (`cgroup.rs`). Namespace, service account, labels, names and image
//! come from the kubelet, never from the process. The list is reused for a moment (labels can
//! change on a running pod, so not long); a kubelet that is unreachable, slow or answers garbage
//! refuses the attestation instead of weakening it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tessera_core::manifest::SelectorKind;

use crate::cgroup::{ContainerId, PodUid};

/// The most the kubelet may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The largest pod list read (110 pods of tens of KB each fit well within).
const MAX_LIST_BYTES: usize = 32 * 1024 * 1024;

/// How long a pod list is reused for a pod it holds. Pod labels can be changed on a running
/// pod: this bounds how long an old label still matches.
const CACHE_FOR: Duration = Duration::from_secs(2);

/// A pod or container the list does not hold is looked for again in a fresh list, but not more
/// often than this (a new pod appears in the kubelet's list a moment after its containers
/// start; a caller naming no pod cannot make the agent hammer the kubelet).
const REFETCH_AFTER: Duration = Duration::from_millis(250);

/// How the agent reaches its kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// `https://127.0.0.1:10250` or the node's address.
    pub url: String,
    /// The CA that signed the kubelet's serving certificate (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// A file holding the bearer token the kubelet accepts (read again on every request:
    /// projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Skips verifying the kubelet's certificate (many kubelets serve a self-signed one).
    pub danger_skip_verify: bool,
}

/// What the kubelet says about a caller's pod and container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: String,
    pub container_name: String,
    /// As the kubelet reports it (`status.containerStatuses[].image`).
    pub image: String,
    /// The image's digest reference (`imageID`).
    pub image_id: String,
}

impl PodContainer {
    /// Whether a `k8s:` workload selector matches.
    pub fn matches(&self, kind: SelectorKind, v: &str) -> bool {
        match kind {
            SelectorKind::K8sNs => self.namespace == v,
            SelectorKind::K8sSa => self.service_account == v,
            SelectorKind::K8sPodName => self.pod_name == v,
            SelectorKind::K8sNodeName => self.node_name == v,
            SelectorKind::K8sContainerName => self.container_name == v,
            // Like SPIRE's `k8s:container-image`: the reported image or its digest reference.
            SelectorKind::K8sContainerImage => self.image == v || self.image_id == v,
            SelectorKind::K8sPodLabel => v
                .split_once(':')
                .is_some_and(|(k, want)| self.labels.get(k).is_some_and(|have| have == want)),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletError {
    #[error("the kubelet at `{url}` is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the kubelet answered {0} for its pod list")]
    Status(u16),
    #[error("the kubelet's pod list is not usable: {0}")]
    Garbage(String),
    #[error("the kubelet lists no pod `{0}`")]
    NoPod(String),
    #[error("pod `{pod}` has no running container `{container}`")]
    NoContainer { pod: String, container: String },
    #[error("cannot read the kubelet token file `{path}`: {reason}")]
    Token { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The Kubernetes API's PodList, the members read.
#[derive(Deserialize)]
struct PodList {
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: PodMeta,
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct PodMeta {
    name: String,
    namespace: String,
    uid: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    service_account_name: String,
    #[serde(default)]
    node_name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(default)]
    image: String,
    #[serde(rename = "imageID", default)]
    image_id: String,
    /// `<runtime>://<id>`.
    #[serde(rename = "containerID", default)]
    container_id: String,
    #[serde(default)]
    state: ContainerState,
}

#[derive(Deserialize, Default)]
struct ContainerState {
    running: Option<serde_json::Value>,
}

/// A kubelet's pod list as read, indexed by pod UID.
pub struct Pods(BTreeMap<String, Pod>);

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods").field("pods", &self.0.len()).finish()
    }
}

/// A node's kubelet, with the agent's cache of its pod list.
pub struct Kubelet {
    config: KubeletConfig,
    client: reqwest::Client,
    cache: Mutex<Option<(Arc<Pods>, Instant)>>,
    /// The last fetch's failure: callers queued behind it get it at once rather than each
    /// waiting out the kubelet's timeout in turn.
    failed: Mutex<Option<(KubeletError, Instant)>>,
    /// One fetch at a time: callers arriving while one runs use its answer.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    pub fn new(config: KubeletConfig) -> Result<Self, crate::AgentError> {
        let bad = |m: String| crate::AgentError::Config(format!("--kubelet: {m}"));
        let url =
            reqwest::Url::parse(&config.url).map_err(|e| bad(format!("`{}`: {e}", config.url)))?;
        if url.scheme() != "https" {
            return Err(bad(format!(
                "`{}` must be https (the kubelet's authenticated port, 10250)",
                config.url
            )));
        }
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| crate::file_err(path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| crate::file_err(path, e))?;
            if certs.is_empty() {
                return Err(crate::file_err(path, "it holds no PEM certificate"));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if config.danger_skip_verify {
            tracing::warn!(kubelet = %config.url, "the kubelet's certificate is not verified (--danger-kubelet-skip-verify)");
            b = b.danger_accept_invalid_certs(true);
        }
        let client = b.build().map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            config,
            client,
            cache: Mutex::default(),
            failed: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The pod `pod` and its running container `id`, from a fresh enough list.
    pub async fn container(
        &self,
        pod: &PodUid,
        id: &ContainerId,
    ) -> Result<Arc<PodContainer>, KubeletError> {
        let cached = self.cache.lock().ok().and_then(|c| c.clone());
        if let Some((pods, at)) = &cached {
            if at.elapsed() < CACHE_FOR {
                if let Ok(found) = find(pods, pod, id) {
                    return Ok(Arc::new(found));
                }
            }
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        let cached = self.cache.lock().ok().and_then(|c| c.clone());
        if let Some((e, at)) = self.failed.lock().ok().and_then(|f| f.clone()) {
            if at.elapsed() < REFETCH_AFTER {
                return Err(e);
            }
        }
        let pods = match cached {
            Some((pods, at)) if at.elapsed() < REFETCH_AFTER => pods,
            _ => {
                let fetched = self.fetch().await;
                if let Ok(mut f) = self.failed.lock() {
                    *f = fetched.as_ref().err().map(|e| (e.clone(), Instant::now()));
                }
                let pods = Arc::new(fetched?);
                if let Ok(mut c) = self.cache.lock() {
                    *c = Some((pods.clone(), Instant::now()));
                }
                pods
            }
        };
        find(&pods, pod, id).map(Arc::new)
    }

    async fn fetch(&self) -> Result<Pods, KubeletError> {
        let unreachable = |reason: String| KubeletError::Unreachable {
            url: self.config.url.clone(),
            reason,
        };
        let url = format!("{}/pods", self.config.url.trim_end_matches('/'));
        let mut req = self.client.get(&url);
        if let Some(path) = &self.config.token_file {
            let token = std::fs::read_to_string(path).map_err(|e| KubeletError::Token {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            req = req.bearer_auth(token.trim());
        }
        let mut resp = req.send().await.map_err(|e| {
            unreachable(if e.is_timeout() {
                format!("no answer within {}s", TIMEOUT.as_secs())
            } else {
                error_chain(&e)
            })
        })?;
        if !resp.status().is_success() {
            return Err(KubeletError::Status(resp.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_LIST_BYTES {
                return Err(KubeletError::Garbage(format!(
                    "it is larger than {} MiB",
                    MAX_LIST_BYTES >> 20
                )));
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// An error with its causes (reqwest's own message says little: "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl Pods {
    /// A `/pods` answer (a PodList), indexed by pod UID.
    pub fn parse(body: &[u8]) -> Result<Self, KubeletError> {
        let list: PodList =
            serde_json::from_slice(body).map_err(|e| KubeletError::Garbage(e.to_string()))?;
        let mut pods = BTreeMap::new();
        for p in list.items {
            // Two pods under one UID is no list a kubelet writes: refuse rather than pick one.
            if pods.contains_key(&p.metadata.uid) {
                return Err(KubeletError::Garbage(format!(
                    "two pods have UID `{}`",
                    p.metadata.uid.chars().take(64).collect::<String>()
                )));
            }
            pods.insert(p.metadata.uid.clone(), p);
        }
        Ok(Self(pods))
    }

    /// The running container `id` of pod `uid`.
    pub fn container(&self, uid: &PodUid, id: &ContainerId) -> Result<PodContainer, KubeletError> {
        find(self, uid, id)
    }
}

fn parse(body: &[u8]) -> Result<Pods, KubeletError> {
    Pods::parse(body)
}

/// The running container `id` of pod `uid`.
fn find(pods: &Pods, uid: &PodUid, id: &ContainerId) -> Result<PodContainer, KubeletError> {
    let pod = pods
        .0
        .get(uid.as_str())
        .ok_or_else(|| KubeletError::NoPod(uid.as_str().to_owned()))?;
    let status = pod
        .status
        .container_statuses
        .iter()
        .chain(&pod.status.init_container_statuses)
        .chain(&pod.status.ephemeral_container_statuses)
        .find(|c| {
            c.container_id
                .split_once("://")
                .is_some_and(|(_, cid)| cid == id.as_str())
        })
        .filter(|c| c.state.running.is_some())
        .ok_or_else(|| KubeletError::NoContainer {
            pod: format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
            container: id.as_str().chars().take(12).collect(),
        })?;
    Ok(PodContainer {
        namespace: pod.metadata.namespace.clone(),
        service_account: pod.spec.service_account_name.clone(),
        pod_name: pod.metadata.name.clone(),
        pod_uid: pod.metadata.uid.clone(),
        labels: pod.metadata.labels.clone(),
        node_name: pod.spec.node_name.clone(),
        container_name: status.name.clone(),
        image: status.image.clone(),
        image_id: status.image_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Placement;

    /// A kubelet `/pods` answer, hand-written in the shape of Kubernetes 1.30's (not captured
    /// from a live kubelet).
    const LIST: &str = include_str!("../tests/fixtures/kubelet-pods.json");

    fn placement(pod: &str, id: &str) -> (PodUid, ContainerId) {
        let p = Placement::parse(&format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope\n",
            pod.replace('-', "_")
        ))
        .unwrap();
        (p.pod.unwrap(), p.container.unwrap().1)
    }

    const POD: &str = "6b3a1c2e-9f4d-4e8a-b1c7-2d5e8f0a3b6c";
    const ORDERS: &str = "a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8";
    const SIDECAR: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const GONE: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn the_container_the_cgroup_names_and_only_if_running() {
        let pods = parse(LIST.as_bytes()).unwrap();
        let (uid, id) = placement(POD, ORDERS);
        let c = find(&pods, &uid, &id).unwrap();
        assert_eq!(c.namespace, "shop");
        assert_eq!(c.service_account, "orders");
        assert_eq!(c.pod_name, "orders-7d9f8c6b5-x2k4q");
        assert_eq!(c.container_name, "orders");
        assert_eq!(c.node_name, "node-a");
        assert!(c.matches(SelectorKind::K8sPodLabel, "app.kubernetes.io/name:orders"));
        assert!(!c.matches(SelectorKind::K8sPodLabel, "app.kubernetes.io/name:payments"));
        assert!(c.matches(
            SelectorKind::K8sContainerImage,
            "registry.example/shop/orders:1.4.2"
        ));
        assert!(c.matches(SelectorKind::K8sContainerImage, &c.image_id));
        let (_, side) = placement(POD, SIDECAR);
        assert_eq!(find(&pods, &uid, &side).unwrap().container_name, "proxy");
        let (_, gone) = placement(POD, GONE);
        assert!(matches!(
            find(&pods, &uid, &gone),
            Err(KubeletError::NoContainer { .. })
        ));
        let (other, _) = placement("00000000-0000-4000-8000-000000000000", ORDERS);
        assert!(matches!(
            find(&pods, &other, &id),
            Err(KubeletError::NoPod(_))
        ));
    }

    #[test]
    fn garbage_and_duplicate_uids_are_refused() {
        assert!(matches!(parse(b"<html>"), Err(KubeletError::Garbage(_))));
        let v: serde_json::Value = serde_json::from_str(LIST).unwrap();
        let mut twice = v.clone();
        let first = v["items"][0].clone();
        twice["items"].as_array_mut().unwrap().push(first);
        assert!(matches!(
            parse(twice.to_string().as_bytes()),
            Err(KubeletError::Garbage(_))
        ));
    }

    #[test]
    fn plain_http_is_refused() {
        let e = Kubelet::new(KubeletConfig {
            url: "http://127.0.0.1:10255".into(),
            ca_file: None,
            token_file: None,
            danger_skip_verify: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("must be https"), "{e}");
    }
}
