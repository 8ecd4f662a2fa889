//! One file per command family. A file here imports the bottom floor (`cli`, `render`,
//! `admin_client`, `workload_client`, `support`) and never another `cmd/` file.

pub mod agent;
pub mod authority;
pub mod db;
pub mod dev;
pub mod exec;
pub mod policy;
pub mod proxy;
pub mod secret;
