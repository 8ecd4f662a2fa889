//! The Tessera node agent: joins the authority once with a join token, then holds and renews
//! its own X.509-SVID; syncs the registrations meant for it; keeps an SVID for each (keys made
//! here, never sent anywhere), rotated at half-life with jitter; and hands them to local
//! processes it attests, over the SPIFFE Workload API and a managed-identity endpoint.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_core::agent_api::{AgentSvid, Registration, SignItem, SignRequest};
use tessera_core::{SpiffeId, TrustDomain};
use tokio::sync::{watch, Notify};

pub mod attest;
mod imds;
pub mod upstream;
pub mod workload;

pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("_");
}

use upstream::{Identity, Upstream};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("the server is unreachable: {0}")]
    Unreachable(String),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("cannot use `{path}`: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Ca(#[from] tessera_ca::CaError),
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub join_token: Option<String>,
    pub socket: PathBuf,
    pub trust_bundle: Option<PathBuf>,
    pub imds_listen: Option<std::net::SocketAddr>,
    pub data_dir: PathBuf,
}

/// A workload's X.509-SVID with its private key.
#[derive(Clone)]
pub struct Svid {
    pub spiffe_id: SpiffeId,
    /// DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    pub serial: String,
    pub not_after: i64,
    /// When to ask for the next one: half-life, less some jitter.
    pub renew_at: i64,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Everything the agent serves, replaced whole on each change (readers hold an `Arc`).
#[derive(Debug, Default, Clone)]
pub struct State {
    pub version: i64,
    pub registrations: HashMap<SpiffeId, Registration>,
    pub svids: HashMap<SpiffeId, Arc<Svid>>,
    /// DER CA certificates of the agent's trust domain.
    pub bundle: Vec<Vec<u8>>,
    /// The JWT-SVID keys of the trust domain (a JWKS).
    pub jwt_keys: serde_json::Value,
    /// Whether any registration selects by executable digest (so it is worth computing).
    pub want_digest: bool,
}

impl State {
    /// The registrations whose every selector the process matches.
    pub fn matching<'a>(
        &'a self,
        p: &'a attest::Process,
    ) -> impl Iterator<Item = &'a Registration> + 'a {
        self.registrations
            .values()
            .filter(move |r| p.matches_all(&r.selectors))
    }
}

type JwtKey = (SpiffeId, Vec<String>);

pub struct Agent {
    pub td: TrustDomain,
    upstream: Upstream,
    identity: RwLock<Identity>,
    state: watch::Sender<Arc<State>>,
    data_dir: PathBuf,
    digests: attest::DigestCache,
    /// JWT-SVIDs by (SPIFFE ID, audiences): (token, expiry, issued at).
    jwt_cache: Mutex<HashMap<JwtKey, (String, i64, i64)>>,
    /// Access tokens by (SPIFFE ID, resource): (response, fetched at).
    token_cache: Mutex<HashMap<(SpiffeId, String), (tessera_core::agent_api::TokenResponse, i64)>>,
    rotate_now: Notify,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("td", &self.td)
            .finish_non_exhaustive()
    }
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn jitter(max: i64) -> i64 {
    if max <= 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    i64::try_from(u64::from_le_bytes(b) % u64::try_from(max).unwrap_or(1)).unwrap_or(0)
}

/// Renew at half-life, up to a tenth of the lifetime earlier so renewals of SVIDs issued
/// together spread out.
fn renew_at(now: i64, not_after: i64) -> i64 {
    let life = (not_after - now).max(0);
    now + life / 2 - jitter(life / 10)
}

const KEY_FILE: &str = "agent.key";
const SVID_FILE: &str = "agent-svid.json";

fn load_identity(dir: &Path) -> Result<Option<Identity>, AgentError> {
    let (kp, sp) = (dir.join(KEY_FILE), dir.join(SVID_FILE));
    if !kp.exists() || !sp.exists() {
        return Ok(None);
    }
    let key = STANDARD
        .decode(
            std::fs::read_to_string(&kp)
                .map_err(|e| file_err(&kp, e))?
                .trim(),
        )
        .map_err(|e| file_err(&kp, e))?;
    let svid: AgentSvid =
        serde_json::from_slice(&std::fs::read(&sp).map_err(|e| file_err(&sp, e))?)
            .map_err(|e| file_err(&sp, e))?;
    Ok(Some(Identity { key, svid }))
}

fn save_identity(dir: &Path, id: &Identity) -> Result<(), AgentError> {
    let write = |name: &str, bytes: &[u8]| -> Result<(), AgentError> {
        let path = dir.join(name);
        tessera_core::private_file::write_private(&path, bytes).map_err(|e| file_err(&path, e))
    };
    write(KEY_FILE, STANDARD.encode(&id.key).as_bytes())?;
    let json =
        serde_json::to_vec_pretty(&id.svid).map_err(|e| AgentError::Protocol(e.to_string()))?;
    write(SVID_FILE, &json)
}

impl Agent {
    /// Joins (or rejoins with the SVID kept in the data folder) and loads the first state.
    pub async fn start(config: &AgentConfig) -> Result<Arc<Self>, AgentError> {
        let dir = &config.data_dir;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| file_err(dir, e))?;
        }
        let (base, roots) =
            upstream::resolve_server(&config.server, config.trust_bundle.as_deref()).await?;
        let upstream = Upstream::new(base, roots)?;
        let now = tessera_core::now_unix();
        let identity = match load_identity(dir)? {
            Some(id) if id.svid.not_after > now + 10 => {
                tracing::info!(agent = %id.svid.spiffe_id, "rejoining with the SVID kept in the data folder");
                id
            }
            kept => {
                let Some(token) = config.join_token.as_deref() else {
                    return Err(AgentError::Config(if kept.is_some() {
                        "this agent's SVID has expired; it needs a new --join-token".into()
                    } else {
                        "this agent has not joined yet: pass --join-token (from `tessera agent token create`)".into()
                    }));
                };
                let (key, csr) = tessera_ca::new_key_and_bare_csr()?;
                let svid = upstream.join(token, &csr).await?;
                let id = Identity { key, svid };
                save_identity(dir, &id)?;
                tracing::info!(agent = %id.svid.spiffe_id, "joined");
                id
            }
        };
        upstream.set_identity(&identity)?;
        let td = identity.svid.spiffe_id.trust_domain();
        let bundle = identity
            .svid
            .bundle
            .iter()
            .filter_map(|c| STANDARD.decode(c).ok())
            .collect();
        let agent = Arc::new(Self {
            td,
            upstream,
            identity: RwLock::new(identity),
            // Version -1: the first sync is always a full one, whatever the server's version.
            state: watch::channel(Arc::new(State {
                version: -1,
                bundle,
                ..State::default()
            }))
            .0,
            data_dir: dir.clone(),
            digests: attest::DigestCache::default(),
            jwt_cache: Mutex::new(HashMap::new()),
            token_cache: Mutex::new(HashMap::new()),
            rotate_now: Notify::new(),
        });
        Ok(agent)
    }

    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.subscribe()
    }

    pub fn spiffe_id(&self) -> SpiffeId {
        match self.identity.read() {
            Ok(g) => g.svid.spiffe_id.clone(),
            Err(p) => p.into_inner().svid.spiffe_id.clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        self.state.send_modify(|s| {
            let mut next = (**s).clone();
            f(&mut next);
            *s = Arc::new(next);
        });
    }

    /// One sync round: waits up to `wait` seconds for a change after the version held.
    pub async fn sync_once(&self, wait: u64) -> Result<(), AgentError> {
        let since = self.state().version;
        let resp = self.upstream.sync(since, wait).await?;
        let bundle: Vec<Vec<u8>> = resp
            .x509_authorities
            .iter()
            .filter_map(|c| STANDARD.decode(c).ok())
            .collect();
        self.update(|s| {
            if resp.full {
                s.registrations.clear();
            }
            for id in &resp.removed {
                s.registrations.remove(id);
            }
            for r in resp.registrations {
                s.registrations.insert(r.spiffe_id.clone(), r);
            }
            // An SVID whose registration is gone or changed is not handed out again.
            let regs = &s.registrations;
            s.svids.retain(|id, _| regs.contains_key(id));
            s.want_digest = regs.values().any(|r| {
                r.selectors
                    .iter()
                    .any(|sel| sel.kind() == tessera_core::manifest::SelectorKind::Sha256)
            });
            s.version = resp.version;
            if !bundle.is_empty() {
                s.bundle = bundle;
            }
            s.jwt_keys = resp.jwt_keys;
        });
        self.rotate_now.notify_one();
        Ok(())
    }

    /// Signs SVIDs that are missing or due, in batches; renews the agent's own SVID at half-life.
    pub async fn rotate_once(&self) -> Result<usize, AgentError> {
        let now = tessera_core::now_unix();
        // First, before anything that needs the server: streams learn that an SVID is gone.
        self.drop_expired(now);
        self.renew_self_if_due(now).await?;
        let state = self.state();
        let due: Vec<SpiffeId> = state
            .registrations
            .keys()
            .filter(|id| state.svids.get(*id).is_none_or(|s| s.renew_at <= now))
            .cloned()
            .collect();
        let mut issued = 0;
        for chunk in due.chunks(500) {
            let ids = chunk.to_vec();
            let made = tokio::task::spawn_blocking(move || {
                ids.into_iter()
                    .map(|id| tessera_ca::new_key_and_csr(&id).map(|(k, c)| (id, k, c)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| AgentError::Protocol(e.to_string()))??;
            let req = SignRequest {
                csrs: made
                    .iter()
                    .map(|(id, _, csr)| SignItem {
                        spiffe_id: id.clone(),
                        csr: STANDARD.encode(csr),
                    })
                    .collect(),
            };
            let resp = self.upstream.sign(&req).await?;
            let mut keys: HashMap<SpiffeId, Vec<u8>> =
                made.into_iter().map(|(id, k, _)| (id, k)).collect();
            let now = tessera_core::now_unix();
            let mut fresh = Vec::new();
            for item in resp.svids {
                if let Some(e) = item.error {
                    tracing::warn!(spiffe_id = %item.spiffe_id, error = %e, "SVID refused");
                    continue;
                }
                let Some(key) = keys.remove(&item.spiffe_id) else {
                    continue;
                };
                let chain: Vec<Vec<u8>> = item
                    .chain
                    .iter()
                    .filter_map(|c| STANDARD.decode(c).ok())
                    .collect();
                fresh.push(Arc::new(Svid {
                    spiffe_id: item.spiffe_id,
                    chain,
                    key,
                    serial: item.serial,
                    not_after: item.not_after,
                    renew_at: renew_at(now, item.not_after),
                }));
            }
            issued += fresh.len();
            self.update(|s| {
                for svid in fresh {
                    // Only if the registration is still there (a sync may have removed it).
                    if s.registrations.contains_key(&svid.spiffe_id) {
                        s.svids.insert(svid.spiffe_id.clone(), svid);
                    }
                }
            });
        }
        self.drop_expired(tessera_core::now_unix());
        Ok(issued)
    }

    /// Never hand out an expired SVID (the server may have been away for a long time).
    fn drop_expired(&self, now: i64) {
        if self.state().svids.values().any(|s| s.not_after <= now) {
            self.update(|s| s.svids.retain(|_, v| v.not_after > now));
        }
    }

    async fn renew_self_if_due(&self, now: i64) -> Result<(), AgentError> {
        let due = {
            let g = match self.identity.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let leaf = g.svid.chain.first().and_then(|c| STANDARD.decode(c).ok());
            match leaf.as_deref().and_then(tessera_ca::validity) {
                Some((nb, na)) => now >= nb + (na - nb) / 2,
                None => true,
            }
        };
        if !due {
            return Ok(());
        }
        let (key, csr) = tessera_ca::new_key_and_bare_csr()?;
        let svid = self.upstream.renew(&csr).await?;
        let id = Identity { key, svid };
        save_identity(&self.data_dir, &id)?;
        self.upstream.set_identity(&id)?;
        match self.identity.write() {
            Ok(mut g) => *g = id,
            Err(p) => *p.into_inner() = id,
        }
        tracing::info!("renewed the agent's own SVID");
        Ok(())
    }

    /// Keeps registrations current (long poll) with backoff while the server is away.
    pub async fn sync_loop(self: Arc<Self>) {
        let mut backoff = 1u64;
        loop {
            match self.sync_once(30).await {
                Ok(()) => backoff = 1,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = backoff, "sync failed; serving cached SVIDs");
                    tokio::time::sleep(Duration::from_secs(backoff)).await;
                    backoff = (backoff * 2).min(30);
                }
            }
        }
    }

    /// Rotates SVIDs: on every sync, and every second for what came due.
    pub async fn rotation_loop(self: Arc<Self>) {
        let mut backoff = 1u64;
        loop {
            let wait = Duration::from_secs(backoff);
            let _ = tokio::time::timeout(wait, self.rotate_now.notified()).await;
            match self.rotate_once().await {
                Ok(_) => backoff = 1,
                Err(e) => {
                    tracing::warn!(error = %e, "rotation failed; retrying");
                    backoff = (backoff * 2).min(30);
                }
            }
        }
    }

    /// A JWT-SVID for `id` and `audience`, from the cache while it has more than half its life.
    pub async fn jwt_svid(&self, id: &SpiffeId, audience: &[String]) -> Result<String, AgentError> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = (id.clone(), aud.clone());
        let now = tessera_core::now_unix();
        if let Ok(c) = self.jwt_cache.lock() {
            if let Some((t, exp, iat)) = c.get(&key) {
                if now < iat + (exp - iat) / 2 {
                    return Ok(t.clone());
                }
            }
        }
        let resp = self
            .upstream
            .jwt_svid(&tessera_core::agent_api::JwtSvidRequest {
                spiffe_id: id.clone(),
                audience: aud,
            })
            .await?;
        if let Ok(mut c) = self.jwt_cache.lock() {
            if c.len() > 10_000 {
                c.retain(|_, (_, exp, _)| *exp > now);
            }
            c.insert(key, (resp.token.clone(), resp.expires_at, now));
        }
        Ok(resp.token)
    }

    /// An access token for `id` to `resource`, cached until half its life.
    pub async fn access_token(
        &self,
        id: &SpiffeId,
        resource: &str,
    ) -> Result<tessera_core::agent_api::TokenResponse, AgentError> {
        let key = (id.clone(), resource.to_owned());
        let now = tessera_core::now_unix();
        if let Ok(c) = self.token_cache.lock() {
            if let Some((t, at)) = c.get(&key) {
                if now < at + t.expires_in / 2 {
                    return Ok(t.clone());
                }
            }
        }
        let resp = self
            .upstream
            .token(&tessera_core::agent_api::TokenRequest {
                spiffe_id: id.clone(),
                resource: resource.to_owned(),
                scope: None,
            })
            .await?;
        if let Ok(mut c) = self.token_cache.lock() {
            if c.len() > 10_000 {
                c.retain(|_, (t, _)| t.expires_at > now);
            }
            c.insert(key, (resp.clone(), now));
        }
        Ok(resp)
    }

    pub fn digests(&self) -> &attest::DigestCache {
        &self.digests
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Running {
    pub agent: Arc<Agent>,
    pub socket: PathBuf,
    pub imds_url: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Joins, syncs once (best effort), signs the first SVIDs, and serves.
pub async fn run(config: AgentConfig) -> Result<Running, AgentError> {
    let listener = workload::bind_socket(&config.socket)?;
    let imds = match config.imds_listen {
        Some(addr) => Some(imds::bind(addr).await?),
        None => None,
    };
    let agent = Agent::start(&config).await?;
    match agent.sync_once(0).await {
        Ok(()) => {
            if let Err(e) = agent.rotate_once().await {
                tracing::warn!(error = %e, "first SVIDs not issued yet; retrying");
            }
        }
        // A refusal (a revoked agent) will not heal by retrying: say so and stop.
        Err(e @ AgentError::Refused(_)) => return Err(e),
        Err(e) => tracing::warn!(error = %e, "first sync failed; retrying in the background"),
    }
    let mut tasks = vec![
        tokio::spawn(agent.clone().sync_loop()),
        tokio::spawn(agent.clone().rotation_loop()),
        tokio::spawn(workload::serve(agent.clone(), listener)),
    ];
    let imds_url = match imds {
        Some(l) => {
            let url = format!(
                "http://{}",
                l.local_addr()
                    .map_err(|e| AgentError::Config(e.to_string()))?
            );
            tasks.push(tokio::spawn(imds::serve(agent.clone(), l)));
            Some(url)
        }
        None => None,
    };
    Ok(Running {
        agent,
        socket: config.socket,
        imds_url,
        tasks,
    })
}
