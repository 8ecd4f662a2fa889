//! Why the server could not start. Ground floor: every start-up step reports one of these.

/// Why the server could not start. Each is one line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("data folder `{path}`: {message}")]
    DataDir { path: String, message: String },
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("storage: {0}")]
    Store(#[from] tessera_store::StoreError),
    #[error("cannot listen on `{addr}`: {message}")]
    Listen { addr: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("keys: {0}")]
    Keys(String),
    #[error("stored policies do not load: {0}")]
    Policy(#[from] tessera_policy::PolicyError),
}
