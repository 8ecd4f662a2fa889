//! The vault's pieces that need no server: envelope encryption of secret values, the
//! `tessera://secret/NAME` references programs are configured with, and the PostgreSQL role
//! templates of dynamic credentials. The server stores and serves; this crate decides what the
//! bytes are.

pub mod db_url;
pub mod envelope;
pub mod reference;
pub mod role;

pub use db_url::{DbUrl, DbUrlError};
pub use envelope::{Envelope, Sealed};
pub use reference::SecretRef;
pub use role::{RoleTemplate, TemplateError};

/// Largest secret value accepted (Azure Key Vault's limit).
pub const MAX_VALUE_BYTES: usize = 25 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("a secret value is at most 25 KiB; this one is {0} bytes")]
    TooLarge(usize),
    #[error(
        "the value cannot be decrypted: wrong key-encryption key, or the row was changed or moved"
    )]
    Unseal,
    #[error("encryption failed: {0}")]
    Crypto(String),
}
