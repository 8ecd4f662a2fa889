//! Shared vocabulary of Tessera: SPIFFE IDs and the other security-relevant names, and the
//! identity-file model. Every other crate depends on this one; it depends on none of them.

pub mod admin_api;
pub mod agent_api;
pub mod change_api;
pub mod glob;
pub mod id;
pub mod manifest;
pub mod private_file;

pub use id::{
    AgentId, Audience, ClientId, IdError, Kid, Label, Scope, SecretName, SecretPattern, SpiffeId,
    TrustDomain,
};

/// Seconds since the Unix epoch, the unit of every timestamp Tessera stores or signs.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch: for propagation times measured across processes.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
