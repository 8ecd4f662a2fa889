//! OAuth identity chaining across authorities (draft-ietf-oauth-identity-chaining), this
//! authority's side as the workload's home: a token exchange whose `requested_token_type` is
//! `…:jwt` and whose `audience` is the OAuth issuer of a federated authority (`token_issuer` of
//! a `[[federation]]`) returns a short JWT authorization grant, which that authority exchanges
//! (RFC 7523 `jwt-bearer`) for its own token under its own grants. The other side is an ordinary
//! `[[trust]]` there (`federated.rs` on that authority).

use serde_json::{json, Value};
use tessera_core::TrustDomain;
use tessera_store::{AuditEvent, AuditKind, Outcome};

use crate::api::oauth::form::Form;
use crate::app::{App, Issuer, Snapshot};
use crate::domain::caller::jwt_svid_of;
use crate::domain::issue::OAuthCode;
use crate::error::ApiError;

/// The longest a JWT authorization grant lives: it is exchanged at once, by the workload itself.
const GRANT_TTL: i64 = 120;

/// The federated trust domain whose authority's OAuth issuer is `audience`, if any.
pub(crate) fn chained_domain<'a>(snap: &'a Snapshot, audience: &str) -> Option<&'a TrustDomain> {
    snap.federations
        .iter()
        .find(|(_, d)| d.spec.token_issuer.as_deref() == Some(audience))
        .map(|(td, _)| td)
}

/// Issues a JWT authorization grant for the authority of `federated` to the workload whose
/// JWT-SVID (audience: this issuer) is `subject_token`. The workload must federate with that
/// trust domain; the grant is recorded (its `jti`, never the token) before it is returned.
pub(crate) async fn grant(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    form: &Form,
    subject_token: &str,
    federated: &TrustDomain,
) -> Result<Value, ApiError> {
    let audience = snap
        .federations
        .get(federated)
        .and_then(|d| d.spec.token_issuer.clone())
        .ok_or_else(|| ApiError::oauth(OAuthCode::InvalidTarget, "no such authority"))?;
    let refused_for = audience.clone();
    let refuse = |who: String, reason: String| async move {
        let event = AuditEvent {
            kind: AuditKind::TokenDenied,
            actor: who.clone(),
            subject: who,
            outcome: Outcome::Denied,
            detail: json!({"error": "invalid_grant", "reason": reason, "grant_type": "identity_chaining", "audience": refused_for}),
        };
        app.audit_refusal(event).await;
        ApiError::oauth(OAuthCode::InvalidGrant, reason)
    };
    let workload = match jwt_svid_of(app, snap, issuer, subject_token) {
        Ok(id) => id,
        Err(e) => {
            return Err(refuse(
                "unknown".into(),
                format!(
                    "the subject token is not a JWT-SVID of this trust domain for this issuer: {e}"
                ),
            )
            .await)
        }
    };
    let Some(w) = snap.workloads.get(&workload) else {
        return Err(refuse(workload.to_string(), "no such workload is declared".into()).await);
    };
    if w.revoked_at.is_some() {
        return Err(refuse(workload.to_string(), "the workload is revoked".into()).await);
    }
    if !w.spec.federates_with.contains(federated) {
        return Err(refuse(
            workload.to_string(),
            format!("`{workload}` does not federate with `{federated}` (`federates_with`)"),
        )
        .await);
    }
    if form.get("scope").is_some() {
        return Err(ApiError::oauth(
            OAuthCode::InvalidScope,
            "the other authority decides scopes under its own grants; ask it, not this one",
        ));
    }
    let now = tessera_core::now_unix();
    let subject_exp = tessera_token::Unverified::parse(subject_token)
        .ok()
        .and_then(|p| p.claims.get("exp").and_then(Value::as_i64))
        .unwrap_or(now);
    let exp = (now + GRANT_TTL).min(subject_exp.max(now + 1));
    let jti = tessera_token::strict::b64_encode(
        tessera_token::seal::random_bytes::<16>()
            .map_err(|e| ApiError::unavailable(e.to_string()))?,
    );
    let key = snap
        .keys
        .signing(&issuer.td, now)
        .ok_or_else(|| ApiError::unavailable("no signing key"))?;
    let claims = json!({
        "iss": issuer.url,
        "sub": workload.as_str(),
        "aud": audience,
        "iat": now,
        "exp": exp,
        "jti": jti,
    });
    let token = tessera_token::sign(&key.key, "JWT", &claims).map_err(ApiError::unavailable)?;
    // Durable before it is handed out: a grant nobody can account for is not issued.
    app.audit
        .append(AuditEvent {
            kind: AuditKind::TokenIssued,
            actor: workload.to_string(),
            subject: workload.to_string(),
            outcome: Outcome::Ok,
            detail: json!({
                "grant_type": "identity_chaining",
                "chained_to": audience,
                "trust_domain": federated.as_str(),
                "jti": jti,
                "exp": exp,
            }),
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("the audit trail: {e}")))?;
    Ok(json!({
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_type": "N_A",
        "expires_in": exp - now,
    }))
}
