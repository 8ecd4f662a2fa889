//! The change stream (`GET /v1/changes`, server-sent events): every change that withdraws or
//! alters trust, versioned by the authority's state version. One definition for the server and
//! every subscriber.
//!
//! Events on the wire (`event:` name, `id:` the state version, `data:` one JSON object):
//! - `snapshot`: [`RevocationState`], the whole state at a version; first on every connection
//!   that does not resume, or resumes from a version the server no longer holds.
//! - `change`: [`ChangeBatch`], what changed from `from` to `version`.
//! - `heartbeat`: [`Heartbeat`], every few seconds, so that a subscriber knows it is current.

use serde::{Deserialize, Serialize};

/// Seconds between heartbeats on an idle stream.
pub const HEARTBEAT_SECS: u64 = 5;

/// Histogram buckets (seconds) of `tessera_revocation_propagation_seconds`, the same on the
/// server and every subscriber so the two halves can be read together: a millisecond to a
/// minute (seed 003's starting SLO).
pub const PROPAGATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
];

/// Largest event a subscriber accepts (a snapshot of many revocations included).
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// A revoked token, refused until it expires anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedToken {
    pub jti: String,
    pub exp: i64,
}

/// A revoked workload: tokens issued and certificates valid from at or before `at` are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedWorkload {
    pub sub: String,
    pub at: i64,
}

/// A revoked node agent: its SVID is refused at the agents' API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedAgent {
    pub agent: String,
    pub at: i64,
}

/// Who depended on a revoked workload: the workloads granted to call it, and those it was
/// granted to call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependents {
    pub callers: Vec<String>,
    pub targets: Vec<String>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    TokenRevoked(RevokedToken),
    WorkloadRevoked {
        #[serde(flatten)]
        workload: RevokedWorkload,
        #[serde(default)]
        dependents: Dependents,
    },
    /// A workload's revocation was lifted (it was applied again).
    WorkloadRestored {
        sub: String,
    },
    AgentRevoked(RevokedAgent),
    /// Grants or policies changed: authorizers fetch their policy bundle for `policy_version`.
    GrantsChanged {
        policy_version: i64,
    },
    /// A trust domain's signing keys or CAs changed: verifiers refresh its JWKS and bundle.
    TrustBundleChanged {
        trust_domain: String,
    },
}

/// The changes from state version `from` to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBatch {
    pub from: i64,
    pub version: i64,
    /// When the change was committed (milliseconds since the epoch, by the committing server).
    pub committed_at_ms: i64,
    pub changes: Vec<Change>,
}

/// Everything withdrawn at `version`: what a subscriber replaces its state with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationState {
    pub version: i64,
    pub tokens: Vec<RevokedToken>,
    pub workloads: Vec<RevokedWorkload>,
    pub agents: Vec<RevokedAgent>,
    pub policy_version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub version: i64,
    pub at_ms: i64,
}

/// The event sent to webhooks when a workload is revoked (the body of a signed JWT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationNotice {
    pub iss: String,
    pub iat: i64,
    pub jti: String,
    pub event: String,
    pub workload: RevokedWorkload,
    pub dependents: Dependents,
    pub actor: String,
}
