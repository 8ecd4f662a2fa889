//! The two backends behind one [`Store`]: embedded SQLite (one writer, readers under WAL) and
//! PostgreSQL (shared by several servers, writes serialized by an advisory lock so the audit
//! chain stays one chain), and the one write path, [`Store::commit`].

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::audit::{AuditEvent, AuditRecord, GENESIS};
use crate::op::{apply_op, Op};
use crate::records::{AssertionClaim, BatchItem, BatchResult};
use crate::secret_cache::SecretCache;
use crate::{Result, StoreError};

pub(crate) enum Db {
    /// SQLite allows one writer; a one-connection write pool serializes our writes in-process
    /// instead of meeting `SQLITE_BUSY`, and readers use their own pool under WAL.
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
    },
    Pg(PgPool),
}

/// The handle to the authority's storage. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: std::sync::Arc<Db>,
    /// Set once by the server; records are keyed from then on.
    pub(crate) audit_key: std::sync::Arc<std::sync::OnceLock<crate::audit::AuditKey>>,
    /// The vault's read path in memory (`secret_cache.rs`).
    pub(crate) secrets: std::sync::Arc<SecretCache>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// The PostgreSQL notification channel on which every commit that changes state is announced.
pub(crate) const CHANGES_CHANNEL: &str = "tessera_changes";
/// The channel on which every commit that changes a vault secret is announced.
pub(crate) const SECRETS_CHANNEL: &str = "tessera_secrets";

/// Commits by other servers on the same PostgreSQL database, as they happen. While it is
/// connected, this server's vault reads may be served from memory; a notice of a secret change
/// clears them as it arrives (and is not returned).
#[derive(Debug)]
pub struct ChangeListener {
    inner: sqlx::postgres::PgListener,
    secrets: std::sync::Arc<SecretCache>,
    /// Whether the cache was told this listener is gone (once, by an error or the drop).
    lost: bool,
}

impl ChangeListener {
    /// Waits for the next commit that changed state: its time (milliseconds since the epoch, by
    /// the committing server's clock) when the payload says it. An error means the connection
    /// was lost; notifications sent meanwhile are lost too, so the caller reloads anyway (and
    /// the vault reads from the database until a new listener connects).
    pub async fn recv(&mut self) -> Result<Option<i64>> {
        loop {
            let n = match self.inner.recv().await {
                Ok(n) => n,
                Err(e) => {
                    self.lose();
                    return Err(e.into());
                }
            };
            if n.channel() == SECRETS_CHANNEL {
                self.secrets.clear();
                continue;
            }
            return Ok(n.payload().parse::<i64>().ok());
        }
    }

    fn lose(&mut self) {
        if !self.lost {
            self.lost = true;
            self.secrets.listener_lost();
        }
    }
}

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.lose();
    }
}

/// Held during every write transaction on PostgreSQL, so that the audit chain of several servers
/// on one database stays a single chain.
pub(crate) const PG_WRITE_LOCK: i64 = 0x0074_6573_7365_7261;

macro_rules! with_write_tx {
    ($self:ident, |$tx:ident, $is_pg:ident| $body:block) => {
        match &*$self.db {
            $crate::backend::Db::Sqlite { write, .. } => {
                let mut $tx = write.begin().await?;
                let $is_pg = false;
                // Not every body asks which backend it runs on.
                let _ = $is_pg;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::backend::Db::Pg(pool) => {
                let mut $tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind($crate::backend::PG_WRITE_LOCK)
                    .execute(&mut *$tx)
                    .await?;
                let $is_pg = true;
                let _ = $is_pg;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}

macro_rules! with_read {
    ($self:ident, |$pool:ident| $body:expr) => {
        match &*$self.db {
            $crate::backend::Db::Sqlite { read: $pool, .. } => $body,
            $crate::backend::Db::Pg($pool) => $body,
        }
    };
}
pub(crate) use {with_read, with_write_tx};

impl Store {
    /// Opens (creating if needed) the embedded database at `path`: WAL, `synchronous=FULL`, so
    /// that anything acknowledged survives a crash or power loss.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // No ping before each acquire: the connection is local and errors surface on use.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        restrict_permissions(path)?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts.read_only(true))
            .await?;
        let store = Self {
            db: std::sync::Arc::new(Db::Sqlite { read, write }),
            audit_key: std::sync::Arc::default(),
            secrets: std::sync::Arc::new(SecretCache::new(false)),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to PostgreSQL. Several servers may share one database.
    pub async fn open_postgres(url: &str) -> Result<Self> {
        let opts = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let store = Self {
            db: std::sync::Arc::new(Db::Pg(pool)),
            audit_key: std::sync::Arc::default(),
            secrets: std::sync::Arc::new(SecretCache::new(true)),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Listens for other servers' commits (PostgreSQL); `None` on SQLite, where this process is
    /// the only writer.
    pub async fn listen_changes(&self) -> Result<Option<ChangeListener>> {
        match &*self.db {
            Db::Sqlite { .. } => Ok(None),
            Db::Pg(pool) => {
                let mut inner = sqlx::postgres::PgListener::connect_with(pool).await?;
                inner.listen_all([CHANGES_CHANNEL, SECRETS_CHANNEL]).await?;
                self.secrets.listener_connected();
                Ok(Some(ChangeListener {
                    inner,
                    secrets: self.secrets.clone(),
                    lost: false,
                }))
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match &*self.db {
            Db::Sqlite { .. } => "sqlite",
            Db::Pg(_) => "postgres",
        }
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<()> {
        with_read!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Applies `ops` and appends `events` to the audit chain, atomically.
    pub async fn commit(&self, ops: &[Op], events: &[AuditEvent]) -> Result<Vec<AuditRecord>> {
        let items: Vec<BatchItem> = events
            .iter()
            .map(|e| BatchItem {
                claim: None,
                event: Some(e.clone()),
            })
            .collect();
        let results = self.commit_batch(ops, &items).await?;
        Ok(results.into_iter().filter_map(|r| r.record).collect())
    }

    /// [`Store::commit`] for a batch of hot-path items: each may claim a client-assertion `jti`
    /// (single use) and carry an audit event, which is written only when its claim was fresh.
    /// One transaction for the whole batch, so concurrent requests share one durable commit.
    pub async fn commit_batch(&self, ops: &[Op], items: &[BatchItem]) -> Result<Vec<BatchResult>> {
        let now = tessera_core::now_unix();
        let bump = ops.iter().any(Op::changes_state);
        let secrets = ops.iter().any(Op::changes_secret);
        // A jti that appears twice in one batch: only its first occurrence may be fresh.
        let mut first = std::collections::HashSet::new();
        let mut fresh: Vec<bool> = items
            .iter()
            .map(|i| {
                i.claim
                    .as_ref()
                    .is_none_or(|c| first.insert((c.client_id.as_str(), c.jti.as_str())))
            })
            .collect();
        let to_claim: Vec<&AssertionClaim> = items
            .iter()
            .zip(&fresh)
            .filter_map(|(i, f)| i.claim.as_ref().filter(|_| *f))
            .collect();
        let results = with_write_tx!(self, |tx, is_pg| {
            for op in ops {
                apply_op!(tx, op, now);
            }
            let mut inserted = std::collections::HashSet::new();
            for chunk in to_claim.chunks(500) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO used_assertions (client_id, jti, expires_at) ",
                );
                qb.push_values(chunk, |mut b, c| {
                    b.push_bind(c.client_id.as_str())
                        .push_bind(c.jti.as_str())
                        .push_bind(c.expires_at);
                });
                qb.push(" ON CONFLICT (client_id, jti) DO NOTHING RETURNING client_id, jti");
                for row in qb.build().fetch_all(&mut *tx).await? {
                    inserted.insert((
                        row.try_get::<String, _>("client_id")?,
                        row.try_get::<String, _>("jti")?,
                    ));
                }
            }
            for (item, f) in items.iter().zip(fresh.iter_mut()) {
                if let Some(c) = &item.claim {
                    *f = *f && inserted.contains(&(c.client_id.clone(), c.jti.clone()));
                }
            }
            let events: Vec<&AuditEvent> = items
                .iter()
                .zip(&fresh)
                .filter_map(|(i, f)| i.event.as_ref().filter(|_| *f))
                .collect();
            if bump {
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('state_version', '1') ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)",
                )
                .execute(&mut *tx)
                .await?;
                if is_pg {
                    // Delivered at commit, to every server listening on this database: they
                    // reload at once instead of at their next poll. The payload is the commit
                    // time in milliseconds, for the propagation SLI.
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANGES_CHANNEL)
                        .bind(tessera_core::now_unix_ms().to_string())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if secrets && is_pg {
                // Every server's vault cache is cleared at commit (`secret_cache.rs`).
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(SECRETS_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut records = Vec::with_capacity(events.len());
            if !events.is_empty() {
                let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
                let (mut seq, mut prev) = match head {
                    Some(r) => (r.try_get::<i64, _>("seq")?, r.try_get::<String, _>("hash")?),
                    None => (0, GENESIS.to_owned()),
                };
                for event in events {
                    seq += 1;
                    let record = AuditRecord::chain(seq, now, event, &prev, self.audit_key())?;
                    prev = record.hash.clone();
                    records.push(record);
                }
                for chunk in records.chunks(400) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO audit (seq, at, kind, actor, subject, outcome, detail, prev_hash, hash, credential) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.seq)
                            .push_bind(r.at)
                            .push_bind(r.kind.clone())
                            .push_bind(r.actor.clone())
                            .push_bind(r.subject.clone())
                            .push_bind(r.outcome.clone())
                            .push_bind(r.detail.clone())
                            .push_bind(r.prev_hash.clone())
                            .push_bind(r.hash.clone())
                            .push_bind(r.credential.clone());
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                // The head, kept apart from the chain, reveals records cut from the end.
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('audit_head', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(format!("{seq} {prev}"))
                .execute(&mut *tx)
                .await?;
            }
            // Hand each record to the item that carried its event.
            let mut records = records.into_iter();
            items
                .iter()
                .zip(&fresh)
                .map(|(i, f)| BatchResult {
                    fresh: *f,
                    record: if *f && i.event.is_some() {
                        records.next()
                    } else {
                        None
                    },
                })
                .collect::<Vec<_>>()
        });
        if secrets {
            // After the commit: a read that fetched the old state before it cannot keep it.
            self.secrets.clear();
        }
        Ok(results)
    }

    /// Runs SQL directly; for tests that tamper with the audit table on purpose.
    #[cfg(test)]
    pub(crate) async fn danger_execute_raw(&self, sql: &str) -> Result<u64> {
        let n = with_write_tx!(self, |tx, is_pg| {
            sqlx::raw_sql(sql).execute(&mut *tx).await?.rows_affected()
        });
        Ok(n)
    }
}

fn restrict_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        StoreError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    })
}
