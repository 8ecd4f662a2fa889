//! The desired state identity files describe, as the server applies it: workloads, grants,
//! clients, trusts, policy files. Every item carries its `source` (`file:line`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::values::{ClientAuth, Date, Hours, Rate, Selector, Ttl, WorkloadKind};
use crate::id::{AgentId, Audience, ClientId, Label, Scope, SpiffeId, TrustDomain};

/// A just-in-time scope: issued only on its own, for a short lifetime, under conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitScope {
    pub scope: Scope,
    /// The longest a token carrying this scope may live.
    pub max_ttl: Ttl,
    /// Caller environments that may ask for it; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<Label>,
    /// The UTC hours in which it may be issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<Hours>,
    /// For exchanged and delegated requests: the oldest subject token accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_age: Option<Ttl>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustMap {
    pub claims: BTreeMap<String, toml::Value>,
    pub workload: SpiffeId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub id: SpiffeId,
    pub owner: Label,
    pub purpose: String,
    pub environment: Option<Label>,
    pub tags: BTreeMap<String, String>,
    pub selectors: Vec<Selector>,
    pub jwt_ttl: Ttl,
    pub x509_ttl: Ttl,
    pub aliases: Vec<Audience>,
    pub scopes: Vec<Scope>,
    pub kind: WorkloadKind,
    /// Node agents that may hand out this workload's SVIDs; empty means any agent of its
    /// trust domain.
    #[serde(default)]
    pub nodes: Vec<AgentId>,
    /// Selectors every agent that hands out this workload's SVIDs must have been attested with
    /// (`k8s:cluster:prod`); empty means no condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<Selector>,
    /// Scopes of this service issued only just in time: alone, briefly, under conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jit: Vec<JitScope>,
    /// Federated trust domains whose bundles this workload receives (and so may trust).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<TrustDomain>,
    pub source: String,
}

impl Workload {
    /// The just-in-time rule for `scope`, if it is one.
    pub fn jit_scope(&self, scope: &Scope) -> Option<&JitScope> {
        self.jit.iter().find(|j| &j.scope == scope)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub from: SpiffeId,
    pub to: SpiffeId,
    pub scopes: Vec<Scope>,
    pub routes: Vec<Route>,
    pub why: String,
    pub review_by: Option<Date>,
    /// Lets a `deployment` workload reach a `runtime` service, which the shipped policy
    /// otherwise forbids: the explicit decision the separation asks for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deployment: bool,
    /// At most this many tokens for the target per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rate: Option<Rate>,
    /// At most this many calls to the target per period, enforced where the call lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_rate: Option<Rate>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub id: ClientId,
    pub workload: SpiffeId,
    pub auth: ClientAuth,
    /// The client's public keys (a JWKS document), for `private_key_jwt`.
    pub jwks: Option<String>,
    pub secret_ttl: Option<Ttl>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    pub name: Label,
    pub issuer: String,
    pub jwks: Option<String>,
    pub audience: Audience,
    pub algorithms: Vec<String>,
    pub max_age: Option<Ttl>,
    pub single_use: bool,
    /// The issuer may be reached at a private, loopback or link-local address (an in-cluster
    /// issuer). Off by default: an outside issuer's discovery could otherwise be pointed at
    /// the authority's own network (SSRF).
    #[serde(default)]
    pub private_network: bool,
    pub map: Vec<TrustMap>,
    pub source: String,
}

/// A service account allowed to attest node agents, `namespace:name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// `namespace:name`, each a Kubernetes name.
    pub fn parse(input: &str) -> Option<Self> {
        let (ns, name) = input.split_once(':')?;
        (super::values::k8s_name(ns) && super::values::k8s_name(name)).then(|| Self {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A Kubernetes cluster whose node agents attest with a projected service-account token
/// (audience: this authority), verified against the cluster's service-account issuer (OIDC
/// discovery and JWKS, or `jwks`), as trusts verify outside tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// The `k8s:cluster` selector's value and part of each agent's ID.
    pub name: Label,
    /// The trust domain such agents join.
    pub trust_domain: TrustDomain,
    /// The cluster's service-account issuer (`--service-account-issuer`).
    pub issuer: String,
    /// The issuer's keys as a JWKS document, instead of discovery.
    pub jwks: Option<String>,
    /// The issuer may be reached at a private or loopback address (an in-cluster issuer).
    #[serde(default)]
    pub private_network: bool,
    /// The service accounts whose tokens may attest an agent.
    pub service_accounts: Vec<ServiceAccount>,
    /// Also ask the cluster's API server (TokenReview) whether each token is still valid (its
    /// pod not deleted, its service account not removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_review: Option<TokenReview>,
    pub source: String,
}

/// Where and how the authority asks a cluster's API server to review a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenReview {
    /// The API server (`https://10.0.0.1:6443`).
    pub url: String,
    /// The PEM CA that signs the API server's certificate (the file's content).
    pub ca: Option<String>,
    /// A file on the authority's host holding the bearer token it reviews with (a service
    /// account bound to `system:auth-delegator`); read at each review, never stored.
    pub token_file: String,
}

/// How a federated authority's bundle endpoint is authenticated (SPIFFE Federation §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleProfile {
    /// Web PKI (or `ca_file`): the endpoint's certificate names its host.
    HttpsWeb,
    /// The endpoint presents an X.509-SVID with `endpoint_spiffe_id`, checked against the
    /// federated trust domain's own bundle (bootstrapped from `initial_bundle`).
    HttpsSpiffe,
}

impl BundleProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpsWeb => "https_web",
            Self::HttpsSpiffe => "https_spiffe",
        }
    }
}

/// A federation relationship: another authority's trust domain, whose bundle this one fetches
/// and follows, so that its workloads' SVIDs can be verified here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Federation {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint: String,
    pub profile: BundleProfile,
    /// `https_spiffe`: the SPIFFE ID the endpoint's certificate must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// `https_spiffe`: the bundle (SPIFFE format) trusted until the first fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_bundle: Option<String>,
    /// `https_web`: the PEM certificates of a private CA the endpoint's chain ends in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The other authority's OAuth issuer: workloads that federate with this trust domain may
    /// obtain from this authority a JWT authorization grant for it (identity chaining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_issuer: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// The file name, relative to the identity file that listed it.
    pub name: String,
    pub text: String,
}

/// Everything a set of identity files asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub workloads: Vec<Workload>,
    pub grants: Vec<Grant>,
    pub clients: Vec<Client>,
    pub trusts: Vec<Trust>,
    pub policies: Vec<PolicyFile>,
    #[serde(default)]
    pub federations: Vec<Federation>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}
