//! RFC 8693 token exchange and RFC 7523 `jwt-bearer` at the token endpoint: an outside token,
//! verified and mapped to one workload by `domain::federation`, is exchanged for a Tessera access
//! token; a Tessera access token as `subject_token` is delegation (`delegation.rs`).

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};
use tessera_store::{AssertionClaim, AuditEvent, AuditKind, Outcome};
use tessera_token::claims::numeric_date;

use crate::api::oauth::form::Form;
use crate::api::oauth::{chaining, delegation};
use crate::app::{App, Issuer, Snapshot};
use crate::domain::federation::{verify_outside, Refusal, LEEWAY};
use crate::domain::issue::{self, GrantType, IssueError, MintOptions, OAuthCode};
use crate::error::ApiError;
use crate::tls::ConnInfo;

const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

const TT_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

const TT_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn audit_refusal(app: &App, grant_type: GrantType, r: &Refusal) {
    let event = AuditEvent {
        kind: AuditKind::FederationRefused,
        actor: r
            .trust
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |t| format!("trust:{t}")),
        subject: r
            .issuer
            .as_deref()
            .map_or_else(|| "unknown".into(), recorded_issuer),
        outcome: Outcome::Denied,
        detail: json!({"reason": r.reason, "grant_type": grant_type.as_str()}),
    };
    app.audit_refusal(event).await;
}

/// An unverified token's `iss` as the audit trail keeps it: a well-formed `https://` or
/// `http://` URL as it is, anything else (newlines, terminal escapes, megabytes) as a digest,
/// so nobody can write text of their choosing into the trail.
fn recorded_issuer(iss: &str) -> String {
    let well_formed = iss.len() <= 200
        && iss.chars().all(|c| c.is_ascii_graphic())
        && reqwest::Url::parse(iss).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
    if well_formed {
        return iss.to_owned();
    }
    let d = ring::digest::digest(&ring::digest::SHA256, iss.as_bytes());
    let hex: String = d
        .as_ref()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("malformed-issuer:sha256:{hex}")
}

fn grant_err(reason: impl Into<String>) -> ApiError {
    ApiError::oauth(OAuthCode::InvalidGrant, reason)
}

fn invalid_request(reason: impl Into<String>) -> ApiError {
    ApiError::oauth(OAuthCode::InvalidRequest, reason)
}

/// RFC 8693 token exchange and RFC 7523 `jwt-bearer`.
#[tracing::instrument(target = "otel", name = "federation", skip_all, fields(
    otel.name = "tessera.federation.exchange", tessera.grant_type = grant_type.as_str()))]
pub(crate) async fn exchange(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    conn: &ConnInfo,
    headers: &HeaderMap,
    form: &Form,
    grant_type: GrantType,
) -> Result<Value, ApiError> {
    let (token, token_type) = if grant_type == GrantType::JwtBearer {
        let a = form
            .get("assertion")
            .ok_or_else(|| invalid_request("`assertion` is missing"))?;
        (a, TT_JWT)
    } else {
        let t = form
            .get("subject_token")
            .ok_or_else(|| invalid_request("`subject_token` is missing"))?;
        let tt = form
            .get("subject_token_type")
            .ok_or_else(|| invalid_request("`subject_token_type` is missing"))?;
        match form.get("requested_token_type") {
            None | Some(TT_ACCESS_TOKEN) => {}
            // Identity chaining: a JWT authorization grant for a federated authority.
            Some(TT_JWT) => {
                let federated = match form.targets() {
                    [one] => chaining::chained_domain(snap, one).cloned(),
                    _ => None,
                };
                let Some(federated) = federated else {
                    return Err(ApiError::oauth(
                        OAuthCode::InvalidTarget,
                        "a JWT authorization grant (`requested_token_type` …:jwt) is issued only for the OAuth issuer of an authority this one federates with (`token_issuer`), named as the one `audience`",
                    ));
                };
                if tt != TT_JWT {
                    return Err(invalid_request(
                        "identity chaining takes the workload's JWT-SVID as `subject_token` (…:jwt)",
                    ));
                }
                return chaining::grant(app, snap, issuer, form, t, &federated).await;
            }
            Some(_) => {
                return Err(invalid_request(
                    "only access tokens (…:access_token) and, for a federated authority, JWT authorization grants (…:jwt) are issued",
                ))
            }
        }
        (t, tt)
    };
    match token_type {
        TT_JWT | TT_ID_TOKEN => {
            if form.get("actor_token").is_some() {
                return Err(invalid_request(
                    "`actor_token` goes with a Tessera access token as `subject_token` (delegation)",
                ));
            }
            federated(app, snap, issuer, conn, form, token, grant_type).await
        }
        TT_ACCESS_TOKEN if grant_type == GrantType::TokenExchange => {
            delegation::delegate(app, snap, issuer, conn, headers, form, token).await
        }
        other => Err(invalid_request(format!(
            "`subject_token_type` `{}` is not accepted (…:jwt, …:id_token, or …:access_token for delegation)",
            other.chars().take(80).collect::<String>()
        ))),
    }
}

async fn federated(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    conn: &ConnInfo,
    form: &Form,
    token: &str,
    grant_type: GrantType,
) -> Result<Value, ApiError> {
    let mapped = match verify_outside(app, snap, token, None).await {
        Ok(m) => m,
        Err(r) => {
            audit_refusal(app, grant_type, &r).await;
            return Err(grant_err(r.reason));
        }
    };
    let trust = mapped.trust.name.to_string();
    let client_id = format!("trust:{trust}");
    let mut detail = Map::new();
    detail.insert("trust".into(), trust.clone().into());
    detail.insert("outside_iss".into(), mapped.trust.issuer.clone().into());
    detail.insert("outside_sub".into(), mapped.subject.clone().into());
    detail.insert("rule".into(), (mapped.rule + 1).into());
    // An identity chained from another authority keeps that authority's grant ID, so the two
    // audit trails can be joined.
    if let Some(jti) = mapped.claims.get("jti").and_then(Value::as_str) {
        detail.insert(
            "outside_jti".into(),
            jti.chars().take(256).collect::<String>().into(),
        );
    }
    let mut req = form.issue_request(
        conn,
        mapped.workload.clone(),
        client_id.clone(),
        "federation",
        grant_type,
    );
    req.options = MintOptions {
        context: tessera_policy::IssueContext {
            actor: None,
            trust: Some(trust.clone()),
        },
        detail,
        subject_iat: numeric_date(&mapped.claims, "iat").ok().flatten(),
        // Trust withdrawn outside (the token expired there) is withdrawn here too.
        not_after: Some(mapped.exp),
        ..MintOptions::default()
    };
    // Single use where the trust asks: the outside token is claimed with the request's record.
    req.claim = mapped.trust.single_use.then(|| AssertionClaim {
        client_id,
        jti: mapped.replay_key.clone(),
        expires_at: mapped.exp + LEEWAY,
    });
    match issue::commit(app, snap, issuer, &req).await {
        Ok(minted) => Ok(minted.response()),
        Err(IssueError::Replayed) => {
            let r = Refusal {
                reason: format!(
                    "this outside token was already exchanged (trust `{trust}` is single-use)"
                ),
                trust: Some(trust),
                issuer: Some(mapped.trust.issuer.clone()),
            };
            audit_refusal(app, grant_type, &r).await;
            Err(grant_err(r.reason))
        }
        Err(e) => Err(e.into()),
    }
}
