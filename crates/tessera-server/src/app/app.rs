//! `App`: everything a request handler reads, one per server process. The bottom floor: nothing
//! here imports `domain/`, `api/` or the router.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use prometheus_client::registry::Registry;
use tessera_core::change_api::ChangeBatch;
use tessera_core::{SpiffeId, TrustDomain};
use tessera_store::{AuditEvent, AuditLog, Op, Store, StoreError};
use tessera_token::Kek;
use tokio::sync::watch;

use crate::app::ca::{Bundles, CaRing};
use crate::app::changes;
use crate::app::custody::Custody;
use crate::app::custody::KeyError;
use crate::app::db_pools::Pools;
use crate::app::keys::KeyRing;
use crate::app::snapshot::Snapshot;
use crate::app::trust_keys::TrustKeys;
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// Which issuer a request addressed: a trust domain and the issuer URL it was reached by.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub td: TrustDomain,
    pub url: String,
}

impl Issuer {
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.url)
    }
}

/// The SPIFFE ID tokens for the authority itself carry as audience: a workload asks for one
/// with `audience=<issuer URL>` to call Tessera's own workload APIs (policy bundle, decision
/// records). No grant is needed; each API authorizes the caller itself.
pub(crate) fn authority_id(td: &str) -> Option<SpiffeId> {
    SpiffeId::parse(&format!("spiffe://{td}/tessera/authority")).ok()
}

// ---- Admin -------------------------------------------------------------------------------------

/// Why a reload failed; the previous snapshot stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    #[error("stored policies do not load: {0}")]
    Policy(#[from] tessera_policy::PolicyError),
}

/// A trust domain this authority does not serve.
#[derive(Debug, thiserror::Error)]
#[error("this authority does not serve trust domain `{0}`")]
pub struct NotServed(pub String);

/// Everything a request handler needs. One per server process.
pub struct App {
    pub config: ServerConfig,
    pub base_url: String,
    pub store: Store,
    pub audit: AuditLog,
    pub(crate) first_td: TrustDomain,
    /// The KEK and the PKCS#11 token: where every private key lives.
    pub(crate) custody: Custody,
    /// The API's TLS key when it is in the token (else it is a file under `DATA/tls/` or the
    /// configured `tls_key`).
    pub(crate) tls_key: Option<Arc<tessera_token::SigningKey>>,
    /// The root over the trust domains' CAs, when configured.
    pub(crate) root: Option<Arc<tessera_ca::CertificateAuthority>>,
    pub(crate) hmac: ring::hmac::Key,
    /// HMAC of the admin credential accepted on `/admin/v1/...`.
    pub(crate) admin_token_tag: Vec<u8>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// The X.509 authorities of every served trust domain, for the agent mTLS verifier.
    pub(crate) bundles: Arc<Bundles>,
    /// The version of each snapshot swapped in, for agents waiting on a change.
    pub(crate) changes: watch::Sender<i64>,
    /// The change stream: batches diffed from consecutive snapshots, for subscribers.
    pub(crate) change_log: super::changes::ChangeLog,
    /// Places in this process's token status lists.
    pub(crate) status_index: super::status_lists::StatusIndex,
    /// Signed revocation notices waiting for the webhooks (`domain::notices`).
    pub(crate) notices: tokio::sync::mpsc::Sender<String>,
    /// Outside issuers' keys, per trust (static, or discovered and cached).
    pub trust_keys: TrustKeys,
    /// Kubernetes clusters' service-account issuers' keys (apart from trusts': a cluster and a
    /// trust may share a name).
    pub cluster_keys: TrustKeys,
    /// Bumped on every secret write by this server, for readers waiting on a new version.
    pub secret_changes: watch::Sender<u64>,
    /// Admin pools to the databases of dynamic credentials.
    pub(crate) db_pools: Pools,
    /// Wakes the lease revoker when a lease is ended.
    pub(crate) lease_changes: tokio::sync::Notify,
    pub(crate) metrics: Metrics,
    pub(crate) registry: Registry,
    /// Refusals of unauthenticated callers, aggregated per window before they are recorded.
    pub(crate) failures: super::failures::FailureLog,
    /// The transparency log over the audit records.
    pub(crate) log: super::log::TransparencyLog,
    /// Decision records accepted per reporting service per minute.
    pub(crate) record_quota: super::failures::Quota,
    /// How refreshing each federated trust domain's bundle last went, on this server.
    pub(crate) bundle_refreshes: super::federated::RefreshLog,
    /// The bundle endpoint's X.509-SVIDs (`https_spiffe`), presented by the API's TLS.
    pub(crate) server_svids: Arc<crate::tls::ServerSvids>,
    /// The web console's sessions and OIDC sign-in.
    pub(crate) console: super::console::Console,
    /// How many grants and policy files each policy-set version holds (versions never change).
    pub(crate) policy_counts: std::sync::Mutex<std::collections::HashMap<i64, (usize, usize)>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Records the refusal of an unauthenticated caller: at once when it opens a window, as a
    /// count in the window's summary when it repeats (see `failures`). The refusal stands
    /// whether or not its record could be written.
    pub(crate) async fn audit_refusal(&self, event: tessera_store::AuditEvent) {
        let now = self.failures.admit(event);
        if now.is_empty() {
            self.metrics.refusals_aggregated.inc();
        }
        for e in now {
            if let Err(err) = self.audit.append(e).await {
                self.metrics.audit_failures.inc();
                tracing::error!(error = %err, "could not record a refusal");
            }
        }
    }

    /// Writes the summaries of closed refusal windows (the server's background loop).
    pub(crate) async fn flush_refusals(&self) {
        for e in self.failures.drain_closed() {
            if let Err(err) = self.audit.append(e).await {
                self.metrics.audit_failures.inc();
                tracing::error!(error = %err, "could not record a refusal summary");
            }
        }
    }

    /// Notified with the state version each time a new snapshot is swapped in.
    pub fn subscribe_changes(&self) -> watch::Receiver<i64> {
        self.changes.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The key-encryption key, for the vault's envelope.
    pub(crate) fn kek(&self) -> &Kek {
        self.custody.kek()
    }

    /// The trust domain that is also the issuer at the base URL.
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

    /// The served trust domain named `td`.
    pub fn served(&self, td: &str) -> Result<&TrustDomain, NotServed> {
        self.serves(td)
            .ok_or_else(|| NotServed(td.chars().take(80).collect()))
    }

    pub fn serves(&self, td: &str) -> Option<&TrustDomain> {
        self.config
            .trust_domains
            .iter()
            .map(|t| &t.name)
            .find(|t| t.as_str() == td)
    }

    /// The issuer a request addressed: the first trust domain at the base URL, or `td`.
    pub fn issuer_for(&self, td: Option<&str>) -> Result<Issuer, NotServed> {
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

    /// The issuer of `td` at its own URL (the form agents and workload APIs use).
    pub fn issuer_of(&self, td: &TrustDomain) -> Issuer {
        Issuer {
            td: td.clone(),
            url: format!("{}/{}", self.base_url, td),
        }
    }

    /// Reloads state from storage and swaps in a new snapshot.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        self.reload_committed(tessera_core::now_unix_ms()).await
    }

    /// [`App::reload`] after a commit at `committed_at_ms` (by this server or, as a notification
    /// said, another one), which the change stream's batch carries.
    pub async fn reload_committed(&self, committed_at_ms: i64) -> Result<(), ReloadError> {
        let _one = self.reload_lock.lock().await;
        let version = self.store.state_version().await?;
        let state = self.store.load_state().await?;
        let now = tessera_core::now_unix();
        let revoked = self.store.revoked_tokens(now).await?;
        let keys = KeyRing::load(&self.store.keys().await?, &self.custody)?;
        let cas = CaRing::load(&self.store.cas().await?, &self.custody)?;
        let previous = self.snapshot();
        let snap = Snapshot::build(
            version,
            state,
            revoked,
            keys,
            cas,
            Some(&previous),
            self.metrics.policy.clone(),
        )?;
        self.bundles.set(&snap.cas, &self.trust_domain_names(), now);
        self.metrics.grants_overdue.set(
            i64::try_from(tessera_policy::overdue_grants(&snap.grants, now).len())
                .unwrap_or(i64::MAX),
        );
        let version = snap.version;
        // The placeholder before the first load has no keys: nothing to diff against.
        let batch = (!previous.keys.entries(&self.first_td).is_empty()).then(|| ChangeBatch {
            from: previous.version,
            version,
            committed_at_ms,
            changes: changes::diff(&previous, &snap, &self.trust_domain_names()),
        });
        self.snapshot.store(snap);
        self.changes.send_replace(version);
        if let Some(published) = batch.and_then(|b| self.change_log.publish(&b)) {
            if published.withdraws {
                let ms = tessera_core::now_unix_ms().saturating_sub(published.committed_at_ms);
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a propagation time in milliseconds is far below 2^52"
                )]
                self.metrics
                    .revocation_propagation
                    .observe(ms.max(0) as f64 / 1000.0);
            }
        }
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
    pub async fn change(&self, ops: &[Op], event: AuditEvent) -> Result<(), StoreError> {
        self.store.commit(ops, &[event]).await?;
        if let Err(e) = self.reload().await {
            tracing::error!(error = %e, "change committed, reload failed; the next poll retries");
        }
        Ok(())
    }

    /// Constant-time check of an admin credential against its stored keyed hash.
    pub fn is_admin_token(&self, token: &str) -> bool {
        !self.admin_token_tag.is_empty()
            && ring::hmac::verify(&self.hmac, token.as_bytes(), &self.admin_token_tag).is_ok()
    }

    /// The stored form of a machine secret: a keyed hash under the server key.
    pub(crate) fn hmac_secret(&self, secret: &str) -> String {
        STANDARD.encode(ring::hmac::sign(&self.hmac, secret.as_bytes()).as_ref())
    }

    /// Constant-time check of a machine secret against its stored keyed hash.
    pub(crate) fn verify_secret(&self, secret: &str, tag: &[u8]) -> bool {
        ring::hmac::verify(&self.hmac, secret.as_bytes(), tag).is_ok()
    }

    /// The join token's stored form: a keyed hash, so the database never holds a usable token.
    pub fn join_token_hash(&self, token: &str) -> String {
        self.hmac_secret(&format!("join:{token}"))
    }
}
