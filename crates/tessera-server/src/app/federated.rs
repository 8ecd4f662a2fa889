//! SPIFFE federation between authorities, as the snapshot holds it: each relationship with the
//! bundle in force for its trust domain (the last good one fetched, else the `initial_bundle`),
//! and, per server, how the last refreshes went. Fetching and checking are in
//! `domain/bundle_federation.rs`; the refresher task is in `boot.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::CertificateDer;
use tessera_core::bundle::SpiffeBundle;
use tessera_core::manifest::Federation;
use tessera_core::TrustDomain;
use tessera_store::FederatedBundleRecord;

/// One federated trust domain: the relationship and the bundle trusted for it now.
#[derive(Debug, Clone)]
pub struct FederatedDomain {
    pub spec: Federation,
    /// `None` before a first fetch of an `https_web` relationship (nothing is trusted yet).
    pub bundle: Option<Arc<SpiffeBundle>>,
    /// When the bundle in force was stored; `None` while it is the initial bundle.
    pub fetched_at: Option<i64>,
}

impl FederatedDomain {
    /// The X.509 authorities of the bundle in force, DER.
    pub fn x509_authorities(&self) -> Vec<CertificateDer<'static>> {
        self.bundle
            .iter()
            .flat_map(|b| b.x509_authorities.iter())
            .map(|d| CertificateDer::from(d.clone()))
            .collect()
    }

    /// The stored sequence of the bundle in force, for refusing an older one.
    pub fn sequence(&self) -> Option<u64> {
        self.bundle.as_ref().and_then(|b| b.sequence)
    }
}

/// Builds the federated domains from the stored relationships and bundles. A stored bundle
/// that no longer parses (it was checked when stored) counts as none: nothing is trusted from it.
pub(crate) fn build(
    federations: Vec<Federation>,
    bundles: &[FederatedBundleRecord],
) -> BTreeMap<TrustDomain, FederatedDomain> {
    let stored: HashMap<&str, &FederatedBundleRecord> = bundles
        .iter()
        .map(|b| (b.trust_domain.as_str(), b))
        .collect();
    federations
        .into_iter()
        .map(|spec| {
            let fetched = stored
                .get(spec.trust_domain.as_str())
                .and_then(|r| Some((SpiffeBundle::parse(r.bundle.as_bytes()).ok()?, r.fetched_at)));
            let (bundle, fetched_at) = match fetched {
                Some((b, at)) => (Some(Arc::new(b)), Some(at)),
                None => (
                    spec.initial_bundle
                        .as_deref()
                        .and_then(|t| SpiffeBundle::parse(t.as_bytes()).ok())
                        .map(Arc::new),
                    None,
                ),
            };
            (
                spec.trust_domain.clone(),
                FederatedDomain {
                    spec,
                    bundle,
                    fetched_at,
                },
            )
        })
        .collect()
}

/// The federated bundles as the agent API sends them.
pub(crate) fn wire(
    domains: &BTreeMap<TrustDomain, FederatedDomain>,
) -> BTreeMap<String, tessera_core::agent_api::FederatedBundle> {
    domains
        .iter()
        .filter_map(|(td, d)| {
            let b = d.bundle.as_ref()?;
            Some((
                td.to_string(),
                tessera_core::agent_api::FederatedBundle {
                    x509_authorities: b
                        .x509_authorities
                        .iter()
                        .map(|c| STANDARD.encode(c))
                        .collect(),
                    jwt_keys: b.jwks(),
                },
            ))
        })
        .collect()
}

/// How refreshing one federated bundle went on this server.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefreshStatus {
    /// When this server first tried (the age of a bundle never fetched counts from here).
    pub first_attempt: Option<i64>,
    pub last_attempt: Option<i64>,
    pub last_success: Option<i64>,
    /// Why the last attempt failed (cleared by a success).
    pub last_error: Option<String>,
    pub next_refresh: Option<i64>,
}

/// Refresh outcomes per federated trust domain, for `get federations` and `describe`.
#[derive(Debug, Default)]
pub(crate) struct RefreshLog(Mutex<HashMap<TrustDomain, RefreshStatus>>);

impl RefreshLog {
    pub(crate) fn get(&self, td: &TrustDomain) -> RefreshStatus {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(td).cloned())
            .unwrap_or_default()
    }

    pub(crate) fn update(&self, td: &TrustDomain, f: impl FnOnce(&mut RefreshStatus)) {
        if let Ok(mut m) = self.0.lock() {
            f(m.entry(td.clone()).or_default());
        }
    }

    /// Forgets relationships that are gone.
    pub(crate) fn retain(&self, keep: impl Fn(&TrustDomain) -> bool) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|td, _| keep(td));
        }
    }
}
