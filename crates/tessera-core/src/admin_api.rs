//! The admin API's messages (`/admin/v1/...` over HTTP, `/v1/...` on the admin socket): one
//! definition for the server that answers and the CLI that asks, as `agent_api` is for agents.
//! Requests refuse unknown fields, so a typo in a client is an error, not a silent default.

use serde::{Deserialize, Serialize};

use crate::manifest::{ClientAuth, Date, DesiredState, WorkloadKind};
use crate::{Audience, ClientId, Label, Scope, SpiffeId, TrustDomain};

/// `POST /v1/apply`: identity files to make so (or to load as a shadow policy set).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub state: DesiredState,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub prune: bool,
    /// Load the grants and policy files as a shadow candidate instead of applying them.
    #[serde(default)]
    pub shadow: bool,
}

/// What an apply changed (or would change, in a dry run), one line per change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub changes: Vec<String>,
    pub applied: bool,
}

/// `GET /v1/get/workloads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub id: SpiffeId,
    pub owner: Label,
    pub environment: Option<Label>,
    pub kind: WorkloadKind,
    pub purpose: String,
    pub revoked_at: Option<i64>,
}

/// `GET /v1/get/clients`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSummary {
    pub id: ClientId,
    pub workload: SpiffeId,
    pub auth: ClientAuth,
    pub secret_expires_at: Option<i64>,
    pub has_secret: bool,
}

/// `GET /v1/get/grants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantSummary {
    pub from: SpiffeId,
    pub to: SpiffeId,
    pub scopes: Vec<Scope>,
    pub why: String,
    pub review_by: Option<Date>,
    pub overdue: bool,
    pub source: String,
    /// The owners of the caller and the target (whose list an overdue grant shows on).
    #[serde(default)]
    pub from_owner: Option<Label>,
    #[serde(default)]
    pub to_owner: Option<Label>,
}

/// `GET /v1/get/trusts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustSummary {
    pub name: Label,
    pub issuer: String,
    pub audience: Audience,
    pub maps_to: Vec<SpiffeId>,
}

/// `GET /v1/get/federations` (and `/v1/describe/federation`): a federation relationship, the
/// bundle in force for it and how its refreshes went on the server that answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederationSummary {
    pub trust_domain: TrustDomain,
    pub bundle_endpoint: String,
    pub profile: String,
    pub endpoint_spiffe_id: Option<SpiffeId>,
    pub token_issuer: Option<String>,
    /// `fetched`, `initial` (the `initial_bundle`, before a first good fetch) or `none`.
    pub bundle: String,
    pub spiffe_sequence: Option<u64>,
    /// When the bundle in force was stored.
    pub fetched_at: Option<i64>,
    pub last_attempt: Option<i64>,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    pub next_refresh: Option<i64>,
    /// The `not_after` (unix seconds) of each X.509 authority in the bundle in force.
    pub ca_expiries: Vec<i64>,
    pub jwt_keys: usize,
    /// Local workloads that federate with this trust domain.
    pub workloads: Vec<SpiffeId>,
    pub source: String,
}

/// `GET /v1/get/agents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSummary {
    pub id: String,
    pub trust_domain: String,
    pub spiffe_id: String,
    pub joined_at: i64,
    pub last_seen: i64,
    pub svid_serial: String,
    pub svid_not_after: i64,
    pub revoked_at: Option<i64>,
    /// What the agent was attested with (`k8s:cluster:prod`, ...); empty for a join token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<String>,
}

/// `POST /v1/client/secret`: a new secret for a `client_secret` client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSecretRequest {
    pub client_id: String,
    /// Lifetime in seconds; default the client's `secret_ttl`, or none.
    pub ttl_secs: Option<u64>,
}

/// The new secret: shown once, stored only as a keyed hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSecretResponse {
    pub client_id: String,
    pub secret: String,
    pub expires_at: Option<i64>,
}

/// `POST /v1/revoke/workload` and `/v1/revoke/agent` (`id`), `/v1/revoke/token` (`jti`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub id: Option<String>,
    pub jti: Option<String>,
}

/// A workload or agent revoked (`already`: it was before this request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub id: String,
    pub revoked_at: i64,
    pub already: bool,
    /// For a workload: who depended on it (granted callers and targets), as the change stream
    /// and the webhooks tell them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependents: Option<crate::change_api::Dependents>,
}

/// A token revoked by its ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub jti: String,
    pub revoked: bool,
}

/// `POST /v1/agents/tokens`: a one-time join token for a new node agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub trust_domain: Option<String>,
    /// Seconds; default 10 minutes, at most a day.
    pub ttl: Option<i64>,
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    pub token: String,
    pub agent_id: String,
    pub trust_domain: String,
    pub expires_at: i64,
}

/// `POST /v1/keys/rotate`: every served trust domain, or one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotateRequest {
    pub trust_domain: Option<String>,
}

/// A new signing key: published now, signing from `activate_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRotated {
    pub trust_domain: String,
    pub kid: String,
    pub activate_at: i64,
}

/// Where a signing key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    Signing,
    /// Published until every token it signed has expired.
    Retiring,
    Withdrawn,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    pub trust_domain: String,
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    pub created_at: i64,
    pub activate_at: i64,
    pub retire_at: Option<i64>,
}

/// `POST /v1/ca/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRotateRequest {
    pub trust_domain: Option<String>,
    /// Seconds until the new CA signs; default `ca_publish_ahead`.
    pub activate_in: Option<i64>,
}

/// A new CA: in the bundle now, signing from `activate_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRotated {
    pub trust_domain: String,
    pub ca: String,
    pub activate_at: i64,
    pub not_after: i64,
}

/// Where a CA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaState {
    /// In the bundle, not signing yet.
    Prepared,
    Active,
    /// In the bundle until every SVID it signed has expired.
    Retiring,
    Withdrawn,
}

/// `GET /v1/ca`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaInfo {
    pub trust_domain: String,
    pub id: String,
    pub state: CaState,
    pub created_at: i64,
    pub activate_at: i64,
    pub retire_at: Option<i64>,
    pub not_after: i64,
}

/// `GET /v1/keys/status`: one private key Tessera holds, wherever it lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStatus {
    /// `signing`, `ca`, `root`, `audit` or `tls`.
    pub kind: String,
    /// The trust domain it serves; none for the root, the log's and the TLS key.
    pub trust_domain: Option<String>,
    /// Key id (signing), CA id, or a name.
    pub id: String,
    pub alg: String,
    /// `software (sealed)`, or the PKCS#11 token, slot and label.
    pub location: String,
    pub created_at: Option<i64>,
    /// `signing`, `next`, `retiring`, `withdrawn` (keys), `active`, `prepared`, ... (CAs), or
    /// `in use`.
    pub state: String,
    /// When it is next rotated on schedule, if it is.
    pub next_rotation: Option<i64>,
    /// Why it is not rotated on schedule, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
}

/// `POST /v1/ca/csr`: a key for `trust_domain`'s next CA is made (in the token, if it holds
/// CA keys) and a CSR for it returned, for a root outside Tessera to sign.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaCsrRequest {
    pub trust_domain: String,
}

/// The CSR, PEM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaCsr {
    pub trust_domain: String,
    pub csr_pem: String,
}

/// `POST /v1/ca/install`: the certificate an outside root signed for the CSR (PEM; the
/// intermediate first, then any CA certificates between it and the root).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaInstallRequest {
    pub trust_domain: String,
    pub chain_pem: String,
    /// Seconds until it signs; default `ca_publish_ahead` (at once if the domain has no CA).
    pub activate_in: Option<i64>,
}

/// `GET /v1/audit/verify`: whether the chain verifies, over how many records, or where not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerifyResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/federation/test`: which rule of which trust an outside token matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationTestRequest {
    pub trust: Option<String>,
    pub token: String,
}

/// The match (`matched`, with the trust, rule, workload, outside subject and expiry) or why
/// none (`reason`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederationTestResponse {
    pub matched: bool,
    pub trust: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<SpiffeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/secrets/put`: a new secret (owner and purpose required) or a new version of one;
/// metadata given replaces what was stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    pub name: String,
    /// The value, base64.
    pub value: String,
    /// `true` for `tessera secret rotate`: the secret must exist, and the audit says rotated.
    #[serde(default)]
    pub rotate: bool,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub content_type: Option<String>,
    pub environment: Option<String>,
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    /// Seconds.
    pub rotation_period: Option<i64>,
    pub not_before: Option<i64>,
    pub expires_at: Option<i64>,
}

/// The version a write made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretWritten {
    pub name: String,
    pub version: i64,
}

/// The vault's other admin requests name a secret, and some a version, a state or a retention.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    pub name: String,
    pub version: Option<i64>,
    pub enabled: Option<bool>,
    /// Seconds a deleted secret stays restorable.
    pub retention: Option<i64>,
}

/// `POST /v1/secrets/get`: a value, for an administrator (audited like any read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretValue {
    pub name: String,
    pub version: i64,
    pub enabled: bool,
    pub value_base64: String,
}

/// One version of a secret, never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersionInfo {
    pub version: i64,
    pub created_at: i64,
    pub created_by: String,
    pub enabled: bool,
    pub not_before: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A secret's metadata (`GET /v1/secrets`, and the workload API's `/v1/secret-metadata/NAME`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretMetadata {
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub content_type: String,
    pub environment: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub rotation_period: Option<i64>,
    pub current_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub purge_after: Option<i64>,
    /// Why it needs attention: `rotation` (older than its rotation period), `expired`.
    pub overdue: Vec<String>,
    /// Its versions, newest first (not in a listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<SecretVersionInfo>>,
}

/// A workload the policy in force lets read a secret, and the policies that decide it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretReaderInfo {
    pub workload: SpiffeId,
    pub by: Vec<String>,
}

/// `POST /v1/secrets/describe`: metadata, versions, and who may read it under the policy in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretDescription {
    #[serde(flatten)]
    pub metadata: SecretMetadata,
    pub readers: Vec<SecretReaderInfo>,
    /// Workloads that may see the metadata but not the value.
    pub metadata_readers: Vec<SpiffeId>,
}

/// `POST /v1/secrets/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersionSet {
    pub name: String,
    pub version: i64,
    pub enabled: bool,
}

/// `POST /v1/secrets/delete`: restorable until `purge_after`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretDeleted {
    pub name: String,
    pub deleted_at: i64,
    pub purge_after: i64,
}

/// `POST /v1/secrets/restore` and `/v1/secrets/purge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretChanged {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<bool>,
}

/// `POST /v1/db/connections`: a database Tessera makes roles in; its admin password is the
/// current version of a vault secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConnectionRequest {
    pub name: String,
    pub url: String,
    pub admin_user: String,
    pub password_secret: String,
}

/// The connection was logged in to and declared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbConnectionDeclared {
    pub name: String,
    pub checked: bool,
}

/// `POST /v1/db/roles`: a role template (statements with `{{name}}`, `{{password}}`,
/// `{{expiry}}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbRoleRequest {
    pub name: String,
    pub connection: String,
    pub creation: Vec<String>,
    #[serde(default)]
    pub revocation: Vec<String>,
    pub default_ttl: Option<i64>,
    pub max_ttl: Option<i64>,
}

/// The role, and the secret name workloads are granted to read it by (`db/ROLE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbRoleDeclared {
    pub name: String,
    pub read_as: String,
}

/// `GET /v1/db/leases`: a lease not yet revoked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub lease_id: String,
    pub role: String,
    pub username: String,
    pub workload: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    /// `active`, `revoking` or `revoked`.
    pub state: String,
    pub revoked_at: Option<i64>,
    pub attempts: i64,
    /// Why dropping its role keeps failing, while it does.
    pub last_error: Option<String>,
}

/// `POST /v1/db/leases/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub id: String,
}

/// A lease asked to end: its role is dropped within seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseEnding {
    pub lease_id: String,
    pub state: String,
}

/// `POST /v1/explain`: why a token (scopes) or a call (method and path) would be allowed or
/// denied, by the active set or the shadow one. The answer is `tessera_policy::Explanation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub from: SpiffeId,
    pub to: SpiffeId,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// Explain with the shadow set instead of the active one.
    #[serde(default)]
    pub shadow: bool,
    /// The caller's address for `context.source_ip` (unknown, 0.0.0.0, by default).
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
}

/// One stored policy set version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicySetSummary {
    pub version: i64,
    /// `active`, `shadow`, `superseded`, `promoted` or `discarded`.
    pub status: String,
    pub created_at: i64,
    pub actor: String,
    pub note: String,
    pub grants: usize,
    pub policies: usize,
}

/// The shadow set loaded beside the active one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowInfo {
    pub version: i64,
    pub policies: usize,
}

/// `GET /v1/policy`: the active version, the shadow one, and the recent history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub active_version: i64,
    pub policies: usize,
    pub shadow: Option<ShadowInfo>,
    /// Why a loaded shadow set does not compile against today's workloads.
    pub shadow_error: Option<String>,
    pub history: Vec<PolicySetSummary>,
}

/// A (caller, target, action) whose decision the shadow set would change, with how often and
/// one example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowChange {
    pub caller: String,
    pub target: String,
    pub action: String,
    /// `allow` or `deny`.
    pub active: String,
    pub shadow: String,
    pub count: u64,
    /// One request that changed, e.g. `issue_token [b:read]` or `GET /api/x`.
    pub example: String,
    /// Why the shadow set decides as it does, for that example.
    pub shadow_reason: String,
}

/// `GET /v1/policy/diff`: the shadow set against real decisions since it was loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowDiff {
    pub active_version: i64,
    pub shadow_version: i64,
    pub evaluated: u64,
    pub newly_denied: u64,
    pub newly_allowed: u64,
    /// Most frequent first.
    pub changed: Vec<ShadowChange>,
}

/// `POST /v1/policy/rollback`: to a version that was active (default: the one before).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub to: Option<i64>,
}

/// A promote or rollback: the new active version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyActivated {
    pub version: i64,
    pub changed: usize,
    pub note: String,
}

/// `POST /v1/policy/discard`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyDiscarded {
    pub discarded: i64,
}

// ---- The console's views (also `tessera advise`) ------------------------------------------------

/// `GET /v1/overview`: seed 003's SLIs over the last `window_seconds`, and what is coming due.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    pub window_seconds: i64,
    /// Tokens and SVIDs issued, and issuance refused (denied, failed, rate-limited).
    pub issued: i64,
    pub issuance_refused: i64,
    /// M1: issued / (issued + refused); none when nothing was asked.
    pub issuance_success: Option<f64>,
    /// Calls the services' verifiers allowed and denied (their decision records).
    pub calls_allowed: i64,
    pub calls_denied: i64,
    /// M2: allowed / (allowed + denied).
    pub verification_success: Option<f64>,
    /// M8: refused client authentications, outside tokens, agent joins and console sign-ins.
    pub unauthorized_attempts: i64,
    /// Workloads, tokens and agents revoked.
    pub revocations: i64,
    pub workloads: usize,
    pub revoked_workloads: usize,
    pub grants: usize,
    pub grants_overdue: usize,
    /// Items of `GET /v1/expiries` within 6, 24 and 72 hours.
    pub expiring_6h: usize,
    pub expiring_24h: usize,
    pub expiring_72h: usize,
    pub policy_version: i64,
    pub shadow_version: Option<i64>,
}

/// `GET /v1/workloads`: one page of workloads matching a search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadPage {
    pub total: usize,
    pub offset: usize,
    pub rows: Vec<WorkloadRow>,
    /// Every environment, owner and trust domain there is, for the filters.
    pub environments: Vec<String>,
    pub owners: Vec<String>,
    pub trust_domains: Vec<String>,
}

/// A workload in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadRow {
    pub id: SpiffeId,
    pub owner: Label,
    pub environment: Option<Label>,
    pub kind: WorkloadKind,
    pub purpose: String,
    pub selectors: Vec<String>,
    pub grants_out: usize,
    pub grants_in: usize,
    /// Grants of or to it past their review date.
    pub overdue: usize,
    pub last_issued: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// `GET /v1/graph`: who may call whom (grants, each as the policy in force decides it) and who
/// did (decision records), around one workload or among the workloads of a filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessGraph {
    pub center: Option<SpiffeId>,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
    /// Nodes left out past the limit.
    pub truncated: usize,
    pub window_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphNode {
    pub id: String,
    pub owner: Option<String>,
    pub environment: Option<String>,
    pub trust_domain: String,
    pub revoked: bool,
    /// Not a registered workload (a caller named only in decision records).
    pub unknown: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    /// A grant says `from` may call `to`.
    pub granted: bool,
    /// What the policy in force makes of the grant: `allowed`, or why not.
    pub effective: Option<String>,
    pub scopes: Vec<Scope>,
    pub why: Option<String>,
    pub review_by: Option<Date>,
    pub overdue: bool,
    /// Calls observed in the window.
    pub calls_allowed: i64,
    pub calls_denied: i64,
    pub last_call: Option<i64>,
}

/// `GET /v1/expiries`: what ends or falls due within the window, soonest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expiries {
    pub now: i64,
    pub items: Vec<Expiry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expiry {
    /// `svid`, `agent_svid`, `ca`, `signing_key`, `client_secret`, `grant_review`,
    /// `secret_rotation`.
    pub kind: String,
    pub subject: String,
    pub at: i64,
    /// `overdue`, `6h`, `24h` or `72h`: the first mark it is within.
    pub mark: String,
    pub detail: String,
}

/// `GET /v1/audit/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page.
    pub next_before: Option<i64>,
}

/// An audit record as the console shows it (the hashes are `tessera audit verify`'s business).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// `POST /v1/grants/review`: a reviewer's decision on a grant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantReviewRequest {
    pub from: SpiffeId,
    pub to: SpiffeId,
    pub action: ReviewAction,
    /// The new review date (extend only).
    pub review_by: Option<Date>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewAction {
    Extend,
    Withdraw,
}

/// The decision, recorded, and the identity-file change that makes it so.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantReviewed {
    /// The file (and line) the grant came from.
    pub source: String,
    /// A unified diff of that file, when the server has it (`identity_dir`); else the change
    /// described for the owner to make.
    pub change: String,
    /// Whether the server applied the change itself (it manages the identity files).
    pub applied: bool,
}

/// `GET /v1/advise`: the least-privilege advisor's findings over a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Advice {
    pub window_seconds: i64,
    /// Decision and issuance records read.
    pub records_read: u64,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    /// `unused_grant`, `unused_scopes`, `unused_routes`, `idle_workload`, `idle_client`,
    /// `shared_identity`, `shared_client`, `deployment_reaches_runtime`.
    pub kind: String,
    pub subject: String,
    /// The grant's target, for grant findings.
    pub target: Option<String>,
    pub summary: String,
    /// What the records show, one fact per line.
    pub evidence: Vec<String>,
    /// The narrower identity-file text, where there is one (a grant's replacement; empty for
    /// "remove it").
    pub suggestion: Option<String>,
    pub source: Option<String>,
}

impl Advice {
    /// The narrower identity file: each grant with a suggestion, narrowed, and those never used
    /// left out (as comments), for `tessera advise --write DIR`.
    pub fn narrower_file(&self) -> String {
        let mut by_grant: std::collections::BTreeMap<(&str, &str), &Finding> =
            std::collections::BTreeMap::new();
        for f in &self.findings {
            if let (Some(t), Some(_)) = (&f.target, &f.suggestion) {
                by_grant
                    .entry((f.subject.as_str(), t.as_str()))
                    .or_insert(f);
            }
        }
        let mut out = String::from("# Grants narrowed by `tessera advise`: review, then apply.\n");
        for ((from, to), f) in by_grant {
            out.push_str(&format!("\n# {from} -> {to}: {}\n", f.summary));
            match f.suggestion.as_deref() {
                Some("") | None => out.push_str("# (remove this grant)\n"),
                Some(s) => out.push_str(s),
            }
        }
        out
    }
}

/// `POST /v1/console/link`: a one-time sign-in link to the console.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleLink {
    pub url: String,
    pub expires_in: u64,
}
