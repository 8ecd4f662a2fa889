//! Reading the audit trail.

use crate::audit::AuditRecord;
use crate::backend::with_read;
use crate::{Result, Store};

impl Store {
    /// The last `n` audit records, oldest first.
    pub async fn audit_tail(&self, n: i64) -> Result<Vec<AuditRecord>> {
        let mut rows: Vec<AuditRecord> = with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM audit ORDER BY seq DESC LIMIT $1")
                .bind(n)
                .fetch_all(pool)
                .await?
        });
        rows.reverse();
        Ok(rows)
    }

    /// Up to `limit` records with `seq > after`, in order.
    pub async fn audit_after(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The most recent record of `kind` about `subject`.
    pub async fn last_audit_for(&self, subject: &str, kind: &str) -> Result<Option<AuditRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT * FROM audit WHERE subject = $1 AND kind = $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(subject)
            .bind(kind)
            .fetch_optional(pool)
            .await?
        }))
    }
}

impl Store {
    /// How many records are keyed, and the last record's sequence number (0 for none).
    pub(crate) async fn audit_keyed_and_last(&self) -> Result<(i64, i64)> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM audit WHERE hash LIKE 'k1:%'), COALESCE((SELECT MAX(seq) FROM audit), 0)",
            )
            .fetch_one(pool)
            .await?
        }))
    }
}
