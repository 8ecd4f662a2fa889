//! Storage for the Tessera authority: one interface, two backends (embedded SQLite, PostgreSQL)
//! that run the same SQL and pass the same tests.
//!
//! Every mutation goes through [`Store::commit`], which applies a list of [`Op`]s and appends
//! their audit records in one transaction: a change is never stored without its record, and a
//! record never claims a change that was rolled back. The audit trail is a hash chain (each record
//! commits to the previous one), so [`verify_chain`] finds a changed, removed or reordered record.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tessera_core::manifest::{Client, Grant, PolicyFile, Trust, Workload};

mod audit;
pub use audit::{
    verify_chain, AuditEvent, AuditLog, AuditMetrics, AuditRecord, ChainError, VerifyAuditError,
    GENESIS,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("the audit log is not accepting records: {0}")]
    AuditUnavailable(String),
    /// A conditional change found its precondition false (a used join token, say).
    #[error("{0}")]
    Conflict(String),
    #[error("cannot prepare the database file `{path}`: {message}")]
    File { path: String, message: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

enum Db {
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
    db: std::sync::Arc<Db>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// A signing key as stored: the private part sealed under the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub kid: String,
    pub trust_domain: String,
    pub alg: String,
    /// base64 of the sealed PKCS#8 document.
    pub sealed: String,
    pub public_jwk: String,
    pub created_at: i64,
    /// The key signs from this time on (it is published before, so verifiers know it first).
    pub activate_at: i64,
    /// The key is withdrawn from the JWKS after this time (every token it signed has expired).
    pub retire_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub spec: Workload,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSecretRecord {
    /// base64 of HMAC-SHA-256(server key, secret).
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub spec: Client,
    pub secret: Option<ClientSecretRecord>,
}

/// A CA of a trust domain as stored: the private key sealed under the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    pub id: String,
    pub trust_domain: String,
    /// base64 of the sealed PKCS#8 document.
    pub sealed: String,
    /// base64 of the certificate (DER).
    pub cert: String,
    pub created_at: i64,
    /// The CA signs from this time on; it is in the bundle from creation ("prepared").
    pub activate_at: i64,
    /// Withdrawn from the bundle after this time (every SVID it signed has expired).
    pub retire_at: Option<i64>,
    pub not_after: i64,
}

/// A one-time join token for a node agent, stored only as a keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub token_hash: String,
    pub trust_domain: String,
    pub agent_id: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub trust_domain: String,
    pub joined_at: i64,
    pub svid_serial: String,
    pub svid_not_after: i64,
    pub last_seen: i64,
    pub revoked_at: Option<i64>,
}

/// One version of the policy set (grants and policy files), as applied or loaded in shadow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySetRecord {
    pub version: i64,
    /// `active`, `shadow`, `superseded`, `promoted` or `discarded`.
    pub status: String,
    pub grants: Vec<Grant>,
    pub policies: Vec<PolicyFile>,
    pub created_at: i64,
    pub actor: String,
    pub note: String,
}

/// One X.509-SVID as issued, for review: who got it, through which agent, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidRecord {
    pub serial: String,
    pub spiffe_id: String,
    pub agent_id: String,
    pub issued_at: i64,
    pub not_after: i64,
}

/// A vault secret's metadata. Its values are in [`SecretVersionRecord`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub owner: String,
    pub purpose: String,
    pub content_type: String,
    pub environment: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Seconds between expected rotations, if any.
    pub rotation_period: Option<i64>,
    /// The newest version; 0 before the first.
    pub current_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub purge_after: Option<i64>,
}

/// One immutable version of a secret: the value sealed (never in the clear) and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersionRecord {
    pub name: String,
    pub version: i64,
    #[serde(skip_serializing)]
    pub ciphertext: String,
    #[serde(skip_serializing)]
    pub wrapped_key: String,
    pub created_at: i64,
    pub created_by: String,
    pub enabled: bool,
    pub not_before: Option<i64>,
    pub expires_at: Option<i64>,
}

/// A PostgreSQL database Tessera makes roles in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbConnectionRecord {
    pub name: String,
    pub url: String,
    pub admin_user: String,
    pub password_secret: String,
    pub created_at: i64,
}

/// A role template of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRoleRecord {
    pub name: String,
    pub connection: String,
    pub creation: Vec<String>,
    pub revocation: Vec<String>,
    pub default_ttl: i64,
    pub max_ttl: i64,
    pub created_at: i64,
}

/// One set of dynamic credentials: a role made for a workload until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: String,
    pub role: String,
    pub connection: String,
    pub username: String,
    pub workload: String,
    pub revocation: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_expires_at: i64,
    /// `active`, `revoking` (asked to end, or past its end, and not yet dropped) or `revoked`.
    pub state: String,
    pub revoked_at: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// The configuration state, loaded whole into memory by each server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    pub workloads: Vec<WorkloadRecord>,
    pub grants: Vec<Grant>,
    pub clients: Vec<ClientRecord>,
    pub trusts: Vec<Trust>,
    pub policies: Vec<PolicyFile>,
    pub agents: Vec<AgentRecord>,
    /// The policy set loaded in shadow, if any.
    pub shadow: Option<PolicySetRecord>,
    /// The version of the active policy set; 0 before the first recorded change.
    pub policy_version: i64,
}

/// A client assertion's `jti`, recorded until the assertion expires so it is used only once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaim {
    pub client_id: String,
    pub jti: String,
    pub expires_at: i64,
}

/// One hot-path request's writes: an optional `jti` claim and an optional audit event.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub claim: Option<AssertionClaim>,
    pub event: Option<AuditEvent>,
}

/// What a [`BatchItem`] got: `fresh` is false for a replayed claim (its event was not written).
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub fresh: bool,
    pub record: Option<AuditRecord>,
}

/// Which leases [`Store::leases`] returns.
#[derive(Debug, Clone, Copy)]
pub enum LeaseFilter<'a> {
    Id(&'a str),
    Workload(&'a str),
    Open,
    /// Revoking, or active and past their end at this time.
    Due(i64),
}

/// One mutation. Applied only through [`Store::commit`], together with audit records.
#[derive(Debug, Clone)]
pub enum Op {
    UpsertWorkload(Workload),
    DeleteWorkload(String),
    UpsertGrant(Grant),
    DeleteGrant {
        from: String,
        to: String,
    },
    UpsertClient(Client),
    DeleteClient(String),
    UpsertTrust(Trust),
    DeleteTrust(String),
    UpsertPolicy(PolicyFile),
    DeletePolicy(String),
    SetClientSecret {
        client: String,
        secret: ClientSecretRecord,
    },
    RevokeWorkload {
        id: String,
        at: i64,
    },
    RevokeToken {
        jti: String,
        expires_at: i64,
        at: i64,
    },
    InsertKey(KeyRecord),
    RetireKey {
        kid: String,
        retire_at: i64,
    },
    DeleteKey(String),
    SetMeta {
        key: String,
        value: String,
    },
    /// Sets a meta value only if none is stored (first start of the first server wins).
    InitMeta {
        key: String,
        value: String,
    },
    InsertCa(CaRecord),
    RetireCa {
        id: String,
        retire_at: i64,
    },
    InsertJoinToken(JoinTokenRecord),
    /// Marks a join token used; fails with [`StoreError::Conflict`] unless it exists, is unused
    /// and unexpired at `at`, so that two agents racing with one token cannot both join.
    RedeemJoinToken {
        token_hash: String,
        at: i64,
    },
    InsertAgent(AgentRecord),
    /// A renewed agent SVID. Fails with [`StoreError::Conflict`] for a revoked agent.
    RenewAgent {
        id: String,
        svid_serial: String,
        svid_not_after: i64,
        at: i64,
    },
    RevokeAgent {
        id: String,
        at: i64,
    },
    RecordSvids(Vec<SvidRecord>),
    /// A new policy set version. Fails with [`StoreError::Conflict`] if the version exists
    /// (two servers recording at once: the second retries from fresh state).
    RecordPolicySet(PolicySetRecord),
    SetPolicySetStatus {
        version: i64,
        status: String,
    },
    /// Creates a secret's metadata (with no version yet), or changes it; never its versions.
    UpsertSecret(SecretRecord),
    /// Adds version `record.version`, which must follow the current one of a secret that is not
    /// deleted: else [`StoreError::Conflict`] (two writers at once: one of them retries).
    InsertSecretVersion(SecretVersionRecord),
    SetSecretVersion {
        name: String,
        version: i64,
        enabled: bool,
    },
    /// Soft delete: nobody reads it; restorable until `purge_after`.
    DeleteSecret {
        name: String,
        at: i64,
        purge_after: i64,
    },
    RestoreSecret(String),
    /// Removes a deleted secret and every version for good. Conflict unless it was deleted.
    PurgeSecret(String),
    UpsertDbConnection(DbConnectionRecord),
    UpsertDbRole(DbRoleRecord),
    InsertLease(LeaseRecord),
    /// Extends an active lease; Conflict unless it is active.
    RenewLease {
        id: String,
        expires_at: i64,
    },
    /// Asks for a lease's end (active -> revoking); Conflict if it is already revoked.
    EndLease(String),
    /// Records a revocation attempt: done (`revoked_at`), or failed with `error`.
    LeaseRevocation {
        id: String,
        revoked_at: Option<i64>,
        error: Option<String>,
    },
}

impl Op {
    /// Whether servers must reload their in-memory state after this change.
    fn changes_state(&self) -> bool {
        !matches!(
            self,
            Op::SetMeta { .. }
                | Op::InitMeta { .. }
                | Op::InsertJoinToken(_)
                | Op::RedeemJoinToken { .. }
                | Op::RenewAgent { .. }
                | Op::RecordSvids(_)
                | Op::UpsertSecret(_)
                | Op::InsertSecretVersion(_)
                | Op::SetSecretVersion { .. }
                | Op::DeleteSecret { .. }
                | Op::RestoreSecret(_)
                | Op::PurgeSecret(_)
                | Op::UpsertDbConnection(_)
                | Op::UpsertDbRole(_)
                | Op::InsertLease(_)
                | Op::RenewLease { .. }
                | Op::EndLease(_)
                | Op::LeaseRevocation { .. }
        )
    }
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_identity.sql")),
    (3, include_str!("../migrations/0003_policy_sets.sql")),
    (4, include_str!("../migrations/0004_secrets.sql")),
    (5, include_str!("../migrations/0005_db_leases.sql")),
];

/// Held during every write transaction on PostgreSQL, so that the audit chain of several servers
/// on one database stays a single chain.
const PG_WRITE_LOCK: i64 = 0x0074_6573_7365_7261;

macro_rules! with_write_tx {
    ($self:ident, |$tx:ident, $is_pg:ident| $body:block) => {
        match &*$self.db {
            Db::Sqlite { write, .. } => {
                let mut $tx = write.begin().await?;
                #[allow(unused_variables)]
                let $is_pg = false;
                let out = $body;
                $tx.commit().await?;
                out
            }
            Db::Pg(pool) => {
                let mut $tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_WRITE_LOCK)
                    .execute(&mut *$tx)
                    .await?;
                #[allow(unused_variables)]
                let $is_pg = true;
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
            Db::Sqlite { read: $pool, .. } => $body,
            Db::Pg($pool) => $body,
        }
    };
}

/// A `policy_sets` row of either backend.
macro_rules! policy_set_row {
    ($r:expr) => {
        PolicySetRecord {
            version: $r.try_get("version")?,
            status: $r.try_get("status")?,
            grants: from_json(&$r.try_get::<String, _>("grants")?)?,
            policies: from_json(&$r.try_get::<String, _>("policies")?)?,
            created_at: $r.try_get("created_at")?,
            actor: $r.try_get("actor")?,
            note: $r.try_get("note")?,
        }
    };
}

fn secret_row<R: Row>(r: &R) -> Result<SecretRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    Ok(SecretRecord {
        name: r.try_get("name")?,
        owner: r.try_get("owner")?,
        purpose: r.try_get("purpose")?,
        content_type: r.try_get("content_type")?,
        environment: r.try_get("environment")?,
        tags: from_json(&r.try_get::<String, _>("tags")?)?,
        rotation_period: r.try_get("rotation_period")?,
        current_version: r.try_get("current_version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deleted_at: r.try_get("deleted_at")?,
        purge_after: r.try_get("purge_after")?,
    })
}

fn version_row<R: Row>(r: &R) -> Result<SecretVersionRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database>,
{
    Ok(SecretVersionRecord {
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        ciphertext: r.try_get("ciphertext")?,
        wrapped_key: r.try_get("wrapped_key")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        enabled: r.try_get("enabled")?,
        not_before: r.try_get("not_before")?,
        expires_at: r.try_get("expires_at")?,
    })
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Executes one [`Op`] inside a transaction; a macro so the same SQL serves both backends.
macro_rules! apply_op {
    ($tx:ident, $op:expr, $now:expr) => {
        match $op {
            Op::UpsertWorkload(w) => {
                sqlx::query("INSERT INTO workloads (id, spec, updated_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at")
                    .bind(w.id.as_str()).bind(json(w)?).bind($now)
                    .execute(&mut *$tx).await?;
            }
            Op::DeleteWorkload(id) => {
                sqlx::query("DELETE FROM workloads WHERE id = $1").bind(id).execute(&mut *$tx).await?;
            }
            Op::UpsertGrant(g) => {
                sqlx::query("INSERT INTO grants (from_id, to_id, spec) VALUES ($1, $2, $3) ON CONFLICT (from_id, to_id) DO UPDATE SET spec = excluded.spec")
                    .bind(g.from.as_str()).bind(g.to.as_str()).bind(json(g)?)
                    .execute(&mut *$tx).await?;
            }
            Op::DeleteGrant { from, to } => {
                sqlx::query("DELETE FROM grants WHERE from_id = $1 AND to_id = $2").bind(from).bind(to).execute(&mut *$tx).await?;
            }
            Op::UpsertClient(c) => {
                sqlx::query("INSERT INTO clients (id, spec) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET spec = excluded.spec")
                    .bind(c.id.as_str()).bind(json(c)?)
                    .execute(&mut *$tx).await?;
            }
            Op::DeleteClient(id) => {
                sqlx::query("DELETE FROM clients WHERE id = $1").bind(id).execute(&mut *$tx).await?;
            }
            Op::UpsertTrust(t) => {
                sqlx::query("INSERT INTO trusts (name, spec) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec")
                    .bind(t.name.as_str()).bind(json(t)?)
                    .execute(&mut *$tx).await?;
            }
            Op::DeleteTrust(name) => {
                sqlx::query("DELETE FROM trusts WHERE name = $1").bind(name).execute(&mut *$tx).await?;
            }
            Op::UpsertPolicy(p) => {
                sqlx::query("INSERT INTO policy_files (name, body) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = excluded.body")
                    .bind(&p.name).bind(&p.text)
                    .execute(&mut *$tx).await?;
            }
            Op::DeletePolicy(name) => {
                sqlx::query("DELETE FROM policy_files WHERE name = $1").bind(name).execute(&mut *$tx).await?;
            }
            Op::SetClientSecret { client, secret } => {
                let n = sqlx::query("UPDATE clients SET secret_hash = $1, secret_created_at = $2, secret_expires_at = $3 WHERE id = $4")
                    .bind(&secret.hash).bind(secret.created_at).bind(secret.expires_at).bind(client)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Corrupt(format!("client `{client}` does not exist")));
                }
            }
            Op::RevokeWorkload { id, at } => {
                sqlx::query("UPDATE workloads SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at).bind(id)
                    .execute(&mut *$tx).await?;
            }
            Op::RevokeToken { jti, expires_at, at } => {
                sqlx::query("INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING")
                    .bind(jti).bind(expires_at).bind(at)
                    .execute(&mut *$tx).await?;
            }
            Op::InsertKey(k) => {
                sqlx::query("INSERT INTO signing_keys (kid, trust_domain, alg, sealed, public_jwk, created_at, activate_at, retire_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(&k.kid).bind(&k.trust_domain).bind(&k.alg).bind(&k.sealed).bind(&k.public_jwk)
                    .bind(k.created_at).bind(k.activate_at).bind(k.retire_at)
                    .execute(&mut *$tx).await?;
            }
            Op::RetireKey { kid, retire_at } => {
                sqlx::query("UPDATE signing_keys SET retire_at = $1 WHERE kid = $2")
                    .bind(retire_at).bind(kid)
                    .execute(&mut *$tx).await?;
            }
            Op::DeleteKey(kid) => {
                sqlx::query("DELETE FROM signing_keys WHERE kid = $1").bind(kid).execute(&mut *$tx).await?;
            }
            Op::InitMeta { key, value } => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key).bind(value)
                    .execute(&mut *$tx).await?;
            }
            Op::InsertCa(c) => {
                sqlx::query("INSERT INTO ca_certs (id, trust_domain, sealed, cert, created_at, activate_at, retire_at, not_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(&c.id).bind(&c.trust_domain).bind(&c.sealed).bind(&c.cert)
                    .bind(c.created_at).bind(c.activate_at).bind(c.retire_at).bind(c.not_after)
                    .execute(&mut *$tx).await?;
            }
            Op::RetireCa { id, retire_at } => {
                sqlx::query("UPDATE ca_certs SET retire_at = $1 WHERE id = $2")
                    .bind(retire_at).bind(id)
                    .execute(&mut *$tx).await?;
            }
            Op::InsertJoinToken(t) => {
                sqlx::query("INSERT INTO join_tokens (token_hash, trust_domain, agent_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&t.token_hash).bind(&t.trust_domain).bind(&t.agent_id).bind(t.created_at).bind(t.expires_at)
                    .execute(&mut *$tx).await?;
            }
            Op::RedeemJoinToken { token_hash, at } => {
                let n = sqlx::query("UPDATE join_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1")
                    .bind(at).bind(token_hash)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict("the join token is unknown, expired or already used".into()));
                }
            }
            Op::InsertAgent(a) => {
                sqlx::query("INSERT INTO agents (id, trust_domain, joined_at, svid_serial, svid_not_after, last_seen, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(&a.id).bind(&a.trust_domain).bind(a.joined_at).bind(&a.svid_serial).bind(a.svid_not_after).bind(a.last_seen).bind(a.revoked_at)
                    .execute(&mut *$tx).await?;
            }
            Op::RenewAgent { id, svid_serial, svid_not_after, at } => {
                let n = sqlx::query("UPDATE agents SET svid_serial = $1, svid_not_after = $2, last_seen = $3 WHERE id = $4 AND revoked_at IS NULL")
                    .bind(svid_serial).bind(svid_not_after).bind(at).bind(id)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("agent `{id}` is unknown or revoked")));
                }
            }
            Op::RevokeAgent { id, at } => {
                sqlx::query("UPDATE agents SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at).bind(id)
                    .execute(&mut *$tx).await?;
            }
            Op::RecordPolicySet(r) => {
                let n = sqlx::query("INSERT INTO policy_sets (version, status, grants, policies, created_at, actor, note) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version) DO NOTHING")
                    .bind(r.version).bind(&r.status).bind(json(&r.grants)?).bind(json(&r.policies)?)
                    .bind(r.created_at).bind(&r.actor).bind(&r.note)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("policy set version {} already exists", r.version)));
                }
            }
            Op::SetPolicySetStatus { version, status } => {
                sqlx::query("UPDATE policy_sets SET status = $1 WHERE version = $2")
                    .bind(status).bind(version)
                    .execute(&mut *$tx).await?;
            }
            Op::RecordSvids(svids) => {
                for chunk in svids.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO x509_svids (serial, spiffe_id, agent_id, issued_at, not_after) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.serial.clone())
                            .push_bind(r.spiffe_id.clone())
                            .push_bind(r.agent_id.clone())
                            .push_bind(r.issued_at)
                            .push_bind(r.not_after);
                    });
                    qb.build().execute(&mut *$tx).await?;
                }
            }
            Op::UpsertSecret(r) => {
                sqlx::query("INSERT INTO secrets (name, owner, purpose, content_type, environment, tags, rotation_period, current_version, created_at, updated_at, deleted_at, purge_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, purpose = excluded.purpose, content_type = excluded.content_type, environment = excluded.environment, tags = excluded.tags, rotation_period = excluded.rotation_period, updated_at = excluded.updated_at")
                    .bind(&r.name).bind(&r.owner).bind(&r.purpose).bind(&r.content_type).bind(&r.environment)
                    .bind(json(&r.tags)?).bind(r.rotation_period).bind(r.current_version).bind(r.created_at).bind(r.updated_at)
                    .execute(&mut *$tx).await?;
            }
            Op::InsertSecretVersion(v) => {
                let n = sqlx::query("UPDATE secrets SET current_version = $1, updated_at = $2 WHERE name = $3 AND current_version = $4 AND deleted_at IS NULL")
                    .bind(v.version).bind(v.created_at).bind(&v.name).bind(v.version - 1)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("secret `{}` is deleted, missing, or was written meanwhile", v.name)));
                }
                sqlx::query("INSERT INTO secret_versions (name, version, ciphertext, wrapped_key, created_at, created_by, enabled, not_before, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                    .bind(&v.name).bind(v.version).bind(&v.ciphertext).bind(&v.wrapped_key).bind(v.created_at)
                    .bind(&v.created_by).bind(v.enabled).bind(v.not_before).bind(v.expires_at)
                    .execute(&mut *$tx).await?;
            }
            Op::SetSecretVersion { name, version, enabled } => {
                let n = sqlx::query("UPDATE secret_versions SET enabled = $1 WHERE name = $2 AND version = $3")
                    .bind(enabled).bind(name).bind(version)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("secret `{name}` has no version {version}")));
                }
            }
            Op::DeleteSecret { name, at, purge_after } => {
                let n = sqlx::query("UPDATE secrets SET deleted_at = $1, purge_after = $2 WHERE name = $3 AND deleted_at IS NULL")
                    .bind(at).bind(purge_after).bind(name)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("secret `{name}` does not exist or is already deleted")));
                }
            }
            Op::RestoreSecret(name) => {
                let n = sqlx::query("UPDATE secrets SET deleted_at = NULL, purge_after = NULL WHERE name = $1 AND deleted_at IS NOT NULL")
                    .bind(name)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("secret `{name}` is not deleted")));
                }
            }
            Op::PurgeSecret(name) => {
                sqlx::query("DELETE FROM secret_versions WHERE name = $1 AND EXISTS (SELECT 1 FROM secrets WHERE name = $1 AND deleted_at IS NOT NULL)")
                    .bind(name)
                    .execute(&mut *$tx).await?;
                let n = sqlx::query("DELETE FROM secrets WHERE name = $1 AND deleted_at IS NOT NULL")
                    .bind(name)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("secret `{name}` is not deleted (delete it first)")));
                }
            }
            Op::UpsertDbConnection(c) => {
                sqlx::query("INSERT INTO db_connections (name, url, admin_user, password_secret, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET url = excluded.url, admin_user = excluded.admin_user, password_secret = excluded.password_secret")
                    .bind(&c.name).bind(&c.url).bind(&c.admin_user).bind(&c.password_secret).bind(c.created_at)
                    .execute(&mut *$tx).await?;
            }
            Op::UpsertDbRole(r) => {
                sqlx::query("INSERT INTO db_roles (name, connection, creation, revocation, default_ttl, max_ttl, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET connection = excluded.connection, creation = excluded.creation, revocation = excluded.revocation, default_ttl = excluded.default_ttl, max_ttl = excluded.max_ttl")
                    .bind(&r.name).bind(&r.connection).bind(json(&r.creation)?).bind(json(&r.revocation)?)
                    .bind(r.default_ttl).bind(r.max_ttl).bind(r.created_at)
                    .execute(&mut *$tx).await?;
            }
            Op::InsertLease(l) => {
                sqlx::query("INSERT INTO db_leases (id, role, connection, username, workload, revocation, created_at, expires_at, max_expires_at, state, revoked_at, attempts, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
                    .bind(&l.id).bind(&l.role).bind(&l.connection).bind(&l.username).bind(&l.workload)
                    .bind(json(&l.revocation)?).bind(l.created_at).bind(l.expires_at).bind(l.max_expires_at)
                    .bind(&l.state).bind(l.revoked_at).bind(l.attempts).bind(&l.last_error)
                    .execute(&mut *$tx).await?;
            }
            Op::RenewLease { id, expires_at } => {
                let n = sqlx::query("UPDATE db_leases SET expires_at = $1 WHERE id = $2 AND state = 'active' AND expires_at > $3")
                    .bind(expires_at).bind(id).bind($now)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("lease `{id}` is not active")));
                }
            }
            Op::EndLease(id) => {
                let n = sqlx::query("UPDATE db_leases SET state = 'revoking' WHERE id = $1 AND state <> 'revoked'")
                    .bind(id)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err(StoreError::Conflict(format!("lease `{id}` is unknown or already revoked")));
                }
            }
            Op::LeaseRevocation { id, revoked_at, error } => {
                match revoked_at {
                    Some(at) => {
                        sqlx::query("UPDATE db_leases SET state = 'revoked', revoked_at = $1, attempts = attempts + 1, last_error = NULL WHERE id = $2")
                            .bind(at).bind(id)
                            .execute(&mut *$tx).await?;
                    }
                    None => {
                        sqlx::query("UPDATE db_leases SET state = 'revoking', attempts = attempts + 1, last_error = $1 WHERE id = $2")
                            .bind(error).bind(id)
                            .execute(&mut *$tx).await?;
                    }
                }
            }
            Op::SetMeta { key, value } => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                    .bind(key).bind(value)
                    .execute(&mut *$tx).await?;
            }
        }
    };
}

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
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        match &*self.db {
            Db::Sqlite { .. } => "sqlite",
            Db::Pg(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<()> {
        with_write_tx!(self, |tx, is_pg| {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
            )
            .execute(&mut *tx)
            .await?;
            for (version, sql) in MIGRATIONS {
                let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
                if done.is_none() {
                    sqlx::raw_sql(sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                        .bind(version)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        });
        Ok(())
    }

    pub async fn db_connection(&self, name: &str) -> Result<Option<DbConnectionRecord>> {
        Ok(with_read!(self, |pool| {
            match sqlx::query("SELECT * FROM db_connections WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Some(DbConnectionRecord {
                    name: r.try_get("name")?,
                    url: r.try_get("url")?,
                    admin_user: r.try_get("admin_user")?,
                    password_secret: r.try_get("password_secret")?,
                    created_at: r.try_get("created_at")?,
                }),
                None => None,
            }
        }))
    }

    pub async fn db_role(&self, name: &str) -> Result<Option<DbRoleRecord>> {
        Ok(with_read!(self, |pool| {
            match sqlx::query("SELECT * FROM db_roles WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Some(DbRoleRecord {
                    name: r.try_get("name")?,
                    connection: r.try_get("connection")?,
                    creation: from_json(&r.try_get::<String, _>("creation")?)?,
                    revocation: from_json(&r.try_get::<String, _>("revocation")?)?,
                    default_ttl: r.try_get("default_ttl")?,
                    max_ttl: r.try_get("max_ttl")?,
                    created_at: r.try_get("created_at")?,
                }),
                None => None,
            }
        }))
    }

    /// Leases: one by `id`, those of a `workload`, or (neither) every lease not yet revoked;
    /// `due_at` adds those past their end or asked to end at that time.
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
            sqlx::query(sql)
                .bind(a)
                .bind(b)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(LeaseRecord {
                        id: r.try_get("id")?,
                        role: r.try_get("role")?,
                        connection: r.try_get("connection")?,
                        username: r.try_get("username")?,
                        workload: r.try_get("workload")?,
                        revocation: from_json(&r.try_get::<String, _>("revocation")?)?,
                        created_at: r.try_get("created_at")?,
                        expires_at: r.try_get("expires_at")?,
                        max_expires_at: r.try_get("max_expires_at")?,
                        state: r.try_get("state")?,
                        revoked_at: r.try_get("revoked_at")?,
                        attempts: r.try_get("attempts")?,
                        last_error: r.try_get("last_error")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }))
    }

    /// A secret's metadata, deleted or not.
    pub async fn secret(&self, name: &str) -> Result<Option<SecretRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query("SELECT * FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|r| secret_row(&r))
                .transpose()?
        }))
    }

    /// A secret's metadata and one of its versions (the current one when `version` is `None`) in
    /// one round trip: the vault's read path.
    pub async fn secret_with_version(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<(SecretRecord, Option<SecretVersionRecord>)>> {
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
                    let secret = secret_row(&r)?;
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
            sqlx::query("SELECT * FROM secrets WHERE $1 OR deleted_at IS NULL ORDER BY name")
                .bind(include_deleted)
                .fetch_all(pool)
                .await?
                .iter()
                .map(secret_row)
                .collect::<Result<Vec<_>>>()?
        }))
    }

    /// One version with its sealed value.
    pub async fn secret_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<SecretVersionRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query("SELECT * FROM secret_versions WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version)
                .fetch_optional(pool)
                .await?
                .map(|r| version_row(&r))
                .transpose()?
        }))
    }

    /// A secret's versions, newest first.
    pub async fn secret_versions(&self, name: &str) -> Result<Vec<SecretVersionRecord>> {
        Ok(with_read!(self, |pool| {
            sqlx::query("SELECT * FROM secret_versions WHERE name = $1 ORDER BY version DESC")
                .bind(name)
                .fetch_all(pool)
                .await?
                .iter()
                .map(version_row)
                .collect::<Result<Vec<_>>>()?
        }))
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<()> {
        with_read!(self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        let row = with_read!(self, |pool| {
            sqlx::query("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get::<String, _>("value"))
                .transpose()?
        });
        Ok(row)
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
            for r in sqlx::query("SELECT spec, revoked_at FROM workloads ORDER BY id")
                .fetch_all(pool)
                .await?
            {
                state.workloads.push(WorkloadRecord {
                    spec: from_json(&r.try_get::<String, _>("spec")?)?,
                    revoked_at: r.try_get("revoked_at")?,
                });
            }
            for r in sqlx::query("SELECT spec FROM grants ORDER BY from_id, to_id")
                .fetch_all(pool)
                .await?
            {
                state
                    .grants
                    .push(from_json(&r.try_get::<String, _>("spec")?)?);
            }
            for r in sqlx::query(
                "SELECT spec, secret_hash, secret_created_at, secret_expires_at FROM clients ORDER BY id",
            )
            .fetch_all(pool)
            .await?
            {
                let hash: Option<String> = r.try_get("secret_hash")?;
                let secret = match hash {
                    Some(hash) => Some(ClientSecretRecord {
                        hash,
                        created_at: r.try_get::<Option<i64>, _>("secret_created_at")?.unwrap_or(0),
                        expires_at: r.try_get("secret_expires_at")?,
                    }),
                    None => None,
                };
                state.clients.push(ClientRecord {
                    spec: from_json(&r.try_get::<String, _>("spec")?)?,
                    secret,
                });
            }
            for r in sqlx::query("SELECT spec FROM trusts ORDER BY name")
                .fetch_all(pool)
                .await?
            {
                state
                    .trusts
                    .push(from_json(&r.try_get::<String, _>("spec")?)?);
            }
            for r in sqlx::query("SELECT name, body FROM policy_files ORDER BY name")
                .fetch_all(pool)
                .await?
            {
                state.policies.push(PolicyFile {
                    name: r.try_get("name")?,
                    text: r.try_get("body")?,
                });
            }
            for r in sqlx::query(
                "SELECT id, trust_domain, joined_at, svid_serial, svid_not_after, last_seen, revoked_at FROM agents ORDER BY id",
            )
            .fetch_all(pool)
            .await?
            {
                state.agents.push(AgentRecord {
                    id: r.try_get("id")?,
                    trust_domain: r.try_get("trust_domain")?,
                    joined_at: r.try_get("joined_at")?,
                    svid_serial: r.try_get("svid_serial")?,
                    svid_not_after: r.try_get("svid_not_after")?,
                    last_seen: r.try_get("last_seen")?,
                    revoked_at: r.try_get("revoked_at")?,
                });
            }
            if let Some(r) = sqlx::query("SELECT version, status, grants, policies, created_at, actor, note FROM policy_sets WHERE status = 'shadow' ORDER BY version DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
            {
                state.shadow = Some(policy_set_row!(r));
            }
            state.policy_version = sqlx::query(
                "SELECT COALESCE(MAX(version), 0) AS v FROM policy_sets WHERE status = 'active'",
            )
            .fetch_one(pool)
            .await?
            .try_get("v")?;
        });
        Ok(state)
    }

    /// Policy set versions, newest first.
    pub async fn policy_sets(&self, limit: i64) -> Result<Vec<PolicySetRecord>> {
        let rows = with_read!(self, |pool| {
            sqlx::query("SELECT version, status, grants, policies, created_at, actor, note FROM policy_sets ORDER BY version DESC LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok(policy_set_row!(r)))
                .collect::<Result<Vec<_>>>()?
        });
        Ok(rows)
    }

    /// The highest policy set version recorded, whatever its status.
    pub async fn last_policy_set_version(&self) -> Result<i64> {
        let v = with_read!(self, |pool| {
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM policy_sets")
                .fetch_one(pool)
                .await?
                .try_get::<i64, _>("v")?
        });
        Ok(v)
    }

    pub async fn cas(&self) -> Result<Vec<CaRecord>> {
        let rows = with_read!(self, |pool| {
            sqlx::query(
                "SELECT id, trust_domain, sealed, cert, created_at, activate_at, retire_at, not_after FROM ca_certs ORDER BY activate_at, id",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(CaRecord {
                    id: r.try_get("id")?,
                    trust_domain: r.try_get("trust_domain")?,
                    sealed: r.try_get("sealed")?,
                    cert: r.try_get("cert")?,
                    created_at: r.try_get("created_at")?,
                    activate_at: r.try_get("activate_at")?,
                    retire_at: r.try_get("retire_at")?,
                    not_after: r.try_get("not_after")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The join token stored under `token_hash`, used or not.
    pub async fn join_token(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>> {
        let row = with_read!(self, |pool| {
            sqlx::query(
                "SELECT token_hash, trust_domain, agent_id, created_at, expires_at FROM join_tokens WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(pool)
            .await?
            .map(|r| {
                Ok::<_, sqlx::Error>(JoinTokenRecord {
                    token_hash: r.try_get("token_hash")?,
                    trust_domain: r.try_get("trust_domain")?,
                    agent_id: r.try_get("agent_id")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .transpose()?
        });
        Ok(row)
    }

    /// The most recent X.509-SVIDs issued to `spiffe_id`, newest first.
    pub async fn svids_for(&self, spiffe_id: &str, limit: i64) -> Result<Vec<SvidRecord>> {
        let rows = with_read!(self, |pool| {
            sqlx::query(
                "SELECT serial, spiffe_id, agent_id, issued_at, not_after FROM x509_svids WHERE spiffe_id = $1 ORDER BY issued_at DESC, serial LIMIT $2",
            )
            .bind(spiffe_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(SvidRecord {
                    serial: r.try_get("serial")?,
                    spiffe_id: r.try_get("spiffe_id")?,
                    agent_id: r.try_get("agent_id")?,
                    issued_at: r.try_get("issued_at")?,
                    not_after: r.try_get("not_after")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = with_read!(self, |pool| {
            sqlx::query(
                "SELECT kid, trust_domain, alg, sealed, public_jwk, created_at, activate_at, retire_at FROM signing_keys ORDER BY activate_at, kid",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get("kid")?,
                    trust_domain: r.try_get("trust_domain")?,
                    alg: r.try_get("alg")?,
                    sealed: r.try_get("sealed")?,
                    public_jwk: r.try_get("public_jwk")?,
                    created_at: r.try_get("created_at")?,
                    activate_at: r.try_get("activate_at")?,
                    retire_at: r.try_get("retire_at")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Revoked token IDs that have not expired yet, with their expiry.
    pub async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let rows = with_read!(self, |pool| {
            sqlx::query(
                "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1 ORDER BY jti",
            )
            .bind(now)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
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
                    let record = AuditRecord::chain(seq, now, event, &prev)?;
                    prev = record.hash.clone();
                    records.push(record);
                }
                for chunk in records.chunks(400) {
                    let mut qb = sqlx::QueryBuilder::new(
                        "INSERT INTO audit (seq, at, kind, actor, subject, outcome, detail, prev_hash, hash) ",
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
                            .push_bind(r.hash.clone());
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
        Ok(results)
    }

    /// The last `n` audit records, oldest first.
    pub async fn audit_tail(&self, n: i64) -> Result<Vec<AuditRecord>> {
        let mut rows = self
            .audit_query("SELECT * FROM audit ORDER BY seq DESC LIMIT $1", n)
            .await?;
        rows.reverse();
        Ok(rows)
    }

    /// Up to `limit` records with `seq > after`, in order.
    pub async fn audit_after(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        let rows = with_read!(self, |pool| {
            sqlx::query("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| AuditRecord::from_row(&r))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// The most recent record of `kind` about `subject`.
    pub async fn last_audit_for(&self, subject: &str, kind: &str) -> Result<Option<AuditRecord>> {
        let row = with_read!(self, |pool| {
            sqlx::query(
                "SELECT * FROM audit WHERE subject = $1 AND kind = $2 ORDER BY seq DESC LIMIT 1",
            )
            .bind(subject)
            .bind(kind)
            .fetch_optional(pool)
            .await?
            .map(|r| AuditRecord::from_row(&r))
            .transpose()?
        });
        Ok(row)
    }

    async fn audit_query(&self, sql: &'static str, n: i64) -> Result<Vec<AuditRecord>> {
        let rows = with_read!(self, |pool| {
            sqlx::query(sql)
                .bind(n)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| AuditRecord::from_row(&r))
                .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Runs SQL directly; for tests that tamper with the audit table on purpose.
    pub async fn danger_execute_raw(&self, sql: &str) -> Result<u64> {
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

#[cfg(test)]
mod tests;
