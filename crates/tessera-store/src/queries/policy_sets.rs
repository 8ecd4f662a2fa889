//! Policy set versions.

use crate::backend::with_read;
use crate::records::{PolicySetHead, PolicySetRecord};
use crate::{Result, Store};

/// The columns of a [`PolicySetRecord`].
pub(crate) const POLICY_SET_COLUMNS: &str =
    "version, status, grants, policies, created_at, actor, note";

impl Store {
    /// Policy set versions, newest first.
    pub async fn policy_sets(&self, limit: i64) -> Result<Vec<PolicySetRecord>> {
        let sql =
            format!("SELECT {POLICY_SET_COLUMNS} FROM policy_sets ORDER BY version DESC LIMIT $1");
        Ok(with_read!(self, |pool| {
            sqlx::query_as(&sql).bind(limit).fetch_all(pool).await?
        }))
    }

    /// Policy set versions, newest first, without their grants and policy files (a history
    /// is read without decoding every grant of every version).
    pub async fn policy_set_heads(&self, limit: i64) -> Result<Vec<PolicySetHead>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT version, status, created_at, actor, note FROM policy_sets ORDER BY version DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    /// One policy set version, whole.
    pub async fn policy_set_at(&self, version: i64) -> Result<Option<PolicySetRecord>> {
        let sql = format!("SELECT {POLICY_SET_COLUMNS} FROM policy_sets WHERE version = $1");
        Ok(with_read!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(version)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The highest policy set version recorded, whatever its status.
    pub async fn last_policy_set_version(&self) -> Result<i64> {
        Ok(with_read!(self, |pool| {
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM policy_sets")
                .fetch_one(pool)
                .await?
        }))
    }
}
