//! Start-up and background work: storage, the KEK check, keys and CAs, the first snapshot, the
//! listeners, and the tasks that poll for other servers' changes, rotate on schedule, keep the
//! vault and revoke database leases. The only file that spawns background tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use prometheus_client::registry::Registry;
use serde_json::json;
use tessera_store::{AuditEvent, AuditKind, AuditLog, Op, Outcome, Store};
use tokio::sync::watch;

use crate::app::ca::{self, Bundles, CaRing};
use crate::app::custody::{Custody, StoredKey};
use crate::app::db_pools::Pools;
use crate::app::keys::{self, KekSource, KeyRing};
use crate::app::snapshot::Snapshot;
use crate::app::trust_keys::TrustKeys;
use crate::app::App;
use crate::config::{KeyKind, ServerConfig};
use crate::domain::{bundle_federation, leases, rotation, secrets};
use crate::metrics::{Metrics, TdLabels};
use crate::start_error::StartError;
use crate::{admin_socket, router, tls};

/// How often deleted secrets past their retention are purged and overdue ones reported.
const VAULT_UPKEEP_EVERY: Duration = Duration::from_secs(10);

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
    let token = Custody::open_token(&config)?;
    // Connections are capped from the descriptor limit: use all the system allows.
    let nofile = tessera_listen::raise_nofile_limit();
    tracing::debug!(nofile, "descriptor limit");
    prepare_data_dir(&config.data_dir)?;
    let kek_in_token = token.as_ref().filter(|t| t.holds(KeyKind::Kek));
    if kek_in_token.is_some() && kek_source.is_some() {
        return Err(StartError::Kek(
            "TESSERA_KEK or TESSERA_KEK_FILE is set but [pkcs11] keys holds `kek`: the KEK is in the token; unset one".into(),
        ));
    }
    let (kek, kek_created) = match kek_in_token {
        Some(t) => (t.kek()?, false),
        None => keys::load_kek(kek_source.as_ref(), &config.data_dir)?,
    };
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
    // Where every private key lives: the token (opened and logged in to here, so a wrong PIN or
    // a missing token stops the start with one line) or sealed under the KEK.
    let custody = Custody::new(kek, token);
    // The key behind client secret hashes, shared by every server on the database.
    let hmac_key = sealed_random_key(
        &store,
        custody.kek(),
        "client_secret_key",
        "client-secret-key",
    )
    .await?;
    // The key behind the audit chain: records are keyed from here on.
    let audit_key =
        sealed_random_key(&store, custody.kek(), "audit_chain_key", "audit-chain-key").await?;
    store
        .key_audit_chain(tessera_store::AuditKey::new(&audit_key))
        .await?;
    // The transparency log's key and origin, the same on every server of the database.
    let log_key = log_key(&store, &custody).await?;
    let origin = log_origin(&store, &config).await?;
    let log_signer =
        tessera_log::NoteSigner::from_key(&origin, tessera_log::KeyType::Ed25519, log_key)
            .map_err(|e| StartError::Keys(format!("the audit log key: {e}")))?;
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hmac_key);
    let admin_token_tag = admin_credential(&store, &hmac, &config.data_dir).await?;

    // Every trust domain needs a key that signs now.
    let now = tessera_core::now_unix();
    let ring = KeyRing::load(&store.keys().await?, &custody)
        .map_err(|e| StartError::Keys(e.to_string()))?;
    for td in &config.trust_domains {
        if ring.signing(&td.name, now).is_none() {
            let rec = keys::new_key_record(&td.name, config.key_alg, &custody, now, now)
                .map_err(|e| StartError::Keys(e.to_string()))?;
            store
                .commit(
                    &[Op::InsertKey(rec.clone())],
                    &[AuditEvent {
                        kind: AuditKind::KeysCreated,
                        actor: "server".into(),
                        subject: td.name.to_string(),
                        outcome: Outcome::Ok,
                        detail: json!({"kid": rec.kid, "alg": rec.alg}),
                    }],
                )
                .await?;
        }
    }

    // Every trust domain needs a CA that signs now.
    let root = if config.has_root() {
        Some(Arc::new(root_ca(&store, &custody, now).await?))
    } else {
        None
    };
    let cas =
        CaRing::load(&store.cas().await?, &custody).map_err(|e| StartError::Keys(e.to_string()))?;
    let ca_ttl = i64::try_from(config.ca_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    for td in &config.trust_domains {
        if cas.signing(&td.name, now).is_none() {
            let rec = ca::new_ca_record(&td.name, &custody, root.as_deref(), now, now, ca_ttl)
                .map_err(|e| StartError::Keys(e.to_string()))?;
            store
                .commit(
                    &[Op::InsertCa(rec.clone())],
                    &[AuditEvent {
                        kind: AuditKind::CaCreated,
                        actor: "server".into(),
                        subject: td.name.to_string(),
                        outcome: Outcome::Ok,
                        detail: json!({"ca": rec.id, "not_after": rec.not_after}),
                    }],
                )
                .await?;
        }
    }

    let bundles = Arc::new(Bundles::default());
    let tls_key = if custody.in_token(KeyKind::Tls) && config.tls_cert.is_none() {
        Some(tls_key(&store, &custody).await?)
    } else {
        None
    };
    let (tcp, tls) = bind_api(&config, bundles.clone(), tls_key.clone()).await?;
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
        CaRing::default(),
        None,
        metrics.policy.clone(),
    )?;
    let first_td = config
        .trust_domains
        .first()
        .map(|t| t.name.clone())
        .ok_or_else(|| StartError::Config("no trust domain configured".into()))?;
    let (notices_tx, notices_rx) = tokio::sync::mpsc::channel(1024);
    let console = crate::app::console::Console {
        oidc_secret: console_secret(&config)?,
        ..Default::default()
    };
    let app = Arc::new(App {
        console,
        policy_counts: Default::default(),
        first_td,
        audit: AuditLog::spawn(store.clone(), Some(audit_metrics)),
        base_url: base_url.clone(),
        store,
        custody,
        root,
        tls_key,
        hmac,
        admin_token_tag,
        snapshot: ArcSwap::new(snapshot),
        reload_lock: tokio::sync::Mutex::new(()),
        bundles,
        changes: watch::channel(0).0,
        change_log: Default::default(),
        notices: notices_tx,
        status_index: crate::app::status_lists::StatusIndex::new()
            .map_err(|e| StartError::Keys(e.to_string()))?,
        trust_keys: TrustKeys::new().map_err(|e| StartError::Tls(e.to_string()))?,
        cluster_keys: TrustKeys::new().map_err(|e| StartError::Tls(e.to_string()))?,
        secret_changes: watch::channel(0).0,
        db_pools: Pools::default(),
        lease_changes: tokio::sync::Notify::new(),
        metrics,
        registry,
        failures: Default::default(),
        log: crate::app::log::TransparencyLog::new(
            log_signer,
            config.checkpoint_sinks.clone(),
            config.witnesses.clone(),
        )
        .map_err(|e| StartError::Tls(format!("the audit log's HTTP client: {e}")))?,
        config,
        record_quota: Default::default(),
        bundle_refreshes: Default::default(),
        server_svids: tls.svids.clone(),
    });
    app.reload()
        .await
        .map_err(|e| StartError::Keys(e.to_string()))?;
    bundle_federation::renew_server_svids(&app, tessera_core::now_unix());

    let (stop, stop_rx) = watch::channel(false);
    let tls_ca = tls.ca_path.clone();
    let admin_socket = app.config.data_dir.join("admin.sock");
    let socket = admin_socket::serve(
        router::admin_socket_router(app.clone()),
        &admin_socket,
        stop_rx.clone(),
    )?;
    let tasks = vec![
        tokio::spawn(tls::serve(
            tcp,
            tls.config,
            app.config.dev,
            router::api_router(app.clone()),
            tessera_listen::Gate::new(tessera_listen::Limits::from_nofile(0.75)),
            stop_rx.clone(),
        )),
        tokio::spawn(socket),
        tokio::spawn(vault_upkeep(app.clone(), stop_rx.clone())),
        tokio::spawn(lease_revoker(app.clone(), stop_rx.clone())),
        tokio::spawn(notified_reloads(app.clone(), stop_rx.clone())),
        tokio::spawn(deliver_notices(
            app.config.notify_webhooks.clone(),
            notices_rx,
            stop_rx.clone(),
        )),
        tokio::spawn(checkpointer(app.clone(), stop_rx.clone())),
        tokio::spawn(bundle_refresher(app.clone(), stop_rx.clone())),
        tokio::spawn(background(app.clone(), stop_rx)),
    ];
    Ok(Running {
        url: base_url,
        admin_socket,
        app,
        tls_ca,
        stop,
        tasks,
    })
}

/// The log's origin (the name in its checkpoints and key): set by the first server on the
/// database, `<first trust domain>/audit`, and kept.
async fn log_origin(store: &Store, config: &ServerConfig) -> Result<String, StartError> {
    if let Some(o) = store.meta("audit_log_origin").await? {
        return Ok(o);
    }
    let first = config
        .trust_domains
        .first()
        .map(|t| format!("{}/audit", t.name))
        .ok_or_else(|| StartError::Config("no trust domain configured".into()))?;
    store
        .commit(
            &[Op::InitMeta {
                key: "audit_log_origin".into(),
                value: first.clone(),
            }],
            &[],
        )
        .await?;
    Ok(store.meta("audit_log_origin").await?.unwrap_or(first))
}

/// Grows the log's tree and signs a checkpoint every second while records arrive (at once when
/// woken), and hands each new one to the sinks and witnesses.
async fn checkpointer(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = 0u64;
    let mut warned = None::<std::time::Instant>;
    let mut pruned = std::time::Instant::now();
    let publishing = Arc::new(tokio::sync::Mutex::new(()));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.log.wake.notified() => {}
            _ = stop.changed() => return,
        }
        if pruned.elapsed() > Duration::from_secs(60) {
            pruned = std::time::Instant::now();
            if let Err(e) = app.store.prune_checkpoints(tessera_core::now_unix()).await {
                tracing::warn!(error = %e, "cannot thin the stored checkpoints");
            }
        }
        match crate::domain::log::make_checkpoint(&app).await {
            Ok(Some((size, note))) if size > published => {
                // Sinks and witnesses answer at their pace (up to their timeouts): in a task of
                // its own, one at a time, so checkpoints keep coming every second; one still
                // sending skips this checkpoint, and the next carries it.
                if let Ok(guard) = publishing.clone().try_lock_owned() {
                    let app = app.clone();
                    tokio::spawn(async move {
                        crate::domain::log::publish(&app, size, &note).await;
                        drop(guard);
                    });
                    published = size;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::error!(error = %e, "cannot make an audit log checkpoint");
                    warned = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// Where the database names a key that lives in the token: its label.
const LOG_KEY_IN_TOKEN: &str = "audit_log_key_token";
const TLS_KEY_IN_TOKEN: &str = "tls_key_token";

/// A key of `kind` the database names by one meta entry (the log's, the API's TLS key): made
/// in the token on the first start, found by its label after. Another server may have made
/// it first: its key is the one.
async fn token_key(
    store: &Store,
    custody: &Custody,
    kind: KeyKind,
    meta: &str,
    alg: tessera_token::Alg,
) -> Result<Arc<tessera_token::SigningKey>, StartError> {
    let keys =
        |e: &dyn std::fmt::Display| StartError::Keys(format!("the {} key: {e}", kind.as_str()));
    let stored = match store.meta(meta).await? {
        Some(v) => v,
        None => {
            let new = custody
                .generate(kind, "server", alg)
                .map_err(|e| keys(&e))?;
            let stored = new
                .stored(custody.kek(), "")
                .map_err(|e| keys(&e))?
                .to_text();
            store
                .commit(
                    &[Op::InitMeta {
                        key: meta.into(),
                        value: stored.clone(),
                    }],
                    &[],
                )
                .await?;
            store.meta(meta).await?.unwrap_or(stored)
        }
    };
    let stored = StoredKey::parse(&stored).map_err(|e| keys(&e))?;
    custody.open_key(&stored, alg, "").map_err(|e| keys(&e))
}

/// The transparency log's key: in the token when `[pkcs11]` holds `audit` (or when it was
/// made there), else a seed sealed under the KEK. A log's key never changes, so one made in
/// software does not move into the token.
async fn log_key(
    store: &Store,
    custody: &Custody,
) -> Result<Arc<tessera_token::SigningKey>, StartError> {
    let in_token = store.meta(LOG_KEY_IN_TOKEN).await?.is_some();
    if in_token || custody.in_token(KeyKind::Audit) {
        if !in_token && store.meta("audit_log_key").await?.is_some() {
            return Err(StartError::Keys(
                "the audit log's key was made in software before [pkcs11] held `audit`, and a log's key never changes: take `audit` out of [pkcs11] keys".into(),
            ));
        }
        return token_key(
            store,
            custody,
            KeyKind::Audit,
            LOG_KEY_IN_TOKEN,
            tessera_token::Alg::EdDSA,
        )
        .await;
    }
    let seed = sealed_random_key(store, custody.kek(), "audit_log_key", "audit-log-key").await?;
    tessera_token::SigningKey::ed25519_from_seed(&seed)
        .map(Arc::new)
        .map_err(|e| StartError::Keys(format!("the audit log key: {e}")))
}

/// The API's TLS key in the token.
async fn tls_key(
    store: &Store,
    custody: &Custody,
) -> Result<Arc<tessera_token::SigningKey>, StartError> {
    token_key(
        store,
        custody,
        KeyKind::Tls,
        TLS_KEY_IN_TOKEN,
        tessera_token::Alg::ES256,
    )
    .await
}

/// The root over the trust domains' CAs: made on the first start (ten years), kept after.
async fn root_ca(
    store: &Store,
    custody: &Custody,
    now: i64,
) -> Result<tessera_ca::CertificateAuthority, StartError> {
    let keys = |e: &dyn std::fmt::Display| StartError::Keys(format!("the root CA: {e}"));
    if let (Some(cert), Some(key)) = (
        store.meta(ca::ROOT_CERT_META).await?,
        store.meta(ca::ROOT_KEY_META).await?,
    ) {
        return ca::load_root(custody, &cert, &key).map_err(|e| keys(&e));
    }
    let (_, cert, key) = ca::new_root(custody, now, ROOT_TTL_SECS).map_err(|e| keys(&e))?;
    store
        .commit(
            &[
                Op::InitMeta {
                    key: ca::ROOT_KEY_META.into(),
                    value: key,
                },
                Op::InitMeta {
                    key: ca::ROOT_CERT_META.into(),
                    value: cert,
                },
            ],
            &[AuditEvent {
                kind: AuditKind::CaCreated,
                actor: "server".into(),
                subject: "root".into(),
                outcome: Outcome::Ok,
                detail: json!({"root": true}),
            }],
        )
        .await?;
    // Another server may have made it first: what the database holds is the root.
    match (
        store.meta(ca::ROOT_CERT_META).await?,
        store.meta(ca::ROOT_KEY_META).await?,
    ) {
        (Some(cert), Some(key)) => ca::load_root(custody, &cert, &key).map_err(|e| keys(&e)),
        _ => Err(keys(&"it was not stored")),
    }
}

/// A root lives ten years; it signs only the trust domains' CAs.
const ROOT_TTL_SECS: i64 = 10 * 365 * 86400;

/// A random key shared by every server on the database, kept there sealed under the KEK (in
/// meta `name`, AAD `aad`): the first server makes it.
async fn sealed_random_key(
    store: &Store,
    kek: &tessera_token::seal::Kek,
    name: &str,
    aad: &str,
) -> Result<Vec<u8>, StartError> {
    let stored = match store.meta(name).await? {
        Some(v) => v,
        None => {
            let fresh = kek
                .seal(
                    &tessera_token::seal::random_bytes::<32>()
                        .map_err(|e| StartError::Kek(e.to_string()))?,
                    aad,
                )
                .map_err(|e| StartError::Kek(e.to_string()))?;
            store
                .commit(
                    &[Op::InitMeta {
                        key: name.into(),
                        value: STANDARD.encode(fresh),
                    }],
                    &[],
                )
                .await?;
            // Another server may have made it first: its key is the one.
            store.meta(name).await?.unwrap_or_default()
        }
    };
    STANDARD
        .decode(stored)
        .ok()
        .and_then(|b| kek.open(&b, aad).ok())
        .ok_or_else(|| StartError::Kek(format!("the key in `{name}` does not open")))
}

/// The admin credential for `--server URL` use. The first server on a database makes it and
/// writes it to `DATA/admin-token` (0600); every server keeps only its keyed hash.
async fn admin_credential(
    store: &Store,
    hmac: &ring::hmac::Key,
    data_dir: &std::path::Path,
) -> Result<Vec<u8>, StartError> {
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
    tessera_core::private_file::write_private(&path, format!("{token}\n").as_bytes()).map_err(
        |e| StartError::DataDir {
            path: path.display().to_string(),
            message: e.to_string(),
        },
    )?;
    Ok(tag)
}

/// The console's OIDC client secret, from its file (trimmed).
fn console_secret(config: &ServerConfig) -> Result<Option<String>, StartError> {
    let Some(path) = config
        .console_oidc
        .as_ref()
        .and_then(|o| o.client_secret_file.as_ref())
    else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        StartError::Config(format!(
            "console.oidc.client_secret_file `{}`: {e}",
            path.display()
        ))
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(StartError::Config(format!(
            "console.oidc.client_secret_file `{}` is empty",
            path.display()
        )));
    }
    Ok(Some(secret.to_owned()))
}

fn display_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

async fn bind_api(
    config: &ServerConfig,
    bundles: Arc<Bundles>,
    tls_key: Option<Arc<tessera_token::SigningKey>>,
) -> Result<(tokio::net::TcpListener, tls::Tls), StartError> {
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen {
            addr: config.listen.to_string(),
            message: e.to_string(),
        })?;
    Ok((tcp, tls::load_or_create(config, bundles, tls_key)?))
}

/// Reloads as soon as another server on the same PostgreSQL database commits a change (its
/// notification), so that its subscribers hear of it within milliseconds; the background poll
/// stays as the fallback for a notification lost with a connection. Nothing to do on SQLite.
async fn notified_reloads(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = tokio::select! {
            l = app.store.listen_changes() => l,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other servers' changes; polling meanwhile");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let n = tokio::select! {
                n = listener.recv() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            let committed_at_ms = match n {
                Ok(at) => at.unwrap_or_else(tessera_core::now_unix_ms),
                Err(e) => {
                    // Notifications sent while disconnected are lost: reload once, then listen anew.
                    tracing::warn!(error = %e, "lost the change notifications; reloading and listening again");
                    if let Err(e) = app.reload().await {
                        tracing::error!(error = %e, "reload failed; serving the previous state");
                    }
                    break;
                }
            };
            // This server's own commits are already loaded.
            match app.store.state_version().await {
                Ok(v) if v == app.snapshot().version => continue,
                _ => {}
            }
            if let Err(e) = app.reload_committed(committed_at_ms).await {
                tracing::error!(error = %e, "reload failed; serving the previous state");
            }
        }
    }
}

/// Posts each signed notice to every webhook: up to 5 attempts with back-off, then an error in
/// the log. Ends when the server stops.
async fn deliver_notices(
    hooks: Vec<reqwest::Url>,
    mut rx: tokio::sync::mpsc::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    // Webhooks are the operator's own endpoints: no redirects, a short timeout.
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; notices are not delivered");
            return;
        }
    };
    loop {
        let jwt = tokio::select! {
            j = rx.recv() => j,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(jwt) = jwt else { return };
        for url in &hooks {
            let mut delay = Duration::from_millis(200);
            for attempt in 1..=5 {
                let sent = client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/jwt")
                    .body(jwt.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) => {
                        tracing::warn!(webhook = %url, status = %r.status(), attempt, "webhook refused the notice")
                    }
                    Err(e) => {
                        tracing::warn!(webhook = %url, error = %e.without_url(), attempt, "webhook unreachable")
                    }
                }
                if attempt == 5 {
                    tracing::error!(webhook = %url, "revocation notice not delivered after 5 attempts");
                } else {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

/// Refreshes every federated trust domain's bundle as its refresh hint asks (sooner after a
/// failure), and at once when a relationship is added or changed.
async fn bundle_refresher(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    use std::collections::HashMap;
    use tessera_core::manifest::Federation;
    let mut changes = app.subscribe_changes();
    // Per trust domain: the relationship as last refreshed, when to refresh next, and the
    // last refresh hint (a failure is retried no later than that, nor than RETRY_SECS).
    let mut due: HashMap<tessera_core::TrustDomain, (Federation, i64, u64)> = HashMap::new();
    loop {
        let snap = app.snapshot();
        due.retain(|td, _| {
            let kept = snap.federations.contains_key(td);
            if !kept {
                // A relationship removed is no longer stale.
                app.metrics.bundle_age_seconds.remove(&TdLabels {
                    trust_domain: td.to_string(),
                });
            }
            kept
        });
        app.bundle_refreshes
            .retain(|td| snap.federations.contains_key(td));
        let now = tessera_core::now_unix();
        // Due relationships are refreshed together: a slow endpoint delays no other.
        let mut todo = Vec::new();
        for (td, d) in &snap.federations {
            let changed = due.get(td).is_none_or(|(spec, _, _)| spec != &d.spec);
            let at = due.get(td).map_or(now, |(_, at, _)| *at);
            if changed || at <= now {
                let last_hint = due
                    .get(td)
                    .map_or(bundle_federation::RETRY_SECS, |(_, _, h)| *h);
                todo.push((td.clone(), d.spec.clone(), last_hint));
            }
        }
        let results = futures_util::future::join_all(
            todo.iter()
                .map(|(td, _, _)| bundle_federation::refresh(&app, td)),
        )
        .await;
        for ((td, spec, last_hint), result) in todo.into_iter().zip(results) {
            let (next, hint) = match result {
                Ok(hint) => (hint, hint),
                Err(_) => (last_hint.min(bundle_federation::RETRY_SECS), last_hint),
            };
            let next_at = tessera_core::now_unix() + i64::try_from(next).unwrap_or(3600);
            app.bundle_refreshes
                .update(&td, |s| s.next_refresh = Some(next_at));
            due.insert(td, (spec, next_at, hint));
        }
        // The age gauge, set in this one place, after this round's refreshes.
        let now = tessera_core::now_unix();
        for td in due.keys() {
            let status = app.bundle_refreshes.get(td);
            if let Some(at) = status.last_success.or(status.first_attempt) {
                app.metrics
                    .bundle_age_seconds
                    .get_or_create(&TdLabels {
                        trust_domain: td.to_string(),
                    })
                    .set(now - at);
            }
        }
        let soonest = due.values().map(|(_, at, _)| *at).min().unwrap_or(now + 60);
        let wait = Duration::from_secs(u64::try_from((soonest - now).clamp(1, 60)).unwrap_or(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
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
        app.flush_refusals().await;
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
        if let Some(hsm) = app.custody.hsm() {
            // The token counts; the counters catch up with it.
            let m = &app.metrics;
            m.key_custody_failures
                .inc_by(hsm.failures().saturating_sub(m.key_custody_failures.get()));
            m.key_custody_reconnects.inc_by(
                hsm.reconnects()
                    .saturating_sub(m.key_custody_reconnects.get()),
            );
        }
        // CAs enter and leave the bundle with time, not only with changes.
        app.bundles.set(&snap.cas, &app.trust_domain_names(), now);
        bundle_federation::renew_server_svids(&app, now);
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
                // A CA an outside root signed is renewed by its operator (`tessera ca csr`,
                // `tessera ca install`): replacing it here would leave that hierarchy.
                let external = c.ca.is_intermediate() && app.root.is_none();
                if now >= half && !prepared && !external && n.is_multiple_of(60) {
                    let ahead =
                        i64::try_from(app.config.ca_publish_ahead.as_secs()).unwrap_or(3600);
                    if let Err(e) = rotation::rotate_ca(&app, &td.name, ahead, "server").await {
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
                if let Err(e) = rotation::scheduled_rotation(&app, period, now).await {
                    tracing::error!(error = %e, "scheduled key rotation failed");
                }
            }
            if let Err(e) = app.store.sweep(now).await {
                tracing::warn!(error = %e, "sweep failed");
            }
        }
    }
}

/// Every [`VAULT_UPKEEP_EVERY`]: purges deleted secrets past their retention and reports overdue
/// ones (`domain::secrets::upkeep`).
async fn vault_upkeep(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut reported = std::collections::HashSet::<(String, i64, &'static str)>::new();
    loop {
        if let Err(e) = secrets::upkeep(&app, &mut reported).await {
            tracing::warn!(error = %e, "vault upkeep failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(VAULT_UPKEEP_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Drops the roles of leases that ended (or whose workload was revoked), every second or when
/// told; a failure is retried on the next round and said in the lease and the log. A new
/// snapshot (a revocation, here or on another server) ends the leases of revoked workloads at
/// once.
async fn lease_revoker(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut round = 0u64;
    let mut changes = app.subscribe_changes();
    let mut changed = false;
    loop {
        if round.is_multiple_of(10) || changed {
            if let Err(e) = leases::end_leases_of_revoked_workloads(&app).await {
                tracing::warn!(error = %e, "checking leases of revoked workloads failed");
            }
        }
        changed = false;
        round += 1;
        if let Err(e) = leases::revoke_due(&app).await {
            tracing::warn!(error = %e, "lease revocation round failed; retrying");
        }
        let wake = tokio::time::timeout(Duration::from_secs(1), app.lease_changes.notified());
        tokio::select! {
            _ = wake => {}
            r = changes.changed() => {
                // The sender lives as long as the `App`: an error means the server is going.
                if r.is_err() {
                    return;
                }
                changed = true;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
