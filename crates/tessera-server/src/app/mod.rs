//! The bottom floor: the process's state and what it is built from. `App` (config, storage, the
//! current `Snapshot`), the key, CA and trust-key rings, the database pools. Imports only the
//! ground files (`config`, `error`, `metrics`) and other crates; never `domain/`, `api/`, the
//! router or boot.

#[expect(
    clippy::module_inception,
    reason = "`app::app` holds `App`, as the floor plan in lib.rs names it"
)]
pub(crate) mod app;
pub(crate) mod ca;
pub(crate) mod changes;
pub(crate) mod console;
pub(crate) mod custody;
pub(crate) mod db_pools;
pub(crate) mod failures;
pub(crate) mod federated;
pub(crate) mod keys;
pub(crate) mod log;
pub(crate) mod snapshot;
pub(crate) mod status_lists;
pub(crate) mod trust_keys;

pub(crate) use app::{authority_id, App, Issuer, NotServed};
pub(crate) use snapshot::Snapshot;
