//! Notices to the teams that depended on a withdrawn identity: a JWT signed by the trust
//! domain's current key (`typ: tessera-notice+jwt`), which a receiver verifies against the
//! published JWKS like any token, so no shared secret is needed. Queued here, delivered by the
//! server's notice task; a full queue drops the notice with an error in the log (the change
//! stream carries the same event).

use tessera_core::change_api::{Dependents, RevocationNotice, RevokedWorkload};
use tessera_core::SpiffeId;

use crate::app::App;

/// The JWS `typ` of a notice, so that it can never pass for an access token.
pub(crate) const TYP_NOTICE: &str = "tessera-notice+jwt";

/// Queues the notice of `id`'s revocation for every configured webhook.
pub(crate) fn workload_revoked(
    app: &App,
    id: &SpiffeId,
    at: i64,
    dependents: &Dependents,
    actor: &str,
) {
    if app.config.notify_webhooks.is_empty() {
        return;
    }
    let Some(td) = app.serves(id.trust_domain_str()).cloned() else {
        return;
    };
    let issuer = app.issuer_of(&td);
    let snap = app.snapshot();
    let Some(key) = snap.keys.signing(&td, at) else {
        tracing::error!(workload = %id, "no signing key for the revocation notice");
        return;
    };
    let notice = RevocationNotice {
        iss: issuer.url,
        iat: at,
        jti: match tessera_token::seal::random_bytes::<16>() {
            Ok(b) => tessera_token::strict::b64_encode(b),
            Err(e) => {
                tracing::error!(error = %e, "no randomness for the revocation notice");
                return;
            }
        },
        event: "workload_revoked".into(),
        workload: RevokedWorkload {
            sub: id.to_string(),
            at,
        },
        dependents: dependents.clone(),
        actor: actor.to_owned(),
    };
    match tessera_token::jws::sign(&key.key, TYP_NOTICE, &notice) {
        Ok(jwt) => {
            if app.notices.try_send(jwt).is_err() {
                tracing::error!(workload = %id, "notice queue full; the revocation notice is dropped (the change stream carries it)");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot sign the revocation notice"),
    }
}
