//! The in-memory view of stored state that every request reads. Immutable once built; a change
//! (here or on another server sharing the database) builds a new one and swaps it in.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_core::admin_api::ShadowChange;
use tessera_core::agent_api::Registration;
use tessera_core::manifest::{Client, Grant, PolicyFile, Trust};
use tessera_core::{SpiffeId, TrustDomain};
use tessera_policy::limit::Limits;
use tessera_policy::PolicyEngine;
use tessera_store::{AgentRecord, ClientSecretRecord, StoredState, WorkloadRecord};
use tessera_verify::KeySet;

use crate::app::ca::CaRing;
use crate::app::federated::{self, FederatedDomain};
use crate::app::keys::KeyRing;
use crate::metrics::PolicyCounters;

/// Tombstones kept for incremental agent sync; older removals mean a full resync.
const MAX_TOMBSTONES: usize = 50_000;

/// Registration entries with the state version at which each last changed, so that an agent
/// asks "what changed since version N" instead of downloading every entry.
#[derive(Debug, Default)]
pub struct Registrations {
    pub entries: HashMap<SpiffeId, Registration>,
    /// Entries removed (or whose workload was revoked or lost its selectors), with the version.
    pub removed: Vec<(SpiffeId, i64)>,
    /// This server can answer "since N" incrementally only for N at or after this version.
    pub horizon: i64,
}

impl Registrations {
    fn build(version: i64, workloads: &[WorkloadRecord], previous: Option<&Registrations>) -> Self {
        let mut entries = HashMap::new();
        for w in workloads {
            if w.revoked_at.is_some() || w.spec.selectors.is_empty() {
                continue;
            }
            let mut reg = Registration {
                spiffe_id: w.spec.id.clone(),
                selectors: w.spec.selectors.clone(),
                x509_ttl_secs: w.spec.x509_ttl.as_secs(),
                jwt_ttl_secs: w.spec.jwt_ttl.as_secs(),
                nodes: w.spec.nodes.clone(),
                node_selectors: w.spec.node_selectors.clone(),
                federates_with: w.spec.federates_with.clone(),
                revision: version,
            };
            if let Some(old) = previous.and_then(|p| p.entries.get(&w.spec.id)) {
                let same = Registration {
                    revision: old.revision,
                    ..reg.clone()
                };
                if &same == old {
                    reg.revision = old.revision;
                }
            }
            entries.insert(w.spec.id.clone(), reg);
        }
        let (mut removed, mut horizon) = match previous {
            Some(p) => (p.removed.clone(), p.horizon),
            None => (Vec::new(), version),
        };
        if let Some(p) = previous {
            for id in p.entries.keys() {
                if !entries.contains_key(id) {
                    removed.push((id.clone(), version));
                }
            }
        }
        if removed.len() > MAX_TOMBSTONES {
            let cut = removed.len() - MAX_TOMBSTONES;
            let dropped: Vec<_> = removed.drain(..cut).collect();
            if let Some((_, v)) = dropped.last() {
                horizon = horizon.max(*v);
            }
        }
        Self {
            entries,
            removed,
            horizon,
        }
    }
}

#[derive(Debug)]
pub struct ClientEntry {
    pub spec: Client,
    /// Public keys for `private_key_jwt`.
    pub keys: KeySet,
    pub secret: Option<(ClientSecretRecord, Vec<u8>)>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: i64,
    pub workloads: HashMap<SpiffeId, WorkloadRecord>,
    /// Every name a target may be asked for by: its SPIFFE ID and its aliases.
    pub targets: HashMap<String, SpiffeId>,
    pub clients: HashMap<String, ClientEntry>,
    pub grants: Vec<Grant>,
    pub trusts: Vec<Trust>,
    /// Kubernetes clusters whose agents attest by projected service-account token.
    pub clusters: Vec<tessera_core::manifest::Cluster>,
    pub policies: Vec<PolicyFile>,
    /// Federation relationships with other authorities, with the bundle in force for each.
    pub federations: BTreeMap<TrustDomain, FederatedDomain>,
    /// Shared with the previous snapshot when no workload, grant or policy changed: building it
    /// costs about 70 µs per grant, and most reloads (secrets, revocations, keys) change none.
    pub engine: Arc<PolicyEngine>,
    /// Issuance rate limits from grants (`token_rate`); shared with `engine`'s lifetime, so
    /// reloads that change no grant do not reset the counts.
    pub token_limits: Arc<Limits>,
    /// Revoked token IDs to their expiry.
    pub revoked_jtis: HashMap<String, i64>,
    pub keys: KeyRing,
    pub cas: CaRing,
    pub agents: HashMap<String, AgentRecord>,
    pub registrations: Registrations,
    /// The active policy set's version (0 before the first recorded change).
    pub policy_version: i64,
    /// The candidate set evaluated beside the active one, if one is loaded and still compiles.
    pub shadow: Option<Shadow>,
    /// Why a loaded shadow set does not compile against today's workloads.
    pub shadow_error: Option<String>,
    pub counters: PolicyCounters,
}

impl Snapshot {
    pub fn build(
        version: i64,
        state: StoredState,
        revoked: Vec<(String, i64)>,
        keys: KeyRing,
        cas: CaRing,
        previous: Option<&Snapshot>,
        counters: PolicyCounters,
    ) -> Result<Arc<Self>, tessera_policy::PolicyError> {
        // The empty snapshot made before the first load has no history worth diffing against.
        let registrations = Registrations::build(
            version,
            &state.workloads,
            previous.filter(|p| p.version > 0).map(|p| &p.registrations),
        );
        let same_workloads = previous.is_some_and(|p| {
            p.workloads.len() == state.workloads.len()
                && state.workloads.iter().all(|w| {
                    p.workloads
                        .get(&w.spec.id)
                        .is_some_and(|old| old.spec == w.spec)
                })
        });
        let federated: Vec<TrustDomain> = state
            .federations
            .iter()
            .map(|f| f.trust_domain.clone())
            .collect();
        let reusable = previous.filter(|p| {
            same_workloads
                && p.grants == state.grants
                && p.policies == state.policies
                && p.federated_domains() == federated
        });
        let (shadow, shadow_error) = match &state.shadow {
            None => (None, None),
            Some(rec) => match previous
                .and_then(|p| p.shadow.as_ref())
                .filter(|s| same_workloads && s.version == rec.version)
            {
                Some(s) => (
                    Some(Shadow {
                        version: s.version,
                        engine: s.engine.clone(),
                        diff: s.diff.clone(),
                    }),
                    None,
                ),
                None => {
                    let specs: Vec<_> = state.workloads.iter().map(|w| w.spec.clone()).collect();
                    match PolicyEngine::from_files_federated(
                        &specs,
                        &rec.grants,
                        &rec.policies,
                        &federated,
                    ) {
                        Ok(engine) => (
                            Some(Shadow {
                                version: rec.version,
                                engine: Arc::new(engine),
                                diff: Arc::default(),
                            }),
                            None,
                        ),
                        Err(e) => (None, Some(format!("shadow set {}: {e}", rec.version))),
                    }
                }
            },
        };
        let (engine, token_limits) = match reusable {
            Some(p) => (p.engine.clone(), p.token_limits.clone()),
            None => {
                let specs: Vec<_> = state.workloads.iter().map(|w| w.spec.clone()).collect();
                (
                    Arc::new(PolicyEngine::from_files_federated(
                        &specs,
                        &state.grants,
                        &state.policies,
                        &federated,
                    )?),
                    Arc::new(Limits::from_grants(&state.grants, |g| g.token_rate)),
                )
            }
        };
        let mut targets = HashMap::new();
        for w in &state.workloads {
            targets.insert(w.spec.id.to_string(), w.spec.id.clone());
            for a in &w.spec.aliases {
                targets.insert(a.to_string(), w.spec.id.clone());
            }
        }
        let mut clients = HashMap::new();
        for c in state.clients {
            let keys = match &c.spec.jwks {
                // Validated at apply time; a set that no longer parses authenticates nobody.
                Some(j) => KeySet::from_jwks(j.as_bytes()).unwrap_or_default(),
                None => KeySet::default(),
            };
            let secret = c.secret.and_then(|s| {
                let tag = STANDARD.decode(&s.hash).ok()?;
                Some((s, tag))
            });
            clients.insert(
                c.spec.id.to_string(),
                ClientEntry {
                    spec: c.spec,
                    keys,
                    secret,
                },
            );
        }
        Ok(Arc::new(Self {
            version,
            workloads: state
                .workloads
                .into_iter()
                .map(|w| (w.spec.id.clone(), w))
                .collect(),
            targets,
            clients,
            grants: state.grants,
            trusts: state.trusts,
            clusters: state.clusters,
            policies: state.policies,
            federations: federated::build(state.federations, &state.federated_bundles),
            engine,
            token_limits,
            revoked_jtis: revoked.into_iter().collect(),
            keys,
            cas,
            agents: state
                .agents
                .into_iter()
                .map(|a| (a.id.clone(), a))
                .collect(),
            registrations,
            policy_version: state.policy_version,
            shadow,
            shadow_error,
            counters,
        }))
    }

    /// The trust domains of the authorities this one federates with, sorted.
    pub fn federated_domains(&self) -> Vec<TrustDomain> {
        self.federations.keys().cloned().collect()
    }

    /// Whether a token issued at `iat` to `sub` is cut off by a workload revocation.
    pub fn workload_revoked(&self, sub: &str, iat: i64) -> bool {
        SpiffeId::parse(sub)
            .ok()
            .and_then(|id| self.workloads.get(&id))
            .and_then(|w| w.revoked_at)
            .is_some_and(|at| iat <= at)
    }
}

/// Examples kept per (caller, target, action) in a shadow diff.
const MAX_DIFF_KEYS: usize = 10_000;

/// The candidate policy set evaluated beside the active one without being enforced.
#[derive(Debug)]
pub struct Shadow {
    pub version: i64,
    pub engine: Arc<PolicyEngine>,
    /// Shared across snapshots while the shadow version stays the same.
    pub diff: Arc<Mutex<DiffState>>,
}

#[derive(Debug, Default)]
pub struct DiffState {
    pub evaluated: u64,
    pub changed: BTreeMap<(String, String, String), ShadowChange>,
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

impl Shadow {
    /// Records one real decision and what the shadow set decided for it.
    pub fn observe(
        &self,
        caller: &str,
        target: &str,
        action: &str,
        active: bool,
        shadow: &tessera_policy::Decision,
        example: impl FnOnce() -> String,
    ) {
        let Ok(mut d) = self.diff.lock() else {
            return;
        };
        d.evaluated += 1;
        if active == shadow.allowed {
            return;
        }
        let key = (caller.to_owned(), target.to_owned(), action.to_owned());
        if let Some(e) = d.changed.get_mut(&key) {
            e.count += 1;
        } else if d.changed.len() < MAX_DIFF_KEYS {
            d.changed.insert(
                key,
                ShadowChange {
                    caller: caller.to_owned(),
                    target: target.to_owned(),
                    action: action.to_owned(),
                    active: word(active).to_owned(),
                    shadow: word(shadow.allowed).to_owned(),
                    count: 1,
                    example: example(),
                    shadow_reason: shadow.reason(),
                },
            );
        }
    }
}
