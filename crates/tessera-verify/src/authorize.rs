//! Authorization at the point of use: a verified caller, a method and a path, decided locally
//! against a policy bundle fetched from the authority and kept current. No network call per
//! request; when the authority is unreachable the last good bundle stays in force.
//!
//! ```ignore
//! let authz = Authorizer::new(my_spiffe_id);
//! authz.spawn_bundle_sync(BundleSource::new(server_url, client, tokens));
//! let app = Router::new().route("/api/{*rest}", get(handler))
//!     .layer(RequireTokenLayer::new(verifier).authorize(authz));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tessera_core::{Scope, SpiffeId};
use tessera_policy::limit::{Limited, Limits};
use tessera_policy::path::{PathCase, PathError};
use tessera_policy::{Authn, Call, DecisionRecord, Env, PolicyBundle, PolicyEngine, PolicyError};
use tokio::sync::mpsc;

/// What the authorizer decided for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    pub allowed: bool,
    /// For the service's logs and the audit trail; not for the caller (it names policies).
    pub reason: String,
    /// Set when a rate limit refused an otherwise allowed call.
    pub limited: Option<Limited>,
}

impl AuthzDecision {
    fn denied(reason: String) -> Self {
        Self {
            allowed: false,
            reason,
            limited: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BundleLabels {
    version: String,
}

/// `tessera_authz_decisions_total{result=allow|deny|error|limited|no_bundle}`,
/// `tessera_authz_records_dropped_total`, `tessera_policy_bundle_synced_timestamp_seconds` and
/// `tessera_policy_bundle_info{version}`.
#[derive(Clone, Debug, Default)]
pub struct AuthzMetrics {
    decisions: Family<DecisionLabels, Counter>,
    dropped: Counter,
    /// When the authority last answered a bundle poll (unix seconds): the policy in force is
    /// current as of then.
    synced: Gauge,
    /// 1 for the version of the bundle in force (one series at a time).
    bundle: Family<BundleLabels, Gauge>,
}

impl AuthzMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tessera_authz_decisions",
            "Point-of-use authorization decisions by result",
            m.decisions.clone(),
        );
        registry.register(
            "tessera_authz_records_dropped",
            "Decision records not sent to the authority because the queue was full",
            m.dropped.clone(),
        );
        registry.register(
            "tessera_policy_bundle_synced_timestamp_seconds",
            "When the authority last answered this service's policy bundle poll (unix seconds)",
            m.synced.clone(),
        );
        registry.register(
            "tessera_policy_bundle_info",
            "The version (a digest) of the policy bundle in force",
            m.bundle.clone(),
        );
        m
    }

    fn loaded(&self, version: &str) {
        self.bundle.clear();
        self.bundle
            .get_or_create(&BundleLabels {
                version: version.to_owned(),
            })
            .set(1);
    }

    pub fn count(&self, result: &'static str) -> u64 {
        self.decisions
            .get_or_create(&DecisionLabels { result })
            .get()
    }

    fn inc(&self, result: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { result })
            .inc();
    }
}

struct Loaded {
    version: String,
    engine: PolicyEngine,
    limits: Limits,
    revoked: std::collections::HashSet<SpiffeId>,
}

struct Inner {
    service: SpiffeId,
    loaded: RwLock<Option<Arc<Loaded>>>,
    metrics: AuthzMetrics,
    records: Option<mpsc::Sender<DecisionRecord>>,
    /// Every how many allows one is recorded (0: none). Every denial is recorded.
    allow_every: u64,
    allows_seen: AtomicU64,
    path_case: PathCase,
}

/// The workloads a delegated token's `act` claim names (RFC 8693 §4.1), the current actor
/// first. Empty without `act`; an error when a member is not a SPIFFE ID or the chain is
/// deeper than 8 (fail closed: a chain that cannot be read is not decided for).
pub fn actor_chain(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<SpiffeId>, String> {
    let mut chain = Vec::new();
    let mut act = claims.get("act");
    while let Some(a) = act {
        if chain.len() >= 8 {
            return Err("the `act` chain is deeper than 8".into());
        }
        let sub = a
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .ok_or("an `act` member has no `sub`")?;
        chain.push(SpiffeId::parse(sub).map_err(|e| format!("`act`: {e}"))?);
        act = a.get("act");
    }
    Ok(chain)
}

/// Decides calls to one service locally. Cheap to clone.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("service", &self.inner.service)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// An authorizer for `service` with no bundle yet: it denies everything until one loads.
    pub fn new(service: SpiffeId) -> Self {
        Self::build(service, AuthzMetrics::default(), None, 0)
    }

    fn build(
        service: SpiffeId,
        metrics: AuthzMetrics,
        records: Option<mpsc::Sender<DecisionRecord>>,
        allow_every: u64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                service,
                loaded: RwLock::new(None),
                metrics,
                records,
                allow_every,
                allows_seen: AtomicU64::new(0),
                path_case: PathCase::Sensitive,
            }),
        }
    }

    pub fn with_metrics(self, metrics: AuthzMetrics) -> Self {
        let i = &self.inner;
        let mut out = Self::build(i.service.clone(), metrics, i.records.clone(), i.allow_every);
        if let Some(inner) = Arc::get_mut(&mut out.inner) {
            inner.path_case = i.path_case;
        }
        out.copy_bundle_from(&self);
        out
    }

    /// For a service whose routes do not differ by case: decide (and forward) lower-case
    /// paths, so `/ADMIN` meets the policies written for `/admin`.
    pub fn with_path_case(self, case: PathCase) -> Self {
        let i = &self.inner;
        let mut out = Self::build(
            i.service.clone(),
            i.metrics.clone(),
            i.records.clone(),
            i.allow_every,
        );
        if let Some(inner) = Arc::get_mut(&mut out.inner) {
            inner.path_case = case;
        }
        out.copy_bundle_from(&self);
        out
    }

    /// Rewrites the request's path to the canonical form decisions are made on, keeping its
    /// query, so the service behind receives exactly the path that was decided. A path that
    /// cannot be made canonical is refused (answer 400).
    pub fn canonicalize<B>(&self, req: &mut http::Request<B>) -> Result<(), PathError> {
        let path = req.uri().path();
        let canonical = tessera_policy::path::canonical(path, self.inner.path_case)?;
        if canonical == path {
            return Ok(());
        }
        let target = match req.uri().query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            target
                .parse()
                .map_err(|_| PathError::BadEscape(target.chars().take(200).collect()))?,
        );
        *req.uri_mut() =
            http::Uri::from_parts(parts).map_err(|_| PathError::BadEscape(target.clone()))?;
        Ok(())
    }

    fn copy_bundle_from(&self, other: &Self) {
        let current = other.inner.loaded.read().ok().and_then(|l| l.clone());
        if let Ok(mut l) = self.inner.loaded.write() {
            *l = current;
        }
    }

    pub fn service(&self) -> &SpiffeId {
        &self.inner.service
    }

    /// The version of the bundle in force, if any.
    pub fn version(&self) -> Option<String> {
        self.inner
            .loaded
            .read()
            .ok()
            .and_then(|l| l.as_ref().map(|l| l.version.clone()))
    }

    /// Puts a bundle in force after compiling and validating it; on error the previous one
    /// stays in force.
    pub fn set_bundle(&self, bundle: &PolicyBundle) -> Result<(), PolicyError> {
        let engine = bundle.engine()?;
        let limits = Limits::from_grants(&bundle.grants, |g| g.call_rate);
        let loaded = Arc::new(Loaded {
            version: bundle.version.clone(),
            engine,
            limits,
            revoked: bundle.revoked.iter().cloned().collect(),
        });
        if let Ok(mut l) = self.inner.loaded.write() {
            *l = Some(loaded);
        }
        self.inner.metrics.loaded(&bundle.version);
        Ok(())
    }

    /// May `caller` make this call? Deny by default: without a bundle, every call is denied.
    pub fn decide(
        &self,
        caller: &SpiffeId,
        method: &str,
        path: &str,
        scopes: &[Scope],
        authn: Authn,
        env: &Env,
    ) -> AuthzDecision {
        self.decide_chain(caller, &[], method, path, scopes, authn, env)
    }

    /// May `caller` make this call through `actors` (a delegated token's `act` chain, the
    /// current actor first)? Every workload in the chain must not be revoked; the caller and
    /// the current actor must each be allowed (the actor gets no route of the caller's it
    /// lacks itself) and within their own call rate; policies see `context.delegated` and
    /// `context.actor`.
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one call, as `decide`"
    )]
    pub fn decide_chain(
        &self,
        caller: &SpiffeId,
        actors: &[SpiffeId],
        method: &str,
        path: &str,
        scopes: &[Scope],
        authn: Authn,
        env: &Env,
    ) -> AuthzDecision {
        let first = self.decide_one(
            caller,
            actors.first(),
            actors,
            method,
            path,
            scopes,
            authn,
            env,
        );
        match actors.first() {
            Some(actor) if first.allowed => {
                self.decide_one(actor, Some(actor), actors, method, path, scopes, authn, env)
            }
            _ => first,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the parts of one call, as `decide`"
    )]
    fn decide_one(
        &self,
        caller: &SpiffeId,
        actor: Option<&SpiffeId>,
        chain: &[SpiffeId],
        method: &str,
        path: &str,
        scopes: &[Scope],
        authn: Authn,
        env: &Env,
    ) -> AuthzDecision {
        let loaded = self.inner.loaded.read().ok().and_then(|l| l.clone());
        let metrics = &self.inner.metrics;
        let Some(loaded) = loaded else {
            metrics.inc("no_bundle");
            return self.finish(
                caller,
                method,
                path,
                scopes,
                env,
                AuthzDecision::denied("no policy bundle has been loaded yet".into()),
            );
        };
        if let Some(revoked) = std::iter::once(caller)
            .chain(chain)
            .find(|w| loaded.revoked.contains(*w))
        {
            metrics.inc("deny");
            return self.finish(
                caller,
                method,
                path,
                scopes,
                env,
                AuthzDecision::denied(format!("`{revoked}` has been revoked")),
            );
        }
        let call = Call {
            actor,
            method,
            path,
            scopes,
            authn,
        };
        let d = loaded
            .engine
            .decide_call(caller, &self.inner.service, &call, env);
        let mut out = AuthzDecision {
            allowed: d.allowed,
            reason: d.reason(),
            limited: None,
        };
        if !d.errors.is_empty() {
            metrics.inc("error");
        } else if d.allowed {
            if let Err(limited) = loaded.limits.check(caller, &self.inner.service) {
                metrics.inc("limited");
                out.allowed = false;
                out.reason = format!("rate limit {} exceeded", limited.rate);
                out.limited = Some(limited);
            } else {
                metrics.inc("allow");
            }
        } else {
            metrics.inc("deny");
        }
        self.finish(caller, method, path, scopes, env, out)
    }

    fn finish(
        &self,
        caller: &SpiffeId,
        method: &str,
        path: &str,
        scopes: &[Scope],
        env: &Env,
        d: AuthzDecision,
    ) -> AuthzDecision {
        if let Some(tx) = &self.inner.records {
            let record = if d.allowed {
                let every = self.inner.allow_every;
                every > 0
                    && self
                        .inner
                        .allows_seen
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(every)
            } else {
                true
            };
            if record {
                let r = DecisionRecord {
                    caller: caller.clone(),
                    method: method.to_owned(),
                    path: path.chars().take(512).collect(),
                    allowed: d.allowed,
                    reason: d.reason.clone(),
                    scopes: scopes.to_vec(),
                    at: env.now,
                };
                if tx.try_send(r).is_err() {
                    self.inner.metrics.dropped.inc();
                }
            }
        }
        d
    }

    /// Keeps the bundle current from the authority: a long poll with the version in force, so
    /// a change arrives within a second or so and an idle service costs one request a minute.
    /// Errors are logged and retried with backoff; the last good bundle stays in force.
    pub fn spawn_bundle_sync(&self, source: BundleSource) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match source
                    .fetch(&this.inner.service, this.version().as_deref())
                    .await
                {
                    Ok(Some(bundle)) => match this.set_bundle(&bundle) {
                        Ok(()) => {
                            this.inner.metrics.synced.set(tessera_core::now_unix());
                            tracing::info!(version = %bundle.version, "policy bundle loaded");
                            backoff = Duration::from_millis(200);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "policy bundle refused; keeping the last good one");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    },
                    Ok(None) => {
                        this.inner.metrics.synced.set(tessera_core::now_unix());
                        backoff = Duration::from_millis(200);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "policy bundle fetch failed; keeping the last good one");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
    }

    /// Sends decision records to the authority: every denial, and one allow in `allow_every`
    /// (0 sends none). Returns the authorizer that records and the sending task.
    pub fn with_decision_log(
        self,
        source: BundleSource,
        allow_every: u64,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<DecisionRecord>(10_000);
        let i = &self.inner;
        let out = Self::build(i.service.clone(), i.metrics.clone(), Some(tx), allow_every);
        out.copy_bundle_from(&self);
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                // Gather what arrives within a moment, up to a batch.
                let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
                while batch.len() < 500 {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        _ => break,
                    }
                }
                let mut attempt = 0;
                loop {
                    match source.send_records(&batch).await {
                        Ok(()) => break,
                        Err(e) if attempt < 5 => {
                            attempt += 1;
                            tracing::warn!(error = %e, "decision records not accepted yet; retrying");
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, records = batch.len(), "decision records lost");
                            break;
                        }
                    }
                }
                batch.clear();
            }
        });
        (out, task)
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where the authorizer gets its bundle, and the access token (audience: the authority) it
/// shows for it.
#[derive(Clone)]
pub struct BundleSource {
    server: reqwest::Url,
    client: reqwest::Client,
    token: Arc<dyn Fn() -> TokenFuture + Send + Sync>,
}

impl std::fmt::Debug for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSource")
            .field("server", &self.server.as_str())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

impl BundleSource {
    /// `token` returns a current access token for the authority (`audience=<issuer URL>`).
    pub fn new(
        server: reqwest::Url,
        client: reqwest::Client,
        token: impl Fn() -> TokenFuture + Send + Sync + 'static,
    ) -> Self {
        Self {
            server,
            client,
            token: Arc::new(token),
        }
    }

    /// Authenticates with OAuth client credentials (`client_secret_basic`), caching the token
    /// until two thirds of its life.
    pub fn client_credentials(
        server: reqwest::Url,
        client: reqwest::Client,
        client_id: String,
        secret: String,
    ) -> Self {
        let cache: Arc<tokio::sync::Mutex<Option<(String, tokio::time::Instant)>>> = Arc::default();
        let (http, url) = (client.clone(), server.clone());
        Self::new(server, client, move || {
            let (cache, http, url) = (cache.clone(), http.clone(), url.clone());
            let (id, secret) = (client_id.clone(), secret.clone());
            Box::pin(async move {
                let mut c = cache.lock().await;
                if let Some((t, until)) = c.as_ref() {
                    if tokio::time::Instant::now() < *until {
                        return Ok(t.clone());
                    }
                }
                let issuer = url.as_str().trim_end_matches('/').to_owned();
                let token_url = url.join("token").map_err(|e| e.to_string())?;
                let resp = http
                    .post(token_url)
                    .basic_auth(id, Some(secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("audience", issuer.as_str()),
                    ])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("token request refused: {}", resp.status()));
                }
                let t: TokenResponse = resp.json().await.map_err(|e| e.to_string())?;
                let life = Duration::from_secs(u64::try_from(t.expires_in.max(3)).unwrap_or(3));
                *c = Some((
                    t.access_token.clone(),
                    tokio::time::Instant::now() + life * 2 / 3,
                ));
                Ok(t.access_token)
            })
        })
    }

    /// The bundle for `service`, or `None` when `known` is still current (after a long poll).
    pub async fn fetch(
        &self,
        service: &SpiffeId,
        known: Option<&str>,
    ) -> Result<Option<PolicyBundle>, String> {
        let token = (self.token)().await?;
        let mut url = self
            .server
            .join("v1/policy/bundle")
            .map_err(|e| e.to_string())?;
        url.query_pairs_mut()
            .append_pair("service", service.as_str())
            .append_pair("wait", "55");
        let mut req = self
            .client
            .get(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(70));
        if let Some(v) = known {
            req = req.header(http::header::IF_NONE_MATCH, format!("\"{v}\""));
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        match resp.status() {
            http::StatusCode::NOT_MODIFIED => Ok(None),
            s if s.is_success() => resp.json().await.map(Some).map_err(|e| e.to_string()),
            s => Err(format!("the authority answered {s}")),
        }
    }

    /// Opens the change stream, resuming after `version` when one is held.
    pub(crate) async fn subscribe_changes(
        &self,
        version: Option<i64>,
    ) -> Result<reqwest::Response, crate::changes::FeedError> {
        use crate::changes::FeedError;
        let token = (self.token)().await.map_err(FeedError::Connect)?;
        let url = self
            .server
            .join("v1/changes")
            .map_err(|e| FeedError::Connect(e.to_string()))?;
        let mut req = self
            .client
            .get(url)
            .bearer_auth(token)
            .header(http::header::ACCEPT, "text/event-stream")
            .timeout(Duration::from_secs(24 * 3600));
        if let Some(v) = version {
            req = req.header("last-event-id", v.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| FeedError::Connect(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(FeedError::Refused(format!(
                "the authority answered {}",
                resp.status()
            )));
        }
        Ok(resp)
    }

    async fn send_records(&self, records: &[DecisionRecord]) -> Result<(), String> {
        let token = (self.token)().await?;
        let url = self
            .server
            .join("v1/policy/decisions")
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "records": records }))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("the authority answered {}", resp.status()))
        }
    }
}
