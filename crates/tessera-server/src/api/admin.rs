//! The admin API: identity files, listings, `describe`, client secrets, revocation, join tokens,
//! keys and CAs, the audit trail. Mounted by `router.rs` behind an admin guard (the unix socket's
//! peer uid, or the admin credential over HTTP), which names the `Actor`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_core::admin_api::{
    AgentSummary, CaCsr, CaCsrRequest, CaInfo, CaInstallRequest, CaRotateRequest, CaRotated,
    CaState, ClientSecretRequest, ClientSecretResponse, ClientSummary, FederationSummary,
    FederationTestRequest, FederationTestResponse, GrantSummary, JoinTokenRequest,
    JoinTokenResponse, KeyInfo, KeyRotateRequest, KeyRotated, KeyState, KeyStatus, RevokeRequest,
    Revoked, TokenRevoked, TrustSummary, WorkloadSummary,
};
use tessera_core::manifest::ClientAuth;
use tessera_core::{SpiffeId, TrustDomain};
use tessera_store::{AuditEvent, AuditKind, ClientSecretRecord, Op, Outcome};

use crate::app::{changes, App, Snapshot};
use crate::config::KeyKind;
use crate::domain::apply::{plan, sorted_lines, ApplyRequest, ApplyResponse};
use crate::domain::caller::Actor;
use crate::domain::federation::{verify_outside, DEFAULT_ALGORITHMS, DEFAULT_MAX_AGE, GLOB_CLAIMS};
use crate::domain::{notices, policy_sets, rotation};
use crate::error::ApiError;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// The admin routes of this file (the vault's, database credentials' and policy sets' are in
/// theirs; `router.rs` mounts them together behind a guard).
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/apply", post(post_apply))
        .route("/v1/get/{kind}", get(get_list))
        .route("/v1/describe/workload", get(describe_workload))
        .route("/v1/describe/trust", get(describe_trust))
        .route("/v1/describe/federation", get(describe_federation))
        .route("/v1/federation/test", post(federation_test))
        .route("/v1/client/secret", post(client_secret))
        .route("/v1/revoke/workload", post(revoke_workload))
        .route("/v1/revoke/token", post(revoke_token))
        .route("/v1/revoke/agent", post(revoke_agent))
        .route("/v1/audit/tail", get(audit_tail))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .route("/v1/agents/tokens", post(create_join_token))
        .route("/v1/ca", get(list_cas))
        .route("/v1/ca/rotate", post(rotate_cas))
        .route("/v1/ca/csr", post(ca_csr))
        .route("/v1/ca/install", post(ca_install))
        .route("/v1/ca/root", get(ca_root))
        .route("/v1/keys/status", get(keys_status))
}

async fn post_apply(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    let snap = app.snapshot();
    let plan = plan(&app, &snap, &req.state, req.prune)?;
    if req.shadow {
        return Ok(Json(
            policy_sets::load_shadow(&app, &snap, plan, &actor.0, req.dry_run).await?,
        ));
    }
    let changes = sorted_lines(&plan.lines);
    if req.dry_run || plan.ops.is_empty() {
        return Ok(Json(ApplyResponse {
            changes,
            applied: false,
        }));
    }
    let mut ops = Vec::new();
    if plan.changes_policy() {
        let (_, record) = policy_sets::record_active(
            &app,
            &snap,
            plan.grants.clone(),
            plan.policies.clone(),
            &actor.0,
            format!("apply ({} changes)", changes.len()),
        )
        .await?;
        ops.extend(record);
    }
    let ops = [plan.ops, ops].concat();
    app.change(
        &ops,
        AuditEvent {
            kind: AuditKind::Apply,
            actor: actor.0.clone(),
            subject: "identity-files".into(),
            outcome: Outcome::Ok,
            detail: json!({"changes": changes, "prune": req.prune}),
        },
    )
    .await?;
    Ok(Json(ApplyResponse {
        changes,
        applied: true,
    }))
}

/// `GET /v1/get/grants?overdue=true&owner=TEAM`: only grants past review, of or to an owner's
/// workloads (the console's review list).
#[derive(Deserialize, Default)]
struct ListFilter {
    #[serde(default)]
    overdue: bool,
    owner: Option<String>,
}

async fn get_list(
    State(app): State<Arc<App>>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    Query(filter): Query<ListFilter>,
) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let v = match kind.as_str() {
        "workloads" => {
            let mut ws: Vec<_> = snap.workloads.values().collect();
            ws.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
            to_json(
                ws.iter()
                    .map(|w| WorkloadSummary {
                        id: w.spec.id.clone(),
                        owner: w.spec.owner.clone(),
                        environment: w.spec.environment.clone(),
                        kind: w.spec.kind,
                        purpose: w.spec.purpose.clone(),
                        revoked_at: w.revoked_at,
                    })
                    .collect::<Vec<_>>(),
            )?
        }
        "clients" => {
            let mut cs: Vec<_> = snap.clients.values().collect();
            cs.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
            to_json(
                cs.iter()
                    .map(|c| ClientSummary {
                        id: c.spec.id.clone(),
                        workload: c.spec.workload.clone(),
                        auth: c.spec.auth,
                        secret_expires_at: c.secret.as_ref().and_then(|(s, _)| s.expires_at),
                        has_secret: c.secret.is_some(),
                    })
                    .collect::<Vec<_>>(),
            )?
        }
        "grants" => to_json(
            snap.grants
                .iter()
                .filter(|g| !filter.overdue || g.review_by.is_some_and(|d| d.end_unix() < now))
                .filter(|g| {
                    filter.owner.as_deref().is_none_or(|o| {
                        [&g.from, &g.to].iter().any(|id| {
                            snap.workloads
                                .get(*id)
                                .is_some_and(|w| w.spec.owner.as_str() == o)
                        })
                    })
                })
                .map(|g| GrantSummary {
                    from: g.from.clone(),
                    to: g.to.clone(),
                    scopes: g.scopes.clone(),
                    why: g.why.clone(),
                    review_by: g.review_by,
                    overdue: g.review_by.is_some_and(|d| d.end_unix() < now),
                    source: g.source.clone(),
                    from_owner: snap.workloads.get(&g.from).map(|w| w.spec.owner.clone()),
                    to_owner: snap.workloads.get(&g.to).map(|w| w.spec.owner.clone()),
                })
                .collect::<Vec<_>>(),
        )?,
        "trusts" => to_json(
            snap.trusts
                .iter()
                .map(|t| TrustSummary {
                    name: t.name.clone(),
                    issuer: t.issuer.clone(),
                    audience: t.audience.clone(),
                    maps_to: t.map.iter().map(|m| m.workload.clone()).collect(),
                })
                .collect::<Vec<_>>(),
        )?,
        "agents" => {
            let mut agents: Vec<_> = snap.agents.values().collect();
            agents.sort_by(|a, b| a.id.cmp(&b.id));
            to_json(
                agents
                    .iter()
                    .map(|a| AgentSummary {
                        id: a.id.clone(),
                        trust_domain: a.trust_domain.clone(),
                        spiffe_id: format!("spiffe://{}/tessera/agent/{}", a.trust_domain, a.id),
                        joined_at: a.joined_at,
                        last_seen: a.last_seen,
                        svid_serial: a.svid_serial.clone(),
                        svid_not_after: a.svid_not_after,
                        revoked_at: a.revoked_at,
                        selectors: a.selectors.iter().map(ToString::to_string).collect(),
                    })
                    .collect::<Vec<_>>(),
            )?
        }
        "federations" => to_json(
            snap.federations
                .values()
                .map(|d| federation_summary(&app, &snap, d))
                .collect::<Vec<_>>(),
        )?,
        other => {
            return Err(ApiError::NotFound(format!(
                "`{}` is not something to list (workloads, clients, grants, trusts, agents, federations)",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    Ok(Json(v))
}

fn federation_summary(
    app: &App,
    snap: &Snapshot,
    d: &crate::app::federated::FederatedDomain,
) -> FederationSummary {
    let td = &d.spec.trust_domain;
    let status = app.bundle_refreshes.get(td);
    FederationSummary {
        trust_domain: td.clone(),
        bundle_endpoint: d.spec.bundle_endpoint.clone(),
        profile: d.spec.profile.as_str().to_owned(),
        endpoint_spiffe_id: d.spec.endpoint_spiffe_id.clone(),
        token_issuer: d.spec.token_issuer.clone(),
        bundle: match (&d.bundle, d.fetched_at) {
            (Some(_), Some(_)) => "fetched",
            (Some(_), None) => "initial",
            (None, _) => "none",
        }
        .to_owned(),
        spiffe_sequence: d.sequence(),
        fetched_at: d.fetched_at,
        last_attempt: status.last_attempt,
        last_success: status.last_success,
        last_error: status.last_error,
        next_refresh: status.next_refresh,
        ca_expiries: d
            .x509_authorities()
            .iter()
            .filter_map(|c| tessera_ca::validity(c).map(|(_, not_after)| not_after))
            .collect(),
        jwt_keys: d.bundle.as_ref().map_or(0, |b| b.jwt_authorities.len()),
        workloads: {
            let mut ws: Vec<SpiffeId> = snap
                .workloads
                .values()
                .filter(|w| w.spec.federates_with.contains(td))
                .map(|w| w.spec.id.clone())
                .collect();
            ws.sort();
            ws
        },
        source: d.spec.source.clone(),
    }
}

/// `GET /v1/describe/federation?trust_domain=TD`.
async fn describe_federation(
    State(app): State<Arc<App>>,
    Query(q): Query<TrustDomainQuery>,
) -> Result<Json<FederationSummary>, ApiError> {
    let snap = app.snapshot();
    let d = TrustDomain::parse(&q.trust_domain)
        .ok()
        .and_then(|td| snap.federations.get(&td))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no federation with `{}` (see `tessera get federations`)",
                q.trust_domain.chars().take(80).collect::<String>()
            ))
        })?;
    Ok(Json(federation_summary(&app, &snap, d)))
}

#[derive(Deserialize)]
struct TrustDomainQuery {
    trust_domain: String,
}

/// A listing of one of the typed summaries, as the JSON array `GET /v1/get/{kind}` answers.
fn to_json<T: serde::Serialize>(rows: Vec<T>) -> Result<Value, ApiError> {
    serde_json::to_value(rows).map_err(ApiError::unavailable)
}

#[derive(Deserialize)]
struct IdQuery {
    id: String,
}

#[derive(Deserialize)]
struct NameQuery {
    name: String,
}

/// `GET /admin/v1/describe/trust?name=`: issuer, keys and their age, rules, reachable workloads.
async fn describe_trust(
    State(app): State<Arc<App>>,
    Query(q): Query<NameQuery>,
) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let t = snap
        .trusts
        .iter()
        .find(|t| t.name.as_str() == q.name)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no trust `{}` (see `tessera get trusts`)",
                q.name.chars().take(80).collect::<String>()
            ))
        })?;
    let keys = app.trust_keys.describe(t).await;
    let rules: Vec<Value> = t
        .map
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"rule": i + 1, "claims": m.claims, "workload": m.workload,
                              "kind": snap.workloads.get(&m.workload).map(|w| w.spec.kind)})
        })
        .collect();
    Ok(Json(json!({
        "name": t.name, "issuer": t.issuer, "audience": t.audience,
        "algorithms": if t.algorithms.is_empty() { DEFAULT_ALGORITHMS.iter().map(|a| a.to_string()).collect() } else { t.algorithms.clone() },
        "max_age_seconds": t.max_age.map_or(DEFAULT_MAX_AGE, |m| i64::try_from(m.as_secs()).unwrap_or(i64::MAX)),
        "single_use": t.single_use, "keys": keys, "rules": rules, "source": t.source,
        "glob_claims": GLOB_CLAIMS,
    })))
}

/// `POST /admin/v1/federation/test`: which rule an outside token matches, or why none does.
/// Issues nothing and claims nothing.
async fn federation_test(
    State(app): State<Arc<App>>,
    Json(req): Json<FederationTestRequest>,
) -> Result<Json<FederationTestResponse>, ApiError> {
    let snap = app.snapshot();
    if let Some(t) = &req.trust {
        if !snap.trusts.iter().any(|x| x.name.as_str() == t) {
            return Err(ApiError::NotFound(format!(
                "no trust `{}`",
                t.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(Json(
        match verify_outside(&app, &snap, req.token.trim(), req.trust.as_deref()).await {
            Ok(m) => FederationTestResponse {
                matched: true,
                trust: Some(m.trust.name.to_string()),
                rule: Some(m.rule + 1),
                workload: Some(m.workload),
                outside_sub: Some(m.subject),
                exp: Some(m.exp),
                reason: None,
            },
            Err(r) => FederationTestResponse {
                matched: false,
                trust: r.trust,
                rule: None,
                workload: None,
                outside_sub: None,
                exp: None,
                reason: Some(r.reason),
            },
        },
    ))
}

async fn describe_workload(
    State(app): State<Arc<App>>,
    Query(q): Query<IdQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = SpiffeId::parse(&q.id).map_err(|e| bad(e.to_string()))?;
    let snap = app.snapshot();
    let w = snap
        .workloads
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no workload `{id}`")))?;
    let now = tessera_core::now_unix();
    let grant = |g: &tessera_core::manifest::Grant, other: &SpiffeId| {
        json!({"workload": other, "scopes": g.scopes, "routes": g.routes, "why": g.why, "review_by": g.review_by,
               "overdue": g.review_by.is_some_and(|d| d.end_unix() < now), "source": g.source,
               "token_rate": g.token_rate, "call_rate": g.call_rate, "deployment": g.deployment,
               "effective": crate::domain::access::effective(&snap, g)})
    };
    let out: Vec<Value> = snap
        .grants
        .iter()
        .filter(|g| g.from == id)
        .map(|g| grant(g, &g.to))
        .collect();
    let inbound: Vec<Value> = snap
        .grants
        .iter()
        .filter(|g| g.to == id)
        .map(|g| grant(g, &g.from))
        .collect();
    let clients: Vec<Value> = snap
        .clients
        .values()
        .filter(|c| c.spec.workload == id)
        .map(|c| {
            json!({"id": c.spec.id, "auth": c.spec.auth, "has_secret": c.secret.is_some(),
                        "secret_expires_at": c.secret.as_ref().and_then(|(s, _)| s.expires_at)})
        })
        .collect();
    let last = app
        .store
        .last_audit_for(id.as_str(), "token.issued")
        .await?;
    let svids = app.store.svids_for(id.as_str(), 5).await?;
    let mut revoke = vec![format!("tessera revoke workload {id}")];
    for c in snap.clients.values().filter(|c| c.spec.workload == id) {
        revoke.push(format!(
            "remove client `{}` from the identity files and `tessera apply --prune`",
            c.spec.id
        ));
    }
    Ok(Json(json!({
        "id": id,
        "owner": w.spec.owner,
        "purpose": w.spec.purpose,
        "environment": w.spec.environment,
        "kind": w.spec.kind,
        "tags": w.spec.tags,
        "selectors": w.spec.selectors,
        "aliases": w.spec.aliases,
        "scopes": w.spec.scopes,
        "jit": w.spec.jit,
        "federates_with": w.spec.federates_with,
        "jwt_ttl": w.spec.jwt_ttl,
        "source": w.spec.source,
        "revoked_at": w.revoked_at,
        "can_reach": out,
        "reached_by": inbound,
        "clients": clients,
        "last_issuance": last.map(|r| json!({"at": r.at, "seq": r.seq, "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null)})),
        "x509_ttl": w.spec.x509_ttl,
        "nodes": w.spec.nodes,
        "recent_x509_svids": svids,
        "how_to_revoke": revoke,
    })))
}

async fn client_secret(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<ClientSecretRequest>,
) -> Result<Json<ClientSecretResponse>, ApiError> {
    let snap = app.snapshot();
    let client = snap.clients.get(&req.client_id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no client `{}`",
            req.client_id.chars().take(128).collect::<String>()
        ))
    })?;
    if client.spec.auth != ClientAuth::ClientSecret {
        return Err(bad(format!(
            "client `{}` authenticates with private_key_jwt; it has no secret",
            client.spec.id
        )));
    }
    let bytes = tessera_token::seal::random_bytes::<32>().map_err(ApiError::unavailable)?;
    let secret = format!("tsk_{}", tessera_token::strict::b64_encode(bytes));
    let now = tessera_core::now_unix();
    let ttl = req.ttl_secs.or(client.spec.secret_ttl.map(|t| t.as_secs()));
    let expires_at = ttl.map(|t| now.saturating_add(i64::try_from(t).unwrap_or(i64::MAX)));
    app.change(
        &[Op::SetClientSecret {
            client: req.client_id.clone(),
            secret: ClientSecretRecord {
                hash: app.hmac_secret(&secret),
                created_at: now,
                expires_at,
            },
        }],
        AuditEvent {
            kind: AuditKind::ClientSecretIssued,
            actor: actor.0.clone(),
            subject: client.spec.workload.to_string(),
            outcome: Outcome::Ok,
            detail: json!({"client_id": req.client_id, "expires_at": expires_at}),
        },
    )
    .await?;
    Ok(Json(ClientSecretResponse {
        client_id: req.client_id,
        secret,
        expires_at,
    }))
}

async fn revoke_workload(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let id =
        SpiffeId::parse(req.id.as_deref().unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
    let snap = app.snapshot();
    let w = snap
        .workloads
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no workload `{id}`")))?;
    let dependents = changes::dependents(&snap, &id);
    if let Some(at) = w.revoked_at {
        return Ok(Json(Revoked {
            id: id.to_string(),
            revoked_at: at,
            already: true,
            dependents: Some(dependents),
        }));
    }
    let now = tessera_core::now_unix();
    app.change(
        &[Op::RevokeWorkload {
            id: id.to_string(),
            at: now,
        }],
        AuditEvent {
            kind: AuditKind::RevokeWorkload,
            actor: actor.0.clone(),
            subject: id.to_string(),
            outcome: Outcome::Ok,
            detail: json!({"revoked_at": now, "dependents": dependents}),
        },
    )
    .await?;
    notices::workload_revoked(&app, &id, now, &dependents, &actor.0);
    Ok(Json(Revoked {
        id: id.to_string(),
        revoked_at: now,
        already: false,
        dependents: Some(dependents),
    }))
}

async fn revoke_token(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<RevokeRequest>,
) -> Result<Json<TokenRevoked>, ApiError> {
    let jti = req.jti.unwrap_or_default();
    if jti.is_empty() || jti.len() > 256 || jti.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad("a token ID (`jti`) is 1 to 256 printable characters"));
    }
    // The admin does not know the token's expiry; no Tessera token outlives the longest lifetime.
    let exp = tessera_core::now_unix()
        + i64::try_from(tessera_core::manifest::MAX_JWT_TTL.as_secs()).unwrap_or(3600)
        + 60;
    rotation::revoke_token(&app, &jti, exp, &actor.0, "token").await?;
    Ok(Json(TokenRevoked { jti, revoked: true }))
}

async fn revoke_agent(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<RevokeRequest>,
) -> Result<Json<Revoked>, ApiError> {
    let id = tessera_core::AgentId::parse(req.id.as_deref().unwrap_or_default())
        .map_err(|e| bad(e.to_string()))?;
    let snap = app.snapshot();
    let agent = snap
        .agents
        .get(id.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no agent `{id}` (see `tessera get agents`)")))?;
    if let Some(at) = agent.revoked_at {
        return Ok(Json(Revoked {
            id: id.to_string(),
            revoked_at: at,
            already: true,
            dependents: None,
        }));
    }
    let now = tessera_core::now_unix();
    app.change(
        &[Op::RevokeAgent {
            id: id.to_string(),
            at: now,
        }],
        AuditEvent {
            kind: AuditKind::RevokeAgent,
            actor: actor.0.clone(),
            subject: format!("spiffe://{}/tessera/agent/{id}", agent.trust_domain),
            outcome: Outcome::Ok,
            detail: json!({"revoked_at": now, "svid_serial": agent.svid_serial, "svid_not_after": agent.svid_not_after}),
        },
    )
    .await?;
    Ok(Json(Revoked {
        id: id.to_string(),
        revoked_at: now,
        already: false,
        dependents: None,
    }))
}

/// `POST /admin/v1/agents/tokens`: a one-time join token. Only its keyed hash is stored.
async fn create_join_token(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<JoinTokenRequest>,
) -> Result<Json<JoinTokenResponse>, ApiError> {
    let td = match &req.trust_domain {
        Some(t) => app.served(t)?.clone(),
        None => app.first_td().clone(),
    };
    let ttl = req.ttl.unwrap_or(600);
    if !(1..=86400).contains(&ttl) {
        return Err(bad("a join token lives 1 second to 1 day"));
    }
    let agent_id = match &req.agent_id {
        Some(a) => tessera_core::AgentId::parse(a).map_err(|e| bad(e.to_string()))?,
        None => {
            let bytes = tessera_token::seal::random_bytes::<6>().map_err(ApiError::unavailable)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            tessera_core::AgentId::parse(&format!("node-{hex}")).map_err(|e| bad(e.to_string()))?
        }
    };
    if app.snapshot().agents.contains_key(agent_id.as_str()) {
        return Err(bad(format!(
            "agent `{agent_id}` exists; a join token makes a new agent (an agent rejoins with its own SVID)"
        )));
    }
    let secret = tessera_token::seal::random_bytes::<24>().map_err(ApiError::unavailable)?;
    let token = format!("tjt_{}", tessera_token::strict::b64_encode(secret));
    let now = tessera_core::now_unix();
    let record = tessera_store::JoinTokenRecord {
        token_hash: app.join_token_hash(&token),
        trust_domain: td.to_string(),
        agent_id: agent_id.to_string(),
        created_at: now,
        expires_at: now + ttl,
    };
    app.store
        .commit(
            &[Op::InsertJoinToken(record)],
            &[AuditEvent {
                kind: AuditKind::AgentTokenCreated,
                actor: actor.0.clone(),
                subject: format!("spiffe://{td}/tessera/agent/{agent_id}"),
                outcome: Outcome::Ok,
                detail: json!({"expires_at": now + ttl}),
            }],
        )
        .await?;
    Ok(Json(JoinTokenResponse {
        token,
        agent_id: agent_id.to_string(),
        trust_domain: td.to_string(),
        expires_at: now + ttl,
    }))
}

async fn list_cas(State(app): State<Arc<App>>) -> Json<Vec<CaInfo>> {
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let mut out = Vec::new();
    for td in &app.config.trust_domains {
        let signing = snap.cas.signing(&td.name, now).map(|c| c.id.clone());
        for c in snap.cas.entries(&td.name) {
            let state = ca_state(c, signing.as_deref() == Some(c.id.as_str()), now);
            out.push(CaInfo {
                trust_domain: td.name.to_string(),
                id: c.id.clone(),
                state,
                created_at: c.created_at,
                activate_at: c.activate_at,
                retire_at: c.retire_at,
                not_after: c.not_after,
            });
        }
    }
    Json(out)
}

/// The trust domain asked for, or every served one.
fn requested_trust_domains(app: &App, td: Option<&str>) -> Result<Vec<TrustDomain>, ApiError> {
    match td {
        Some(t) => Ok(vec![app.served(t)?.clone()]),
        None => Ok(app.trust_domain_names()),
    }
}

async fn rotate_cas(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<CaRotateRequest>,
) -> Result<Json<Vec<CaRotated>>, ApiError> {
    let tds = requested_trust_domains(&app, req.trust_domain.as_deref())?;
    let ahead = match req.activate_in {
        Some(s) if s >= 0 => s,
        Some(_) => return Err(bad("`activate_in` cannot be negative")),
        None => i64::try_from(app.config.ca_publish_ahead.as_secs()).unwrap_or(3600),
    };
    let mut out = Vec::new();
    for td in tds {
        out.push(rotation::rotate_ca(&app, &td, ahead, &actor.0).await?);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct TailQuery {
    n: Option<i64>,
}

async fn audit_tail(
    State(app): State<Arc<App>>,
    Query(q): Query<TailQuery>,
) -> Result<Json<Value>, ApiError> {
    let n = q.n.unwrap_or(20).clamp(1, 10_000);
    Ok(Json(json!(app.store.audit_tail(n).await?)))
}

async fn list_keys(State(app): State<Arc<App>>) -> Json<Vec<KeyInfo>> {
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let mut out = Vec::new();
    for td in &app.config.trust_domains {
        let signing = snap
            .keys
            .signing(&td.name, now)
            .map(|k| k.key.kid().to_string());
        for k in snap.keys.entries(&td.name) {
            let kid = k.key.kid().to_string();
            let state = key_state(k, signing.as_deref() == Some(kid.as_str()), now);
            out.push(KeyInfo {
                trust_domain: td.name.to_string(),
                kid,
                alg: k.key.alg().as_str().to_owned(),
                state,
                created_at: k.created_at,
                activate_at: k.activate_at,
                retire_at: k.retire_at,
            });
        }
    }
    Json(out)
}

/// Where a signing key is in its life (`signing`: it is the one that signs now).
fn key_state(k: &crate::app::keys::KeyEntry, signing: bool, now: i64) -> KeyState {
    if signing {
        KeyState::Signing
    } else if k.activate_at > now {
        KeyState::Next
    } else if k.retire_at.is_some_and(|r| r <= now) {
        KeyState::Withdrawn
    } else {
        KeyState::Retiring
    }
}

/// Where a CA is in its life (`active`: it is the one that signs now).
fn ca_state(c: &crate::app::ca::CaEntry, active: bool, now: i64) -> CaState {
    if active {
        CaState::Active
    } else if c.activate_at > now {
        CaState::Prepared
    } else if c.retire_at.is_some_and(|r| r <= now) || c.not_after <= now {
        CaState::Withdrawn
    } else {
        CaState::Retiring
    }
}

/// A state as its wire word (`signing`, `prepared`, ...).
fn word(state: impl serde::Serialize) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `GET /v1/keys/status`: every private key, where it lives, its age, state and next rotation.
async fn keys_status(State(app): State<Arc<App>>) -> Json<Vec<KeyStatus>> {
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let mut out = Vec::new();
    let period = app
        .config
        .key_rotation_period
        .and_then(|p| i64::try_from(p.as_secs()).ok());
    for td in &app.config.trust_domains {
        let signing = snap
            .keys
            .signing(&td.name, now)
            .map(|k| k.key.kid().clone());
        for k in snap.keys.entries(&td.name) {
            let is_signing = signing.as_ref() == Some(k.key.kid());
            let state = word(key_state(k, is_signing, now));
            out.push(KeyStatus {
                kind: KeyKind::Signing.as_str().into(),
                trust_domain: Some(td.name.to_string()),
                id: k.key.kid().to_string(),
                alg: k.key.alg().as_str().into(),
                location: k.key.location().to_string(),
                created_at: Some(k.created_at),
                state,
                next_rotation: period
                    .filter(|_| is_signing)
                    .map(|p| (k.activate_at + p).max(now)),
                rotation: (is_signing && period.is_none())
                    .then(|| "on request (`tessera keys rotate`)".into()),
            });
        }
        let active = snap.cas.signing(&td.name, now).map(|c| c.id.clone());
        for c in snap.cas.entries(&td.name) {
            let is_active = active.as_deref() == Some(c.id.as_str());
            let state = word(ca_state(c, is_active, now));
            let external = c.ca.is_intermediate() && app.root.is_none();
            out.push(KeyStatus {
                kind: KeyKind::Ca.as_str().into(),
                trust_domain: Some(td.name.to_string()),
                id: c.id.clone(),
                alg: c.ca.key().alg().as_str().into(),
                location: c.ca.key().location().to_string(),
                created_at: Some(c.created_at),
                state,
                next_rotation: (is_active && !external)
                    .then(|| (c.activate_at + (c.not_after - c.activate_at) / 2).max(now)),
                rotation: (is_active && external).then(|| {
                    "signed outside: renew with `tessera ca csr` and `tessera ca install`".into()
                }),
            });
        }
    }
    if let Some(root) = &app.root {
        out.push(KeyStatus {
            kind: KeyKind::Root.as_str().into(),
            trust_domain: None,
            id: "root".into(),
            alg: root.key().alg().as_str().into(),
            location: root.key().location().to_string(),
            created_at: None,
            state: if root.not_after() > now {
                "active"
            } else {
                "expired"
            }
            .into(),
            next_rotation: None,
            rotation: Some("by hand, before it expires (`tessera ca root`)".into()),
        });
    }
    let log_key = app.log.signer.key();
    out.push(KeyStatus {
        kind: KeyKind::Audit.as_str().into(),
        trust_domain: None,
        id: app.log.verifier().to_vkey(),
        alg: log_key.alg().as_str().into(),
        location: log_key.location().to_string(),
        created_at: None,
        state: "in use".into(),
        next_rotation: None,
        rotation: Some("never: a log's key does not change".into()),
    });
    let (tls_alg, tls_location) = match (&app.tls_key, &app.config.tls_key) {
        (Some(k), _) => (k.alg().as_str().to_owned(), k.location().to_string()),
        (None, Some(path)) => ("-".into(), format!("file `{}`", path.display())),
        (None, None) => (
            "ES256".into(),
            format!(
                "file `{}`",
                app.config.data_dir.join("tls/server.key").display()
            ),
        ),
    };
    let kek_location = match app.kek().token_key() {
        Some(k) => tessera_token::KeyLocation::in_token(k.hsm(), k.label()).to_string(),
        None => "software (a file or TESSERA_KEK)".to_owned(),
    };
    out.push(KeyStatus {
        kind: KeyKind::Kek.as_str().into(),
        trust_domain: None,
        id: "kek".into(),
        alg: "A256GCM".into(),
        location: kek_location,
        created_at: None,
        state: "in use".into(),
        next_rotation: None,
        rotation: Some("never: what it sealed would not open".into()),
    });
    out.push(KeyStatus {
        kind: KeyKind::Tls.as_str().into(),
        trust_domain: None,
        id: "api".into(),
        alg: tls_alg,
        location: tls_location,
        created_at: None,
        state: "in use".into(),
        next_rotation: None,
        rotation: Some("with the API certificate".into()),
    });
    Json(out)
}

/// `POST /v1/ca/csr`.
async fn ca_csr(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<CaCsrRequest>,
) -> Result<Json<CaCsr>, ApiError> {
    let td = app.served(&req.trust_domain)?.clone();
    let der = rotation::ca_csr(&app, &td, &actor.0).await?;
    Ok(Json(CaCsr {
        trust_domain: td.to_string(),
        csr_pem: tessera_ca::pem("CERTIFICATE REQUEST", &der),
    }))
}

/// `POST /v1/ca/install`.
async fn ca_install(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<CaInstallRequest>,
) -> Result<Json<CaRotated>, ApiError> {
    use rustls::pki_types::pem::PemObject;
    let td = app.served(&req.trust_domain)?.clone();
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(req.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ApiError::BadRequest(format!("`chain_pem` is not PEM certificates: {e}"))
            })?;
    if certs.is_empty() {
        return Err(ApiError::BadRequest(
            "`chain_pem` holds no certificate".into(),
        ));
    }
    let der: Vec<u8> = certs.iter().flat_map(|c| c.to_vec()).collect();
    let ahead = req
        .activate_in
        .unwrap_or_else(|| i64::try_from(app.config.ca_publish_ahead.as_secs()).unwrap_or(3600))
        .max(0);
    Ok(Json(
        rotation::ca_install(&app, &td, der, ahead, &actor.0).await?,
    ))
}

/// `GET /v1/ca/root`: the root over the trust domains' CAs, PEM.
async fn ca_root(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let root = app
        .root
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this authority has no root CA (`ca_root`)".into()))?;
    Ok(Json(
        json!({"pem": tessera_ca::pem("CERTIFICATE", root.cert())}),
    ))
}

async fn rotate_keys(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<KeyRotateRequest>,
) -> Result<Json<Vec<KeyRotated>>, ApiError> {
    let tds = requested_trust_domains(&app, req.trust_domain.as_deref())?;
    let mut out = Vec::new();
    for td in tds {
        out.push(rotation::rotate_key(&app, &td, &actor.0).await?);
    }
    Ok(Json(out))
}
