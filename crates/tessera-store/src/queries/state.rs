//! The configuration state every server loads whole, its version, revocations, and the sweep
//! of what has expired.

use tessera_core::manifest::{Client, Cluster, Federation, Grant, PolicyFile, Trust};

use crate::backend::{with_read, with_write_tx};
use crate::queries::policy_sets::POLICY_SET_COLUMNS;
use crate::records::{ClientRecord, ClientSecretRecord, JsonText, StoredState};
use crate::{Result, Store};

/// A `clients` row: the spec, and the secret's three columns (all NULL without one).
#[derive(sqlx::FromRow)]
struct ClientRow {
    spec: JsonText<Client>,
    secret_hash: Option<String>,
    secret_created_at: Option<i64>,
    secret_expires_at: Option<i64>,
}

impl From<ClientRow> for ClientRecord {
    fn from(r: ClientRow) -> Self {
        Self {
            spec: r.spec.0,
            secret: r.secret_hash.map(|hash| ClientSecretRecord {
                hash,
                created_at: r.secret_created_at.unwrap_or(0),
                expires_at: r.secret_expires_at,
            }),
        }
    }
}

impl Store {
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Bumped by every state change; servers poll it to learn that another server changed state.
    pub async fn state_version(&self) -> Result<i64> {
        Ok(self
            .meta("state_version")
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub async fn load_state(&self) -> Result<StoredState> {
        let mut state = StoredState::default();
        with_read!(self, |pool| {
            state.workloads = sqlx::query_as("SELECT spec, revoked_at FROM workloads ORDER BY id")
                .fetch_all(pool)
                .await?;
            state.grants = sqlx::query_scalar("SELECT spec FROM grants ORDER BY from_id, to_id")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|j: JsonText<Grant>| j.0)
                .collect();
            state.clients = sqlx::query_as::<_, ClientRow>(
                "SELECT spec, secret_hash, secret_created_at, secret_expires_at FROM clients ORDER BY id",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(ClientRecord::from)
            .collect();
            state.trusts = sqlx::query_scalar("SELECT spec FROM trusts ORDER BY name")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|j: JsonText<Trust>| j.0)
                .collect();
            state.federations =
                sqlx::query_scalar("SELECT spec FROM federations ORDER BY trust_domain")
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|j: JsonText<Federation>| j.0)
                    .collect();
            state.clusters = sqlx::query_scalar("SELECT spec FROM clusters ORDER BY name")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|j: JsonText<Cluster>| j.0)
                .collect();
            state.federated_bundles = sqlx::query_as(
                "SELECT trust_domain, bundle, sequence, fetched_at FROM federated_bundles ORDER BY trust_domain",
            )
            .fetch_all(pool)
            .await?;
            state.policies = sqlx::query_as("SELECT name, body FROM policy_files ORDER BY name")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(name, text): (String, String)| PolicyFile { name, text })
                .collect();
            state.agents = sqlx::query_as(
                "SELECT id, trust_domain, joined_at, svid_serial, svid_not_after, last_seen, revoked_at, selectors FROM agents ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            let shadow = format!(
                "SELECT {POLICY_SET_COLUMNS} FROM policy_sets WHERE status = 'shadow' ORDER BY version DESC LIMIT 1"
            );
            state.shadow = sqlx::query_as(&shadow).fetch_optional(pool).await?;
            state.policy_version = sqlx::query_scalar(
                "SELECT COALESCE(MAX(version), 0) FROM policy_sets WHERE status = 'active'",
            )
            .fetch_one(pool)
            .await?;
        });
        Ok(state)
    }

    /// Revoked token IDs that have not expired yet, with their expiry.
    pub async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>> {
        Ok(with_read!(self, |pool| {
            sqlx::query_as(
                "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1 ORDER BY jti",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Deletes replay records and revocations whose tokens have expired.
    pub async fn sweep(&self, now: i64) -> Result<()> {
        with_write_tx!(self, |tx, is_pg| {
            sqlx::query("DELETE FROM used_assertions WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            // Join tokens are kept a day past expiry, so a late attempt is told "expired".
            sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
                .bind(now - 86400)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }
}
