//! RFC 8693 delegation: a service that received a Tessera access token exchanges it, proving who
//! it is with its own credential (`actor_token`: its JWT-SVID for this issuer; or OAuth client
//! authentication), for a token to a downstream service on the original caller's behalf. The
//! result keeps the caller as `sub`, names the chain of actors in `act`, can only lose scopes,
//! and never outlives the original. Policies see `context.delegated` and `context.actor`.

use axum::http::{header, HeaderMap};
use serde_json::{json, Map, Value};
use tessera_core::{Scope, SpiffeId};
use tessera_store::{AuditKind, Outcome};

use crate::api::oauth::client_auth::authenticate;
use crate::api::oauth::form::Form;
use crate::app::{App, Issuer, Snapshot};
use crate::domain::caller::{jwt_svid_of, our_token};
use crate::domain::issue::{self, GrantType, IssueRequest, MintOptions, OAuthCode};
use crate::error::ApiError;
use crate::tls::ConnInfo;

const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Actor chains longer than this are refused (each hop nests one `act`).
const MAX_CHAIN: usize = 5;

fn grant_err(reason: impl Into<String>) -> ApiError {
    ApiError::oauth(OAuthCode::InvalidGrant, reason)
}

/// The acting service: from its JWT-SVID (`actor_token`, audience this issuer), or from OAuth
/// client authentication on the request; exactly one of the two.
async fn actor(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<(SpiffeId, String), ApiError> {
    let client_auth = headers.contains_key(header::AUTHORIZATION)
        || form.get("client_assertion").is_some()
        || form.get("client_secret").is_some();
    match (form.get("actor_token"), client_auth) {
        (Some(_), true) => Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            "give the actor's credential once: `actor_token` or client authentication",
        )),
        (None, false) => Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            "delegation needs the acting service's credential: `actor_token` (its JWT-SVID) or client authentication",
        )),
        (None, true) => {
            let client = authenticate(app, snap, issuer, headers, form).await?;
            let w = snap
                .clients
                .get(&client.id)
                .map(|c| c.spec.workload.clone())
                .ok_or_else(|| ApiError::unavailable("authenticated client vanished"))?;
            Ok((w, client.id))
        }
        (Some(t), false) => {
            if form.get("actor_token_type") != Some(TT_JWT) {
                return Err(ApiError::oauth(
                    OAuthCode::InvalidRequest,
                    "`actor_token_type` must be urn:ietf:params:oauth:token-type:jwt (a JWT-SVID)",
                ));
            }
            let id = jwt_svid_of(app, snap, issuer, t)
                .map_err(|e| grant_err(format!("the actor token is not accepted: {e}")))?;
            Ok((id.clone(), id.to_string()))
        }
    }
}

fn chain_len(act: Option<&Value>) -> usize {
    match act.and_then(Value::as_object) {
        Some(m) => 1 + chain_len(m.get("act")),
        None => 0,
    }
}

#[tracing::instrument(target = "otel", name = "delegation", skip_all, fields(
    otel.name = "tessera.delegation"))]
pub(crate) async fn delegate(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    conn: &ConnInfo,
    headers: &HeaderMap,
    form: &Form,
    subject_token: &str,
) -> Result<Value, ApiError> {
    let (actor, actor_label) = actor(app, snap, issuer, headers, form).await?;
    let (who, label) = (actor.to_string(), actor_label.clone());
    let refuse = |reason: String| async move {
        let event = tessera_store::AuditEvent {
            kind: AuditKind::TokenDenied,
            actor: label,
            subject: who,
            outcome: Outcome::Denied,
            detail: json!({"error": "invalid_grant", "reason": reason, "grant_type": "delegation"}),
        };
        if let Err(e) = app.audit.append(event).await {
            tracing::error!(error = %e, "could not record a refused delegation");
        }
        grant_err(reason)
    };
    let Some(original) = our_token(app, snap, issuer, subject_token) else {
        return Err(refuse(
            "the subject token is not a valid, unexpired access token of this issuer".into(),
        )
        .await);
    };
    let get = |k: &str| original.get(k).and_then(Value::as_str).unwrap_or_default();
    let (sub, aud, jti) = (
        get("sub").to_owned(),
        get("aud").to_owned(),
        get("jti").to_owned(),
    );
    let iat = original.get("iat").and_then(Value::as_i64).unwrap_or(0);
    if snap.revoked_jtis.contains_key(&jti) || snap.workload_revoked(&sub, iat) {
        return Err(refuse("the subject token has been revoked".into()).await);
    }
    // Only the service the token was for may pass it on.
    if aud != actor.as_str() {
        return Err(refuse(format!(
            "the subject token was issued to `{}`, not to the actor `{actor}`",
            aud.chars().take(200).collect::<String>()
        ))
        .await);
    }
    let caller = SpiffeId::parse(&sub)
        .map_err(|_| grant_err("the subject token's `sub` is not a SPIFFE ID"))?;
    if chain_len(original.get("act")) >= MAX_CHAIN {
        return Err(refuse(format!("delegation chains are at most {MAX_CHAIN} deep")).await);
    }
    // Scopes only shrink: what is asked must be in the original; by default, the original's
    // scopes that the actor is also granted on the target.
    let original_scopes: Vec<String> = get("scope").split_whitespace().map(str::to_owned).collect();
    let requested = match form.get("scope") {
        Some(s) => {
            let asked = Scope::parse_list(s)
                .map_err(|e| ApiError::oauth(OAuthCode::InvalidScope, e.to_string()))?;
            if let Some(extra) = asked
                .iter()
                .find(|s| !original_scopes.iter().any(|o| o == s.as_str()))
            {
                return Err(ApiError::oauth(
                    OAuthCode::InvalidScope,
                    format!(
                        "scope `{extra}` is not in the original token: delegation only narrows"
                    ),
                ));
            }
            asked
        }
        None => Vec::new(),
    };
    // The downstream target, and the actor's own right to call it (its grants), decide.
    let (target, scope) = {
        let target = match form.targets() {
            [one] => one.clone(),
            _ => {
                return Err(ApiError::oauth(
                    OAuthCode::InvalidTarget,
                    "name one downstream service with `audience` or `resource`",
                ))
            }
        };
        let scope = if requested.is_empty() {
            let granted: Vec<String> = snap
                .targets
                .get(&target)
                .map(|t| {
                    snap.engine
                        .granted_scopes(&actor, t)
                        .iter()
                        .map(|s| s.to_string())
                        .filter(|s| original_scopes.contains(s))
                        .collect()
                })
                .unwrap_or_default();
            if granted.is_empty() {
                // Asking with no scope would get every scope the actor is granted: more than the
                // original carried. Refuse instead.
                return Err(ApiError::oauth(
                    OAuthCode::InvalidScope,
                    "none of the original token's scopes is granted to the actor on the target",
                ));
            }
            granted.join(" ")
        } else {
            Scope::join(&requested)
        };
        (target, scope)
    };
    let mut act = Map::new();
    act.insert("sub".into(), actor.to_string().into());
    if let Some(prev) = original.get("act") {
        act.insert("act".into(), prev.clone());
    }
    let mut detail = Map::new();
    detail.insert("delegated_by".into(), actor.to_string().into());
    detail.insert("original_jti".into(), jti.clone().into());
    // The token is the caller's (`sub`), issued because the actor may call the target: the
    // policy decision is the actor's, with `context.delegated`.
    let req = IssueRequest {
        caller: actor.clone(),
        client_id: actor_label,
        auth: "delegation",
        grant_type: GrantType::TokenExchange,
        targets: vec![target],
        scope: Some(scope),
        source_ip: conn.source_ip,
        options: MintOptions {
            context: tessera_policy::IssueContext {
                actor: Some(actor.clone()),
                trust: None,
            },
            act: Some(Value::Object(act)),
            not_after: original.get("exp").and_then(Value::as_i64),
            subject: Some(caller),
            detail,
            subject_iat: original.get("iat").and_then(Value::as_i64),
            cnf: None,
        },
        audit_actor: None,
        claim: None,
    };
    Ok(issue::commit(app, snap, issuer, &req).await?.response())
}
