//! What the authority does, without HTTP: issuing tokens, working out who is calling, applying
//! identity files, policy-set versions, rotation and revocation, federation rules, secrets and
//! database leases. No axum type is named here; each module returns its own error enum, and
//! `error.rs` maps them to HTTP. Imports `app/` and the ground files, never `api/`.

pub mod apply;
pub mod caller;
pub mod federation;
pub mod issue;
pub mod leases;
pub mod policy_sets;
pub mod rotation;
pub mod secrets;
