//! The schema: `migrations/*.sql`, embedded at build time and applied by sqlx's migrator, which
//! records each version with its checksum in `_sqlx_migrations` (an edited migration is refused,
//! not silently skipped). Databases made before kept the applied versions in
//! `schema_migrations`; they are bridged once.

use sqlx::migrate::{Migrate, Migrator};
use sqlx::Row;

use crate::backend::{with_write_tx, Db};
use crate::{Result, Store};

/// Every migration, in version order, from the crate's `migrations/` folder.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Brings the schema up to date, on either backend; several servers may race here.
    pub(crate) async fn migrate(&self) -> Result<()> {
        self.bridge_legacy_migrations().await?;
        match &*self.db {
            Db::Sqlite { write, .. } => MIGRATOR.run(write).await?,
            Db::Pg(pool) => MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    /// A database migrated by the hand-written runner before this one has `schema_migrations`
    /// and no `_sqlx_migrations`: record its applied versions as sqlx would have (same version,
    /// description and checksum), then drop the old table. Once, under the write lock.
    async fn bridge_legacy_migrations(&self) -> Result<()> {
        with_write_tx!(self, |tx, is_pg| {
            let tables = if is_pg {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            } else {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            };
            let exists = |n: i64| n > 0;
            let legacy: i64 = sqlx::query(tables)
                .bind("schema_migrations")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if exists(legacy) {
                let applied: Vec<i64> =
                    sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                        .fetch_all(&mut *tx)
                        .await?;
                tx.ensure_migrations_table().await?;
                for m in MIGRATOR.iter().filter(|m| applied.contains(&m.version)) {
                    sqlx::query(
                        "INSERT INTO _sqlx_migrations \
                         (version, description, success, checksum, execution_time) \
                         VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING",
                    )
                    .bind(m.version)
                    .bind(m.description.as_ref())
                    .bind(m.checksum.as_ref())
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("DROP TABLE schema_migrations")
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(
                    versions = applied.len(),
                    "schema versions moved to sqlx's migration table"
                );
            }
        });
        Ok(())
    }
}
