//! The Tessera trust authority: the HTTP API (discovery, JWKS, token, introspection, revocation,
//! the agents' and workloads' APIs), the admin API on a unix socket, and the background work
//! that keeps keys and state current.
//!
//! # Floors
//!
//! Files are arranged in floors; a file imports only from its own floor's lower files and from
//! the floors below it, never upward, and no two files import each other.
//!
//! ```text
//! lib.rs          face: `mod` lines and `pub use` only
//! boot.rs         top: start-up and background tasks. The only file that spawns them.
//! router.rs       top: every route group, every body limit, both admin guards. The only file
//!                 that mounts.
//! api/            HTTP features: handlers + `routes()`. Never another api/ feature
//!   oauth/        token.rs -> federated.rs -> delegation.rs -> client_auth.rs -> form.rs;
//!                 federated.rs -> chaining.rs -> form.rs
//! admin_socket.rs serves the admin Router it is given on DATA/admin.sock (peer uid)
//! extract.rs      axum extractors for the caller and the issuer (asks domain/caller.rs)
//! trace.rs        the span of every API request (W3C trace context in), for router.rs
//! error.rs        the one place errors become HTTP: ApiError and a From for every domain error
//! domain/         what the authority does, no axum; each module returns its own error enum
//! app/            the bottom: App, the Snapshot, the key/CA/trust-key rings, DB pools
//! config.rs metrics.rs tls.rs start_error.rs   ground
//! ```

mod admin_socket;
mod api;
mod app;
mod boot;
mod config;
mod domain;
mod error;
mod extract;
mod metrics;
mod router;
mod start_error;
mod tls;
mod trace;

pub use api::oauth::form::Form;
pub use app::keys::KekSource;
pub use boot::{start, Running};
pub use config::{CheckpointSink, ConfigFile, ServerConfig, TrustDomainConfig, WitnessConfig};
pub use error::ApiError;
pub use start_error::StartError;
