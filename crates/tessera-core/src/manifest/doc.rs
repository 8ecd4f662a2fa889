//! The raw shape of an identity file as TOML (`*Doc`): what serde reads, with spans for errors,
//! before `load.rs` turns it into the model.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::model::{BundleProfile, JitScope, Route, TrustMap};
use super::values::{ClientAuth, Date, Rate, Selector, Ttl, WorkloadKind};
use crate::id::{AgentId, Audience, ClientId, Label, Scope, SecretPattern, SpiffeId, TrustDomain};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDoc {
    #[serde(default)]
    pub(super) workload: Vec<Spanned<WorkloadDoc>>,
    #[serde(default)]
    pub(super) grant: Vec<Spanned<GrantDoc>>,
    #[serde(default)]
    pub(super) client: Vec<Spanned<ClientDoc>>,
    #[serde(default)]
    pub(super) trust: Vec<Spanned<TrustDoc>>,
    #[serde(default)]
    pub(super) policies: Option<PoliciesDoc>,
    #[serde(default)]
    pub(super) secret_grant: Vec<Spanned<SecretGrantDoc>>,
    #[serde(default)]
    pub(super) federation: Vec<Spanned<FederationDoc>>,
    #[serde(default)]
    pub(super) cluster: Vec<Spanned<ClusterDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterDoc {
    pub(super) name: Label,
    pub(super) trust_domain: TrustDomain,
    pub(super) issuer: Spanned<String>,
    #[serde(default)]
    pub(super) jwks_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) private_network: bool,
    pub(super) service_accounts: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) token_review: Option<Spanned<TokenReviewDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenReviewDoc {
    pub(super) url: String,
    #[serde(default)]
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) token_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FederationDoc {
    pub(super) trust_domain: TrustDomain,
    pub(super) bundle_endpoint: Spanned<String>,
    pub(super) profile: BundleProfile,
    #[serde(default)]
    pub(super) endpoint_spiffe_id: Option<SpiffeId>,
    #[serde(default)]
    pub(super) initial_bundle: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) token_issuer: Option<Spanned<String>>,
}

/// Who may read which vault secrets. Compiled into Cedar `read_secret` / `describe_secret`
/// permits (a policy file of its own per identity file), so secret access is versioned, shadowed,
/// validated and explained like every other policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretGrantDoc {
    pub(super) from: SpiffeId,
    pub(super) secrets: Vec<SecretPattern>,
    #[serde(default)]
    pub(super) access: SecretAccess,
    pub(super) why: Spanned<String>,
    #[serde(default)]
    pub(super) review_by: Option<Date>,
}

/// `read`: the value and the metadata; `metadata`: the metadata only (Key Vault's Secrets User
/// and Reader).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum SecretAccess {
    #[default]
    Read,
    Metadata,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkloadDoc {
    pub(super) id: Spanned<SpiffeId>,
    pub(super) owner: Label,
    pub(super) purpose: String,
    #[serde(default)]
    pub(super) environment: Option<Label>,
    #[serde(default)]
    pub(super) tags: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) selectors: Vec<Selector>,
    #[serde(default)]
    pub(super) jwt_ttl: Option<Spanned<Ttl>>,
    #[serde(default)]
    pub(super) x509_ttl: Option<Spanned<Ttl>>,
    #[serde(default)]
    pub(super) aliases: Vec<Audience>,
    #[serde(default)]
    pub(super) scopes: Vec<Scope>,
    #[serde(default)]
    pub(super) kind: WorkloadKind,
    #[serde(default)]
    pub(super) nodes: Vec<AgentId>,
    #[serde(default)]
    pub(super) node_selectors: Vec<Selector>,
    #[serde(default)]
    pub(super) jit: Vec<Spanned<JitScope>>,
    #[serde(default)]
    pub(super) federates_with: Vec<TrustDomain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantDoc {
    pub(super) from: SpiffeId,
    pub(super) to: SpiffeId,
    #[serde(default)]
    pub(super) scopes: Vec<Scope>,
    #[serde(default)]
    pub(super) routes: Vec<Route>,
    pub(super) why: Spanned<String>,
    #[serde(default)]
    pub(super) review_by: Option<Date>,
    #[serde(default)]
    pub(super) deployment: bool,
    #[serde(default)]
    pub(super) token_rate: Option<Rate>,
    #[serde(default)]
    pub(super) call_rate: Option<Rate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientDoc {
    pub(super) id: ClientId,
    pub(super) workload: SpiffeId,
    pub(super) auth: ClientAuth,
    #[serde(default)]
    pub(super) jwks_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) secret_ttl: Option<Ttl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrustDoc {
    pub(super) name: Label,
    pub(super) issuer: String,
    #[serde(default)]
    pub(super) jwks_file: Option<Spanned<String>>,
    pub(super) audience: Audience,
    #[serde(default)]
    pub(super) algorithms: Vec<String>,
    #[serde(default)]
    pub(super) max_age: Option<Ttl>,
    #[serde(default)]
    pub(super) single_use: bool,
    #[serde(default)]
    pub(super) private_network: bool,
    #[serde(default)]
    pub(super) map: Vec<TrustMap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoliciesDoc {
    #[serde(default)]
    pub(super) files: Vec<Spanned<String>>,
}

// ---- The desired state, as sent to the server ------------------------------------------------
