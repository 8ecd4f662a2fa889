//! The store's reads, one file per concern. Each is an `impl Store` block over both backends.

mod agents;
pub(crate) mod audit;
mod keys;
mod leases;
pub(crate) mod policy_sets;
mod secrets;
mod state;
