//! Policy set versions.

use crate::backend::{with_read, Db};
use crate::records::{PolicySetCounts, PolicySetRecord};
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

    /// Policy set versions, newest first, with how many grants and policy files each holds
    /// (counted by the database's JSON functions: a history is read without decoding every
    /// grant of every version).
    pub async fn policy_set_summaries(&self, limit: i64) -> Result<Vec<PolicySetCounts>> {
        const COLUMNS: &str = "version, status, created_at, actor, note";
        Ok(match &*self.db {
            Db::Sqlite { read, .. } => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS}, json_array_length(grants) AS grants, json_array_length(policies) AS policies \
                     FROM policy_sets ORDER BY version DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(read)
                .await?
            }
            Db::Pg(pool) => {
                sqlx::query_as(&format!(
                    "SELECT {COLUMNS}, json_array_length(grants::json)::BIGINT AS grants, \
                     json_array_length(policies::json)::BIGINT AS policies \
                     FROM policy_sets ORDER BY version DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        })
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
