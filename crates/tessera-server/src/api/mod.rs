//! The HTTP features: handlers and each feature's `routes()`. A file here imports `extract`,
//! `error`, `domain/`, `app/` and the ground files, and never another feature (`oauth/` is one
//! feature in several files). `router.rs` mounts them.

pub mod admin;
pub mod agents;
pub mod dbcreds;
pub mod discovery;
pub mod oauth;
pub mod policy;
pub mod secrets;
