//! The HTTP features: handlers and each feature's `routes()`. A file here imports `extract`,
//! `error`, `domain/`, `app/` and the ground files, and never another feature (`oauth/` is one
//! feature in several files). `router.rs` mounts them.

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod changes;
pub(crate) mod console;
pub(crate) mod dbcreds;
pub(crate) mod discovery;
pub(crate) mod log;
pub(crate) mod oauth;
pub(crate) mod policy;
pub(crate) mod secrets;
