//! Policy sets: every change to grants and policy files is a numbered version (active, shadow,
//! superseded, promoted, discarded), so a candidate can be evaluated beside the active set,
//! promoted, or the active set rolled back.

use serde_json::json;
use tessera_core::admin_api::PolicyActivated;
use tessera_core::manifest::{Grant, PolicyFile};
use tessera_policy::PolicyEngine;
use tessera_store::{
    AuditEvent, AuditKind, Op, Outcome, PolicySetRecord, PolicySetStatus, StoreError,
};

use crate::app::{App, Snapshot};
use crate::domain::apply::{sorted_lines, ApplyResponse, Plan};

/// Why a policy-set change was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum PolicySetError {
    #[error("no shadow policy set is loaded; load one with `tessera apply --shadow -f FILES`")]
    NoShadow,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// The version of the loaded shadow set.
pub(crate) fn shadow_version(snap: &Snapshot) -> Result<i64, PolicySetError> {
    snap.shadow
        .as_ref()
        .map(|s| s.version)
        .ok_or(PolicySetError::NoShadow)
}

/// The ops that turn the current grants and policy files into `grants` and `policies`.
pub(crate) fn replace_ops(snap: &Snapshot, grants: &[Grant], policies: &[PolicyFile]) -> Vec<Op> {
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
pub(crate) async fn record_active(
    app: &App,
    snap: &Snapshot,
    grants: Vec<Grant>,
    policies: Vec<PolicyFile>,
    actor: &str,
    note: String,
) -> Result<(i64, Vec<Op>), PolicySetError> {
    let version = app.store.last_policy_set_version().await? + 1;
    let mut ops = Vec::new();
    if snap.policy_version > 0 {
        ops.push(Op::SetPolicySetStatus {
            version: snap.policy_version,
            status: PolicySetStatus::Superseded,
        });
    }
    ops.push(Op::RecordPolicySet(PolicySetRecord {
        version,
        status: PolicySetStatus::Active,
        grants,
        policies,
        created_at: tessera_core::now_unix(),
        actor: actor.to_owned(),
        note,
    }));
    Ok((version, ops))
}

/// `tessera apply --shadow`: validates the candidate and loads it beside the active set.
pub(crate) async fn load_shadow(
    app: &App,
    snap: &Snapshot,
    plan: Plan,
    actor: &str,
    dry_run: bool,
) -> Result<ApplyResponse, PolicySetError> {
    let others = plan.other_changes();
    if !others.is_empty() {
        return Err(PolicySetError::Invalid(format!(
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
            status: PolicySetStatus::Discarded,
        });
    }
    ops.push(Op::RecordPolicySet(PolicySetRecord {
        version,
        status: PolicySetStatus::Shadow,
        grants: plan.grants,
        policies: plan.policies,
        created_at: tessera_core::now_unix(),
        actor: actor.to_owned(),
        note: format!("loaded in shadow ({} changes)", changes.len()),
    }));
    app.change(
        &ops,
        AuditEvent {
            kind: AuditKind::PolicyShadow,
            actor: actor.to_owned(),
            subject: format!("policy-set:{version}"),
            outcome: Outcome::Ok,
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
pub(crate) async fn activate(
    app: &App,
    actor: &str,
    grants: Vec<Grant>,
    policies: Vec<PolicyFile>,
    mut extra: Vec<Op>,
    kind: AuditKind,
    note: String,
) -> Result<PolicyActivated, PolicySetError> {
    let snap = app.snapshot();
    let workloads: Vec<_> = snap.workloads.values().map(|w| w.spec.clone()).collect();
    PolicyEngine::from_files_federated(&workloads, &grants, &policies, &snap.federated_domains())
        .map_err(|e| {
        PolicySetError::Invalid(format!(
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
            kind,
            actor: actor.to_owned(),
            subject: format!("policy-set:{version}"),
            outcome: Outcome::Ok,
            detail: json!({"note": note, "changed": changed, "previous": snap.policy_version}),
        },
    )
    .await?;
    Ok(PolicyActivated {
        version,
        changed,
        note,
    })
}

pub(crate) async fn find_set(app: &App, version: i64) -> Result<PolicySetRecord, PolicySetError> {
    app.store
        .policy_set_at(version)
        .await?
        .ok_or_else(|| PolicySetError::NotFound(format!("policy set {version} is not stored")))
}

/// The newest `limit` versions, with how many grants and policy files each holds. A version's
/// contents never change once recorded, so each is decoded once per process and its counts
/// remembered.
pub(crate) async fn history(
    app: &App,
    limit: i64,
) -> Result<Vec<tessera_core::admin_api::PolicySetSummary>, PolicySetError> {
    let heads = app.store.policy_set_heads(limit).await?;
    let mut out = Vec::with_capacity(heads.len());
    for h in heads {
        let known = app
            .policy_counts
            .lock()
            .ok()
            .and_then(|m| m.get(&h.version).copied());
        let (grants, policies) = match known {
            Some(c) => c,
            None => {
                let rec = find_set(app, h.version).await?;
                let c = (rec.grants.len(), rec.policies.len());
                if let Ok(mut m) = app.policy_counts.lock() {
                    m.insert(h.version, c);
                }
                c
            }
        };
        out.push(tessera_core::admin_api::PolicySetSummary {
            version: h.version,
            status: h.status.to_string(),
            created_at: h.created_at,
            actor: h.actor,
            note: h.note,
            grants,
            policies,
        });
    }
    Ok(out)
}

// ---- Workload APIs -----------------------------------------------------------------------------
