//! What the authority does, without HTTP: issuing tokens, working out who is calling, applying
//! identity files, policy-set versions, rotation and revocation, federation rules, secrets and
//! database leases. No axum type is named here; each module returns its own error enum, and
//! `error.rs` maps them to HTTP. Imports `app/` and the ground files, never `api/`.

pub(crate) mod access;
pub(crate) mod advisor;
pub(crate) mod apply;
pub(crate) mod bundle_federation;
pub(crate) mod caller;
pub(crate) mod console_oidc;
pub(crate) mod federation;
pub(crate) mod issue;
pub(crate) mod leases;
pub(crate) mod log;
pub(crate) mod node_attestation;
pub(crate) mod notices;
pub(crate) mod policy_sets;
pub(crate) mod review;
pub(crate) mod rotation;
pub(crate) mod secrets;
