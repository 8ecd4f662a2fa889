//! Policy sets over HTTP: for administrators, versions (status, promote, rollback, discard), the
//! shadow set's diff and explanations; for point-of-use authorizers, the policy bundle of their
//! own service and the decision records they report.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_core::admin_api::{
    ExplainRequest, PolicyActivated, PolicyDiscarded, PolicyStatus, RollbackRequest, ShadowChange,
    ShadowDiff, ShadowInfo,
};
use tessera_core::SpiffeId;
use tessera_policy::{Authn, Call, DecisionRecord, Env, Explanation, IssueContext, PolicyBundle};
use tessera_store::{AuditEvent, AuditKind, Op, Outcome, PolicySetStatus};

use crate::app::{App, Snapshot};
use crate::domain::caller::Actor;
use crate::domain::policy_sets::{activate, find_set, history, shadow_version, PolicySetError};
use crate::error::ApiError;
use crate::extract::WorkloadCaller;

pub(crate) fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/explain", post(post_explain))
        .route("/v1/policy", get(policy_status))
        .route("/v1/policy/bundle", get(admin_bundle))
        .route("/v1/policy/diff", get(shadow_diff))
        .route("/v1/policy/promote", post(promote))
        .route("/v1/policy/rollback", post(rollback))
        .route("/v1/policy/discard", post(discard))
}

async fn post_explain(
    State(app): State<Arc<App>>,
    Json(req): Json<ExplainRequest>,
) -> Result<Json<Explanation>, ApiError> {
    let snap = app.snapshot();
    let engine = if req.shadow {
        snap.shadow
            .as_ref()
            .map(|s| s.engine.clone())
            .ok_or(PolicySetError::NoShadow)?
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
                    actor: None,
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

async fn policy_status(State(app): State<Arc<App>>) -> Result<Json<PolicyStatus>, ApiError> {
    let snap = app.snapshot();
    let history = history(&app, 20).await?;
    Ok(Json(PolicyStatus {
        active_version: snap.policy_version,
        policies: snap.engine.policy_count(),
        shadow: snap.shadow.as_ref().map(|s| ShadowInfo {
            version: s.version,
            policies: s.engine.policy_count(),
        }),
        shadow_error: snap.shadow_error.clone(),
        history,
    }))
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
            .ok_or(PolicySetError::NoShadow)?;
        return Ok(Json(
            PolicyBundle::cut(None, &workloads, &rec.grants, &rec.policies)
                .with_federated(snap.federated_domains()),
        ));
    }
    Ok(Json(
        PolicyBundle::cut(None, &workloads, &snap.grants, &snap.policies)
            .with_federated(snap.federated_domains()),
    ))
}

async fn shadow_diff(State(app): State<Arc<App>>) -> Result<Json<ShadowDiff>, ApiError> {
    let snap = app.snapshot();
    let shadow = snap.shadow.as_ref().ok_or(PolicySetError::NoShadow)?;
    let d = shadow
        .diff
        .lock()
        .map_err(|_| ApiError::unavailable("shadow diff lock poisoned"))?;
    let mut changed: Vec<&ShadowChange> = d.changed.values().collect();
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
    Ok(Json(ShadowDiff {
        active_version: snap.policy_version,
        shadow_version: shadow.version,
        evaluated: d.evaluated,
        newly_denied,
        newly_allowed,
        changed: changed.into_iter().cloned().collect(),
    }))
}

async fn promote(
    State(app): State<Arc<App>>,
    actor: Actor,
) -> Result<Json<PolicyActivated>, ApiError> {
    let version = shadow_version(&app.snapshot())?;
    let rec = find_set(&app, version).await?;
    let activated = activate(
        &app,
        &actor.0,
        rec.grants,
        rec.policies,
        vec![Op::SetPolicySetStatus {
            version,
            status: PolicySetStatus::Promoted,
        }],
        AuditKind::PolicyPromoted,
        format!("promoted from shadow {version}"),
    )
    .await?;
    Ok(Json(activated))
}

async fn rollback(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<RollbackRequest>,
) -> Result<Json<PolicyActivated>, ApiError> {
    let snap = app.snapshot();
    let sets = app.store.policy_sets(1_000).await?;
    let target = match req.to {
        Some(v) => sets
            .into_iter()
            .find(|r| {
                r.version == v
                    && !matches!(r.status, PolicySetStatus::Shadow | PolicySetStatus::Discarded)
            })
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "policy set {v} is not a version that was ever active; see `tessera policy status`"
                ))
            })?,
        None => sets
            .into_iter()
            .find(|r| r.version < snap.policy_version && r.status == PolicySetStatus::Superseded)
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
    let activated = activate(
        &app,
        &actor.0,
        target.grants,
        target.policies,
        Vec::new(),
        AuditKind::PolicyRolledBack,
        note,
    )
    .await?;
    Ok(Json(activated))
}

async fn discard(
    State(app): State<Arc<App>>,
    actor: Actor,
) -> Result<Json<PolicyDiscarded>, ApiError> {
    let version = shadow_version(&app.snapshot())?;
    app.change(
        &[Op::SetPolicySetStatus {
            version,
            status: PolicySetStatus::Discarded,
        }],
        AuditEvent {
            kind: AuditKind::PolicyDiscarded,
            actor: actor.0.clone(),
            subject: format!("policy-set:{version}"),
            outcome: Outcome::Ok,
            detail: json!({}),
        },
    )
    .await?;
    Ok(Json(PolicyDiscarded { discarded: version }))
}

pub(crate) fn workload_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/bundle", get(service_bundle))
        .route("/decisions", post(post_decisions))
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
async fn service_bundle(
    State(app): State<Arc<App>>,
    WorkloadCaller(caller): WorkloadCaller,
    Query(q): Query<BundleQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
            .with_revoked(revoked)
            .with_federated(snap.federated_domains());
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
/// Decision records one service may report per minute (its audit share).
const RECORDS_PER_MINUTE: u64 = 20_000;
/// Longest path and reason kept from a record.
const MAX_RECORD_TEXT: usize = 512;

/// Whether `who` is a service: the target of some grant, or named by a policy file. Only a
/// service decides calls, so only a service has decisions to report.
fn is_service(snap: &Snapshot, who: &SpiffeId) -> bool {
    snap.grants.iter().any(|g| &g.to == who)
        || snap
            .policies
            .iter()
            .any(|p| p.text.contains(&format!("\"{who}\"")))
}

/// A record as the trail keeps it, or `None` when it cannot be one a service's authorizer made:
/// a caller that is no workload of this authority, an unknown method, a time far from now.
fn bounded(snap: &Snapshot, r: &DecisionRecord, now: i64) -> Option<DecisionRecord> {
    if !snap.workloads.contains_key(&r.caller)
        || !tessera_policy::model::METHODS.contains(&r.method.as_str())
        || r.at < now - 86_400
        || r.at > now + 300
    {
        return None;
    }
    let mut r = r.clone();
    r.path = r.path.chars().take(MAX_RECORD_TEXT).collect();
    r.reason = r.reason.chars().take(MAX_RECORD_TEXT).collect();
    Some(r)
}

/// A call's audit detail; a denial also gets the explanation from the active set (what decided,
/// what is missing), as token denials do.
fn record_detail(snap: &Snapshot, service: &SpiffeId, r: &DecisionRecord) -> Value {
    let mut detail = json!({"method": r.method, "path": r.path, "reason": r.reason, "at": r.at});
    if !r.allowed {
        let call = Call {
            actor: None,
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
async fn post_decisions(
    State(app): State<Arc<App>>,
    WorkloadCaller(service): WorkloadCaller,
    Json(batch): Json<DecisionBatch>,
) -> Result<Json<Value>, ApiError> {
    let snap = app.snapshot();
    if batch.records.len() > MAX_RECORDS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_RECORDS} decision records per request"
        )));
    }
    if !is_service(&snap, &service) {
        return Err(ApiError::Forbidden(format!(
            "`{service}` is no service (no grant or policy names it as a target): it has no decisions to report"
        )));
    }
    app.record_quota
        .take(
            service.as_str(),
            u64::try_from(batch.records.len()).unwrap_or(u64::MAX),
            RECORDS_PER_MINUTE,
            Duration::from_secs(60),
        )
        .map_err(|retry_after_secs| ApiError::RateLimited {
            description: format!(
                "at most {RECORDS_PER_MINUTE} decision records a minute per service"
            ),
            retry_after_secs,
        })?;
    let now = tessera_core::now_unix();
    let records: Vec<DecisionRecord> = batch
        .records
        .iter()
        .filter_map(|r| bounded(&snap, r, now))
        .collect();
    let dropped = batch.records.len() - records.len();
    let batch = DecisionBatch { records };
    let events: Vec<AuditEvent> = batch
        .records
        .iter()
        .map(|r| AuditEvent {
            kind: if r.allowed {
                AuditKind::CallAllowed
            } else {
                AuditKind::CallDenied
            },
            actor: service.to_string(),
            subject: r.caller.to_string(),
            outcome: if r.allowed {
                Outcome::Ok
            } else {
                Outcome::Denied
            },
            detail: record_detail(&snap, &service, r),
        })
        .collect();
    app.store.commit(&[], &events).await?;
    if let Some(shadow) = &snap.shadow {
        for r in &batch.records {
            let call = Call {
                actor: None,
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
    Ok(Json(json!({"recorded": events.len(), "dropped": dropped})))
}
