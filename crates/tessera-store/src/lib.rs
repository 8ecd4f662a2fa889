//! Storage for the Tessera authority: one interface, two backends (embedded SQLite, PostgreSQL)
//! that run the same SQL and pass the same tests.
//!
//! Every mutation goes through [`Store::commit`], which applies a list of [`Op`]s and appends
//! their audit records in one transaction: a change is never stored without its record, and a
//! record never claims a change that was rolled back. The audit trail is a hash chain (each record
//! commits to the previous one), so [`verify_chain`] finds a changed, removed or reordered record.
//!
//! Files: `records.rs` (what is stored, decoded with `FromRow`), `op.rs` (every mutation),
//! `backend.rs` (the two backends and the one write path), `migrate.rs` (the schema),
//! `queries/` (the reads, one file per concern), `secret_cache.rs` (the vault's read path in
//! memory, cleared by every secret change), `audit.rs` (the chain and its group-commit
//! writer).

mod audit;
mod backend;
mod log;
mod migrate;
mod op;
mod queries;
mod records;
mod secret_cache;

pub use audit::{
    verify_chain, AuditEvent, AuditKey, AuditKind, AuditLog, AuditMetrics, AuditRecord, ChainError,
    Outcome, VerifyAuditError, GENESIS,
};
pub use backend::{ChangeListener, Store};
pub use op::Op;
pub use queries::audit::{AuditFilter, AuditLine, ObservedCall};
pub use records::{
    AgentRecord, AssertionClaim, BatchItem, BatchResult, CaRecord, ClientRecord,
    ClientSecretRecord, DbConnectionRecord, DbRoleRecord, FederatedBundleRecord, JoinTokenRecord,
    KeyRecord, LeaseFilter, LeaseRecord, LeaseState, PolicySetHead, PolicySetRecord,
    PolicySetStatus, SecretRecord, SecretVersionRecord, StoredState, SvidRecord, WorkloadRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the schema cannot be brought up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("the audit log is not accepting records: {0}")]
    AuditUnavailable(String),
    /// A conditional change found its precondition false (a used join token, say).
    #[error("{0}")]
    Conflict(String),
    #[error("cannot prepare the database file `{path}`: {message}")]
    File { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[cfg(test)]
mod tests;
