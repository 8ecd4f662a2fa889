//! The messages between node agents and the authority (`/agent/v1/...`, JSON over mTLS). One
//! definition for both sides. Certificates and CSRs travel as base64 (standard) DER.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::manifest::Selector;
use crate::{AgentId, SpiffeId, TrustDomain};

/// What an agent may hand out: a workload's SPIFFE ID to the processes its selectors match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub x509_ttl_secs: u64,
    pub jwt_ttl_secs: u64,
    /// Agents that may serve it (empty: any agent of its trust domain). Part of the entry so that
    /// a change of it is a change of the entry, which incremental sync then carries.
    #[serde(default)]
    pub nodes: Vec<AgentId>,
    /// Selectors an agent must have been attested with to serve it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<Selector>,
    /// Federated trust domains whose bundles the workload receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<TrustDomain>,
    /// The state version at which this entry last changed.
    pub revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub join_token: String,
    pub csr: String,
}

/// Node attestation by a Kubernetes projected service-account token whose audience is the
/// authority (`POST /agent/v1/attest/k8s_psat`): no join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sPsatRequest {
    pub token: String,
    pub csr: String,
}

/// An SVID and the trust bundle it chains to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSvid {
    pub agent_id: AgentId,
    pub spiffe_id: SpiffeId,
    /// Leaf first.
    pub chain: Vec<String>,
    pub not_after: i64,
    pub bundle: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Ask again with `since` = this.
    pub version: i64,
    /// True when `registrations` is the whole set (the agent drops what it had).
    pub full: bool,
    pub registrations: Vec<Registration>,
    pub removed: Vec<SpiffeId>,
    /// The X.509 authorities of the agent's trust domain (DER, base64).
    pub x509_authorities: Vec<String>,
    /// The JWT-SVID signing keys of the agent's trust domain (a JWKS).
    pub jwt_keys: serde_json::Value,
    /// The bundle in force for each federated trust domain, whole on every response (a
    /// relationship removed is a bundle gone).
    #[serde(default)]
    pub federated_bundles: BTreeMap<String, FederatedBundle>,
}

/// A federated trust domain's bundle as agents receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederatedBundle {
    /// DER, base64.
    pub x509_authorities: Vec<String>,
    /// A JWKS.
    pub jwt_keys: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignItem {
    pub spiffe_id: SpiffeId,
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub csrs: Vec<SignItem>,
}

/// One CSR's outcome: a chain, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedItem {
    pub spiffe_id: SpiffeId,
    #[serde(default)]
    pub chain: Vec<String>,
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub not_after: i64,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    pub svids: Vec<SignedItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSvidRequest {
    pub spiffe_id: SpiffeId,
    pub audience: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtSvidResponse {
    pub token: String,
    pub expires_at: i64,
}

/// An access token for a workload the agent attested (the managed-identity endpoint).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub spiffe_id: SpiffeId,
    pub resource: String,
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: i64,
    pub expires_at: i64,
    /// The target's canonical SPIFFE ID.
    pub audience: String,
    pub scope: String,
}
