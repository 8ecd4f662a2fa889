//! Identity as code: the TOML files that `tessera apply -f` reads (see `examples/mesh.toml`).
//!
//! Loading happens where the files are (the CLI): every field is parsed into its newtype, unknown
//! fields are refused, and each error names the file, line and column. The result is a
//! [`DesiredState`] whose items carry their `source` (`file:line`), so the server can name the
//! place when a check needs the whole stored state (a grant to a workload that does not exist).
//!
//! Files: `values.rs` (each value's newtype and parser), `doc.rs` (the TOML shape), `model.rs`
//! (the desired state), `load.rs` (files to model, with positions).

use std::time::Duration;

mod doc;
mod load;
mod model;
mod values;

pub use load::{load, parse_str};
pub use model::{
    BundleProfile, Client, Cluster, DesiredState, Federation, Grant, JitScope, PolicyFile, Route,
    ServiceAccount, TokenReview, Trust, TrustMap, Workload,
};
pub use values::{
    ClientAuth, Date, Hours, Rate, Selector, SelectorKind, Ttl, ValueError, WorkloadKind,
};

/// Default and maximum lifetimes of the credentials a workload receives.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

pub const MAX_JWT_TTL: Duration = Duration::from_secs(3600);

pub const MIN_TTL: Duration = Duration::from_secs(10);

pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);

pub const MAX_X509_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}
