//! Dynamic database credentials: connections, role templates and leases.

use crate::backend::with_read;
use crate::records::{DbConnectionRecord, DbRoleRecord, LeaseFilter, LeaseRecord};
use crate::{Result, Store};

impl Store {
    pub async fn db_connection(&self, name: &str) -> Result<Option<DbConnectionRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM db_connections WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }

    pub async fn db_role(&self, name: &str) -> Result<Option<DbRoleRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM db_roles WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Leases: one by `id`, those of a `workload`, every lease not yet revoked, or those due
    /// (revoking, or active and past their end at that time).
    pub async fn leases(&self, filter: LeaseFilter<'_>) -> Result<Vec<LeaseRecord>> {
        let (sql, a, b): (&str, String, i64) = match filter {
            LeaseFilter::Id(id) => ("SELECT * FROM db_leases WHERE id = $1 AND $2 = $2", id.to_owned(), 0),
            LeaseFilter::Workload(w) => (
                "SELECT * FROM db_leases WHERE workload = $1 AND state <> 'revoked' AND $2 = $2 ORDER BY created_at",
                w.to_owned(),
                0,
            ),
            LeaseFilter::Open => (
                "SELECT * FROM db_leases WHERE state <> 'revoked' AND $1 = $1 AND $2 = $2 ORDER BY created_at",
                String::new(),
                0,
            ),
            LeaseFilter::Due(now) => (
                "SELECT * FROM db_leases WHERE (state = 'revoking' OR (state = 'active' AND expires_at <= $2)) AND $1 = $1 ORDER BY expires_at LIMIT 500",
                String::new(),
                now,
            ),
        };
        Ok(with_read!(self, |pool| {
            sqlx::query_as(sql).bind(a).bind(b).fetch_all(pool).await?
        }))
    }
}
