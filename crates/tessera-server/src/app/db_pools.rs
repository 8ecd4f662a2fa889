//! Admin connection pools to the databases of dynamic credentials, by connection name.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::PgPool;

/// Admin pools to the declared databases, by connection name; made anew when the URL, the admin
/// user or the password's version changes.
#[derive(Default)]
pub(crate) struct Pools {
    pub(crate) pools: tokio::sync::Mutex<HashMap<String, (PoolKey, PgPool)>>,
    /// One role change at a time per database: concurrent GRANTs on one table fail in
    /// PostgreSQL ("tuple concurrently updated"), and its catalog serializes them anyway.
    serial: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pools {
    pub(crate) fn serial(&self, connection: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = match self.serial.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.entry(connection.to_owned()).or_default().clone()
    }
}

#[derive(PartialEq, Eq)]
pub(crate) struct PoolKey {
    pub(crate) url: String,
    pub(crate) user: String,
    pub(crate) version: i64,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools(..)")
    }
}
