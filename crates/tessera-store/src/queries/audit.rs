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

/// What `audit_search` looks for; every part optional but the limit.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    /// Records at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Records before this time.
    pub until: Option<i64>,
    /// Records with a lower sequence number (the next page).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// What a reader of many records of one kind needs of each (no hashes, no credential).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditLine {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub subject: String,
    /// The detail as stored JSON text.
    pub detail: String,
}

/// Calls between two workloads as the decision records tell them: `caller` called `service`,
/// `allowed` times allowed and `denied` times denied, last at `last_at`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ObservedCall {
    pub caller: String,
    pub service: String,
    pub allowed: i64,
    pub denied: i64,
    pub last_at: i64,
}

impl Store {
    /// Records matching `f`, newest first. Each filter is an exact match on an indexed column
    /// (subject, actor, kind) or a range (time, sequence).
    pub async fn audit_search(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut sql = String::from("SELECT * FROM audit WHERE 1 = 1");
        let mut texts: Vec<&str> = Vec::new();
        let mut n = 0;
        for (column, value) in [
            ("subject", &f.subject),
            ("actor", &f.actor),
            ("kind", &f.kind),
        ] {
            if let Some(v) = value {
                n += 1;
                sql.push_str(&format!(" AND {column} = ${n}"));
                texts.push(v);
            }
        }
        let mut numbers: Vec<i64> = Vec::new();
        for (cond, value) in [
            ("at >=", f.since),
            ("at <", f.until),
            ("seq <", f.before_seq),
        ] {
            if let Some(v) = value {
                n += 1;
                sql.push_str(&format!(" AND {cond} ${n}"));
                numbers.push(v);
            }
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
        Ok(with_read!(self, |pool| {
            let mut q = sqlx::query_as(&sql);
            for t in &texts {
                q = q.bind(*t);
            }
            for v in &numbers {
                q = q.bind(*v);
            }
            q.bind(f.limit.clamp(1, 1000)).fetch_all(pool).await?
        }))
    }

    /// How many records of each of `kinds` are at or after `since`, in one query (each kind a
    /// range of the `(kind, at, seq)` index). Kinds with none are missing from the answer.
    pub async fn audit_counts_since(
        &self,
        kinds: &[&str],
        since: i64,
    ) -> Result<std::collections::HashMap<String, i64>> {
        if kinds.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let list: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT kind, COUNT(*) FROM audit WHERE kind IN ({}) AND at >= $1 GROUP BY kind",
            list.join(", ")
        );
        let rows: Vec<(String, i64)> = with_read!(self, |pool| {
            let mut q = sqlx::query_as(&sql).bind(since);
            for k in kinds {
                q = q.bind(*k);
            }
            q.fetch_all(pool).await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Calls reported in decision records since `since` in which `workload` is the caller or
    /// the service (two queries, each on its own index).
    pub async fn observed_calls(&self, workload: &str, since: i64) -> Result<Vec<ObservedCall>> {
        let mut out = self.observed_by("subject", &[workload], since).await?;
        out.extend(self.observed_by("actor", &[workload], since).await?);
        out.sort_by(|a, b| (&a.caller, &a.service).cmp(&(&b.caller, &b.service)));
        out.dedup_by(|a, b| a.caller == b.caller && a.service == b.service);
        Ok(out)
    }

    /// Calls reported since `since` by any of `callers` (at most 1,000 of them).
    pub async fn observed_calls_of(
        &self,
        callers: &[&str],
        since: i64,
    ) -> Result<Vec<ObservedCall>> {
        let mut out = Vec::new();
        for chunk in callers.chunks(1000) {
            out.extend(self.observed_by("subject", chunk, since).await?);
        }
        Ok(out)
    }

    /// Decision records grouped by (caller, service), where `column` (`subject`: the caller,
    /// `actor`: the service) is one of `ids`.
    async fn observed_by(
        &self,
        column: &str,
        ids: &[&str],
        since: i64,
    ) -> Result<Vec<ObservedCall>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let column = if column == "actor" {
            "actor"
        } else {
            "subject"
        };
        let list: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        // The kind is filtered by the CASEs and HAVING, not in WHERE: a condition on `kind` there
        // would tempt the planner onto the (kind, at) index, a scan of every call reported.
        let sql = format!(
            "SELECT subject AS caller, actor AS service, \
             SUM(CASE WHEN kind = 'call.allowed' THEN 1 ELSE 0 END) AS allowed, \
             SUM(CASE WHEN kind = 'call.denied' THEN 1 ELSE 0 END) AS denied, \
             COALESCE(MAX(CASE WHEN kind IN ('call.allowed', 'call.denied') THEN at END), 0) AS last_at \
             FROM audit WHERE {column} IN ({}) AND at >= $1 \
             GROUP BY subject, actor \
             HAVING SUM(CASE WHEN kind IN ('call.allowed', 'call.denied') THEN 1 ELSE 0 END) > 0",
            list.join(", ")
        );
        Ok(with_read!(self, |pool| {
            let mut q = sqlx::query_as(&sql).bind(since);
            for id in ids {
                q = q.bind(*id);
            }
            q.fetch_all(pool).await?
        }))
    }

    /// Up to `limit` records of `kind` after the position `after` (`(at, seq)`; start with
    /// `(since, 0)`), in time order: the advisor reads a window page by page, each page a range
    /// of the (kind, at, seq) index.
    pub async fn audit_kind_page(
        &self,
        kind: &str,
        after: (i64, i64),
        limit: i64,
    ) -> Result<Vec<AuditLine>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT seq, at, actor, subject, detail FROM audit WHERE kind = $1 AND (at > $2 OR (at = $2 AND seq > $3)) ORDER BY at, seq LIMIT $4",
            )
            .bind(kind)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}
