//! OAuth client authentication at the token, introspection and revocation endpoints: exactly
//! one of `client_secret_basic`, `client_secret_post` and `private_key_jwt` (RFC 7523 §2.2), each
//! failure audited and counted. (`tls_client_auth` is the token endpoint's, in `token.rs`.)

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;
use tessera_core::manifest::ClientAuth;
use tessera_core::{ClientId, SpiffeId};
use tessera_store::{AuditEvent, AuditKind, Outcome};
use tessera_token::claims::{audience_contains, check_times, string_claim, TimeRules};
use tessera_token::{Unverified, TYP_ACCESS_TOKEN};

use crate::api::oauth::form::Form;
use crate::app::snapshot::ClientEntry;
use crate::app::{App, Issuer, Snapshot};
use crate::domain::issue::OAuthCode;
use crate::error::ApiError;
use crate::metrics::MethodLabels;

const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Allowed clock skew for client assertions.
const LEEWAY: i64 = 30;

/// Client assertions may not live longer than this (RFC 7523 §3 leaves it to us).
const MAX_ASSERTION_AHEAD: i64 = 300;

/// The authenticated client.
#[derive(Debug)]
pub(crate) struct AuthedClient {
    pub id: String,
    pub method: &'static str,
    /// For `private_key_jwt`: the assertion's `jti`, still to be claimed (single use) in the same
    /// commit as the request's audit record.
    pub claim: Option<tessera_store::AssertionClaim>,
}

/// A refused client: its audit record, counted, and the error to answer.
pub(crate) fn client_failure(
    app: &App,
    method: &'static str,
    claimed: Option<&str>,
    why: &str,
) -> (AuditEvent, ApiError) {
    app.metrics
        .client_auth_failures
        .get_or_create(&MethodLabels { method })
        .inc();
    // Only a well-formed name reaches the audit trail as the actor.
    let actor = claimed
        .and_then(|c| {
            ClientId::parse(c)
                .map(|c| c.to_string())
                .or_else(|_| SpiffeId::parse(c).map(|s| s.to_string()))
                .ok()
        })
        .unwrap_or_else(|| "(unknown)".to_owned());
    let event = AuditEvent {
        kind: AuditKind::ClientAuthFailed,
        actor: actor.clone(),
        subject: actor,
        outcome: Outcome::Denied,
        detail: json!({"method": method, "reason": why}),
    };
    (
        event,
        ApiError::Client {
            description: why.to_owned(),
            basic: method == "client_secret_basic",
        },
    )
}

/// Authenticates the client and, for an assertion, claims its `jti` now. Failures are audited.
pub(crate) async fn authenticate(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<AuthedClient, ApiError> {
    let client = authenticate_deferred(app, snap, issuer, headers, form).await?;
    if let Some(claim) = &client.claim {
        if !app.audit.claim(claim.clone()).await? {
            return Err(replayed(app, &client.id).await);
        }
    }
    Ok(client)
}

/// A replayed client assertion: recorded, and refused as RFC 6749 `invalid_client`.
pub(crate) async fn replayed(app: &App, client_id: &str) -> ApiError {
    let (event, err) = client_failure(
        app,
        "private_key_jwt",
        Some(client_id),
        "client assertion: this `jti` was used before (replay)",
    );
    app.audit_refusal(event).await;
    err
}

/// Authenticates the client by exactly one of the three methods, leaving an assertion's `jti`
/// to be claimed by the caller. Failures are audited.
pub(crate) async fn authenticate_deferred(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<AuthedClient, ApiError> {
    let result = authenticate_inner(app, snap, issuer, headers, form).await;
    match result {
        Ok(c) => Ok(c),
        Err(Failure::Refused(refusal)) => {
            let (event, err) = *refusal;
            app.audit_refusal(event).await;
            Err(err)
        }
        Err(Failure::Api(err)) => Err(err),
    }
}

enum Failure {
    Refused(Box<(AuditEvent, ApiError)>),
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

async fn authenticate_inner(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<AuthedClient, Failure> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, rest)| rest.trim().to_owned());
    let post_secret = form.get("client_secret");
    let assertion = form.get("client_assertion");
    let methods = usize::from(basic.is_some())
        + usize::from(post_secret.is_some())
        + usize::from(assertion.is_some());
    if methods > 1 {
        return Err(ApiError::oauth(
            OAuthCode::InvalidRequest,
            "use exactly one client authentication method",
        )
        .into());
    }
    if let Some(b) = basic {
        let (id, secret) = STANDARD
            .decode(b.as_bytes())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| d.split_once(':').map(|(i, s)| (i.to_owned(), s.to_owned())))
            .ok_or_else(|| {
                refused(
                    app,
                    "client_secret_basic",
                    None,
                    "the Basic credentials are not base64 of `id:secret`",
                )
            })?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
        let (id, secret) = (form_decode(&id), form_decode(&secret));
        if form.get("client_id").is_some_and(|c| c != id) {
            return Err(ApiError::oauth(
                OAuthCode::InvalidRequest,
                "`client_id` differs from the Basic credentials",
            )
            .into());
        }
        return check_secret(app, snap, "client_secret_basic", &id, &secret);
    }
    if let Some(secret) = post_secret {
        let id = form.get("client_id").ok_or_else(|| {
            ApiError::oauth(
                OAuthCode::InvalidRequest,
                "`client_secret` needs `client_id`",
            )
        })?;
        return check_secret(app, snap, "client_secret_post", id, secret);
    }
    if let Some(assertion) = assertion {
        return check_assertion(app, snap, issuer, form, assertion).await;
    }
    Err(refused(
        app,
        "none",
        form.get("client_id"),
        "client authentication is required (client_secret_basic, client_secret_post or private_key_jwt)",
    ))
}

fn refused(app: &App, method: &'static str, claimed: Option<&str>, why: &str) -> Failure {
    Failure::Refused(Box::new(client_failure(app, method, claimed, why)))
}

fn form_decode(s: &str) -> String {
    let encoded = format!("x={s}");
    form_urlencoded::parse(encoded.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn check_secret(
    app: &App,
    snap: &Snapshot,
    method: &'static str,
    id: &str,
    secret: &str,
) -> Result<AuthedClient, Failure> {
    const WRONG: &str = "unknown client or wrong secret";
    // Whatever is wrong before the secret is checked (no such client, a client without a
    // secret) answers as a wrong secret does, after the same keyed-hash check: neither the
    // words nor the time tell a client ID that exists from one that does not.
    let found = snap.clients.get(id).and_then(|client| {
        if client.spec.auth == ClientAuth::ClientSecret {
            client.secret.as_ref()
        } else {
            None
        }
    });
    let Some((record, tag)) = found else {
        let _ = app.verify_secret(secret, &[0u8; 32]);
        return Err(refused(app, method, Some(id), WRONG));
    };
    // Machine secrets are 256-bit random values: a keyed hash is the right cost, and
    // `hmac::verify` compares in constant time.
    if !app.verify_secret(secret, tag) {
        return Err(refused(app, method, Some(id), WRONG));
    }
    if record
        .expires_at
        .is_some_and(|e| e <= tessera_core::now_unix())
    {
        return Err(refused(
            app,
            method,
            Some(id),
            &format!(
                "the client secret has expired; issue a new one with `tessera client secret {id}`"
            ),
        ));
    }
    Ok(AuthedClient {
        id: id.to_owned(),
        method,
        claim: None,
    })
}

async fn check_assertion(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    form: &Form,
    assertion: &str,
) -> Result<AuthedClient, Failure> {
    const M: &str = "private_key_jwt";
    if form.get("client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
        return Err(refused(app, M, form.get("client_id"), "`client_assertion_type` must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer"));
    }
    let parsed = Unverified::parse(assertion).map_err(|e| {
        refused(
            app,
            M,
            form.get("client_id"),
            &format!("client assertion: {e}"),
        )
    })?;
    if parsed.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(TYP_ACCESS_TOKEN) || t.eq_ignore_ascii_case("application/at+jwt")
    }) {
        return Err(refused(
            app,
            M,
            form.get("client_id"),
            "an access token is not a client assertion",
        ));
    }
    let iss = string_claim(&parsed.claims, "iss").map_err(|e| {
        refused(
            app,
            M,
            form.get("client_id"),
            &format!("client assertion: {e}"),
        )
    })?;
    let sub = string_claim(&parsed.claims, "sub")
        .map_err(|e| refused(app, M, Some(iss), &format!("client assertion: {e}")))?;
    if iss != sub {
        return Err(refused(
            app,
            M,
            Some(iss),
            "client assertion: `iss` and `sub` must both be the client ID",
        ));
    }
    if form.get("client_id").is_some_and(|c| c != iss) {
        return Err(refused(
            app,
            M,
            Some(iss),
            "`client_id` differs from the assertion's `iss`",
        ));
    }
    let client: &ClientEntry = snap
        .clients
        .get(iss)
        .filter(|c| c.spec.auth == ClientAuth::PrivateKeyJwt)
        .ok_or_else(|| {
            refused(
                app,
                M,
                Some(iss),
                "unknown client, or not a private_key_jwt client",
            )
        })?;
    match &parsed.kid {
        Some(kid) => {
            let key = client.keys.get(kid).ok_or_else(|| {
                refused(
                    app,
                    M,
                    Some(iss),
                    "the assertion's `kid` is not among the client's registered keys",
                )
            })?;
            parsed
                .verify_with(key)
                .map_err(|e| refused(app, M, Some(iss), &format!("client assertion: {e}")))?;
        }
        // RFC 7523 does not require a `kid` (authlib sends none): try the client's keys, a
        // bounded number, as node-oidc-provider and Keycloak do. `verify_with` binds the
        // algorithm to each key, so only keys of the header's `alg` can succeed.
        None => {
            let verified = client
                .keys
                .keys()
                .take(MAX_KEYS_WITHOUT_KID)
                .any(|key| parsed.verify_with(key).is_ok());
            if !verified {
                return Err(refused(
                    app,
                    M,
                    Some(iss),
                    "client assertion: it names no `kid` and no registered key of the client verifies it",
                ));
            }
        }
    }
    let now = tessera_core::now_unix();
    let exp = check_times(
        &parsed.claims,
        &TimeRules {
            now,
            leeway: LEEWAY,
            max_ahead: Some(MAX_ASSERTION_AHEAD),
        },
    )
    .map_err(|e| refused(app, M, Some(iss), &format!("client assertion: {e}")))?;
    let token_endpoint = issuer.endpoint("token");
    audience_contains(
        &parsed.claims,
        &[issuer.url.as_str(), token_endpoint.as_str()],
    )
    .map_err(|_| {
        refused(
            app,
            M,
            Some(iss),
            &format!(
                "client assertion: `aud` must be `{}` or `{token_endpoint}`",
                issuer.url
            ),
        )
    })?;
    let jti = string_claim(&parsed.claims, "jti")
        .map_err(|e| refused(app, M, Some(iss), &format!("client assertion: {e}")))?;
    if jti.len() > 256 {
        return Err(refused(
            app,
            M,
            Some(iss),
            "client assertion: `jti` is longer than 256 characters",
        ));
    }
    let claim = tessera_store::AssertionClaim {
        client_id: iss.to_owned(),
        jti: jti.to_owned(),
        expires_at: exp + LEEWAY,
    };
    Ok(AuthedClient {
        id: iss.to_owned(),
        method: M,
        claim: Some(claim),
    })
}

/// Keys tried for an assertion without a `kid` (each try is a signature verification).
const MAX_KEYS_WITHOUT_KID: usize = 8;

/// Records a refused client (best effort: the refusal stands either way); the error to answer.
pub(crate) async fn audited(app: &App, (event, err): (AuditEvent, ApiError)) -> ApiError {
    app.audit_refusal(event).await;
    err
}

/// Whether the request carries a client authentication method other than its certificate.
pub(crate) fn other_client_auth(headers: &HeaderMap, form: &Form) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || form.get("client_secret").is_some()
        || form.get("client_assertion").is_some()
}

#[cfg(test)]
mod tests {
    use super::form_decode;

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode(""), "");
    }
}
