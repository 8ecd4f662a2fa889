//! Policy sets at run time: versions (apply, shadow, promote, rollback), the shadow candidate's
//! diff on real decisions, explanations, and what point-of-use authorizers fetch and report
//! (the policy bundle, decision records).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tessera_core::manifest::{Grant, PolicyFile};
use tessera_core::{Scope, SpiffeId};
use tessera_policy::{
    Authn, Call, DecisionRecord, Env, Explanation, IssueContext, PolicyBundle, PolicyEngine,
};
use tessera_store::{AuditEvent, Op, PolicySetRecord};

use crate::admin::Actor;
use crate::apply::{sorted_lines, ApplyResponse, Plan};
use crate::error::ApiError;
use crate::oauth::our_token;
use crate::state::Snapshot;
use crate::App;

/// Examples kept per (caller, target, action) in a shadow diff.
const MAX_DIFF_KEYS: usize = 10_000;

/// The candidate policy set evaluated beside the active one without being enforced.
#[derive(Debug)]
pub struct Shadow {
    pub version: i64,
    pub engine: Arc<PolicyEngine>,
    /// Shared across snapshots while the shadow version stays the same.
    pub diff: Arc<Mutex<DiffState>>,
}

#[derive(Debug, Default)]
pub struct DiffState {
    pub evaluated: u64,
    pub changed: BTreeMap<(String, String, String), DiffEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffEntry {
    pub caller: String,
    pub target: String,
    pub action: String,
    pub active: String,
    pub shadow: String,
    pub count: u64,
    /// One request that changed, e.g. `issue_token [b:read]` or `GET /api/x`.
    pub example: String,
    /// Why the shadow set decides as it does, for that example.
    pub shadow_reason: String,
}

fn word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

impl Shadow {
    /// Records one real decision and what the shadow set decided for it.
    pub fn observe(
        &self,
        caller: &str,
        target: &str,
        action: &str,
        active: bool,
        shadow: &tessera_policy::Decision,
        example: impl FnOnce() -> String,
    ) {
        let Ok(mut d) = self.diff.lock() else {
            return;
        };
        d.evaluated += 1;
        if active == shadow.allowed {
            return;
        }
        let key = (caller.to_owned(), target.to_owned(), action.to_owned());
        if let Some(e) = d.changed.get_mut(&key) {
            e.count += 1;
        } else if d.changed.len() < MAX_DIFF_KEYS {
            d.changed.insert(
                key,
                DiffEntry {
                    caller: caller.to_owned(),
                    target: target.to_owned(),
                    action: action.to_owned(),
                    active: word(active).to_owned(),
                    shadow: word(shadow.allowed).to_owned(),
                    count: 1,
                    example: example(),
                    shadow_reason: shadow.reason(),
                },
            );
        }
    }
}

/// The SPIFFE ID tokens for the authority itself carry as audience: a workload asks for one
/// with `audience=<issuer URL>` to call Tessera's own workload APIs (policy bundle, decision
/// records). No grant is needed; each API authorizes the caller itself.
pub fn authority_id(td: &str) -> Option<SpiffeId> {
    SpiffeId::parse(&format!("spiffe://{td}/tessera/authority")).ok()
}

// ---- Admin -------------------------------------------------------------------------------------

pub fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/explain", post(explain))
        .route("/v1/policy", get(status))
        .route("/v1/policy/bundle", get(admin_bundle))
        .route("/v1/policy/diff", get(diff))
        .route("/v1/policy/promote", post(promote))
        .route("/v1/policy/rollback", post(rollback))
        .route("/v1/policy/discard", post(discard))
}

#[derive(Debug, Deserialize)]
pub struct ExplainRequest {
    pub from: SpiffeId,
    pub to: SpiffeId,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// Explain with the shadow set instead of the active one.
    #[serde(default)]
    pub shadow: bool,
    /// The caller's address for `context.source_ip` (unknown, 0.0.0.0, by default).
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
}

async fn explain(
    State(app): State<Arc<App>>,
    Json(req): Json<ExplainRequest>,
) -> Result<Json<Explanation>, ApiError> {
    let snap = app.snapshot();
    let engine = if req.shadow {
        snap.shadow
            .as_ref()
            .map(|s| s.engine.clone())
            .ok_or_else(no_shadow)?
    } else {
        snap.engine.clone()
    };
    let mut env = Env::now();
    env.source_ip = req.source_ip;
    let x = match (req.method.as_deref(), req.path.as_deref()) {
        (Some(method), Some(path)) => {
            if !req.scopes.is_empty() {
                return Err(ApiError::BadRequest(
                    "give either scopes (a token) or a method and path (a call), not both".into(),
                ));
            }
            engine.explain_call(
                &req.from,
                &req.to,
                &Call {
                    method,
                    path,
                    scopes: &[],
                    authn: Authn::Jwt,
                },
                &env,
            )
        }
        (None, None) => engine.explain_issue(
            &req.from,
            &req.to,
            &req.scopes,
            &IssueContext::default(),
            &env,
        ),
        _ => {
            return Err(ApiError::BadRequest(
                "a call needs both `method` and `path`".into(),
            ))
        }
    };
    Ok(Json(x))
}

fn shadow_version(snap: &Snapshot) -> Result<i64, ApiError> {
    snap.shadow
        .as_ref()
        .map(|s| s.version)
        .ok_or_else(no_shadow)
}

fn no_shadow() -> ApiError {
    ApiError::NotFound(
        "no shadow policy set is loaded; load one with `tessera apply --shadow -f FILES`".into(),
    )
}

#[derive(Debug, Serialize)]
struct SetSummary {
    version: i64,
    status: String,
    created_at: i64,
    actor: String,
    note: String,
    grants: usize,
    policies: usize,
}

impl From<&PolicySetRecord> for SetSummary {
    fn from(r: &PolicySetRecord) -> Self {
        Self {
            version: r.version,
            status: r.status.clone(),
            created_at: r.created_at,
            actor: r.actor.clone(),
            note: r.note.clone(),
            grants: r.grants.len(),
            policies: r.policies.len(),
        }
    }
}

async fn status(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let history = app.store.policy_sets(20).await?;
    Ok(Json(json!({
        "active_version": snap.policy_version,
        "policies": snap.engine.policy_count(),
        "shadow": snap.shadow.as_ref().map(|s| json!({"version": s.version, "policies": s.engine.policy_count()})),
        "shadow_error": snap.shadow_error,
        "history": history.iter().map(SetSummary::from).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
struct AdminBundleQuery {
    #[serde(default)]
    shadow: bool,
}

/// The whole active (or shadow) set, for `tessera policy test` to decide locally.
async fn admin_bundle(
    State(app): State<Arc<App>>,
    Query(q): Query<AdminBundleQuery>,
) -> Result<Json<PolicyBundle>, ApiError> {
    let snap = app.snapshot();
    let workloads: Vec<_> = snap.workloads.values().map(|w| w.spec.clone()).collect();
    if q.shadow {
        let rec = app
            .store
            .policy_sets(50)
            .await?
            .into_iter()
            .find(|r| Some(r.version) == snap.shadow.as_ref().map(|s| s.version))
            .ok_or_else(no_shadow)?;
        return Ok(Json(PolicyBundle::cut(
            None,
            &workloads,
            &rec.grants,
            &rec.policies,
        )));
    }
    Ok(Json(PolicyBundle::cut(
        None,
        &workloads,
        &snap.grants,
        &snap.policies,
    )))
}

async fn diff(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let shadow = snap.shadow.as_ref().ok_or_else(no_shadow)?;
    let d = shadow
        .diff
        .lock()
        .map_err(|_| ApiError::unavailable("shadow diff lock poisoned"))?;
    let mut changed: Vec<&DiffEntry> = d.changed.values().collect();
    changed.sort_by_key(|e| std::cmp::Reverse(e.count));
    let newly_denied: u64 = changed
        .iter()
        .filter(|e| e.shadow == "deny")
        .map(|e| e.count)
        .sum();
    let newly_allowed: u64 = changed
        .iter()
        .filter(|e| e.shadow == "allow")
        .map(|e| e.count)
        .sum();
    Ok(Json(json!({
        "active_version": snap.policy_version,
        "shadow_version": shadow.version,
        "evaluated": d.evaluated,
        "newly_denied": newly_denied,
        "newly_allowed": newly_allowed,
        "changed": changed,
    })))
}

/// The ops that turn the current grants and policy files into `grants` and `policies`.
fn replace_ops(snap: &Snapshot, grants: &[Grant], policies: &[PolicyFile]) -> Vec<Op> {
    let mut ops = Vec::new();
    for g in &snap.grants {
        if !grants.iter().any(|n| n.from == g.from && n.to == g.to) {
            ops.push(Op::DeleteGrant {
                from: g.from.to_string(),
                to: g.to.to_string(),
            });
        }
    }
    for g in grants {
        if !snap.grants.contains(g) {
            ops.push(Op::UpsertGrant(g.clone()));
        }
    }
    for p in &snap.policies {
        if !policies.iter().any(|n| n.name == p.name) {
            ops.push(Op::DeletePolicy(p.name.clone()));
        }
    }
    for p in policies {
        if !snap.policies.contains(p) {
            ops.push(Op::UpsertPolicy(p.clone()));
        }
    }
    ops
}

/// Ops recording `grants` and `policies` as the new active version.
pub async fn record_active(
    app: &App,
    snap: &Snapshot,
    grants: Vec<Grant>,
    policies: Vec<PolicyFile>,
    actor: &str,
    note: String,
) -> Result<(i64, Vec<Op>), ApiError> {
    let version = app.store.last_policy_set_version().await? + 1;
    let mut ops = Vec::new();
    if snap.policy_version > 0 {
        ops.push(Op::SetPolicySetStatus {
            version: snap.policy_version,
            status: "superseded".into(),
        });
    }
    ops.push(Op::RecordPolicySet(PolicySetRecord {
        version,
        status: "active".into(),
        grants,
        policies,
        created_at: tessera_core::now_unix(),
        actor: actor.to_owned(),
        note,
    }));
    Ok((version, ops))
}

/// `tessera apply --shadow`: validates the candidate and loads it beside the active set.
pub async fn load_shadow(
    app: &App,
    snap: &Snapshot,
    plan: Plan,
    actor: &str,
    dry_run: bool,
) -> Result<ApplyResponse, ApiError> {
    let others = plan.other_changes();
    if !others.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "a shadow set holds only grants and policy files; apply these changes first: {}",
            others.join(", ")
        )));
    }
    let changes = sorted_lines(&plan.lines);
    if dry_run {
        return Ok(ApplyResponse {
            changes,
            applied: false,
        });
    }
    let version = app.store.last_policy_set_version().await? + 1;
    let mut ops = Vec::new();
    if let Some(s) = &snap.shadow {
        ops.push(Op::SetPolicySetStatus {
            version: s.version,
            status: "discarded".into(),
        });
    }
    ops.push(Op::RecordPolicySet(PolicySetRecord {
        version,
        status: "shadow".into(),
        grants: plan.grants,
        policies: plan.policies,
        created_at: tessera_core::now_unix(),
        actor: actor.to_owned(),
        note: format!("loaded in shadow ({} changes)", changes.len()),
    }));
    app.change(
        &ops,
        AuditEvent {
            kind: "policy.shadow".into(),
            actor: actor.to_owned(),
            subject: format!("policy-set:{version}"),
            outcome: "ok".into(),
            detail: json!({"changes": changes, "version": version}),
        },
    )
    .await?;
    let mut changes = changes;
    changes.push(format!(
        "loaded as shadow policy set {version} (not enforced)"
    ));
    Ok(ApplyResponse {
        changes,
        applied: true,
    })
}

/// Makes `grants` and `policies` the active set, after checking they still compile against
/// today's workloads: nothing changes unless the whole set is valid.
async fn activate(
    app: &App,
    actor: &str,
    grants: Vec<Grant>,
    policies: Vec<PolicyFile>,
    mut extra: Vec<Op>,
    kind: &str,
    note: String,
) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let workloads: Vec<_> = snap.workloads.values().map(|w| w.spec.clone()).collect();
    PolicyEngine::from_files(&workloads, &grants, &policies).map_err(|e| {
        ApiError::BadRequest(format!(
            "the set no longer applies to today's workloads: {e}"
        ))
    })?;
    let mut ops = replace_ops(&snap, &grants, &policies);
    let changed = ops.len();
    let (version, record) =
        record_active(app, &snap, grants, policies, actor, note.clone()).await?;
    ops.append(&mut extra);
    ops.extend(record);
    app.change(
        &ops,
        AuditEvent {
            kind: kind.into(),
            actor: actor.to_owned(),
            subject: format!("policy-set:{version}"),
            outcome: "ok".into(),
            detail: json!({"note": note, "changed": changed, "previous": snap.policy_version}),
        },
    )
    .await?;
    Ok(Json(
        json!({"version": version, "changed": changed, "note": note}),
    ))
}

async fn promote(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let version = shadow_version(&app.snapshot())?;
    let rec = find_set(&app, version).await?;
    activate(
        &app,
        &actor.0,
        rec.grants,
        rec.policies,
        vec![Op::SetPolicySetStatus {
            version,
            status: "promoted".into(),
        }],
        "policy.promoted",
        format!("promoted from shadow {version}"),
    )
    .await
}

#[derive(Debug, Deserialize)]
struct RollbackRequest {
    #[serde(default)]
    to: Option<i64>,
}

async fn rollback(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<RollbackRequest>,
) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let sets = app.store.policy_sets(1_000).await?;
    let target = match req.to {
        Some(v) => sets
            .into_iter()
            .find(|r| r.version == v && r.status != "shadow" && r.status != "discarded")
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "policy set {v} is not a version that was ever active; see `tessera policy status`"
                ))
            })?,
        None => sets
            .into_iter()
            .find(|r| r.version < snap.policy_version && (r.status == "superseded"))
            .ok_or_else(|| {
                ApiError::NotFound("there is no earlier active policy set to roll back to".into())
            })?,
    };
    if target.version == snap.policy_version {
        return Err(ApiError::BadRequest(format!(
            "policy set {} is already the active one",
            target.version
        )));
    }
    let note = format!("rollback to {}", target.version);
    activate(
        &app,
        &actor.0,
        target.grants,
        target.policies,
        Vec::new(),
        "policy.rolled_back",
        note,
    )
    .await
}

async fn discard(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let version = shadow_version(&app.snapshot())?;
    app.change(
        &[Op::SetPolicySetStatus {
            version,
            status: "discarded".into(),
        }],
        AuditEvent {
            kind: "policy.discarded".into(),
            actor: actor.0.clone(),
            subject: format!("policy-set:{version}"),
            outcome: "ok".into(),
            detail: json!({}),
        },
    )
    .await?;
    Ok(Json(json!({"discarded": version})))
}

async fn find_set(app: &App, version: i64) -> Result<PolicySetRecord, ApiError> {
    app.store
        .policy_sets(1_000)
        .await?
        .into_iter()
        .find(|r| r.version == version)
        .ok_or_else(|| ApiError::NotFound(format!("policy set {version} is not stored")))
}

// ---- Workload APIs -----------------------------------------------------------------------------

pub fn workload_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/bundle", get(bundle))
        .route("/decisions", post(decisions))
}

/// The workload calling a Tessera workload API: from a Tessera access token whose audience is
/// the authority, or from its JWT-SVID whose audience is this issuer (what a sidecar holds).
pub(crate) fn workload_caller(
    app: &App,
    snap: &Snapshot,
    headers: &HeaderMap,
) -> Result<SpiffeId, ApiError> {
    let unauthorized = |d: &str| ApiError::Client {
        description: d.to_owned(),
        basic: false,
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            unauthorized(
                "a Tessera access token for the authority is required (`Authorization: Bearer`)",
            )
        })?;
    for td in &app.config.trust_domains {
        let Ok(issuer) = app.issuer_for(Some(td.name.as_str())) else {
            continue;
        };
        let Some(claims) = our_token(app, snap, &issuer, token) else {
            if let Ok(id) = crate::delegation::jwt_svid_of(app, snap, &issuer, token) {
                if snap
                    .workloads
                    .get(&id)
                    .is_some_and(|w| w.revoked_at.is_none())
                {
                    return Ok(id);
                }
                return Err(unauthorized(
                    "the JWT-SVID's workload is unknown or revoked",
                ));
            }
            continue;
        };
        let aud_ok = authority_id(td.name.as_str()).is_some_and(|a| {
            tessera_token::claims::audience_contains(&claims, &[a.as_str()]).is_ok()
        });
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
        if !aud_ok {
            return Err(unauthorized(
                "the token is not for the authority (ask for `audience=<issuer URL>`)",
            ));
        }
        if snap.revoked_jtis.contains(jti) || snap.workload_revoked(sub, iat) {
            return Err(unauthorized("the token has been revoked"));
        }
        return SpiffeId::parse(sub)
            .map_err(|_| unauthorized("the token's subject is not a workload"));
    }
    Err(unauthorized(
        "the token is not a valid Tessera access token",
    ))
}

#[derive(Debug, Deserialize)]
struct BundleQuery {
    service: SpiffeId,
    /// Long poll: with `If-None-Match` naming the current version, wait up to this many
    /// seconds (at most 60) for a change before answering 304.
    #[serde(default)]
    wait: Option<u64>,
}

/// `GET /v1/policy/bundle?service=ID`: the policy that protects `service`, for the service
/// itself. `ETag` is the bundle version; `If-None-Match` answers 304 when unchanged.
async fn bundle(
    State(app): State<Arc<App>>,
    Query(q): Query<BundleQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snap = app.snapshot();
    let caller = workload_caller(&app, &snap, &headers)?;
    if caller != q.service {
        return Err(ApiError::Forbidden(format!(
            "`{caller}` may fetch only the policy bundle of its own service"
        )));
    }
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let mut changes = app.subscribe_changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(60));
    loop {
        let snap = app.snapshot();
        let workloads: Vec<_> = snap.workloads.values().map(|w| w.spec.clone()).collect();
        let revoked: Vec<SpiffeId> = snap
            .workloads
            .values()
            .filter(|w| w.revoked_at.is_some())
            .map(|w| w.spec.id.clone())
            .collect();
        let b = PolicyBundle::cut(Some(&q.service), &workloads, &snap.grants, &snap.policies)
            .with_revoked(revoked);
        if known.as_deref() != Some(b.version.as_str()) {
            let etag = HeaderValue::from_str(&format!("\"{}\"", b.version))
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            let mut resp = Json(b).into_response();
            resp.headers_mut().insert(header::ETAG, etag);
            return Ok(resp);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(StatusCode::NOT_MODIFIED.into_response()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct DecisionBatch {
    records: Vec<DecisionRecord>,
}

const MAX_RECORDS: usize = 1_000;

/// A call's audit detail; a denial also gets the explanation from the active set (what decided,
/// what is missing), as token denials do.
fn record_detail(snap: &Snapshot, service: &SpiffeId, r: &DecisionRecord) -> Value {
    let mut detail = json!({"method": r.method, "path": r.path, "reason": r.reason, "at": r.at});
    if !r.allowed {
        let call = Call {
            method: &r.method,
            path: &r.path,
            scopes: &r.scopes,
            authn: Authn::Jwt,
        };
        let x = snap
            .engine
            .explain_call(&r.caller, service, &call, &Env::at(r.at));
        if let Value::Object(m) = &mut detail {
            m.insert("determined_by".into(), json!(x.decision.determined_by));
            m.insert("missing".into(), json!(x.missing));
        }
    }
    detail
}

/// `POST /v1/policy/decisions`: decisions a service made, into the audit trail (every denial,
/// and the allows its authorizer sampled), and through the shadow set for its diff.
async fn decisions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(batch): Json<DecisionBatch>,
) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    let service = workload_caller(&app, &snap, &headers)?;
    if batch.records.len() > MAX_RECORDS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_RECORDS} decision records per request"
        )));
    }
    let events: Vec<AuditEvent> = batch
        .records
        .iter()
        .map(|r| AuditEvent {
            kind: if r.allowed {
                "call.allowed"
            } else {
                "call.denied"
            }
            .into(),
            actor: service.to_string(),
            subject: r.caller.to_string(),
            outcome: if r.allowed { "ok" } else { "denied" }.into(),
            detail: record_detail(&snap, &service, r),
        })
        .collect();
    app.store.commit(&[], &events).await?;
    if let Some(shadow) = &snap.shadow {
        for r in &batch.records {
            let call = Call {
                method: &r.method,
                path: &r.path,
                scopes: &r.scopes,
                authn: Authn::Jwt,
            };
            let d = shadow
                .engine
                .decide_call(&r.caller, &service, &call, &Env::at(r.at));
            shadow.observe(
                r.caller.as_str(),
                service.as_str(),
                &r.method,
                r.allowed,
                &d,
                || format!("{} {}", r.method, r.path),
            );
        }
    }
    Ok(Json(json!({"recorded": events.len()})))
}
