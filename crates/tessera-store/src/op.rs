//! Every mutation as data: an [`Op`] is applied only through [`Store::commit`](crate::Store::commit),
//! inside the transaction that appends its audit records.

use serde::Serialize;
use tessera_core::manifest::{Client, Cluster, Federation, Grant, PolicyFile, Trust, Workload};

use crate::records::{
    AgentRecord, CaRecord, ClientSecretRecord, DbConnectionRecord, DbRoleRecord,
    FederatedBundleRecord, JoinTokenRecord, KeyRecord, LeaseRecord, PolicySetRecord,
    PolicySetStatus, SecretRecord, SecretVersionRecord, SvidRecord,
};
use crate::{Result, StoreError};

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
    UpsertFederation(Federation),
    /// Removes the relationship and its stored bundle, in one step.
    DeleteFederation(String),
    StoreFederatedBundle(FederatedBundleRecord),
    UpsertCluster(Cluster),
    DeleteCluster(String),
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
    /// An agent attested by its node (not a one-time token): joins, or joins again with a new
    /// SVID and what it was attested with now. Fails with [`StoreError::Conflict`] for a revoked
    /// agent: attesting again does not undo a revocation.
    AttestAgent(AgentRecord),
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
        status: PolicySetStatus,
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
    /// Whether this changes a vault secret (the vault's read cache is cleared).
    pub(crate) fn changes_secret(&self) -> bool {
        matches!(
            self,
            Op::UpsertSecret(_)
                | Op::InsertSecretVersion(_)
                | Op::SetSecretVersion { .. }
                | Op::DeleteSecret { .. }
                | Op::RestoreSecret(_)
                | Op::PurgeSecret(_)
        )
    }

    pub(crate) fn changes_state(&self) -> bool {
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

/// A value as the JSON text a column stores.
pub(crate) fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Executes one [`Op`] inside a transaction; a macro so the same SQL serves both backends.
macro_rules! apply_op {
    ($tx:ident, $op:expr, $now:expr) => {
        match $op {
            $crate::op::Op::UpsertWorkload(w) => {
                sqlx::query("INSERT INTO workloads (id, spec, updated_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at")
                    .bind(w.id.as_str()).bind($crate::op::json(w)?).bind($now)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteWorkload(id) => {
                sqlx::query("DELETE FROM workloads WHERE id = $1").bind(id).execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertGrant(g) => {
                sqlx::query("INSERT INTO grants (from_id, to_id, spec) VALUES ($1, $2, $3) ON CONFLICT (from_id, to_id) DO UPDATE SET spec = excluded.spec")
                    .bind(g.from.as_str()).bind(g.to.as_str()).bind($crate::op::json(g)?)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteGrant { from, to } => {
                sqlx::query("DELETE FROM grants WHERE from_id = $1 AND to_id = $2").bind(from).bind(to).execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertClient(c) => {
                sqlx::query("INSERT INTO clients (id, spec) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET spec = excluded.spec")
                    .bind(c.id.as_str()).bind($crate::op::json(c)?)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteClient(id) => {
                sqlx::query("DELETE FROM clients WHERE id = $1").bind(id).execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertTrust(t) => {
                sqlx::query("INSERT INTO trusts (name, spec) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec")
                    .bind(t.name.as_str()).bind($crate::op::json(t)?)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteTrust(name) => {
                sqlx::query("DELETE FROM trusts WHERE name = $1").bind(name).execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertPolicy(p) => {
                sqlx::query("INSERT INTO policy_files (name, body) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = excluded.body")
                    .bind(&p.name).bind(&p.text)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeletePolicy(name) => {
                sqlx::query("DELETE FROM policy_files WHERE name = $1").bind(name).execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertFederation(f) => {
                sqlx::query("INSERT INTO federations (trust_domain, spec) VALUES ($1, $2) ON CONFLICT (trust_domain) DO UPDATE SET spec = excluded.spec")
                    .bind(f.trust_domain.as_str()).bind($crate::op::json(f)?)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteFederation(td) => {
                sqlx::query("DELETE FROM federations WHERE trust_domain = $1").bind(td).execute(&mut *$tx).await?;
                sqlx::query("DELETE FROM federated_bundles WHERE trust_domain = $1").bind(td).execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertCluster(c) => {
                sqlx::query("INSERT INTO clusters (name, spec) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec")
                    .bind(c.name.as_str()).bind($crate::op::json(c)?)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteCluster(name) => {
                sqlx::query("DELETE FROM clusters WHERE name = $1").bind(name).execute(&mut *$tx).await?;
            }
            $crate::op::Op::StoreFederatedBundle(b) => {
                sqlx::query("INSERT INTO federated_bundles (trust_domain, bundle, sequence, fetched_at) VALUES ($1, $2, $3, $4) ON CONFLICT (trust_domain) DO UPDATE SET bundle = excluded.bundle, sequence = excluded.sequence, fetched_at = excluded.fetched_at")
                    .bind(&b.trust_domain).bind(&b.bundle).bind(b.sequence).bind(b.fetched_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::SetClientSecret { client, secret } => {
                let n = sqlx::query("UPDATE clients SET secret_hash = $1, secret_created_at = $2, secret_expires_at = $3 WHERE id = $4")
                    .bind(&secret.hash).bind(secret.created_at).bind(secret.expires_at).bind(client)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Corrupt(format!("client `{client}` does not exist")));
                }
            }
            $crate::op::Op::RevokeWorkload { id, at } => {
                sqlx::query("UPDATE workloads SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at).bind(id)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RevokeToken { jti, expires_at, at } => {
                sqlx::query("INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING")
                    .bind(jti).bind(expires_at).bind(at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::InsertKey(k) => {
                sqlx::query("INSERT INTO signing_keys (kid, trust_domain, alg, sealed, public_jwk, created_at, activate_at, retire_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(&k.kid).bind(&k.trust_domain).bind(&k.alg).bind(&k.sealed).bind(&k.public_jwk)
                    .bind(k.created_at).bind(k.activate_at).bind(k.retire_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RetireKey { kid, retire_at } => {
                sqlx::query("UPDATE signing_keys SET retire_at = $1 WHERE kid = $2")
                    .bind(retire_at).bind(kid)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::DeleteKey(kid) => {
                sqlx::query("DELETE FROM signing_keys WHERE kid = $1").bind(kid).execute(&mut *$tx).await?;
            }
            $crate::op::Op::InitMeta { key, value } => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key).bind(value)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::InsertCa(c) => {
                sqlx::query("INSERT INTO ca_certs (id, trust_domain, sealed, cert, created_at, activate_at, retire_at, not_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(&c.id).bind(&c.trust_domain).bind(&c.sealed).bind(&c.cert)
                    .bind(c.created_at).bind(c.activate_at).bind(c.retire_at).bind(c.not_after)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RetireCa { id, retire_at } => {
                sqlx::query("UPDATE ca_certs SET retire_at = $1 WHERE id = $2")
                    .bind(retire_at).bind(id)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::InsertJoinToken(t) => {
                sqlx::query("INSERT INTO join_tokens (token_hash, trust_domain, agent_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&t.token_hash).bind(&t.trust_domain).bind(&t.agent_id).bind(t.created_at).bind(t.expires_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RedeemJoinToken { token_hash, at } => {
                let n = sqlx::query("UPDATE join_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1")
                    .bind(at).bind(token_hash)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict("the join token is unknown, expired or already used".into()));
                }
            }
            $crate::op::Op::InsertAgent(a) => {
                sqlx::query("INSERT INTO agents (id, trust_domain, joined_at, svid_serial, svid_not_after, last_seen, revoked_at, selectors) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(&a.id).bind(&a.trust_domain).bind(a.joined_at).bind(&a.svid_serial).bind(a.svid_not_after).bind(a.last_seen).bind(a.revoked_at).bind($crate::op::json(&a.selectors)?)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::AttestAgent(a) => {
                let n = sqlx::query("INSERT INTO agents (id, trust_domain, joined_at, svid_serial, svid_not_after, last_seen, revoked_at, selectors) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7) ON CONFLICT (id) DO UPDATE SET svid_serial = excluded.svid_serial, svid_not_after = excluded.svid_not_after, last_seen = excluded.last_seen, selectors = excluded.selectors WHERE agents.revoked_at IS NULL AND agents.trust_domain = excluded.trust_domain")
                    .bind(&a.id).bind(&a.trust_domain).bind(a.joined_at).bind(&a.svid_serial).bind(a.svid_not_after).bind(a.last_seen).bind($crate::op::json(&a.selectors)?)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("agent `{}` has been revoked", a.id)));
                }
            }
            $crate::op::Op::RenewAgent { id, svid_serial, svid_not_after, at } => {
                let n = sqlx::query("UPDATE agents SET svid_serial = $1, svid_not_after = $2, last_seen = $3 WHERE id = $4 AND revoked_at IS NULL")
                    .bind(svid_serial).bind(svid_not_after).bind(at).bind(id)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("agent `{id}` is unknown or revoked")));
                }
            }
            $crate::op::Op::RevokeAgent { id, at } => {
                sqlx::query("UPDATE agents SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at).bind(id)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RecordPolicySet(r) => {
                let n = sqlx::query("INSERT INTO policy_sets (version, status, grants, policies, created_at, actor, note) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version) DO NOTHING")
                    .bind(r.version).bind(r.status.as_str()).bind($crate::op::json(&r.grants)?).bind($crate::op::json(&r.policies)?)
                    .bind(r.created_at).bind(&r.actor).bind(&r.note)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("policy set version {} already exists", r.version)));
                }
            }
            $crate::op::Op::SetPolicySetStatus { version, status } => {
                sqlx::query("UPDATE policy_sets SET status = $1 WHERE version = $2")
                    .bind(status.as_str()).bind(version)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RecordSvids(svids) => {
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
            $crate::op::Op::UpsertSecret(r) => {
                sqlx::query("INSERT INTO secrets (name, owner, purpose, content_type, environment, tags, rotation_period, current_version, created_at, updated_at, deleted_at, purge_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, purpose = excluded.purpose, content_type = excluded.content_type, environment = excluded.environment, tags = excluded.tags, rotation_period = excluded.rotation_period, updated_at = excluded.updated_at")
                    .bind(&r.name).bind(&r.owner).bind(&r.purpose).bind(&r.content_type).bind(&r.environment)
                    .bind($crate::op::json(&r.tags)?).bind(r.rotation_period).bind(r.current_version).bind(r.created_at).bind(r.updated_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::InsertSecretVersion(v) => {
                let n = sqlx::query("UPDATE secrets SET current_version = $1, updated_at = $2 WHERE name = $3 AND current_version = $4 AND deleted_at IS NULL")
                    .bind(v.version).bind(v.created_at).bind(&v.name).bind(v.version - 1)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("secret `{}` is deleted, missing, or was written meanwhile", v.name)));
                }
                sqlx::query("INSERT INTO secret_versions (name, version, ciphertext, wrapped_key, created_at, created_by, enabled, not_before, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                    .bind(&v.name).bind(v.version).bind(&v.ciphertext).bind(&v.wrapped_key).bind(v.created_at)
                    .bind(&v.created_by).bind(v.enabled).bind(v.not_before).bind(v.expires_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::SetSecretVersion { name, version, enabled } => {
                let n = sqlx::query("UPDATE secret_versions SET enabled = $1 WHERE name = $2 AND version = $3")
                    .bind(enabled).bind(name).bind(version)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("secret `{name}` has no version {version}")));
                }
            }
            $crate::op::Op::DeleteSecret { name, at, purge_after } => {
                let n = sqlx::query("UPDATE secrets SET deleted_at = $1, purge_after = $2 WHERE name = $3 AND deleted_at IS NULL")
                    .bind(at).bind(purge_after).bind(name)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("secret `{name}` does not exist or is already deleted")));
                }
            }
            $crate::op::Op::RestoreSecret(name) => {
                let n = sqlx::query("UPDATE secrets SET deleted_at = NULL, purge_after = NULL WHERE name = $1 AND deleted_at IS NOT NULL")
                    .bind(name)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("secret `{name}` is not deleted")));
                }
            }
            $crate::op::Op::PurgeSecret(name) => {
                sqlx::query("DELETE FROM secret_versions WHERE name = $1 AND EXISTS (SELECT 1 FROM secrets WHERE name = $1 AND deleted_at IS NOT NULL)")
                    .bind(name)
                    .execute(&mut *$tx).await?;
                let n = sqlx::query("DELETE FROM secrets WHERE name = $1 AND deleted_at IS NOT NULL")
                    .bind(name)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("secret `{name}` is not deleted (delete it first)")));
                }
            }
            $crate::op::Op::UpsertDbConnection(c) => {
                sqlx::query("INSERT INTO db_connections (name, url, admin_user, password_secret, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET url = excluded.url, admin_user = excluded.admin_user, password_secret = excluded.password_secret")
                    .bind(&c.name).bind(&c.url).bind(&c.admin_user).bind(&c.password_secret).bind(c.created_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::UpsertDbRole(r) => {
                sqlx::query("INSERT INTO db_roles (name, connection, creation, revocation, default_ttl, max_ttl, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET connection = excluded.connection, creation = excluded.creation, revocation = excluded.revocation, default_ttl = excluded.default_ttl, max_ttl = excluded.max_ttl")
                    .bind(&r.name).bind(&r.connection).bind($crate::op::json(&r.creation)?).bind($crate::op::json(&r.revocation)?)
                    .bind(r.default_ttl).bind(r.max_ttl).bind(r.created_at)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::InsertLease(l) => {
                sqlx::query("INSERT INTO db_leases (id, role, connection, username, workload, revocation, created_at, expires_at, max_expires_at, state, revoked_at, attempts, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
                    .bind(&l.id).bind(&l.role).bind(&l.connection).bind(&l.username).bind(&l.workload)
                    .bind($crate::op::json(&l.revocation)?).bind(l.created_at).bind(l.expires_at).bind(l.max_expires_at)
                    .bind(l.state.as_str()).bind(l.revoked_at).bind(l.attempts).bind(&l.last_error)
                    .execute(&mut *$tx).await?;
            }
            $crate::op::Op::RenewLease { id, expires_at } => {
                let n = sqlx::query("UPDATE db_leases SET expires_at = $1 WHERE id = $2 AND state = 'active' AND expires_at > $3")
                    .bind(expires_at).bind(id).bind($now)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("lease `{id}` is not active")));
                }
            }
            $crate::op::Op::EndLease(id) => {
                let n = sqlx::query("UPDATE db_leases SET state = 'revoking' WHERE id = $1 AND state <> 'revoked'")
                    .bind(id)
                    .execute(&mut *$tx).await?.rows_affected();
                if n != 1 {
                    return Err($crate::StoreError::Conflict(format!("lease `{id}` is unknown or already revoked")));
                }
            }
            $crate::op::Op::LeaseRevocation { id, revoked_at, error } => {
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
            $crate::op::Op::SetMeta { key, value } => {
                sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                    .bind(key).bind(value)
                    .execute(&mut *$tx).await?;
            }
        }
    };
}
pub(crate) use apply_op;
