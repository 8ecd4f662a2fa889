//! The vault: secrets' metadata and their sealed versions.

use sqlx::{FromRow, Row};

use crate::backend::with_read;
use crate::records::{SecretRecord, SecretVersionRecord};
use crate::{Result, Store};

impl Store {
    /// A secret's metadata, deleted or not.
    pub async fn secret(&self, name: &str) -> Result<Option<SecretRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// A secret's metadata and one of its versions (the current one when `version` is `None`) in
    /// one round trip: the vault's read path.
    ///
    /// Served from memory when it can be (`secret_cache.rs`): cleared by every secret change
    /// on this server and, on PostgreSQL, by every other server's, as its notice arrives.
    pub async fn secret_with_version(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<(SecretRecord, Option<SecretVersionRecord>)>> {
        if let Some(kept) = self.secrets.get(name, version) {
            return Ok(kept.as_ref().clone());
        }
        let generation = self.secrets.generation();
        let found = self.secret_with_version_stored(name, version).await?;
        self.secrets.fill(generation, name, version, &found);
        Ok(found)
    }

    /// [`Store::secret_with_version`] from the database itself.
    async fn secret_with_version_stored(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<(SecretRecord, Option<SecretVersionRecord>)>> {
        // The version's columns are renamed (`v_*`) beside the secret's; read by hand below.
        const SQL: &str = "SELECT s.*, v.version AS v_version, v.ciphertext AS v_ciphertext, \
            v.wrapped_key AS v_wrapped_key, v.created_at AS v_created_at, \
            v.created_by AS v_created_by, v.enabled AS v_enabled, v.not_before AS v_not_before, \
            v.expires_at AS v_expires_at \
            FROM secrets s LEFT JOIN secret_versions v \
            ON v.name = s.name AND v.version = COALESCE($2, s.current_version) \
            WHERE s.name = $1";
        Ok(with_read!(self, |pool| {
            match sqlx::query(SQL)
                .bind(name)
                .bind(version)
                .fetch_optional(pool)
                .await?
            {
                None => None,
                Some(r) => {
                    let secret = SecretRecord::from_row(&r)?;
                    let v = match r.try_get::<Option<i64>, _>("v_version")? {
                        None => None,
                        Some(version) => Some(SecretVersionRecord {
                            name: secret.name.clone(),
                            version,
                            ciphertext: r.try_get("v_ciphertext")?,
                            wrapped_key: r.try_get("v_wrapped_key")?,
                            created_at: r.try_get("v_created_at")?,
                            created_by: r.try_get("v_created_by")?,
                            enabled: r.try_get("v_enabled")?,
                            not_before: r.try_get("v_not_before")?,
                            expires_at: r.try_get("v_expires_at")?,
                        }),
                    };
                    Some((secret, v))
                }
            }
        }))
    }

    /// Every secret's metadata, in name order; deleted ones only when asked.
    pub async fn secrets(&self, include_deleted: bool) -> Result<Vec<SecretRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM secrets WHERE $1 OR deleted_at IS NULL ORDER BY name")
                .bind(include_deleted)
                .fetch_all(pool)
                .await?
        }))
    }

    /// One version with its sealed value.
    pub async fn secret_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<SecretVersionRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM secret_versions WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// A secret's versions, newest first.
    pub async fn secret_versions(&self, name: &str) -> Result<Vec<SecretVersionRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as("SELECT * FROM secret_versions WHERE name = $1 ORDER BY version DESC")
                .bind(name)
                .fetch_all(pool)
                .await?
        }))
    }
}
