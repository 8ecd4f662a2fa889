//! The node agents' API (`/agent/v1/...`): joining with a one-time token, then, authenticated by
//! the agent's own X.509-SVID over mTLS (`AgentCaller`), renewing it, syncing registrations
//! incrementally, signing workload SVIDs from CSRs, and minting JWT-SVIDs and access tokens for
//! workloads the agent attested.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tessera_core::agent_api::{
    AgentSvid, JoinRequest, JwtSvidRequest, JwtSvidResponse, K8sPsatRequest, RenewRequest,
    SignRequest, SignResponse, SignedItem, SyncResponse, TokenRequest, TokenResponse,
};
use tessera_core::{AgentId, SpiffeId, TrustDomain};
use tessera_store::{AgentRecord, AuditEvent, AuditKind, Op, Outcome, StoreError, SvidRecord};

use crate::app::{federated, App, Snapshot};
use crate::domain::caller::{in_good_standing, registration, visible, CallerError};
use crate::domain::issue::{self, GrantType, IssueRequest, MintOptions};
use crate::domain::node_attestation;
use crate::error::ApiError;
use crate::extract::AgentCaller;

/// The most CSRs one sign request may carry.
const MAX_SIGN_BATCH: usize = 1000;

/// The longest a sync request waits for a change.
const MAX_SYNC_WAIT: u64 = 60;

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/join", post(post_join))
        .route("/attest/k8s_psat", post(post_attest_k8s_psat))
        .route("/renew", post(post_renew))
        .route("/sync", get(get_sync))
        .route("/sign", post(post_sign))
        .route("/jwt-svid", post(post_jwt_svid))
        .route("/token", post(post_agent_token))
        .route("/server-ca", get(get_server_ca))
}

fn unauthenticated(why: impl Into<String>) -> ApiError {
    ApiError::Client {
        description: why.into(),
        basic: false,
    }
}

fn decode_b64(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD
        .decode(s)
        .map_err(|_| ApiError::BadRequest(format!("`{what}` is not base64")))
}

fn bundle_b64(snap: &Snapshot, td: &TrustDomain, now: i64) -> Vec<String> {
    snap.cas
        .published(td, now)
        .iter()
        .map(|c| STANDARD.encode(c))
        .collect()
}

fn audit(kind: AuditKind, actor: &str, subject: &str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent {
        kind,
        actor: actor.into(),
        subject: subject.into(),
        outcome: Outcome::Ok,
        detail,
    }
}

/// Signs an agent's own SVID from its CSR.
fn sign_agent(
    snap: &Snapshot,
    td: &TrustDomain,
    spiffe_id: &SpiffeId,
    csr_b64: &str,
    ttl: i64,
    now: i64,
) -> Result<tessera_ca::IssuedSvid, ApiError> {
    let csr = decode_b64("csr", csr_b64)?;
    let ca = snap
        .cas
        .signing(td, now)
        .ok_or_else(|| ApiError::unavailable(format!("no CA signs for `{td}`")))?;
    ca.ca
        .sign_csr(&csr, spiffe_id, now, ttl)
        .map_err(|e| match e {
            // The CA's token failed: the agent may retry; its CSR was fine.
            tessera_ca::CaError::KeyUnavailable(_) => ApiError::unavailable(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        })
}

async fn post_join(State(app): State<Arc<App>>, Json(req): Json<JoinRequest>) -> Response {
    let result = async {
        let now = tessera_core::now_unix();
        let hash = app.join_token_hash(req.join_token.trim());
        let refused = || unauthenticated("the join token is unknown, expired or already used");
        let Some(record) = app.store.join_token(&hash).await? else {
            return Err(refused());
        };
        if record.expires_at <= now {
            return Err(unauthenticated("the join token has expired"));
        }
        let td = TrustDomain::parse(&record.trust_domain)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let agent_id =
            AgentId::parse(&record.agent_id).map_err(|e| ApiError::unavailable(e.to_string()))?;
        let joining = Joining {
            td,
            agent_id,
            selectors: vec![],
            detail: json!({"attestation": "join_token"}),
        };
        // The token is redeemed in the same commit; a second use conflicts.
        let redeem = Op::RedeemJoinToken {
            token_hash: hash,
            at: now,
        };
        admit(&app, joining, &req.csr, Some(redeem), refused()).await
    }
    .await;
    answer_join(&app, result, "join_token").await
}

/// Joins (or joins again) an agent attested by its node's Kubernetes service-account token.
async fn post_attest_k8s_psat(
    State(app): State<Arc<App>>,
    Json(req): Json<K8sPsatRequest>,
) -> Response {
    let result = async {
        let node = node_attestation::k8s_psat(&app, &app.snapshot(), req.token.trim())
            .await
            .map_err(|e| unauthenticated(e.to_string()))?;
        let revoked = unauthenticated(format!(
            "agent `{}` has been revoked; attesting again does not undo that",
            node.agent_id
        ));
        let selectors: Vec<String> = node.selectors.iter().map(ToString::to_string).collect();
        let joining = Joining {
            td: node.td,
            agent_id: node.agent_id,
            selectors: node.selectors,
            detail: json!({"attestation": "k8s_psat", "cluster": node.cluster, "node": node.node,
                           "pod": node.pod, "token_exp": node.exp, "selectors": selectors}),
        };
        admit(&app, joining, &req.csr, None, revoked).await
    }
    .await;
    answer_join(&app, result, "k8s_psat").await
}

/// An agent being admitted, however it proved itself.
struct Joining {
    td: TrustDomain,
    agent_id: AgentId,
    selectors: Vec<tessera_core::manifest::Selector>,
    /// How it was attested, for the audit record.
    detail: serde_json::Value,
}

/// Signs a joining agent's SVID from its CSR and records the agent, its SVID and an
/// `agent.joined` record in one commit (with `redeem`, the join token's redemption: a new
/// agent; without, an agent attested by its node, which joins again under the same ID unless
/// revoked). `conflict` is the answer when the commit conflicts.
async fn admit(
    app: &App,
    j: Joining,
    csr: &str,
    redeem: Option<Op>,
    conflict: ApiError,
) -> Result<AgentSvid, ApiError> {
    let now = tessera_core::now_unix();
    let spiffe_id = j
        .agent_id
        .spiffe_id(&j.td)
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let snap = app.snapshot();
    let ttl = i64::try_from(app.config.agent_svid_ttl.as_secs()).unwrap_or(3600);
    let svid = sign_agent(&snap, &j.td, &spiffe_id, csr, ttl, now)?;
    let agent = AgentRecord {
        id: j.agent_id.to_string(),
        trust_domain: j.td.to_string(),
        joined_at: now,
        svid_serial: svid.serial.clone(),
        svid_not_after: svid.not_after,
        last_seen: now,
        revoked_at: None,
        selectors: j.selectors,
    };
    let mut ops = Vec::with_capacity(3);
    match redeem {
        Some(r) => ops.extend([r, Op::InsertAgent(agent)]),
        None => ops.push(Op::AttestAgent(agent)),
    }
    ops.push(Op::RecordSvids(vec![SvidRecord {
        serial: svid.serial.clone(),
        spiffe_id: spiffe_id.to_string(),
        agent_id: j.agent_id.to_string(),
        issued_at: now,
        not_after: svid.not_after,
    }]));
    let mut detail = j.detail;
    if let Some(d) = detail.as_object_mut() {
        d.insert("agent".into(), json!(j.agent_id));
        d.insert("serial".into(), json!(svid.serial));
        d.insert("not_after".into(), json!(svid.not_after));
    }
    let event = audit(
        AuditKind::AgentJoined,
        spiffe_id.as_str(),
        spiffe_id.as_str(),
        detail,
    );
    match app.store.commit(&ops, &[event]).await {
        Err(StoreError::Conflict(_)) => return Err(conflict),
        r => r?,
    };
    if let Err(e) = app.reload().await {
        tracing::error!(error = %e, "agent joined, reload failed; the next poll retries");
    }
    let snap = app.snapshot();
    Ok(AgentSvid {
        agent_id: j.agent_id,
        spiffe_id,
        chain: svid.chain().iter().map(|c| STANDARD.encode(c)).collect(),
        not_after: svid.not_after,
        bundle: bundle_b64(&snap, &j.td, now),
    })
}

/// The joining agent's answer; a refusal is audited (aggregated) with how it tried to join.
async fn answer_join(
    app: &App,
    result: Result<AgentSvid, ApiError>,
    attestation: &str,
) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => {
            let event = AuditEvent {
                kind: AuditKind::AgentJoinRefused,
                actor: "anonymous".into(),
                subject: "agent".into(),
                outcome: Outcome::Denied,
                detail: json!({"attestation": attestation, "reason": e.to_string()}),
            };
            app.audit_refusal(event).await;
            e.into_response()
        }
    }
}

async fn post_renew(
    State(app): State<Arc<App>>,
    AgentCaller(agent): AgentCaller,
    Json(req): Json<RenewRequest>,
) -> Result<Json<AgentSvid>, ApiError> {
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let ttl = i64::try_from(app.config.agent_svid_ttl.as_secs()).unwrap_or(3600);
    let svid = sign_agent(&snap, &agent.td, &agent.spiffe_id, &req.csr, ttl, now)?;
    let ops = [
        Op::RenewAgent {
            id: agent.id.to_string(),
            svid_serial: svid.serial.clone(),
            svid_not_after: svid.not_after,
            at: now,
        },
        Op::RecordSvids(vec![SvidRecord {
            serial: svid.serial.clone(),
            spiffe_id: agent.spiffe_id.to_string(),
            agent_id: agent.id.to_string(),
            issued_at: now,
            not_after: svid.not_after,
        }]),
    ];
    let event = audit(
        AuditKind::AgentRenewed,
        agent.spiffe_id.as_str(),
        agent.spiffe_id.as_str(),
        json!({"agent": agent.id, "serial": svid.serial, "not_after": svid.not_after}),
    );
    match app.store.commit(&ops, &[event]).await {
        Err(StoreError::Conflict(m)) => return Err(ApiError::Forbidden(m)),
        r => r?,
    };
    Ok(Json(AgentSvid {
        agent_id: agent.id,
        spiffe_id: agent.spiffe_id,
        chain: svid.chain().iter().map(|c| STANDARD.encode(c)).collect(),
        not_after: svid.not_after,
        bundle: bundle_b64(&snap, &agent.td, now),
    }))
}

#[derive(Debug, Deserialize)]
struct SyncQuery {
    #[serde(default = "minus_one")]
    since: i64,
    #[serde(default)]
    wait: u64,
}

fn minus_one() -> i64 {
    -1
}

/// `GET /agent/v1/sync?since=N&wait=S`: what changed since state version N, waiting up to S
/// seconds for a change when there is none yet (a long poll, so a change reaches agents at once
/// and idle agents cost nothing).
async fn get_sync(
    State(app): State<Arc<App>>,
    AgentCaller(agent): AgentCaller,
    Query(q): Query<SyncQuery>,
) -> Result<Json<SyncResponse>, ApiError> {
    if q.wait > 0 && app.snapshot().version <= q.since {
        let mut rx = app.changes.subscribe();
        let wait = Duration::from_secs(q.wait.min(MAX_SYNC_WAIT));
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > q.since)).await;
    }
    let snap = app.snapshot();
    // The agent may have been revoked while it waited.
    in_good_standing(&snap, &agent)?;
    let regs = &snap.registrations;
    let full = q.since < regs.horizon;
    let mut registrations = Vec::new();
    let mut removed = Vec::new();
    for reg in regs.entries.values() {
        if !full && reg.revision <= q.since {
            continue;
        }
        if visible(reg, &agent) {
            registrations.push(reg.clone());
        } else if !full {
            removed.push(reg.spiffe_id.clone());
        }
    }
    if !full {
        removed.extend(
            regs.removed
                .iter()
                .filter(|(id, v)| *v > q.since && id.trust_domain_str() == agent.td.as_str())
                .map(|(id, _)| id.clone()),
        );
    }
    let now = tessera_core::now_unix();
    let jwt_keys = tessera_token::JwkSet::from_keys(snap.keys.published(&agent.td, now));
    Ok(Json(SyncResponse {
        version: snap.version,
        full,
        registrations,
        removed,
        x509_authorities: bundle_b64(&snap, &agent.td, now),
        jwt_keys: serde_json::to_value(jwt_keys)
            .map_err(|e| ApiError::unavailable(e.to_string()))?,
        federated_bundles: federated::wire(&snap.federations),
    }))
}

/// Why one item of a sign batch got no SVID (the others still may).
#[derive(Debug, thiserror::Error)]
enum ItemError {
    #[error(transparent)]
    NotRegistered(#[from] CallerError),
    #[error("`csr` is not base64")]
    NotBase64,
    #[error(transparent)]
    Refused(#[from] tessera_ca::CaError),
}

/// A CSR to sign and the lifetime to give it, or why not.
type SignJob = Result<(Vec<u8>, i64), ItemError>;

/// `POST /agent/v1/sign`: X.509-SVIDs for workloads registered to this agent, from CSRs made
/// on the node (private keys never leave it). Signed on blocking threads, recorded and audited
/// in one commit before any is returned.
#[tracing::instrument(target = "otel", name = "svid_sign", skip_all, fields(
    otel.name = "tessera.svid.sign", tessera.agent, tessera.svid.requested,
    tessera.svid.signed, tessera.audit.wait_us))]
async fn post_sign(
    State(app): State<Arc<App>>,
    AgentCaller(agent): AgentCaller,
    Json(req): Json<SignRequest>,
) -> Result<Json<SignResponse>, ApiError> {
    let started = std::time::Instant::now();
    let span = tracing::Span::current();
    span.record("tessera.agent", agent.spiffe_id.as_str());
    span.record(
        "tessera.svid.requested",
        i64::try_from(req.csrs.len()).unwrap_or(i64::MAX),
    );
    let snap = app.snapshot();
    if req.csrs.len() > MAX_SIGN_BATCH {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_SIGN_BATCH} CSRs per request"
        )));
    }
    let now = tessera_core::now_unix();
    let ca = snap
        .cas
        .signing(&agent.td, now)
        .ok_or_else(|| ApiError::unavailable(format!("no CA signs for `{}`", agent.td)))?
        .ca
        .clone();
    // Resolve every item first (cheap), then sign in parallel chunks (about 60 µs each).
    let jobs: Vec<(SpiffeId, SignJob)> = req
        .csrs
        .into_iter()
        .map(|item| {
            let job = registration(&snap, &agent, &item.spiffe_id)
                .map_err(ItemError::from)
                .and_then(|reg| {
                    let csr = STANDARD
                        .decode(&item.csr)
                        .map_err(|_| ItemError::NotBase64)?;
                    Ok((csr, i64::try_from(reg.x509_ttl_secs).unwrap_or(3600)))
                });
            (item.spiffe_id, job)
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = jobs.len().div_ceil(threads).max(1);
    let mut handles = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let part: Vec<_> = jobs.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let ca = ca.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            part.into_iter()
                .map(|(id, job)| {
                    let out = job.and_then(|(csr, ttl)| {
                        ca.sign_csr(&csr, &id, now, ttl).map_err(ItemError::from)
                    });
                    (id, out)
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut items = Vec::new();
    let mut records = Vec::new();
    let mut events = Vec::new();
    let mut key_failure = None;
    for h in handles {
        let part = h
            .await
            .map_err(|e| ApiError::unavailable(format!("signing task failed: {e}")))?;
        for (id, out) in part {
            match out {
                Ok(svid) => {
                    records.push(SvidRecord {
                        serial: svid.serial.clone(),
                        spiffe_id: id.to_string(),
                        agent_id: agent.id.to_string(),
                        issued_at: now,
                        not_after: svid.not_after,
                    });
                    events.push(audit(
                            AuditKind::SvidIssued,
                            agent.spiffe_id.as_str(),
                            id.as_str(),
                            json!({"kind": "x509", "serial": svid.serial, "digest": tessera_log::credential_digest(&svid.cert), "not_after": svid.not_after, "agent": agent.id}),
                        ));
                    items.push(SignedItem {
                        spiffe_id: id,
                        chain: svid.chain().iter().map(|c| STANDARD.encode(c)).collect(),
                        serial: svid.serial,
                        not_after: svid.not_after,
                        error: None,
                    });
                }
                Err(e) => {
                    let mut outcome = Outcome::Denied;
                    if let ItemError::Refused(tessera_ca::CaError::KeyUnavailable(why)) = &e {
                        key_failure = Some(why.clone());
                        outcome = Outcome::Error;
                    }
                    // The reason goes on the wire and into the record as text.
                    let e = e.to_string();
                    events.push(AuditEvent {
                        kind: AuditKind::SvidDenied,
                        actor: agent.spiffe_id.to_string(),
                        subject: id.to_string(),
                        outcome,
                        detail: json!({"kind": "x509", "reason": e, "agent": agent.id}),
                    });
                    items.push(SignedItem {
                        spiffe_id: id,
                        chain: Vec::new(),
                        serial: String::new(),
                        not_after: 0,
                        error: Some(e),
                    });
                }
            }
        }
    }
    // The CA's key failed (its token went away): the whole request fails closed, with the
    // failures recorded, and the agent retries.
    if let Some(why) = key_failure {
        app.store.commit(&[], &events).await.inspect_err(|_| {
            app.metrics.audit_failures.inc();
        })?;
        app.metrics
            .svids_refused
            .inc_by(u64::try_from(items.len()).unwrap_or(0));
        return Err(ApiError::unavailable(format!(
            "the CA key is unavailable: {why}"
        )));
    }
    // Fail closed: nothing is handed out unless its record and audit are durable.
    let waited = std::time::Instant::now();
    app.store
        .commit(&[Op::RecordSvids(records)], &events)
        .await
        .inspect_err(|_| {
            app.metrics.audit_failures.inc();
        })?;
    span.record(
        "tessera.audit.wait_us",
        i64::try_from(waited.elapsed().as_micros()).unwrap_or(i64::MAX),
    );
    let signed = items.iter().filter(|i| i.error.is_none()).count();
    span.record(
        "tessera.svid.signed",
        i64::try_from(signed).unwrap_or(i64::MAX),
    );
    app.metrics
        .svids_issued
        .inc_by(u64::try_from(signed).unwrap_or(0));
    app.metrics
        .svids_refused
        .inc_by(u64::try_from(items.len().saturating_sub(signed)).unwrap_or(0));
    app.metrics
        .svid_sign_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(SignResponse { svids: items }))
}

/// `POST /agent/v1/jwt-svid`: a JWT-SVID (SPIFFE JWT-SVID §2, §3: `typ` `JWT`, `kid` set, `sub`,
/// `aud`, `exp`, and `iat`, `jti`), signed by the trust domain's current key.
async fn post_jwt_svid(
    State(app): State<Arc<App>>,
    AgentCaller(agent): AgentCaller,
    Json(req): Json<JwtSvidRequest>,
) -> Result<Json<JwtSvidResponse>, ApiError> {
    let snap = app.snapshot();
    let reg = registration(&snap, &agent, &req.spiffe_id)?;
    if req.audience.is_empty()
        || req.audience.len() > 10
        || req.audience.iter().any(|a| a.is_empty() || a.len() > 512)
    {
        return Err(ApiError::BadRequest(
            "a JWT-SVID needs 1 to 10 audiences, each 1 to 512 characters".into(),
        ));
    }
    let now = tessera_core::now_unix();
    let key = snap
        .keys
        .signing(&agent.td, now)
        .ok_or_else(|| ApiError::unavailable(format!("no signing key for `{}`", agent.td)))?;
    // SPIFFE JWT-SVID §3 lists RSA and ECDSA algorithms only; EdDSA would not verify in
    // SPIFFE libraries.
    if key.key.alg() != tessera_token::Alg::ES256 {
        return Err(ApiError::Forbidden(format!(
            "trust domain `{}` signs with {}; JWT-SVIDs need ES256 (set key_algorithm = \"ES256\")",
            agent.td,
            key.key.alg().as_str()
        )));
    }
    let exp = now + i64::try_from(reg.jwt_ttl_secs).unwrap_or(300);
    let jti = tessera_token::strict::b64_encode(
        tessera_token::seal::random_bytes::<16>().map_err(ApiError::unavailable)?,
    );
    let aud = match req.audience.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let claims = json!({"sub": req.spiffe_id, "aud": aud, "exp": exp, "iat": now, "jti": jti});
    let token = tessera_token::sign(&key.key, "JWT", &claims).map_err(ApiError::unavailable)?;
    app.audit
        .append(audit(
            AuditKind::SvidIssued,
            agent.spiffe_id.as_str(),
            req.spiffe_id.as_str(),
            json!({"kind": "jwt", "jti": jti, "digest": tessera_log::credential_digest(token.as_bytes()), "aud": req.audience, "exp": exp, "agent": agent.id}),
        ))
        .await
        .inspect_err(|_| {
            app.metrics.audit_failures.inc();
        })?;
    Ok(Json(JwtSvidResponse {
        token,
        expires_at: exp,
    }))
}

/// `POST /agent/v1/token`: an access token for a workload the agent attested, under the same
/// grants and policies as any other caller.
async fn post_agent_token(
    State(app): State<Arc<App>>,
    AgentCaller(agent): AgentCaller,
    Json(req): Json<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let snap = app.snapshot();
    registration(&snap, &agent, &req.spiffe_id)?;
    let issuer = app.issuer_of(&agent.td);
    let req = IssueRequest {
        caller: req.spiffe_id.clone(),
        client_id: req.spiffe_id.to_string(),
        auth: "node_agent",
        grant_type: GrantType::ManagedIdentity,
        targets: vec![req.resource],
        scope: req.scope,
        source_ip: None,
        options: MintOptions::default(),
        audit_actor: Some(agent.spiffe_id.to_string()),
        claim: None,
    };
    let minted = issue::commit(&app, &snap, &issuer, &req).await?;
    Ok(Json(TokenResponse {
        access_token: minted.token,
        expires_in: minted.ttl,
        expires_at: minted.claims.exp,
        audience: minted.claims.aud,
        scope: minted.claims.scope,
    }))
}

/// `GET /agent/v1/server-ca`: the API's TLS CA, served only by a `--dev` server (on loopback),
/// so an agent pointed at `http://` can switch to mTLS; elsewhere agents get it by
/// `--trust-bundle`.
async fn get_server_ca(State(app): State<Arc<App>>) -> Response {
    if !app.config.dev {
        return ApiError::NotFound("no such endpoint".into()).into_response();
    }
    match std::fs::read_to_string(app.config.data_dir.join("tls").join("ca.pem")) {
        Ok(pem) => pem.into_response(),
        Err(_) => ApiError::NotFound("this server uses a configured TLS certificate".into())
            .into_response(),
    }
}
