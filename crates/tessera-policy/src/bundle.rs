//! The policy bundle: what a point-of-use authorizer needs to decide locally, fetched from the
//! server and kept current by version.

use ring::digest;
use serde::{Deserialize, Serialize};
use tessera_core::manifest::{Grant, PolicyFile, Workload};
use tessera_core::{SpiffeId, TrustDomain};

use tessera_core::Scope;

use crate::{PolicyEngine, PolicyError};

/// One decision made at the point of use, as an authorizer reports it to the authority
/// (`POST /v1/policy/decisions`, `{"records": [...]}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub caller: SpiffeId,
    pub method: String,
    pub path: String,
    pub allowed: bool,
    /// For the audit trail; names policies, so it goes to the authority, never to the caller.
    pub reason: String,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    /// Unix seconds.
    pub at: i64,
}

/// Workloads (as entities), the grants toward one service (or all), and every policy file.
/// `version` is a digest of the rest, so two servers serve the same version for the same set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyBundle {
    pub version: String,
    /// The service the bundle was cut for; `None` for the whole set.
    pub service: Option<SpiffeId>,
    pub workloads: Vec<Workload>,
    pub grants: Vec<Grant>,
    pub policies: Vec<PolicyFile>,
    /// Revoked workloads: their calls are denied whatever the policy says (a revoked identity's
    /// SVID stays valid until it expires; this stops it at the point of use within a poll).
    #[serde(default)]
    pub revoked: Vec<SpiffeId>,
    /// Trust domains of other authorities the server federates with: their workloads may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federated: Vec<TrustDomain>,
}

#[derive(Serialize)]
struct Content<'a> {
    service: &'a Option<SpiffeId>,
    workloads: &'a [Workload],
    grants: &'a [Grant],
    policies: &'a [PolicyFile],
    revoked: &'a [SpiffeId],
    #[serde(skip_serializing_if = "<[TrustDomain]>::is_empty")]
    federated: &'a [TrustDomain],
}

fn digest(content: &Content<'_>) -> String {
    let bytes = serde_json::to_vec(content).unwrap_or_default();
    let d = digest::digest(&digest::SHA256, &bytes);
    d.as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl PolicyBundle {
    /// A bundle for `service` (grants toward it only), or for everything.
    pub fn cut(
        service: Option<&SpiffeId>,
        workloads: &[Workload],
        grants: &[Grant],
        policies: &[PolicyFile],
    ) -> Self {
        // Canonical order, so that the same set always has the same version whatever order
        // the caller holds it in.
        let mut grants: Vec<Grant> = grants
            .iter()
            .filter(|g| service.is_none_or(|s| &g.to == s))
            .cloned()
            .collect();
        grants.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        let mut workloads = workloads.to_vec();
        workloads.sort_by(|a, b| a.id.cmp(&b.id));
        let mut policies = policies.to_vec();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let service = service.cloned();
        let mut out = Self {
            version: String::new(),
            service,
            workloads,
            grants,
            policies,
            revoked: Vec::new(),
            federated: Vec::new(),
        };
        out.version = out.compute_version();
        out
    }

    /// The bundle with these workloads marked revoked.
    pub fn with_revoked(mut self, mut revoked: Vec<SpiffeId>) -> Self {
        revoked.sort();
        revoked.dedup();
        self.revoked = revoked;
        self.version = self.compute_version();
        self
    }

    /// The bundle for an authority federating with these trust domains.
    pub fn with_federated(mut self, mut federated: Vec<TrustDomain>) -> Self {
        federated.sort();
        federated.dedup();
        self.federated = federated;
        self.version = self.compute_version();
        self
    }

    fn compute_version(&self) -> String {
        digest(&Content {
            service: &self.service,
            workloads: &self.workloads,
            grants: &self.grants,
            policies: &self.policies,
            revoked: &self.revoked,
            federated: &self.federated,
        })
    }

    /// Compiles the bundle, validating it exactly as the server validated it.
    pub fn engine(&self) -> Result<PolicyEngine, PolicyError> {
        PolicyEngine::from_files_federated(
            &self.workloads,
            &self.grants,
            &self.policies,
            &self.federated,
        )
    }
}
