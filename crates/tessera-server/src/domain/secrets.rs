//! The vault, the authority's side: what a secret is (live, versions, overdue), who may read
//! it (a `read_secret` / `describe_secret` decision, every denial on the record), opening sealed
//! values, and the upkeep that purges deleted secrets and reports overdue ones.

use std::collections::BTreeMap;

use serde_json::json;
use tessera_core::admin_api::{SecretMetadata, SecretVersionInfo};
use tessera_core::SecretName;
use tessera_policy::{Env, SecretAction};
use tessera_store::{
    AuditEvent, AuditKind, Op, Outcome, SecretRecord, SecretVersionRecord, StoreError,
};
use tessera_vault::{Envelope, Sealed};

use crate::app::{App, Snapshot};
use crate::domain::caller::Reader;
use crate::metrics::{ReasonLabels, ResultLabels};

/// Why a secret operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{0}")]
    NotFound(String),
    /// The caller may not, or the version may not be read now.
    #[error("{0}")]
    Denied(String),
    /// The request conflicts with the secret's state (deleted, written meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// A stored value does not open, or its record could not be written.
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Store(StoreError),
}

impl From<StoreError> for SecretsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Conflict(m),
            other => Self::Store(other),
        }
    }
}

/// How long a deleted secret can be restored before it is purged, unless the delete says.
pub(crate) const DEFAULT_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// The audit subject of a secret.
pub(crate) fn subject(name: &SecretName) -> String {
    format!("secret:{name}")
}

/// Whether a secret is overdue for rotation or past its current version's expiry, at `now`.
pub(crate) fn overdue(
    s: &SecretRecord,
    current: Option<&SecretVersionRecord>,
    now: i64,
) -> Vec<&'static str> {
    let mut why = Vec::new();
    if let (Some(period), Some(v)) = (s.rotation_period, current) {
        if v.created_at + period < now {
            why.push("rotation");
        }
    }
    if current.and_then(|v| v.expires_at).is_some_and(|e| e <= now) {
        why.push("expired");
    }
    why
}

pub(crate) fn metadata(
    s: &SecretRecord,
    current: Option<&SecretVersionRecord>,
    versions: Option<&[SecretVersionRecord]>,
    now: i64,
) -> SecretMetadata {
    SecretMetadata {
        name: s.name.clone(),
        owner: s.owner.clone(),
        purpose: s.purpose.clone(),
        content_type: s.content_type.clone(),
        environment: s.environment.clone(),
        tags: s.tags.clone(),
        rotation_period: s.rotation_period,
        current_version: s.current_version,
        created_at: s.created_at,
        updated_at: s.updated_at,
        deleted_at: s.deleted_at,
        purge_after: s.purge_after,
        overdue: overdue(s, current, now)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        versions: versions.map(|vs| {
            vs.iter()
                .map(|v| SecretVersionInfo {
                    version: v.version,
                    created_at: v.created_at,
                    created_by: v.created_by.clone(),
                    enabled: v.enabled,
                    not_before: v.not_before,
                    expires_at: v.expires_at,
                })
                .collect()
        }),
    }
}

// ---- Workload side --------------------------------------------------------------------------

/// The current version of a secret and its value, for the server's own use (a database's admin
/// password). Not audited as a read: the use that follows is.
pub(crate) async fn current_value(
    app: &App,
    name: &SecretName,
) -> Result<(i64, Vec<u8>), SecretsError> {
    let s = live(name, app.store.secret(name.as_str()).await?)?;
    let v = version_of(app, name, &s, None).await?;
    if !v.enabled {
        return Err(SecretsError::NotFound(format!(
            "the current version of secret `{name}` is disabled"
        )));
    }
    Ok((v.version, open(app, name, &v)?))
}

/// The secret if it exists and is not deleted; else 404.
pub(crate) fn live(
    name: &SecretName,
    s: Option<SecretRecord>,
) -> Result<SecretRecord, SecretsError> {
    s.filter(|s| s.deleted_at.is_none())
        .ok_or_else(|| SecretsError::NotFound(format!("no secret `{name}` (or it is deleted)")))
}

/// Version `version` (the current one by default) of a live secret; else 404.
pub(crate) async fn version_of(
    app: &App,
    name: &SecretName,
    s: &SecretRecord,
    version: Option<i64>,
) -> Result<SecretVersionRecord, SecretsError> {
    let version = version.unwrap_or(s.current_version);
    app.store
        .secret_version(name.as_str(), version)
        .await?
        .ok_or_else(|| SecretsError::NotFound(format!("secret `{name}` has no version {version}")))
}

/// The Cedar entity of a secret; for one that does not exist, its name alone, so that a caller
/// without a grant learns nothing about existence.
pub(crate) fn entity(
    app: &App,
    name: &SecretName,
    s: Option<&SecretRecord>,
) -> Result<tessera_policy::SecretEntity, SecretsError> {
    let td = app.first_td().as_str();
    let (env, owner, tags) = match s {
        Some(s) => (s.environment.as_str(), s.owner.as_str(), s.tags.clone()),
        None => ("", "", BTreeMap::new()),
    };
    tessera_policy::secret_entity(name.as_str(), td, env, owner, &tags)
        .map_err(SecretsError::Unavailable)
}

/// Decides `action` on `name` for `reader` (the secret need not be stored: dynamic database
/// roles are read as `db/ROLE`). A denial is recorded and counted.
pub(crate) async fn decide(
    app: &App,
    snap: &Snapshot,
    reader: &Reader,
    name: &SecretName,
    s: Option<&SecretRecord>,
    action: SecretAction,
) -> Result<(), SecretsError> {
    let (who, authn) = (&reader.id, reader.authn);
    let env = Env {
        now: tessera_core::now_unix(),
        source_ip: reader.source_ip,
        token_age: 0,
    };
    let e = entity(app, name, s)?;
    let d = snap.engine.decide_secret(who, &e, action, authn, &env);
    if d.allowed {
        return Ok(());
    }
    let verb = match action {
        SecretAction::Read => "read",
        SecretAction::Describe => "describe",
    };
    app.metrics
        .secret_reads
        .get_or_create(&ResultLabels { result: "denied" })
        .inc();
    let event = AuditEvent {
        kind: AuditKind::SecretDenied,
        actor: who.to_string(),
        subject: subject(name),
        outcome: Outcome::Denied,
        detail: json!({"action": verb, "authn": authn.as_str(), "determined_by": d.determined_by}),
    };
    if let Err(e) = app.audit.append(event).await {
        app.metrics.audit_failures.inc();
        tracing::error!(error = %e, "could not record a refused secret read");
    }
    Err(SecretsError::Denied(format!(
        "`{who}` may not {verb} secret `{name}` (no secret grant names it)"
    )))
}

/// The plaintext of a stored version.
pub(crate) fn open(
    app: &App,
    name: &SecretName,
    v: &SecretVersionRecord,
) -> Result<Vec<u8>, SecretsError> {
    Envelope::new(app.kek())
        .open(
            name,
            v.version,
            &Sealed {
                ciphertext: v.ciphertext.clone(),
                wrapped_key: v.wrapped_key.clone(),
            },
        )
        .map_err(|e| {
            SecretsError::Unavailable(format!("secret `{name}` version {}: {e}", v.version))
        })
}

/// Removes a deleted secret and all its versions for good.
pub(crate) async fn purge_one(
    app: &App,
    name: &SecretName,
    actor: &str,
) -> Result<(), SecretsError> {
    app.store
        .commit(
            &[Op::PurgeSecret(name.to_string())],
            &[AuditEvent {
                kind: AuditKind::SecretPurged,
                actor: actor.to_owned(),
                subject: subject(name),
                outcome: Outcome::Ok,
                detail: json!({}),
            }],
        )
        .await?;
    Ok(())
}

/// Purges deleted secrets past their retention, and counts (metric) and records (audit, once per
/// server run: `reported`) secrets overdue for rotation or past expiry.
pub(crate) async fn upkeep(
    app: &App,
    reported: &mut std::collections::HashSet<(String, i64, &'static str)>,
) -> Result<(), SecretsError> {
    let now = tessera_core::now_unix();
    let (mut rotation, mut expired) = (0i64, 0i64);
    for s in app.store.secrets(true).await? {
        if s.purge_after.is_some_and(|p| p <= now) {
            if let Ok(name) = SecretName::parse(&s.name) {
                match purge_one(app, &name, "server").await {
                    // Another server purged it first, or it was restored meanwhile.
                    Ok(()) | Err(SecretsError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        if s.deleted_at.is_some() {
            continue;
        }
        let current = app.store.secret_version(&s.name, s.current_version).await?;
        for why in overdue(&s, current.as_ref(), now) {
            match why {
                "rotation" => rotation += 1,
                _ => expired += 1,
            }
            if reported.insert((s.name.clone(), s.current_version, why)) {
                app.audit
                    .append(AuditEvent {
                        kind: AuditKind::SecretOverdue,
                        actor: "server".into(),
                        subject: format!("secret:{}", s.name),
                        outcome: Outcome::Warning,
                        detail: json!({"reason": why, "version": s.current_version, "owner": s.owner}),
                    })
                    .await?;
            }
        }
    }
    app.metrics
        .secrets_overdue
        .get_or_create(&ReasonLabels { reason: "rotation" })
        .set(rotation);
    app.metrics
        .secrets_overdue
        .get_or_create(&ReasonLabels { reason: "expired" })
        .set(expired);
    Ok(())
}
