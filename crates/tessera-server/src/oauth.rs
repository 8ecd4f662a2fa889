//! The OAuth 2.0 endpoints: token (RFC 6749 §4.4 with RFC 7523 client assertions and RFC 8707
//! targets), introspection (RFC 7662) and revocation (RFC 7009).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tessera_core::manifest::ClientAuth;
use tessera_core::{ClientId, Scope, SpiffeId, TrustDomain};
use tessera_store::AuditEvent;
use tessera_token::claims::{
    audience_contains, check_times, numeric_date, string_claim, TimeRules,
};
use tessera_token::{sign, AccessTokenClaims, Unverified, TYP_ACCESS_TOKEN};

use crate::error::{ApiError, OAuthCode};
use crate::metrics::{IssueLabels, MethodLabels};
use crate::state::{ClientEntry, Snapshot};
use crate::App;
use tessera_policy::Explanation;

pub const CLIENT_CREDENTIALS: &str = "client_credentials";
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Allowed clock skew for client assertions.
const LEEWAY: i64 = 30;
/// Client assertions may not live longer than this (RFC 7523 §3 leaves it to us).
const MAX_ASSERTION_AHEAD: i64 = 300;

/// Which issuer a request addressed: a trust domain and the issuer URL it was reached by.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub td: TrustDomain,
    pub url: String,
}

impl Issuer {
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.url)
    }
}

/// A parsed `application/x-www-form-urlencoded` body. RFC 6749 §3.2: parameters must not
/// repeat (except the RFC 8707/8693 target parameters); empty values count as absent.
#[derive(Debug, Default)]
pub struct Form {
    params: HashMap<String, String>,
    targets: Vec<String>,
    /// Where the request came from (`context.source_ip`), when the listener knows.
    pub source_ip: Option<std::net::IpAddr>,
    /// The verified client certificate chain of the connection, if one was presented.
    pub peer: Option<crate::tls::PeerCertificates>,
}

impl Form {
    pub fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Self, ApiError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = ct.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(ApiError::oauth(
                OAuthCode::InvalidRequest,
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut form = Self::default();
        for (k, v) in form_urlencoded::parse(body) {
            if v.is_empty() {
                continue;
            }
            if k == "resource" || k == "audience" {
                form.targets.push(v.into_owned());
                continue;
            }
            if form
                .params
                .insert(k.clone().into_owned(), v.into_owned())
                .is_some()
            {
                return Err(ApiError::oauth(
                    OAuthCode::InvalidRequest,
                    format!("parameter `{}` appears more than once", truncate(&k, 40)),
                ));
            }
        }
        Ok(form)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The `audience` and `resource` values, in order.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// A request for one target and optional scopes, made by Tessera itself on a workload's
    /// behalf (the managed-identity endpoint).
    pub fn for_target(target: &str, scope: Option<&str>) -> Self {
        let mut form = Self::default();
        form.targets.push(target.to_owned());
        if let Some(s) = scope.filter(|s| !s.is_empty()) {
            form.params.insert("scope".into(), s.to_owned());
        }
        form
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The authenticated client.
#[derive(Debug)]
pub struct AuthedClient {
    pub id: String,
    pub method: &'static str,
    /// For `private_key_jwt`: the assertion's `jti`, still to be claimed (single use) in the same
    /// commit as the request's audit record.
    pub claim: Option<tessera_store::AssertionClaim>,
}

fn client_failure(
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
        kind: "client.auth_failed".into(),
        actor: actor.clone(),
        subject: actor,
        outcome: "denied".into(),
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
pub async fn authenticate(
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
async fn replayed(app: &App, client_id: &str) -> ApiError {
    let (event, err) = client_failure(
        app,
        "private_key_jwt",
        Some(client_id),
        "client assertion: this `jti` was used before (replay)",
    );
    if let Err(e) = app.audit.append(event).await {
        app.metrics.audit_failures.inc();
        tracing::error!(error = %e, "could not record a replayed client assertion");
    }
    err
}

/// Appends the request's audit record, claiming the client's assertion `jti` in the same commit.
async fn record(app: &App, client: &AuthedClient, event: AuditEvent) -> Result<(), ApiError> {
    let written = match &client.claim {
        None => app.audit.append(event).await.map(|_| true),
        Some(claim) => app
            .audit
            .append_claimed(claim.clone(), event)
            .await
            .map(|r| r.is_some()),
    };
    match written {
        Ok(true) => Ok(()),
        Ok(false) => Err(replayed(app, &client.id).await),
        Err(e) => {
            app.metrics.audit_failures.inc();
            Err(ApiError::unavailable(e))
        }
    }
}

/// Authenticates the client by exactly one of the three methods, leaving an assertion's `jti`
/// to be claimed by the caller. Failures are audited.
async fn authenticate_deferred(
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
            // The refusal stands whether or not its record could be written.
            if let Err(e) = app.audit.append(event).await {
                app.metrics.audit_failures.inc();
                tracing::error!(error = %e, "could not record a client authentication failure");
            }
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
    let Some(client) = snap.clients.get(id) else {
        return Err(refused(app, method, Some(id), WRONG));
    };
    if client.spec.auth != ClientAuth::ClientSecret {
        return Err(refused(
            app,
            method,
            Some(id),
            "this client authenticates with private_key_jwt, not a secret",
        ));
    }
    let Some((record, tag)) = &client.secret else {
        return Err(refused(
            app,
            method,
            Some(id),
            "this client has no secret yet: issue one with `tessera client secret`",
        ));
    };
    // Machine secrets are 256-bit random values: a keyed hash is the right cost, and
    // `hmac::verify` compares in constant time.
    if ring::hmac::verify(&app.hmac, secret.as_bytes(), tag).is_err() {
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
    let key = match &parsed.kid {
        Some(kid) => client.keys.get(kid).cloned(),
        None => None,
    };
    let key = key.ok_or_else(|| {
        refused(
            app,
            M,
            Some(iss),
            "the assertion's `kid` is not among the client's registered keys",
        )
    })?;
    parsed
        .verify_with(&key)
        .map_err(|e| refused(app, M, Some(iss), &format!("client assertion: {e}")))?;
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

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// `POST /token` and `POST /<td>/token`.
pub async fn token(
    app: Arc<App>,
    issuer: Issuer,
    conn: crate::tls::ConnInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let mut form = match Form::parse(&headers, &body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    form.source_ip = conn.source_ip;
    form.peer = conn.peer;
    let grant_type = match form.get("grant_type") {
        Some(CLIENT_CREDENTIALS) => CLIENT_CREDENTIALS,
        Some(crate::federation::TOKEN_EXCHANGE) => crate::federation::TOKEN_EXCHANGE,
        Some(crate::federation::JWT_BEARER) => crate::federation::JWT_BEARER,
        Some(other) => {
            count(&app, "other", "refused");
            return ApiError::oauth(
                OAuthCode::UnsupportedGrantType,
                format!(
                    "grant type `{}` is not supported here (client_credentials, token-exchange and jwt-bearer are)",
                    truncate(other, 80)
                ),
            )
            .into_response();
        }
        None => {
            return ApiError::oauth(OAuthCode::InvalidRequest, "`grant_type` is missing")
                .into_response()
        }
    };
    let snap = app.snapshot();
    let result = match grant_type {
        CLIENT_CREDENTIALS => client_credentials(&app, &snap, &issuer, &headers, &form).await,
        g => crate::federation::exchange(&app, &snap, &issuer, &headers, &form, g).await,
    };
    let resp = match result {
        Ok(body) => {
            count(&app, grant_type, "issued");
            no_store(Json(body).into_response())
        }
        Err(e) => {
            let result = match &e {
                ApiError::Client { .. } => "client_auth_failed",
                ApiError::Unavailable(_) => "error",
                _ => "denied",
            };
            count(&app, grant_type, result);
            e.into_response()
        }
    };
    app.metrics
        .issue_seconds
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn count(app: &App, grant_type: &'static str, result: &'static str) {
    app.metrics
        .tokens
        .get_or_create(&IssueLabels { grant_type, result })
        .inc();
}

async fn client_credentials(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Value, ApiError> {
    if let Some(peer) = form
        .peer
        .as_ref()
        .filter(|_| !other_client_auth(headers, form))
    {
        return tls_client_credentials(app, snap, issuer, form, peer).await;
    }
    let client = authenticate_deferred(app, snap, issuer, headers, form).await?;
    let entry = snap
        .clients
        .get(&client.id)
        .ok_or_else(|| ApiError::unavailable("authenticated client vanished"))?;
    let caller = entry.spec.workload.clone();
    let minted = match mint(
        snap,
        issuer,
        &caller,
        &client.id,
        client.method,
        form,
        CLIENT_CREDENTIALS,
        &MintOptions::default(),
    ) {
        Ok(m) => m,
        Err(denied) => {
            let (event, err) = *denied;
            return match record(app, &client, event).await {
                // A replayed assertion is refused as such, whatever else was wrong.
                Err(replay @ ApiError::Client { .. }) => Err(replay),
                Err(e) => {
                    tracing::error!(error = %e, "could not record a token denial");
                    Err(err)
                }
                Ok(()) => Err(err),
            };
        }
    };
    // Fail closed: the token leaves only once its record is durable.
    record(app, &client, minted.event.clone()).await?;
    Ok(minted.response())
}

/// Records a refused client (best effort: the refusal stands either way); the error to answer.
async fn audited(app: &App, (event, err): (AuditEvent, ApiError)) -> ApiError {
    if let Err(e) = app.audit.append(event).await {
        app.metrics.audit_failures.inc();
        tracing::error!(error = %e, "could not record a refused client");
    }
    err
}

/// Whether the request carries a client authentication method other than its certificate.
fn other_client_auth(headers: &HeaderMap, form: &Form) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || form.get("client_secret").is_some()
        || form.get("client_assertion").is_some()
}

/// RFC 8705 §2.1 `tls_client_auth` for workloads: the client certificate is the workload's
/// X.509-SVID (its chain validated by the listener against its trust domain's bundle) and
/// `client_id` is its SPIFFE ID. No secret is involved. The token is bound to that certificate
/// (`cnf.x5t#S256`, RFC 8705 §3) and never outlives it.
async fn tls_client_credentials(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    form: &Form,
    peer: &crate::tls::PeerCertificates,
) -> Result<Value, ApiError> {
    const M: &str = "tls_client_auth";
    let claimed = form.get("client_id").ok_or_else(|| {
        ApiError::oauth(
            OAuthCode::InvalidRequest,
            "`client_id` is required with tls_client_auth (RFC 8705 §2): the SPIFFE ID of the client certificate",
        )
    })?;
    let fail = |why: &str| audited(app, client_failure(app, M, Some(claimed), why));
    let Some(leaf) = peer.0.first() else {
        return Err(fail("no client certificate").await);
    };
    let id = match tessera_ca::leaf_spiffe_id(leaf) {
        Ok(id) => id,
        Err(e) => return Err(fail(&format!("client certificate: {e}")).await),
    };
    if claimed != id.as_str() {
        return Err(fail("`client_id` is not the SPIFFE ID of the client certificate").await);
    }
    if id.trust_domain_str() != issuer.td.as_str() {
        return Err(
            fail("the client certificate is of another trust domain than this issuer's").await,
        );
    }
    if !snap.workloads.contains_key(&id) {
        return Err(fail("no such workload is declared").await);
    }
    let now = tessera_core::now_unix();
    let not_after = match tessera_ca::validity(leaf) {
        Some((_, naf)) if naf > now => naf,
        // A keep-alive connection can outlast its certificate.
        _ => return Err(fail("the client certificate has expired").await),
    };
    let options = MintOptions {
        not_after: Some(not_after),
        cnf: Some(json!({"x5t#S256": tessera_token::x5t_s256(leaf.as_ref())})),
        ..MintOptions::default()
    };
    let client = AuthedClient {
        id: id.to_string(),
        method: M,
        claim: None,
    };
    let minted = match mint(
        snap,
        issuer,
        &id,
        id.as_str(),
        M,
        form,
        CLIENT_CREDENTIALS,
        &options,
    ) {
        Ok(m) => m,
        Err(denied) => return Err(record_denial(app, denied, None).await),
    };
    record(app, &client, minted.event.clone()).await?;
    Ok(minted.response())
}

/// An access token signed and its audit record, not yet written.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub claims: AccessTokenClaims,
    pub ttl: i64,
    pub event: AuditEvent,
}

impl Minted {
    /// The RFC 6749 §5.1 response body.
    pub fn response(&self) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("access_token".into(), self.token.clone().into());
        body.insert("token_type".into(), "Bearer".into());
        body.insert("expires_in".into(), self.ttl.into());
        body.insert(
            "issued_token_type".into(),
            "urn:ietf:params:oauth:token-type:access_token".into(),
        );
        if !self.claims.scope.is_empty() {
            body.insert("scope".into(), self.claims.scope.clone().into());
        }
        Value::Object(body)
    }
}

/// Records a refusal from [`mint`] (best effort: the refusal stands either way) and returns the
/// error to answer with. `actor` replaces the event's actor when given.
pub async fn record_denial(
    app: &App,
    denied: Box<(AuditEvent, ApiError)>,
    actor: Option<String>,
) -> ApiError {
    let (mut event, err) = *denied;
    if let Some(a) = actor {
        event.actor = a;
    }
    if let Err(e) = app.audit.append(event).await {
        tracing::error!(error = %e, "could not record a token denial");
    }
    err
}

/// What a delegated or federated token adds to a plain issuance.
#[derive(Debug, Clone, Default)]
pub struct MintOptions {
    /// For the policy decision (`context.delegated`, `actor`, `trust`).
    pub context: tessera_policy::IssueContext,
    /// The `act` claim (RFC 8693 §4.1).
    pub act: Option<Value>,
    /// The token may not outlive this (a delegated token never outlives the original).
    pub not_after: Option<i64>,
    /// The token's `sub` when it is not the caller decided for (delegation: the original
    /// caller, while the actor is decided for).
    pub subject: Option<SpiffeId>,
    /// Extra audit detail (the trust, the outside issuer and subject, the actor).
    pub detail: serde_json::Map<String, Value>,
    /// When the subject token of an exchange was issued (`context.token_age` in policies).
    pub subject_iat: Option<i64>,
    /// RFC 8705 §3.1 confirmation: the token is bound to the client certificate it was asked with.
    pub cnf: Option<Value>,
}

/// Decides and signs an access token for `caller`, whoever authenticated it (an OAuth client, a
/// node agent that attested the process, an outside issuer through a trust, or a delegating
/// service). On refusal, the denial's audit event and the error.
#[expect(
    clippy::too_many_arguments,
    reason = "each is a distinct part of the request"
)]
pub fn mint(
    snap: &Snapshot,
    issuer: &Issuer,
    caller: &SpiffeId,
    client_id: &str,
    auth: &str,
    form: &Form,
    grant_type: &str,
    options: &MintOptions,
) -> Result<Minted, Box<(AuditEvent, ApiError)>> {
    let with_detail = |mut v: Value| {
        if let Value::Object(m) = &mut v {
            m.extend(options.detail.clone());
        }
        v
    };
    let now = tessera_core::now_unix();
    let env = tessera_policy::Env {
        now,
        source_ip: form.source_ip,
        token_age: options.subject_iat.map_or(0, |iat| now - iat),
    };
    let deny_with = |code: OAuthCode,
                     reason: String,
                     target: Option<&str>,
                     explanation: Option<&Explanation>| {
        let mut detail = json!({"error": code.as_str(), "reason": reason, "target": target, "grant_type": grant_type});
        if let (Some(x), Value::Object(m)) = (explanation, &mut detail) {
            m.insert("determined_by".into(), json!(x.decision.determined_by));
            m.insert("missing".into(), json!(x.missing));
        }
        let event = AuditEvent {
            kind: "token.denied".into(),
            actor: client_id.to_owned(),
            subject: caller.to_string(),
            outcome: "denied".into(),
            detail: with_detail(detail),
        };
        Box::new((event, ApiError::oauth(code, reason)))
    };
    let deny = |code: OAuthCode, reason: String, target: Option<&str>| {
        deny_with(code, reason, target, None)
    };
    let (target, scopes, ttl) = match decide(snap, issuer, caller, form, &options.context, &env) {
        Ok(d) => d,
        Err(Refusal::Denied(code, reason, target)) => {
            return Err(deny(code, reason, target.as_deref()))
        }
        Err(Refusal::Policy(reason, target, explanation)) => {
            return Err(deny_with(
                OAuthCode::InvalidTarget,
                reason,
                Some(target.as_str()),
                Some(&explanation),
            ))
        }
        Err(Refusal::Limited(limited, target)) => {
            let reason = format!(
                "`{caller}` asked for tokens for `{target}` faster than its grant allows ({}); retry after {} s",
                limited.rate,
                limited.retry_after_secs()
            );
            let event = AuditEvent {
                kind: "token.limited".into(),
                actor: client_id.to_owned(),
                subject: caller.to_string(),
                outcome: "denied".into(),
                detail: with_detail(
                    json!({"reason": reason, "target": target, "grant_type": grant_type, "rate": limited.rate.to_string()}),
                ),
            };
            return Err(Box::new((
                event,
                ApiError::RateLimited {
                    description: reason,
                    retry_after_secs: limited.retry_after_secs(),
                },
            )));
        }
    };
    let exp = options
        .not_after
        .map_or(now + ttl, |cap| cap.min(now + ttl));
    if exp <= now {
        return Err(deny(
            OAuthCode::InvalidGrant,
            "the original token has expired".into(),
            Some(target.as_str()),
        ));
    }
    let ttl = exp - now;
    let unavailable = |e: String| {
        Box::new((
            AuditEvent {
                kind: "token.failed".into(),
                actor: client_id.to_owned(),
                subject: caller.to_string(),
                outcome: "error".into(),
                detail: json!({"reason": e}),
            },
            ApiError::unavailable(e),
        ))
    };
    let signing = snap
        .keys
        .signing(&issuer.td, now)
        .ok_or_else(|| unavailable(format!("no signing key for `{}`", issuer.td)))?;
    let jti = tessera_token::strict::b64_encode(
        tessera_token::seal::random_bytes::<16>().map_err(|e| unavailable(e.to_string()))?,
    );
    let sub = options.subject.as_ref().unwrap_or(caller);
    // The `environment` claim describes the subject (the original caller when delegated).
    let workload = snap.workloads.get(sub);
    let claims = AccessTokenClaims {
        iss: issuer.url.clone(),
        sub: sub.to_string(),
        aud: target.to_string(),
        client_id: client_id.to_owned(),
        scope: Scope::join(&scopes),
        iat: now,
        exp: now + ttl,
        jti: jti.clone(),
        environment: workload
            .and_then(|w| w.spec.environment.as_ref())
            .map(ToString::to_string),
        act: options.act.clone(),
        cnf: options.cnf.clone(),
    };
    let token =
        sign(&signing.key, TYP_ACCESS_TOKEN, &claims).map_err(|e| unavailable(e.to_string()))?;
    let mut detail = json!({"jti": jti, "aud": claims.aud, "scope": claims.scope, "exp": claims.exp,
                       "grant_type": grant_type, "auth": auth, "iss": claims.iss});
    if let (Some(cnf), Value::Object(m)) = (&claims.cnf, &mut detail) {
        m.insert("cnf".into(), cnf.clone());
    }
    let event = AuditEvent {
        kind: "token.issued".into(),
        actor: client_id.to_owned(),
        subject: sub.to_string(),
        outcome: "ok".into(),
        detail: with_detail(detail),
    };
    Ok(Minted {
        token,
        claims,
        ttl,
        event,
    })
}

type Denial = (OAuthCode, String, Option<String>);

/// Why [`decide`] refused.
enum Refusal {
    Denied(OAuthCode, String, Option<String>),
    /// The policy said no: the reason, the target and the full explanation for the audit.
    Policy(String, SpiffeId, Box<Explanation>),
    Limited(tessera_policy::limit::Limited, SpiffeId),
}

impl From<Denial> for Refusal {
    fn from((code, reason, target): Denial) -> Self {
        Self::Denied(code, reason, target)
    }
}

/// Resolves the target and scopes, asks the policy engine, then the target's rate limit. No
/// I/O.
fn decide(
    snap: &Snapshot,
    issuer: &Issuer,
    caller: &SpiffeId,
    form: &Form,
    context: &tessera_policy::IssueContext,
    env: &tessera_policy::Env,
) -> Result<(SpiffeId, Vec<Scope>, i64), Refusal> {
    let (target, scopes, ttl) = resolve(snap, issuer, caller, form)?;
    if Some(&target) == crate::policy::authority_id(issuer.td.as_str()).as_ref() {
        // A token for the authority's own workload APIs: no grant needed, no scopes possible
        // (`resolve` refused any); each API authorizes the caller itself.
        return Ok((target, scopes, ttl));
    }
    let decision = snap
        .engine
        .decide_issue(caller, &target, &scopes, context, env);
    snap.counters.decision("issue", &decision);
    if let Some(shadow) = &snap.shadow {
        let candidate = shadow
            .engine
            .decide_issue(caller, &target, &scopes, context, env);
        shadow.observe(
            caller.as_str(),
            target.as_str(),
            "issue_token",
            decision.allowed,
            &candidate,
            || format!("issue_token [{}]", Scope::join(&scopes)),
        );
    }
    if !decision.allowed {
        let explanation = snap
            .engine
            .explain_issue(caller, &target, &scopes, context, env);
        return Err(Refusal::Policy(
            format!("`{caller}` may not call `{target}`: {}", decision.reason()),
            target,
            Box::new(explanation),
        ));
    }
    if let Err(limited) = snap.token_limits.check(caller, &target) {
        snap.counters.limited("issue");
        return Err(Refusal::Limited(limited, target));
    }
    Ok((target, scopes, ttl))
}

/// The target, the scopes the token would carry and its lifetime, before any policy.
fn resolve(
    snap: &Snapshot,
    issuer: &Issuer,
    caller: &SpiffeId,
    form: &Form,
) -> Result<(SpiffeId, Vec<Scope>, i64), Denial> {
    let Some(workload) = snap.workloads.get(caller) else {
        return Err((
            OAuthCode::UnauthorizedClient,
            format!("the client's workload `{caller}` is not registered"),
            None,
        ));
    };
    if workload.revoked_at.is_some() {
        return Err((
            OAuthCode::UnauthorizedClient,
            format!("workload `{caller}` has been revoked"),
            None,
        ));
    }
    if caller.trust_domain_str() != issuer.td.as_str() {
        return Err((
            OAuthCode::UnauthorizedClient,
            format!(
                "the client's workload is in trust domain `{}`; this issuer serves `{}`",
                caller.trust_domain_str(),
                issuer.td
            ),
            None,
        ));
    }
    let asked = match form.targets.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err((
                OAuthCode::InvalidTarget,
                "name the target service with `audience` or `resource`".into(),
                None,
            ))
        }
        _ => {
            return Err((
                OAuthCode::InvalidTarget,
                "one token is for one target: give one `audience` or `resource`".into(),
                None,
            ))
        }
    };
    let shown = truncate(asked, 200);
    let authority = crate::policy::authority_id(issuer.td.as_str());
    let target = if asked.trim_end_matches('/') == issuer.url.trim_end_matches('/') {
        authority.as_ref()
    } else {
        snap.targets.get(asked)
    };
    let Some(target) = target else {
        return Err((
            OAuthCode::InvalidTarget,
            format!("`{shown}` is not a registered workload or alias"),
            Some(shown),
        ));
    };
    if target.trust_domain_str() != issuer.td.as_str() {
        return Err((
            OAuthCode::InvalidTarget,
            format!("`{target}` is in another trust domain than this issuer"),
            Some(target.to_string()),
        ));
    }
    let target_spec = snap.workloads.get(target).map(|w| &w.spec);
    let requested = match form.get("scope") {
        Some(s) => Scope::parse_list(s).map_err(|e| {
            (
                OAuthCode::InvalidScope,
                e.to_string(),
                Some(target.to_string()),
            )
        })?,
        None => Vec::new(),
    };
    let granted = snap.engine.granted_scopes(caller, target);
    let is_jit = |s: &Scope| target_spec.is_some_and(|t| t.jit_scope(s).is_some());
    let scopes: Vec<Scope> = if requested.is_empty() {
        // Just-in-time scopes are issued only when asked for, alone.
        granted.iter().filter(|s| !is_jit(s)).cloned().collect()
    } else {
        for s in &requested {
            if target_spec.is_some_and(|t| !t.scopes.contains(s)) {
                return Err((
                    OAuthCode::InvalidScope,
                    format!("`{target}` does not define scope `{s}`"),
                    Some(target.to_string()),
                ));
            }
            if !granted.contains(s) {
                return Err((
                    OAuthCode::InvalidScope,
                    format!("no grant gives `{caller}` scope `{s}` on `{target}`"),
                    Some(target.to_string()),
                ));
            }
        }
        requested
    };
    // A just-in-time scope caps the lifetime of the token that carries it.
    let ttl = scopes
        .iter()
        .filter_map(|s| target_spec.and_then(|t| t.jit_scope(s)))
        .map(|j| j.max_ttl.as_secs())
        .fold(workload.spec.jwt_ttl.as_secs(), u64::min);
    let ttl = i64::try_from(ttl).unwrap_or(300);
    Ok((target.clone(), scopes, ttl))
}

/// What an introspection or revocation finds out about a token: its claims if it is one of ours,
/// correctly signed and unexpired.
pub(crate) fn our_token(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    token: &str,
) -> Option<serde_json::Map<String, Value>> {
    let parsed = Unverified::parse(token).ok()?;
    let typ = parsed.typ.as_deref()?;
    if !(typ.eq_ignore_ascii_case(TYP_ACCESS_TOKEN)
        || typ.eq_ignore_ascii_case("application/at+jwt"))
    {
        return None;
    }
    let now = tessera_core::now_unix();
    let key = snap.keys.find(&issuer.td, parsed.kid.as_ref()?, now)?;
    parsed.verify_with(key).ok()?;
    let claims = parsed.into_claims();
    let iss = claims.get("iss")?.as_str()?;
    if !app.issuer_urls(&issuer.td).iter().any(|u| u == iss) {
        return None;
    }
    check_times(
        &claims,
        &TimeRules {
            now,
            leeway: 0,
            max_ahead: None,
        },
    )
    .ok()?;
    Some(claims)
}

/// The common start of introspection and revocation: a form, an authenticated client, and the
/// `token` parameter.
async fn token_request(
    app: &App,
    issuer: &Issuer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Arc<Snapshot>, AuthedClient, String), ApiError> {
    let form = Form::parse(headers, body)?;
    let snap = app.snapshot();
    let client = authenticate(app, &snap, issuer, headers, &form).await?;
    let token = form
        .get("token")
        .ok_or_else(|| ApiError::oauth(OAuthCode::InvalidRequest, "`token` is missing"))?
        .to_owned();
    Ok((snap, client, token))
}

/// `POST /introspect`: RFC 7662. Only `{"active": false}` for anything inactive, and a client
/// sees only tokens it holds or that are addressed to its workload.
pub async fn introspect(
    app: Arc<App>,
    issuer: Issuer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (snap, client, token) = token_request(&app, &issuer, &headers, &body).await?;
        let token = token.as_str();
        let inactive = json!({"active": false});
        let Some(claims) = our_token(&app, &snap, &issuer, token) else {
            return Ok(inactive);
        };
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let iat = numeric_date(&claims, "iat").ok().flatten().unwrap_or(0);
        if snap.revoked_jtis.contains(jti) || snap.workload_revoked(sub, iat) {
            return Ok(inactive);
        }
        let caller_workload = snap
            .clients
            .get(&client.id)
            .map(|c| c.spec.workload.to_string());
        let holder = claims.get("client_id").and_then(Value::as_str) == Some(client.id.as_str());
        let audience =
            caller_workload.is_some_and(|w| audience_contains(&claims, &[w.as_str()]).is_ok());
        if !(holder || audience) {
            return Ok(inactive);
        }
        let mut out = claims;
        out.insert("active".into(), Value::Bool(true));
        out.insert("token_type".into(), Value::String("Bearer".into()));
        Ok::<_, ApiError>(Value::Object(out))
    }
    .await;
    match result {
        Ok(v) => no_store(Json(v).into_response()),
        Err(e) => e.into_response(),
    }
}

/// `POST /revoke`: RFC 7009. A client may revoke the tokens issued to it; the answer is 200
/// whether or not the token was valid, so it reveals nothing.
pub async fn revoke(app: Arc<App>, issuer: Issuer, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let (snap, client, token) = token_request(&app, &issuer, &headers, &body).await?;
        let token = token.as_str();
        let Some(claims) = our_token(&app, &snap, &issuer, token) else {
            return Ok(());
        };
        if claims.get("client_id").and_then(Value::as_str) != Some(client.id.as_str()) {
            return Ok(());
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let exp = numeric_date(&claims, "exp").ok().flatten().unwrap_or(0);
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        app.revoke_token(&jti, exp, &client.id, &sub).await
    }
    .await;
    match result {
        Ok(()) => no_store(axum::http::StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn form_rules() {
        let h = headers("application/x-www-form-urlencoded; charset=UTF-8");
        let f = Form::parse(
            &h,
            &Bytes::from_static(
                b"grant_type=client_credentials&scope=a+b&resource=x&audience=&client_id=c%3A1",
            ),
        )
        .unwrap();
        assert_eq!(f.get("scope"), Some("a b"));
        assert_eq!(f.get("client_id"), Some("c:1"));
        assert_eq!(f.targets, vec!["x"]);
        let e = Form::parse(&h, &Bytes::from_static(b"scope=a&scope=b")).unwrap_err();
        assert!(format!("{e:?}").contains("appears more than once"));
        assert!(Form::parse(&headers("application/json"), &Bytes::from_static(b"{}")).is_err());
        assert!(Form::parse(&HeaderMap::new(), &Bytes::from_static(b"a=b")).is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode(""), "");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any body: a parsed form or an RFC 6749 error, never a panic.
        #[test]
        fn form_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
            let _ = Form::parse(&h, &Bytes::from(body));
        }
    }
}
