//! One file per command family. A file here imports the bottom floor (`cli`, `render`,
//! `admin_client`, `workload_client`, `support`) and never another `cmd/` file.

pub(crate) mod agent;
pub(crate) mod audit;
pub(crate) mod authority;
pub(crate) mod console;
pub(crate) mod db;
pub(crate) mod dev;
pub(crate) mod doctor;
pub(crate) mod exec;
pub(crate) mod policy;
pub(crate) mod proxy;
pub(crate) mod secret;
