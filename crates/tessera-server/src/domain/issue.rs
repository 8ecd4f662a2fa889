//! Issuing an access token, whoever authenticated the caller (an OAuth client, a workload's
//! X.509-SVID, a node agent that attested the process, an outside issuer through a trust, or a
//! delegating service). Every grant builds an [`IssueRequest`] and calls [`commit`]:
//! resolve the target and scopes -> decide (policy, rate limit) -> sign -> record, and the token
//! leaves only once its record is durable.

use std::net::IpAddr;

use serde_json::{json, Value};
use tessera_core::{Scope, SpiffeId};
use tessera_policy::Explanation;
use tessera_store::{AssertionClaim, AuditEvent, AuditKind, Outcome};
use tessera_token::{sign, AccessTokenClaims, TYP_ACCESS_TOKEN};
use tracing::field::Empty;

use crate::app::status_lists::StatusIndex;
use crate::app::{authority_id, App, Issuer, Snapshot};

/// RFC 6749 §5.2 error codes (plus RFC 8707's `invalid_target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable,
}

impl OAuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// The grant types Tessera issues under. The token endpoint accepts the first three; node agents
/// ask for their workloads' tokens on the agent API (`managed_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantType {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 8693 token exchange (federation and delegation).
    TokenExchange,
    /// RFC 7523 §2.1.
    JwtBearer,
    /// A node agent asking for a workload it attested.
    ManagedIdentity,
}

impl GrantType {
    /// The value of `grant_type` (and of the audit records' and metrics' `grant_type`).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
            Self::JwtBearer => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            Self::ManagedIdentity => "managed_identity",
        }
    }

    /// A `grant_type` the token endpoint accepts.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            Self::ClientCredentials,
            Self::TokenExchange,
            Self::JwtBearer,
        ]
        .into_iter()
        .find(|g| g.as_str() == s)
    }
}

/// What one issuance asks for, built by each grant from what it authenticated.
#[derive(Debug)]
pub(crate) struct IssueRequest {
    /// The workload the policy decides for (the actor, when delegating).
    pub caller: SpiffeId,
    /// The token's `client_id`, and the actor of its audit records.
    pub client_id: String,
    /// How the caller proved itself (`client_secret_basic`, `private_key_jwt`,
    /// `tls_client_auth`, `federation`, `delegation`, `node_agent`).
    pub auth: &'static str,
    pub grant_type: GrantType,
    /// The `audience` and `resource` values asked for; exactly one is accepted.
    pub targets: Vec<String>,
    /// The `scope` parameter, if given.
    pub scope: Option<String>,
    /// Where the request came from (`context.source_ip`).
    pub source_ip: Option<IpAddr>,
    pub options: MintOptions,
    /// Another actor for the audit records than `client_id` (the node agent that asked).
    pub audit_actor: Option<String>,
    /// A single-use value (a client assertion's `jti`, a single-use outside token) claimed in the
    /// same commit as the request's record, granted or denied.
    pub claim: Option<AssertionClaim>,
}

/// Why an issuance was refused. `error.rs` maps each to its HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// RFC 6749 §5.2 (and RFC 8707 `invalid_target`): the request may not have this token.
    #[error("{}: {reason}", code.as_str())]
    Refused { code: OAuthCode, reason: String },
    /// The grant's `token_rate` was exceeded.
    #[error("rate limited: {reason}")]
    Limited {
        reason: String,
        retry_after_secs: u64,
    },
    /// The request's single-use value was claimed before: nothing was issued.
    #[error("a single-use credential was presented again")]
    Replayed,
    /// Signing or recording failed: nothing was issued.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl IssueError {
    /// A bounded word for metrics and spans: the RFC 6749 code, `rate_limited`, `replayed` or
    /// `unavailable`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Refused { code, .. } => code.as_str(),
            Self::Limited { .. } => "rate_limited",
            Self::Replayed => "replayed",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn refused(code: OAuthCode, reason: impl Into<String>) -> Self {
        Self::Refused {
            code,
            reason: reason.into(),
        }
    }
}

/// A refusal from [`mint`] and its audit record, not yet written.
type Denied = Box<(AuditEvent, IssueError)>;

/// Decides, signs and records. The token leaves only once its record is durable (fail closed);
/// a refusal is recorded too (best effort: the refusal stands either way).
pub(crate) async fn commit(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    req: &IssueRequest,
) -> Result<Minted, IssueError> {
    let span = tracing::info_span!(
        target: tessera_telemetry::TARGET,
        "issue",
        "otel.name" = "tessera.issue",
        "tessera.grant_type" = req.grant_type.as_str(),
        "tessera.client.auth_method" = req.auth,
        "tessera.caller" = req.caller.as_str(),
        "tessera.target" = Empty,
        "tessera.decision" = Empty,
        "tessera.determined_by" = Empty,
        "tessera.audit.wait_us" = Empty,
        "error.type" = Empty,
    );
    let minted = span.in_scope(|| mint(snap, issuer, req, &app.status_index));
    let started = std::time::Instant::now();
    let out = match minted {
        Ok(minted) => {
            span.record("tessera.target", minted.claims.aud.as_str());
            span.record("tessera.decision", "allow");
            record(app, req, minted.event.clone())
                .await
                .map(|()| minted)
        }
        Err(denied) => {
            let (event, err) = *denied;
            if !span.is_disabled() {
                trace_refusal(&span, &event, &err);
            }
            match record(app, req, event).await {
                // A replayed credential is refused as such, whatever else was wrong.
                Err(IssueError::Replayed) => Err(IssueError::Replayed),
                Err(e) => {
                    tracing::error!(error = %e, "could not record a token denial");
                    Err(err)
                }
                Ok(()) => Err(err),
            }
        }
    };
    span.record(
        "tessera.audit.wait_us",
        i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
    );
    if let Err(e) = &out {
        span.record("error.type", e.kind());
    }
    out
}

/// A refusal's target and deciding policies on the issuance span (names only, from the record).
fn trace_refusal(span: &tracing::Span, event: &AuditEvent, err: &IssueError) {
    span.record(
        "tessera.decision",
        match err {
            IssueError::Limited { .. } => "limited",
            IssueError::Unavailable(_) => "error",
            _ => "deny",
        },
    );
    if let Some(t) = event.detail.get("target").and_then(Value::as_str) {
        span.record("tessera.target", t);
    }
    if let Some(by) = event.detail.get("determined_by").and_then(Value::as_array) {
        let by: Vec<&str> = by.iter().filter_map(Value::as_str).collect();
        span.record("tessera.determined_by", by.join(",").as_str());
    }
}

/// Appends the request's record, claiming its single-use value in the same commit.
async fn record(app: &App, req: &IssueRequest, mut event: AuditEvent) -> Result<(), IssueError> {
    if let Some(actor) = &req.audit_actor {
        event.actor = actor.clone();
    }
    let written = match &req.claim {
        None => app.audit.append(event).await.map(|_| true),
        Some(claim) => app
            .audit
            .append_claimed(claim.clone(), event)
            .await
            .map(|r| r.is_some()),
    };
    match written {
        Ok(true) => Ok(()),
        Ok(false) => Err(IssueError::Replayed),
        Err(e) => {
            app.metrics.audit_failures.inc();
            Err(IssueError::Unavailable(e.to_string()))
        }
    }
}

/// An access token signed and its audit record, not yet written.
#[derive(Debug)]
pub(crate) struct Minted {
    pub token: String,
    pub claims: AccessTokenClaims,
    pub ttl: i64,
    event: AuditEvent,
}

impl Minted {
    /// The RFC 6749 §5.1 response body.
    pub(crate) fn response(&self) -> Value {
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

/// What a delegated or federated token adds to a plain issuance.
#[derive(Debug, Clone, Default)]
pub(crate) struct MintOptions {
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

/// Decides and signs an access token; on refusal, the denial's audit record and the error.
/// No I/O: [`commit`] records.
fn mint(
    snap: &Snapshot,
    issuer: &Issuer,
    req: &IssueRequest,
    status: &StatusIndex,
) -> Result<Minted, Denied> {
    let IssueRequest {
        caller,
        client_id,
        auth,
        grant_type,
        options,
        ..
    } = req;
    let grant_type = grant_type.as_str();
    // Where the request came from: the advisor tells a client used from many places.
    let source_ip = req.source_ip;
    let with_detail = |mut v: Value| {
        if let Value::Object(m) = &mut v {
            m.extend(options.detail.clone());
            if let Some(ip) = source_ip {
                m.insert("source_ip".into(), ip.to_string().into());
            }
        }
        v
    };
    let now = tessera_core::now_unix();
    let env = tessera_policy::Env {
        now,
        source_ip: req.source_ip,
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
            kind: AuditKind::TokenDenied,
            actor: client_id.to_owned(),
            subject: caller.to_string(),
            outcome: Outcome::Denied,
            detail: with_detail(detail),
        };
        Box::new((event, IssueError::refused(code, reason)))
    };
    let deny = |code: OAuthCode, reason: String, target: Option<&str>| {
        deny_with(code, reason, target, None)
    };
    let (target, scopes, ttl) = match decide(snap, issuer, req, &options.context, &env) {
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
                kind: AuditKind::TokenLimited,
                actor: client_id.to_owned(),
                subject: caller.to_string(),
                outcome: Outcome::Denied,
                detail: with_detail(
                    json!({"reason": reason, "target": target, "grant_type": grant_type, "rate": limited.rate.to_string()}),
                ),
            };
            return Err(Box::new((
                event,
                IssueError::Limited {
                    reason,
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
                kind: AuditKind::TokenFailed,
                actor: client_id.to_owned(),
                subject: caller.to_string(),
                outcome: Outcome::Error,
                detail: json!({"reason": e}),
            },
            IssueError::Unavailable(e),
        ))
    };
    let signing = snap
        .keys
        .signing(&issuer.td, now)
        .ok_or_else(|| unavailable(format!("no signing key for `{}`", issuer.td)))?;
    // The token's place in a status list is part of its ID (`app::status_lists`).
    let (list, idx) = status.allocate();
    let jti = format!(
        "{list}.{idx}.{}",
        tessera_token::strict::b64_encode(
            tessera_token::seal::random_bytes::<16>().map_err(|e| unavailable(e.to_string()))?,
        )
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
        status: Some(json!({"status_list": {
            "idx": idx,
            "uri": issuer.endpoint(&format!("statuslists/{list}")),
        }})),
    };
    let token =
        sign(&signing.key, TYP_ACCESS_TOKEN, &claims).map_err(|e| unavailable(e.to_string()))?;
    // The log names the token by its ID and digest, never holds it.
    let mut detail = json!({"jti": jti, "digest": tessera_log::credential_digest(token.as_bytes()), "aud": claims.aud, "scope": claims.scope, "exp": claims.exp,
                       "grant_type": grant_type, "auth": auth, "iss": claims.iss});
    if let (Some(cnf), Value::Object(m)) = (&claims.cnf, &mut detail) {
        m.insert("cnf".into(), cnf.clone());
    }
    let event = AuditEvent {
        kind: AuditKind::TokenIssued,
        actor: client_id.to_owned(),
        subject: sub.to_string(),
        outcome: Outcome::Ok,
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
    req: &IssueRequest,
    context: &tessera_policy::IssueContext,
    env: &tessera_policy::Env,
) -> Result<(SpiffeId, Vec<Scope>, i64), Refusal> {
    let caller = &req.caller;
    let (target, scopes, ttl) = resolve(snap, issuer, req)?;
    if Some(&target) == authority_id(issuer.td.as_str()).as_ref() {
        // A token for the authority's own workload APIs: no grant needed, no scopes possible
        // (`resolve` refused any); each API authorizes the caller itself.
        return Ok((target, scopes, ttl));
    }
    let decision = snap
        .engine
        .decide_issue(caller, &target, &scopes, context, env);
    snap.counters.decision("issue", &decision);
    let span = tracing::Span::current();
    if !span.is_disabled() && decision.allowed {
        span.record(
            "tessera.determined_by",
            decision.determined_by.join(",").as_str(),
        );
    }
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
    req: &IssueRequest,
) -> Result<(SpiffeId, Vec<Scope>, i64), Denial> {
    let caller = &req.caller;
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
    let asked = match req.targets.as_slice() {
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
    let authority = authority_id(issuer.td.as_str());
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
    let requested = match req.scope.as_deref().filter(|s| !s.is_empty()) {
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

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
