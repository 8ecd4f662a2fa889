//! Rotation of each trust domain's signing keys and CAs (on request and on schedule), and
//! revocation of single tokens: the changes that withdraw or replace trust.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use tessera_core::admin_api::{CaRotated, KeyRotated};
use tessera_core::TrustDomain;
use tessera_store::{AuditEvent, AuditKind, Op, Outcome, StoreError};
use tessera_token::Alg;

use crate::app::custody::{KeyError, StoredKey};
use crate::app::{ca, keys, App};
use crate::config::KeyKind;

/// Why a rotation or revocation failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("no CSR is pending for `{0}`: run `tessera ca csr --trust-domain {0}` first")]
    NoPendingCsr(String),
    #[error("the certificate is refused: {0}")]
    BadCertificate(String),
}

/// The record of a change to `td`'s CAs.
fn ca_event(actor: &str, td: &TrustDomain, detail: serde_json::Value) -> AuditEvent {
    AuditEvent {
        kind: AuditKind::CaRotated,
        actor: actor.to_owned(),
        subject: td.to_string(),
        outcome: Outcome::Ok,
        detail,
    }
}

/// Makes the key of `td`'s next CA (in the token when it holds CA keys) and a CSR for a root
/// outside Tessera to sign. A CSR asked again replaces the pending one.
pub(crate) async fn ca_csr(
    app: &App,
    td: &TrustDomain,
    actor: &str,
) -> Result<Vec<u8>, RotationError> {
    let new = app.custody.generate(KeyKind::Ca, td.as_str(), Alg::ES256)?;
    let csr = tessera_ca::CertificateAuthority::csr(td, new.key())
        .map_err(|e| KeyError::make("CSR", e))?;
    let stored = new.stored(app.kek(), &ca::pending_aad(td))?;
    app.store
        .commit(
            &[Op::SetMeta {
                key: ca::pending_meta(td),
                value: stored.to_text(),
            }],
            &[ca_event(
                actor,
                td,
                json!({"csr": true, "key": new.key().location().to_string()}),
            )],
        )
        .await?;
    Ok(csr)
}

/// Installs the certificate an outside root signed for the pending CSR of `td`: checked (a CA
/// for this trust domain, for the pending key, valid now), then in the bundle at once and
/// signing after `ahead` (at once when the domain has no CA that signs).
pub(crate) async fn ca_install(
    app: &App,
    td: &TrustDomain,
    chain_der: Vec<u8>,
    ahead: i64,
    actor: &str,
) -> Result<CaRotated, RotationError> {
    let now = tessera_core::now_unix();
    let pending = app
        .store
        .meta(&ca::pending_meta(td))
        .await?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RotationError::NoPendingCsr(td.to_string()))?;
    let bad = |e: &dyn std::fmt::Display| RotationError::BadCertificate(e.to_string());
    let stored = StoredKey::parse(&pending).map_err(|e| bad(&e))?;
    let key = app
        .custody
        .open_key(&stored, Alg::ES256, &ca::pending_aad(td))
        .map_err(|e| bad(&e))?;
    let authority = tessera_ca::CertificateAuthority::load(chain_der, key).map_err(|e| bad(&e))?;
    authority.check_installable(td, now).map_err(|e| bad(&e))?;
    if !authority.is_intermediate() {
        return Err(bad(&"it is self-signed; a root outside Tessera signs it"));
    }
    let id = ca::ca_id(authority.cert());
    let sealed = app
        .custody
        .reseal(&stored, &ca::pending_aad(td), &ca::ca_aad(td.as_str(), &id))
        .map_err(|e| bad(&e))?;
    let snap = app.snapshot();
    let wanted = if snap.cas.signing(td, now).is_some() {
        now + ahead
    } else {
        now
    };
    let activate_at = ca::next_activation(&snap.cas, td, wanted);
    let record = tessera_store::CaRecord {
        id: id.clone(),
        trust_domain: td.to_string(),
        sealed: sealed.to_text(),
        cert: STANDARD.encode(authority.stored_der()),
        created_at: now,
        activate_at,
        retire_at: None,
        not_after: authority.not_after(),
    };
    let mut ops = ca::replacing_ops(&snap.cas, td, record, activate_at);
    ops.push(Op::SetMeta {
        key: ca::pending_meta(td),
        value: String::new(),
    });
    app.change(
        &ops,
        ca_event(
            actor,
            td,
            json!({"ca": id, "installed": true, "activate_at": activate_at, "not_after": authority.not_after()}),
        ),
    )
    .await?;
    Ok(CaRotated {
        trust_domain: td.to_string(),
        ca: id,
        activate_at,
        not_after: authority.not_after(),
    })
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
    let (rec, ops) = ca::rotation_ops(
        &snap.cas,
        td,
        &app.custody,
        app.root.as_deref(),
        now,
        ahead,
        ttl,
    )?;
    app.change(
        &ops,
        ca_event(
            actor,
            td,
            json!({"ca": rec.id, "activate_at": rec.activate_at, "not_after": rec.not_after}),
        ),
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
    let (rec, ops) =
        keys::rotation_ops(&snap.keys, td, app.config.key_alg, &app.custody, now, ahead)?;
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
