//! The Tessera trust authority: the HTTP API (discovery, JWKS, token, introspection, revocation),
//! the admin API on a unix socket, and the background work that keeps keys and state current.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tessera_core::TrustDomain;
use tessera_store::{AuditEvent, AuditLog, Op, Store};
use tessera_token::Kek;
use tokio::sync::watch;

pub mod admin;
mod agents;
pub mod apply;
pub mod ca;
pub mod config;
mod dbcreds;
mod delegation;
pub mod error;
pub mod federation;
pub mod keys;
mod metrics;
pub mod oauth;
pub mod policy;
pub mod state;
mod tls;
pub mod vault;

pub use config::{ConfigFile, ServerConfig, TrustDomainConfig};
pub use error::{ApiError, StartError};
pub use keys::KekSource;

use crate::keys::KeyRing;
use crate::metrics::{Metrics, TdLabels};
use crate::oauth::Issuer;
use crate::state::Snapshot;

/// The largest request body an OAuth or discovery endpoint accepts.
const MAX_BODY: usize = 64 * 1024;
/// The largest admin request (identity files applied over HTTP).
const MAX_ADMIN_BODY: usize = 32 * 1024 * 1024;
/// A batch of decision records (at most 1,000, each a few hundred bytes) from a service.
const MAX_RECORDS_BODY: usize = 2 * 1024 * 1024;

/// Everything a request handler needs. One per server process.
pub struct App {
    pub config: ServerConfig,
    pub base_url: String,
    pub store: Store,
    pub audit: AuditLog,
    first_td: TrustDomain,
    kek: Kek,
    hmac: ring::hmac::Key,
    /// HMAC of the admin credential accepted on `/admin/v1/...`.
    admin_token_tag: Vec<u8>,
    snapshot: RwLock<Arc<Snapshot>>,
    reload_lock: tokio::sync::Mutex<()>,
    /// The X.509 authorities of every served trust domain, for the agent mTLS verifier.
    bundles: Arc<ca::Bundles>,
    /// The version of each snapshot swapped in, for agents waiting on a change.
    changes: watch::Sender<i64>,
    /// Outside issuers' keys, per trust (static, or discovered and cached).
    pub trust_keys: federation::TrustKeys,
    /// Bumped on every secret write by this server, for readers waiting on a new version.
    pub secret_changes: watch::Sender<u64>,
    /// Admin pools to the databases of dynamic credentials.
    db_pools: dbcreds::Pools,
    /// Wakes the lease revoker when a lease is ended.
    lease_changes: tokio::sync::Notify,
    metrics: Metrics,
    registry: Registry,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Notified with the state version each time a new snapshot is swapped in.
    pub fn subscribe_changes(&self) -> watch::Receiver<i64> {
        self.changes.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The trust domain that is also the issuer at the base URL.
    /// The key-encryption key, for the vault's envelope.
    pub(crate) fn kek(&self) -> &Kek {
        &self.kek
    }

    pub fn first_td(&self) -> &TrustDomain {
        &self.first_td
    }

    /// Every URL that names `td` as an issuer.
    pub fn issuer_urls(&self, td: &TrustDomain) -> Vec<String> {
        let mut v = vec![format!("{}/{}", self.base_url, td)];
        if td == self.first_td() {
            v.push(self.base_url.clone());
        }
        v
    }

    /// The served trust domain named `td`, or a 404 that says so.
    pub fn served(&self, td: &str) -> Result<&TrustDomain, ApiError> {
        self.serves(td).ok_or_else(|| {
            ApiError::NotFound(format!(
                "this authority does not serve trust domain `{}`",
                td.chars().take(80).collect::<String>()
            ))
        })
    }

    pub fn serves(&self, td: &str) -> Option<&TrustDomain> {
        self.config
            .trust_domains
            .iter()
            .map(|t| &t.name)
            .find(|t| t.as_str() == td)
    }

    /// Reloads state from storage and swaps in a new snapshot.
    pub async fn reload(&self) -> Result<(), String> {
        let _one = self.reload_lock.lock().await;
        let version = self
            .store
            .state_version()
            .await
            .map_err(|e| e.to_string())?;
        let state = self.store.load_state().await.map_err(|e| e.to_string())?;
        let now = tessera_core::now_unix();
        let revoked = self
            .store
            .revoked_tokens(now)
            .await
            .map_err(|e| e.to_string())?;
        let keys = KeyRing::load(
            &self.store.keys().await.map_err(|e| e.to_string())?,
            &self.kek,
        )?;
        let cas = ca::CaRing::load(
            &self.store.cas().await.map_err(|e| e.to_string())?,
            &self.kek,
        )?;
        let previous = self.snapshot();
        let snap = Snapshot::build(
            version,
            state,
            revoked,
            keys,
            cas,
            Some(&previous),
            self.metrics.policy.clone(),
        )
        .map_err(|e| e.to_string())?;
        self.bundles.set(&snap.cas, &self.trust_domain_names(), now);
        self.metrics.grants_overdue.set(
            i64::try_from(tessera_policy::overdue_grants(&snap.grants, now).len())
                .unwrap_or(i64::MAX),
        );
        let version = snap.version;
        match self.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
        self.changes.send_replace(version);
        Ok(())
    }

    pub fn trust_domain_names(&self) -> Vec<TrustDomain> {
        self.config
            .trust_domains
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Commits `ops` with `event` and reloads. The one path for every admin change.
    ///
    /// Once the commit succeeded the change is made: a failed reload is logged, not reported as a
    /// failed change, and the background poll (which sees the new state version) retries it.
    pub async fn change(&self, ops: &[Op], event: AuditEvent) -> Result<(), ApiError> {
        self.store.commit(ops, &[event]).await?;
        if let Err(e) = self.reload().await {
            tracing::error!(error = %e, "change committed, reload failed; the next poll retries");
        }
        Ok(())
    }

    pub async fn revoke_token(
        &self,
        jti: &str,
        exp: i64,
        actor: &str,
        sub: &str,
    ) -> Result<(), ApiError> {
        let now = tessera_core::now_unix();
        self.change(
            &[Op::RevokeToken {
                jti: jti.to_owned(),
                expires_at: exp,
                at: now,
            }],
            AuditEvent {
                kind: "revoke.token".into(),
                actor: actor.to_owned(),
                subject: sub.to_owned(),
                outcome: "ok".into(),
                detail: json!({"jti": jti, "exp": exp}),
            },
        )
        .await
    }

    fn issuer_for(&self, td: Option<&str>) -> Result<Issuer, ApiError> {
        match td {
            None => Ok(Issuer {
                td: self.first_td().clone(),
                url: self.base_url.clone(),
            }),
            Some(t) => {
                let td = self.served(t)?;
                Ok(Issuer {
                    td: td.clone(),
                    url: format!("{}/{}", self.base_url, td),
                })
            }
        }
    }

    /// Constant-time check of an admin credential against its stored keyed hash.
    pub fn is_admin_token(&self, token: &str) -> bool {
        !self.admin_token_tag.is_empty()
            && ring::hmac::verify(&self.hmac, token.as_bytes(), &self.admin_token_tag).is_ok()
    }

    fn hmac_secret(&self, secret: &str) -> String {
        STANDARD.encode(ring::hmac::sign(&self.hmac, secret.as_bytes()).as_ref())
    }
}

/// A running server. Dropping it does not stop it; call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub url: String,
    pub admin_socket: PathBuf,
    pub app: Arc<App>,
    /// The CA that signed the API's TLS certificate, when the server generated it.
    pub tls_ca: Option<PathBuf>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn prepare_data_dir(dir: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |m: String| StartError::DataDir {
        path: dir.display().to_string(),
        message: m,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(e.to_string()))?;
    }
    if !dir.is_dir() {
        return Err(err("it is not a folder".into()));
    }
    Ok(())
}

/// Starts the authority: storage, keys, state, the HTTP API and the admin socket.
pub async fn start(
    config: ServerConfig,
    kek_source: Option<KekSource>,
) -> Result<Running, StartError> {
    let config = config.finish()?;
    prepare_data_dir(&config.data_dir)?;
    let (kek, kek_created) = keys::load_kek(kek_source.as_ref(), &config.data_dir)?;
    let store = match &config.database_url {
        Some(url) => Store::open_postgres(url).await?,
        None => Store::open_sqlite(&config.data_dir.join("tessera.db")).await?,
    };

    // The KEK check value tells a wrong key apart from damaged data, before anything is written.
    const CHECK: &str = "tessera-kek-check";
    match store.meta("kek_check").await? {
        Some(sealed) => {
            let ok = STANDARD
                .decode(sealed)
                .ok()
                .and_then(|b| kek.open(&b, CHECK).ok())
                .is_some_and(|p| p == CHECK.as_bytes());
            if !ok && kek_created {
                // The file was made just now for a database that already has keys: the real
                // KEK is missing, not wrong. Take the new file back so nothing is left changed.
                let _ = std::fs::remove_file(config.data_dir.join("kek"));
                return Err(StartError::Kek(format!(
                    "the key-encryption key is missing: `{}` does not exist but this authority's database holds keys sealed under one; restore that file, or set TESSERA_KEK or TESSERA_KEK_FILE (servers sharing a database share the KEK)",
                    config.data_dir.join("kek").display()
                )));
            }
            if !ok {
                return Err(StartError::Kek(
                    "this key-encryption key does not open this authority's keys (wrong TESSERA_KEK, TESSERA_KEK_FILE or DATA/kek?); nothing was changed".into(),
                ));
            }
        }
        None => {
            let sealed = kek
                .seal(CHECK.as_bytes(), CHECK)
                .map_err(|e| StartError::Kek(e.to_string()))?;
            store
                .commit(
                    &[Op::InitMeta {
                        key: "kek_check".into(),
                        value: STANDARD.encode(sealed),
                    }],
                    &[],
                )
                .await?;
        }
    }
    // The key behind client secret hashes, shared by every server on the database.
    let hmac_bytes = match store.meta("client_secret_key").await? {
        Some(v) => v,
        None => {
            let fresh = kek
                .seal(
                    &tessera_token::seal::random_bytes::<32>()
                        .map_err(|e| StartError::Kek(e.to_string()))?,
                    "client-secret-key",
                )
                .map_err(|e| StartError::Kek(e.to_string()))?;
            store
                .commit(
                    &[Op::InitMeta {
                        key: "client_secret_key".into(),
                        value: STANDARD.encode(fresh),
                    }],
                    &[],
                )
                .await?;
            store.meta("client_secret_key").await?.unwrap_or_default()
        }
    };
    let hmac_key = STANDARD
        .decode(hmac_bytes)
        .ok()
        .and_then(|b| kek.open(&b, "client-secret-key").ok())
        .ok_or_else(|| StartError::Kek("the client secret key does not open".into()))?;
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hmac_key);
    let admin_token_tag = admin_credential(&store, &hmac, &config.data_dir).await?;

    // Every trust domain needs a key that signs now.
    let now = tessera_core::now_unix();
    let ring = KeyRing::load(&store.keys().await?, &kek).map_err(StartError::Kek)?;
    for td in &config.trust_domains {
        if ring.signing(&td.name, now).is_none() {
            let rec = keys::new_key_record(&td.name, config.key_alg, &kek, now, now)
                .map_err(StartError::Keys)?;
            store
                .commit(
                    &[Op::InsertKey(rec.clone())],
                    &[AuditEvent {
                        kind: "keys.created".into(),
                        actor: "server".into(),
                        subject: td.name.to_string(),
                        outcome: "ok".into(),
                        detail: json!({"kid": rec.kid, "alg": rec.alg}),
                    }],
                )
                .await?;
        }
    }

    // Every trust domain needs a CA that signs now.
    let cas = ca::CaRing::load(&store.cas().await?, &kek).map_err(StartError::Kek)?;
    let ca_ttl = i64::try_from(config.ca_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    for td in &config.trust_domains {
        if cas.signing(&td.name, now).is_none() {
            let rec =
                ca::new_ca_record(&td.name, &kek, now, now, ca_ttl).map_err(StartError::Keys)?;
            store
                .commit(
                    &[Op::InsertCa(rec.clone())],
                    &[AuditEvent {
                        kind: "ca.created".into(),
                        actor: "server".into(),
                        subject: td.name.to_string(),
                        outcome: "ok".into(),
                        detail: json!({"ca": rec.id, "not_after": rec.not_after}),
                    }],
                )
                .await?;
        }
    }

    let bundles = Arc::new(ca::Bundles::default());
    let (tcp, tls) = bind_api(&config, bundles.clone()).await?;
    let local = tcp.local_addr().map_err(|e| StartError::Listen {
        addr: config.listen.to_string(),
        message: e.to_string(),
    })?;
    let scheme = if config.dev { "http" } else { "https" };
    let base_url = config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("{scheme}://{}", display_addr(local)));

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let audit_metrics = tessera_store::AuditMetrics::register(&mut registry);
    let snapshot = Snapshot::build(
        0,
        Default::default(),
        vec![],
        KeyRing::default(),
        ca::CaRing::default(),
        None,
        metrics.policy.clone(),
    )?;
    let first_td = config
        .trust_domains
        .first()
        .map(|t| t.name.clone())
        .ok_or_else(|| StartError::Config("no trust domain configured".into()))?;
    let app = Arc::new(App {
        first_td,
        audit: AuditLog::spawn(store.clone(), Some(audit_metrics)),
        config,
        base_url: base_url.clone(),
        store,
        kek,
        hmac,
        admin_token_tag,
        snapshot: RwLock::new(snapshot),
        reload_lock: tokio::sync::Mutex::new(()),
        bundles,
        changes: watch::channel(0).0,
        trust_keys: federation::TrustKeys::default(),
        secret_changes: watch::channel(0).0,
        db_pools: dbcreds::Pools::default(),
        lease_changes: tokio::sync::Notify::new(),
        metrics,
        registry,
    });
    app.reload().await.map_err(StartError::Keys)?;

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let router = api_router(app.clone());
    let tls_ca = tls.ca_path.clone();
    tasks.push(tls::serve(
        tcp,
        tls.config,
        app.config.dev,
        router,
        stop_rx.clone(),
    ));
    let admin_socket = app.config.data_dir.join("admin.sock");
    tasks.push(admin::serve(app.clone(), &admin_socket, stop_rx.clone()).await?);
    tasks.push(vault::spawn_upkeep(app.clone(), stop_rx.clone()));
    tasks.push(dbcreds::spawn_revoker(app.clone(), stop_rx.clone()));
    tasks.push(tokio::spawn(background(app.clone(), stop_rx)));
    Ok(Running {
        url: base_url,
        admin_socket,
        app,
        tls_ca,
        stop,
        tasks,
    })
}

/// The admin credential for `--server URL` use. The first server on a database makes it and
/// writes it to `DATA/admin-token` (0600); every server keeps only its keyed hash.
async fn admin_credential(
    store: &Store,
    hmac: &ring::hmac::Key,
    data_dir: &std::path::Path,
) -> Result<Vec<u8>, StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(tag) = store.meta("admin_token_hmac").await? {
        return STANDARD
            .decode(tag)
            .map_err(|_| StartError::Kek("the stored admin credential hash is not base64".into()));
    }
    let bytes =
        tessera_token::seal::random_bytes::<32>().map_err(|e| StartError::Kek(e.to_string()))?;
    let token = format!("tat_{}", tessera_token::strict::b64_encode(bytes));
    let tag = ring::hmac::sign(hmac, token.as_bytes()).as_ref().to_vec();
    store
        .commit(
            &[Op::InitMeta {
                key: "admin_token_hmac".into(),
                value: STANDARD.encode(&tag),
            }],
            &[],
        )
        .await?;
    let stored = store.meta("admin_token_hmac").await?.unwrap_or_default();
    if stored != STANDARD.encode(&tag) {
        // Another server made it first; its file holds the credential.
        return STANDARD
            .decode(stored)
            .map_err(|_| StartError::Kek("the stored admin credential hash is not base64".into()));
    }
    let path = data_dir.join("admin-token");
    let write = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()));
    write.map_err(|e| StartError::DataDir {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(tag)
}

fn display_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

async fn bind_api(
    config: &ServerConfig,
    bundles: Arc<ca::Bundles>,
) -> Result<(tokio::net::TcpListener, tls::Tls), StartError> {
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen {
            addr: config.listen.to_string(),
            message: e.to_string(),
        })?;
    Ok((tcp, tls::load_or_create(config, bundles)?))
}

/// Polls for changes by other servers, rotates keys on schedule, sweeps expired records.
async fn background(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.config.poll_interval);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        n += 1;
        match app.store.state_version().await {
            Ok(v) if v != app.snapshot().version => {
                if let Err(e) = app.reload().await {
                    tracing::error!(error = %e, "reload failed; serving the previous state");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot reach storage"),
        }
        let now = tessera_core::now_unix();
        let snap = app.snapshot();
        // CAs enter and leave the bundle with time, not only with changes.
        app.bundles.set(&snap.cas, &app.trust_domain_names(), now);
        for td in &app.config.trust_domains {
            if let Some(c) = snap.cas.signing(&td.name, now) {
                app.metrics
                    .ca_expiry_seconds
                    .get_or_create(&TdLabels {
                        trust_domain: td.name.to_string(),
                    })
                    .set(c.not_after - now);
                // Past half its life and no successor prepared: prepare one.
                let half = c.activate_at + (c.not_after - c.activate_at) / 2;
                let prepared = snap
                    .cas
                    .entries(&td.name)
                    .iter()
                    .any(|o| o.activate_at > c.activate_at);
                if now >= half && !prepared && n.is_multiple_of(60) {
                    let ahead =
                        i64::try_from(app.config.ca_publish_ahead.as_secs()).unwrap_or(3600);
                    if let Err(e) = admin::rotate_ca(&app, &td.name, ahead, "server").await {
                        tracing::error!(error = %e, "scheduled CA rotation failed");
                    }
                }
            }
            if let Some(k) = snap.keys.signing(&td.name, now) {
                app.metrics
                    .key_age_seconds
                    .get_or_create(&TdLabels {
                        trust_domain: td.name.to_string(),
                    })
                    .set(now - k.activate_at);
            }
        }
        if n.is_multiple_of(60) {
            if let Some(period) = app.config.key_rotation_period {
                if let Err(e) = admin::scheduled_rotation(&app, period, now).await {
                    tracing::error!(error = %e, "scheduled key rotation failed");
                }
            }
            if let Err(e) = app.store.sweep(now).await {
                tracing::warn!(error = %e, "sweep failed");
            }
        }
    }
}

fn api_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/.well-known/oauth-authorization-server",
            get(|s| metadata(s, None)),
        )
        .route(
            "/.well-known/openid-configuration",
            get(|s| metadata(s, None)),
        )
        .route(
            "/.well-known/oauth-authorization-server/{td}",
            get(|s, Path(td): Path<String>| metadata(s, Some(td))),
        )
        .route(
            "/{td}/.well-known/openid-configuration",
            get(|s, Path(td): Path<String>| metadata(s, Some(td))),
        )
        .route("/jwks", get(|s| jwks(s, None)))
        .route(
            "/{td}/jwks",
            get(|s, Path(td): Path<String>| jwks(s, Some(td))),
        )
        .route("/bundle/{td}", get(bundle))
        .route("/revocations", get(|s| revocations(s, None)))
        .route(
            "/{td}/revocations",
            get(|s, Path(td): Path<String>| revocations(s, Some(td))),
        )
        .route(
            "/token",
            post(|s, conn: tls::ConnInfo, h, b| endpoint(s, None, conn, h, b, Endpoint::Token)),
        )
        .route(
            "/{td}/token",
            post(|s, Path(td): Path<String>, conn: tls::ConnInfo, h, b| {
                endpoint(s, Some(td), conn, h, b, Endpoint::Token)
            }),
        )
        .route(
            "/introspect",
            post(|s, conn: tls::ConnInfo, h, b| {
                endpoint(s, None, conn, h, b, Endpoint::Introspect)
            }),
        )
        .route(
            "/{td}/introspect",
            post(|s, Path(td): Path<String>, conn: tls::ConnInfo, h, b| {
                endpoint(s, Some(td), conn, h, b, Endpoint::Introspect)
            }),
        )
        .route(
            "/revoke",
            post(|s, conn: tls::ConnInfo, h, b| endpoint(s, None, conn, h, b, Endpoint::Revoke)),
        )
        .route(
            "/{td}/revoke",
            post(|s, Path(td): Path<String>, conn: tls::ConnInfo, h, b| {
                endpoint(s, Some(td), conn, h, b, Endpoint::Revoke)
            }),
        )
        .fallback(|| async {
            ApiError::NotFound(
                "no such endpoint; see /.well-known/oauth-authorization-server".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        // Added after the limits above: identity files may be larger than any token request.
        .nest(
            "/admin",
            admin::http_routes(app.clone())
                .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY)),
        )
        .nest("/agent/v1", agents::routes())
        .merge(vault::workload_routes())
        .merge(dbcreds::workload_routes())
        .nest(
            "/v1/policy",
            policy::workload_routes().layer(axum::extract::DefaultBodyLimit::max(MAX_RECORDS_BODY)),
        )
        .with_state(app)
}

#[derive(Clone, Copy)]
enum Endpoint {
    Token,
    Introspect,
    Revoke,
}

async fn endpoint(
    State(app): State<Arc<App>>,
    td: Option<String>,
    conn: tls::ConnInfo,
    headers: HeaderMap,
    body: Bytes,
    which: Endpoint,
) -> Response {
    let issuer = match app.issuer_for(td.as_deref()) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    match which {
        Endpoint::Token => oauth::token(app, issuer, conn, headers, body).await,
        Endpoint::Introspect => oauth::introspect(app, issuer, headers, body).await,
        Endpoint::Revoke => oauth::revoke(app, issuer, headers, body).await,
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: storage unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unreachable\n").into_response()
        }
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &app.registry).is_err() {
        return ApiError::unavailable("metrics encoding failed").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn metadata(State(app): State<Arc<App>>, td: Option<String>) -> Response {
    let issuer = match app.issuer_for(td.as_deref()) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let doc = json!({
        "issuer": issuer.url,
        "token_endpoint": issuer.endpoint("token"),
        "jwks_uri": issuer.endpoint("jwks"),
        "introspection_endpoint": issuer.endpoint("introspect"),
        "revocation_endpoint": issuer.endpoint("revoke"),
        "grant_types_supported": [oauth::CLIENT_CREDENTIALS, federation::TOKEN_EXCHANGE, federation::JWT_BEARER],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth"],
        // RFC 8705 §3.3: workloads authenticating with their X.509-SVID get tokens bound to it.
        "tls_client_certificate_bound_access_tokens": true,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": [],
        "tessera_revocation_list_endpoint": issuer.endpoint("revocations"),
        "tessera_trust_domain": issuer.td.as_str(),
    });
    cached(Json(doc).into_response(), 300)
}

fn cached(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={secs}")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp
}

async fn jwks(State(app): State<Arc<App>>, td: Option<String>) -> Response {
    let issuer = match app.issuer_for(td.as_deref()) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let snap = app.snapshot();
    let set =
        tessera_token::JwkSet::from_keys(snap.keys.published(&issuer.td, tessera_core::now_unix()));
    cached(Json(set).into_response(), app.config.jwks_max_age.as_secs())
}

/// The SPIFFE bundle of a trust domain: a JWKS with `use` set to the SVID kind and the
/// `spiffe_sequence` and `spiffe_refresh_hint` members (SPIFFE Trust Domain and Bundle §4).
async fn bundle(State(app): State<Arc<App>>, Path(td): Path<String>) -> Response {
    let issuer = match app.issuer_for(Some(&td)) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let mut keys: Vec<Value> = snap
        .cas
        .published(&issuer.td, now)
        .iter()
        .filter_map(ca::x509_jwk)
        .collect();
    keys.extend(snap.keys.published(&issuer.td, now).into_iter().map(|k| {
        let mut jwk = k.to_jwk();
        jwk.insert("use".into(), "jwt-svid".into());
        Value::Object(jwk)
    }));
    let refresh = app.config.jwks_max_age.as_secs();
    let doc =
        json!({"keys": keys, "spiffe_sequence": snap.version, "spiffe_refresh_hint": refresh});
    cached(Json(doc).into_response(), refresh)
}

/// Unexpired revoked token IDs and revoked workloads, for verifiers that poll.
async fn revocations(State(app): State<Arc<App>>, td: Option<String>) -> Response {
    let issuer = match app.issuer_for(td.as_deref()) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let now = tessera_core::now_unix();
    let tokens = match app.store.revoked_tokens(now).await {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let snap = app.snapshot();
    let workloads: Vec<Value> = snap
        .workloads
        .values()
        .filter(|w| w.spec.id.trust_domain_str() == issuer.td.as_str())
        .filter_map(|w| {
            w.revoked_at
                .map(|at| json!({"sub": w.spec.id, "revoked_at": at}))
        })
        .collect();
    let revoked: Vec<Value> = tokens
        .into_iter()
        .map(|(jti, exp)| json!({"jti": jti, "exp": exp}))
        .collect();
    cached(
        Json(json!({"revoked": revoked, "revoked_workloads": workloads})).into_response(),
        5,
    )
}
