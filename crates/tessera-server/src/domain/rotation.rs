//! Rotation of each trust domain's signing keys and CAs (on request and on schedule), and
//! revocation of single tokens: the changes that withdraw or replace trust.

use std::time::Duration;

use serde_json::json;
use tessera_core::admin_api::{CaRotated, KeyRotated};
use tessera_core::TrustDomain;
use tessera_store::{AuditEvent, AuditKind, Op, Outcome, StoreError};

use crate::app::keys::KeyError;
use crate::app::{ca, keys, App};

/// Why a rotation or revocation failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// Prepares the next CA of `td`: in the bundle now, signing after `ahead` seconds.
pub(crate) async fn rotate_ca(
    app: &App,
    td: &TrustDomain,
    ahead: i64,
    actor: &str,
) -> Result<CaRotated, RotationError> {
    let now = tessera_core::now_unix();
    let ttl = i64::try_from(app.config.ca_ttl.as_secs()).unwrap_or(i64::MAX / 4);
    let snap = app.snapshot();
    let (rec, ops) = ca::rotation_ops(&snap.cas, td, &app.kek, now, ahead, ttl)?;
    app.change(
        &ops,
        AuditEvent {
            kind: AuditKind::CaRotated,
            actor: actor.to_owned(),
            subject: td.to_string(),
            outcome: Outcome::Ok,
            detail: json!({"ca": rec.id, "activate_at": rec.activate_at, "not_after": rec.not_after}),
        },
    )
    .await?;
    Ok(CaRotated {
        trust_domain: td.to_string(),
        ca: rec.id,
        activate_at: rec.activate_at,
        not_after: rec.not_after,
    })
}

/// Prepares the next signing key of `td`: published now, signing after `publish_ahead`.
pub(crate) async fn rotate_key(
    app: &App,
    td: &TrustDomain,
    actor: &str,
) -> Result<KeyRotated, RotationError> {
    let now = tessera_core::now_unix();
    let ahead = i64::try_from(app.config.publish_ahead().as_secs()).unwrap_or(i64::MAX);
    let snap = app.snapshot();
    let (rec, ops) = keys::rotation_ops(&snap.keys, td, app.config.key_alg, &app.kek, now, ahead)?;
    app.change(
        &ops,
        AuditEvent {
            kind: AuditKind::KeysRotated,
            actor: actor.to_owned(),
            subject: td.to_string(),
            outcome: Outcome::Ok,
            detail: json!({"kid": rec.kid, "activate_at": rec.activate_at}),
        },
    )
    .await?;
    Ok(KeyRotated {
        trust_domain: td.to_string(),
        kid: rec.kid,
        activate_at: rec.activate_at,
    })
}

/// Rotates each trust domain whose signing key is older than `period` and has no successor.
pub(crate) async fn scheduled_rotation(
    app: &App,
    period: Duration,
    now: i64,
) -> Result<(), RotationError> {
    let snap = app.snapshot();
    let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX);
    for td in &app.config.trust_domains {
        let entries = snap.keys.entries(&td.name);
        let pending = entries.iter().any(|k| k.activate_at > now);
        let due = snap
            .keys
            .signing(&td.name, now)
            .is_some_and(|k| now - k.activate_at >= period);
        if due && !pending {
            rotate_key(app, &td.name, "schedule").await?;
        }
    }
    Ok(())
}

/// Revokes one token until its expiry: introspection, delegation and the revocation list refuse
/// it from now on.
pub(crate) async fn revoke_token(
    app: &App,
    jti: &str,
    exp: i64,
    actor: &str,
    sub: &str,
) -> Result<(), StoreError> {
    let now = tessera_core::now_unix();
    app.change(
        &[Op::RevokeToken {
            jti: jti.to_owned(),
            expires_at: exp,
            at: now,
        }],
        AuditEvent {
            kind: AuditKind::RevokeToken,
            actor: actor.to_owned(),
            subject: sub.to_owned(),
            outcome: Outcome::Ok,
            detail: json!({"jti": jti, "exp": exp}),
        },
    )
    .await
}
