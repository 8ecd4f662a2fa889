//! Node agents' join tokens and the X.509-SVIDs issued through agents.

use crate::backend::with_read;
use crate::records::{JoinTokenRecord, SvidRecord};
use crate::{Result, Store};

impl Store {
    /// The join token stored under `token_hash`, used or not.
    pub async fn join_token(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT token_hash, trust_domain, agent_id, created_at, expires_at FROM join_tokens WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// The most recent X.509-SVIDs issued to `spiffe_id`, newest first.
    pub async fn svids_for(&self, spiffe_id: &str, limit: i64) -> Result<Vec<SvidRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT serial, spiffe_id, agent_id, issued_at, not_after FROM x509_svids WHERE spiffe_id = $1 ORDER BY issued_at DESC, serial LIMIT $2",
            )
            .bind(spiffe_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}

impl Store {
    /// Each workload whose newest X.509-SVID ends in `[from, until)` and is past half its life:
    /// its renewal (due at half-life) is late. `(spiffe_id, issued_at, not_after)`.
    pub async fn svids_ending(&self, from: i64, until: i64) -> Result<Vec<(String, i64, i64)>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT s.spiffe_id, s.issued_at, s.not_after FROM x509_svids s \
                 JOIN (SELECT spiffe_id, MAX(not_after) AS ends FROM x509_svids GROUP BY spiffe_id) n \
                 ON s.spiffe_id = n.spiffe_id AND s.not_after = n.ends \
                 WHERE n.ends >= $1 AND n.ends < $2 AND s.issued_at + (s.not_after - s.issued_at) / 2 < $1 \
                 ORDER BY s.not_after LIMIT 1000",
            )
            .bind(from)
            .bind(until)
            .fetch_all(pool)
            .await?
        }))
    }
}
