//! Seeing trust: the overview (seed 003's SLIs), workloads searched and paged, the access graph
//! (grants as the policy in force decides them, overlaid with the calls decision records
//! report), what expires or falls due, and the audit trail searched. The console and the CLI
//! read these through the admin API; nothing here changes state.

use std::collections::{BTreeSet, HashMap};

use tessera_core::admin_api::{
    AccessGraph, AuditEntry, AuditPage, Expiries, Expiry, GraphEdge, GraphNode, Overview,
    WorkloadPage, WorkloadRow,
};
use tessera_core::manifest::Grant;
use tessera_core::SpiffeId;
use tessera_store::{AuditFilter, StoreError, WorkloadRecord};

use crate::app::{App, Snapshot};

/// Why a view cannot be given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The overview's window.
const DAY: i64 = 86_400;
/// The marks of seed 004: 72, 24 and 6 hours ahead.
const MARKS: [(i64, &str); 3] = [(6 * 3600, "6h"), (24 * 3600, "24h"), (72 * 3600, "72h")];
/// The most nodes a graph answer carries (a neighbourhood, or the workloads of a filter).
pub(crate) const GRAPH_MAX_NODES: usize = 200;
/// The most workloads one page lists.
pub(crate) const PAGE_MAX: usize = 200;

fn overdue(g: &Grant, now: i64) -> bool {
    g.review_by.is_some_and(|d| d.end_unix() < now)
}

/// The kinds the overview counts, asked for in one query.
const COUNTED: &[&str] = &[
    "token.issued",
    "svid.issued",
    "token.denied",
    "token.failed",
    "token.limited",
    "svid.denied",
    "call.allowed",
    "call.denied",
    "client.auth_failed",
    "federation.refused",
    "agent.join_refused",
    "console.signin_refused",
    "revoke.workload",
    "revoke.token",
    "revoke.agent",
];

fn ratio(good: i64, bad: i64) -> Option<f64> {
    let total = good + bad;
    #[expect(clippy::cast_precision_loss, reason = "a rate shown to two decimals")]
    (total > 0).then(|| good as f64 / total as f64)
}

/// `GET /v1/overview`.
pub(crate) async fn overview(
    app: &App,
    snap: &Snapshot,
    now: i64,
) -> Result<Overview, AccessError> {
    let counts = app.store.audit_counts_since(COUNTED, now - DAY).await?;
    let count = |kinds: &[&str]| -> i64 { kinds.iter().filter_map(|k| counts.get(*k)).sum() };
    let issued = count(&["token.issued", "svid.issued"]);
    let issuance_refused = count(&[
        "token.denied",
        "token.failed",
        "token.limited",
        "svid.denied",
    ]);
    let calls_allowed = count(&["call.allowed"]);
    let calls_denied = count(&["call.denied"]);
    let unauthorized_attempts = count(&[
        "client.auth_failed",
        "federation.refused",
        "agent.join_refused",
        "console.signin_refused",
    ]) + calls_denied;
    let revocations = count(&["revoke.workload", "revoke.token", "revoke.agent"]);
    let due = expiries(app, snap, now, 72 * 3600).await?;
    let within = |secs: i64| due.items.iter().filter(|e| e.at < now + secs).count();
    Ok(Overview {
        window_seconds: DAY,
        issued,
        issuance_refused,
        issuance_success: ratio(issued, issuance_refused),
        calls_allowed,
        calls_denied,
        verification_success: ratio(calls_allowed, calls_denied),
        unauthorized_attempts,
        revocations,
        workloads: snap.workloads.len(),
        revoked_workloads: snap
            .workloads
            .values()
            .filter(|w| w.revoked_at.is_some())
            .count(),
        grants: snap.grants.len(),
        grants_overdue: snap.grants.iter().filter(|g| overdue(g, now)).count(),
        expiring_6h: within(6 * 3600),
        expiring_24h: within(24 * 3600),
        expiring_72h: within(72 * 3600),
        policy_version: snap.policy_version,
        shadow_version: snap.shadow.as_ref().map(|s| s.version),
    })
}

/// What `GET /v1/workloads` searches for.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct WorkloadQuery {
    /// Words each found (case-insensitively) in the ID, owner or purpose.
    pub q: Option<String>,
    pub environment: Option<String>,
    pub owner: Option<String>,
    pub trust_domain: Option<String>,
    /// Only workloads with a grant past its review date.
    #[serde(default)]
    pub overdue: bool,
    #[serde(default)]
    pub offset: usize,
    pub limit: Option<usize>,
}

fn matches_filters(
    w: &WorkloadRecord,
    environment: Option<&str>,
    owner: Option<&str>,
    trust_domain: Option<&str>,
) -> bool {
    environment.is_none_or(|e| w.spec.environment.as_ref().is_some_and(|x| x.as_str() == e))
        && owner.is_none_or(|o| w.spec.owner.as_str() == o)
        && trust_domain.is_none_or(|t| w.spec.id.trust_domain().as_str() == t)
}

/// Grants out of, into, and overdue for each workload, in one pass over the grants.
fn grant_counts(snap: &Snapshot, now: i64) -> HashMap<&SpiffeId, (usize, usize, usize)> {
    let mut m: HashMap<&SpiffeId, (usize, usize, usize)> = HashMap::new();
    for g in &snap.grants {
        let late = usize::from(overdue(g, now));
        let from = m.entry(&g.from).or_default();
        from.0 += 1;
        from.2 += late;
        let to = m.entry(&g.to).or_default();
        to.1 += 1;
        to.2 += late;
    }
    m
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `GET /v1/workloads`.
pub(crate) async fn workloads(
    app: &App,
    snap: &Snapshot,
    q: &WorkloadQuery,
    now: i64,
) -> Result<WorkloadPage, AccessError> {
    let words: Vec<String> = nonempty(&q.q)
        .map(|s| {
            s.split_whitespace()
                .map(str::to_lowercase)
                .take(8)
                .collect()
        })
        .unwrap_or_default();
    let counts = grant_counts(snap, now);
    let (env, owner, td) = (
        nonempty(&q.environment),
        nonempty(&q.owner),
        nonempty(&q.trust_domain),
    );
    let mut hits: Vec<&WorkloadRecord> = snap
        .workloads
        .values()
        .filter(|w| matches_filters(w, env, owner, td))
        .filter(|w| !q.overdue || counts.get(&w.spec.id).is_some_and(|c| c.2 > 0))
        .filter(|w| {
            words.is_empty() || {
                let hay =
                    format!("{} {} {}", w.spec.id, w.spec.owner, w.spec.purpose).to_lowercase();
                words.iter().all(|word| hay.contains(word.as_str()))
            }
        })
        .collect();
    hits.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    let limit = q.limit.unwrap_or(50).clamp(1, PAGE_MAX);
    let mut rows = Vec::new();
    for w in hits.iter().skip(q.offset).take(limit) {
        let (grants_out, grants_in, late) = counts.get(&w.spec.id).copied().unwrap_or_default();
        let last_issued = app
            .store
            .last_audit_for(w.spec.id.as_str(), "token.issued")
            .await?
            .map(|r| r.at);
        rows.push(WorkloadRow {
            id: w.spec.id.clone(),
            owner: w.spec.owner.clone(),
            environment: w.spec.environment.clone(),
            kind: w.spec.kind,
            purpose: w.spec.purpose.clone(),
            selectors: w.spec.selectors.iter().map(ToString::to_string).collect(),
            grants_out,
            grants_in,
            overdue: late,
            last_issued,
            revoked_at: w.revoked_at,
        });
    }
    let mut environments = BTreeSet::new();
    let mut owners = BTreeSet::new();
    let mut trust_domains = BTreeSet::new();
    for w in snap.workloads.values() {
        if let Some(e) = &w.spec.environment {
            environments.insert(e.to_string());
        }
        owners.insert(w.spec.owner.to_string());
        trust_domains.insert(w.spec.id.trust_domain().to_string());
    }
    Ok(WorkloadPage {
        total: hits.len(),
        offset: q.offset,
        rows,
        environments: environments.into_iter().collect(),
        owners: owners.into_iter().collect(),
        trust_domains: trust_domains.into_iter().collect(),
    })
}

/// What `GET /v1/graph` draws.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct GraphQuery {
    /// The workload whose callers and callees to show; without it, the workloads of the filter.
    pub center: Option<String>,
    pub environment: Option<String>,
    pub owner: Option<String>,
    pub trust_domain: Option<String>,
    /// How far back observed calls count (seconds; default a day, at most 90 days).
    pub window: Option<i64>,
}

fn node(snap: &Snapshot, id: &str) -> GraphNode {
    let w = SpiffeId::parse(id)
        .ok()
        .and_then(|i| snap.workloads.get(&i));
    GraphNode {
        id: id.to_owned(),
        owner: w.map(|w| w.spec.owner.to_string()),
        environment: w.and_then(|w| w.spec.environment.as_ref().map(ToString::to_string)),
        trust_domain: SpiffeId::parse(id)
            .map(|i| i.trust_domain().to_string())
            .unwrap_or_default(),
        revoked: w.is_some_and(|w| w.revoked_at.is_some()),
        unknown: w.is_none(),
    }
}

/// What the policy in force makes of a grant: `allowed`, or why not (a forbid may override it).
pub(crate) fn effective(snap: &Snapshot, g: &Grant) -> String {
    let x = snap.engine.explain_issue(
        &g.from,
        &g.to,
        &[],
        &tessera_policy::IssueContext::default(),
        &tessera_policy::Env::now(),
    );
    if x.decision.allowed {
        "allowed".to_owned()
    } else {
        x.decision.reason()
    }
}

fn grant_edge(snap: &Snapshot, g: &Grant, now: i64) -> GraphEdge {
    GraphEdge {
        from: g.from.to_string(),
        to: g.to.to_string(),
        granted: true,
        effective: Some(effective(snap, g)),
        scopes: g.scopes.clone(),
        why: Some(g.why.clone()),
        review_by: g.review_by,
        overdue: overdue(g, now),
        calls_allowed: 0,
        calls_denied: 0,
        last_call: None,
    }
}

/// `GET /v1/graph`.
pub(crate) async fn graph(
    app: &App,
    snap: &Snapshot,
    q: &GraphQuery,
    now: i64,
) -> Result<AccessGraph, AccessError> {
    let window = q.window.unwrap_or(DAY).clamp(60, 90 * DAY);
    let (env, owner, td) = (
        nonempty(&q.environment),
        nonempty(&q.owner),
        nonempty(&q.trust_domain),
    );
    let keep = |id: &SpiffeId| {
        snap.workloads
            .get(id)
            .is_none_or(|w| matches_filters(w, env, owner, td))
    };
    let center = match nonempty(&q.center) {
        Some(c) => {
            let id = SpiffeId::parse(c).map_err(|e| AccessError::Invalid(e.to_string()))?;
            if !snap.workloads.contains_key(&id) {
                return Err(AccessError::NotFound(format!("no workload `{id}`")));
            }
            Some(id)
        }
        None => None,
    };
    let mut edges: HashMap<(String, String), GraphEdge> = HashMap::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let mut truncated = 0;
    let mut admit = |ids: &mut BTreeSet<String>, id: &str| -> bool {
        if ids.contains(id) {
            return true;
        }
        if ids.len() >= GRAPH_MAX_NODES {
            truncated += 1;
            return false;
        }
        ids.insert(id.to_owned());
        true
    };
    match &center {
        Some(c) => {
            admit(&mut ids, c.as_str());
            for g in snap.grants.iter().filter(|g| &g.from == c || &g.to == c) {
                let other = if &g.from == c { &g.to } else { &g.from };
                if keep(other) && admit(&mut ids, other.as_str()) {
                    edges.insert(
                        (g.from.to_string(), g.to.to_string()),
                        grant_edge(snap, g, now),
                    );
                }
            }
        }
        None => {
            let mut members: Vec<&SpiffeId> = snap
                .workloads
                .values()
                .filter(|w| matches_filters(w, env, owner, td))
                .map(|w| &w.spec.id)
                .collect();
            members.sort();
            for id in members {
                admit(&mut ids, id.as_str());
            }
            for g in &snap.grants {
                if ids.contains(g.from.as_str()) && ids.contains(g.to.as_str()) {
                    edges.insert(
                        (g.from.to_string(), g.to.to_string()),
                        grant_edge(snap, g, now),
                    );
                }
            }
        }
    }
    let observed = match &center {
        Some(c) => app.store.observed_calls(c.as_str(), now - window).await?,
        None => {
            let callers: Vec<&str> = ids.iter().map(String::as_str).collect();
            app.store.observed_calls_of(&callers, now - window).await?
        }
    };
    for o in observed {
        let wanted = match &center {
            Some(c) => {
                // The filters choose the neighbours; the centre is always drawn.
                let other = if o.caller == c.as_str() {
                    &o.service
                } else {
                    &o.caller
                };
                let other_is_kept = SpiffeId::parse(other).map_or(true, |id| keep(&id));
                other_is_kept && admit(&mut ids, &o.caller) && admit(&mut ids, &o.service)
            }
            None => ids.contains(&o.caller) && ids.contains(&o.service),
        };
        if !wanted {
            continue;
        }
        let e = edges
            .entry((o.caller.clone(), o.service.clone()))
            .or_insert_with(|| GraphEdge {
                from: o.caller.clone(),
                to: o.service.clone(),
                granted: false,
                effective: None,
                scopes: vec![],
                why: None,
                review_by: None,
                overdue: false,
                calls_allowed: 0,
                calls_denied: 0,
                last_call: None,
            });
        e.calls_allowed += o.allowed;
        e.calls_denied += o.denied;
        e.last_call = Some(e.last_call.unwrap_or(0).max(o.last_at));
    }
    let mut edges: Vec<GraphEdge> = edges.into_values().collect();
    edges.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    Ok(AccessGraph {
        center,
        nodes: ids.iter().map(|id| node(snap, id)).collect(),
        edges,
        truncated,
        window_seconds: window,
    })
}

fn mark(at: i64, now: i64) -> &'static str {
    if at <= now {
        return "overdue";
    }
    MARKS
        .iter()
        .find(|(secs, _)| at <= now + secs)
        .map_or("later", |(_, m)| m)
}

/// `GET /v1/expiries?within=SECONDS` (default and most: 72 hours).
pub(crate) async fn expiries(
    app: &App,
    snap: &Snapshot,
    now: i64,
    within: i64,
) -> Result<Expiries, AccessError> {
    let until = now + within.clamp(0, 72 * 3600);
    let mut items = Vec::new();
    let mut push = |kind: &str, subject: String, at: i64, detail: String| {
        if at < until {
            items.push(Expiry {
                kind: kind.into(),
                subject,
                at,
                mark: mark(at, now).into(),
                detail,
            });
        }
    };
    // Short-lived SVIDs renew themselves at half-life: one is listed only when its renewal is
    // late (a workload or agent that stopped, or cannot reach the authority).
    for (id, issued, ends) in app.store.svids_ending(now, until).await? {
        push(
            "svid",
            id,
            ends,
            format!(
                "the newest X.509-SVID (issued {}) was not renewed at half its life",
                issued
            ),
        );
    }
    let agent_ttl = i64::try_from(app.config.agent_svid_ttl.as_secs()).unwrap_or(i64::MAX);
    for a in snap.agents.values().filter(|a| a.revoked_at.is_none()) {
        if a.svid_not_after >= now && a.svid_not_after - now < agent_ttl / 2 {
            push(
                "agent_svid",
                a.id.clone(),
                a.svid_not_after,
                "the agent's own SVID, not renewed at half its life".into(),
            );
        }
    }
    for td in &app.config.trust_domains {
        for c in snap.cas.entries(&td.name) {
            push(
                "ca",
                format!("{} {}", td.name, c.id),
                c.not_after,
                "the CA certificate ends".into(),
            );
        }
        for k in snap.keys.entries(&td.name) {
            if let Some(r) = k.retire_at.filter(|r| *r >= now) {
                push(
                    "signing_key",
                    format!("{} {}", td.name, k.key.kid()),
                    r,
                    "the signing key is withdrawn".into(),
                );
            }
        }
    }
    for c in snap.clients.values() {
        if let Some(e) = c.secret.as_ref().and_then(|(s, _)| s.expires_at) {
            push(
                "client_secret",
                c.spec.id.to_string(),
                e,
                format!("client of {}", c.spec.workload),
            );
        }
    }
    for g in &snap.grants {
        if let Some(d) = g.review_by {
            push(
                "grant_review",
                format!("{} -> {}", g.from, g.to),
                d.end_unix(),
                format!("review by {d} ({})", g.source),
            );
        }
    }
    for s in app.store.secrets(false).await? {
        if let Some(period) = s.rotation_period {
            push(
                "secret_rotation",
                format!("secret:{}", s.name),
                s.updated_at + period,
                format!("owner {}", s.owner),
            );
        }
    }
    items.sort_by(|a, b| (a.at, &a.kind, &a.subject).cmp(&(b.at, &b.kind, &b.subject)));
    Ok(Expiries { now, items })
}

/// What `GET /v1/audit/search` looks for.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AuditQuery {
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// `GET /v1/audit/search`: newest first, a page at a time.
pub(crate) async fn audit_page(app: &App, q: &AuditQuery) -> Result<AuditPage, AccessError> {
    let text = |s: &Option<String>, what: &str| -> Result<Option<String>, AccessError> {
        match nonempty(s) {
            Some(v) if v.len() > 512 => Err(AccessError::Invalid(format!(
                "`{what}` is longer than 512 bytes"
            ))),
            v => Ok(v.map(str::to_owned)),
        }
    };
    let kind = text(&q.kind, "kind")?;
    if let Some(k) = &kind {
        k.parse::<tessera_store::AuditKind>()
            .map_err(AccessError::Invalid)?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let rows = app
        .store
        .audit_search(&AuditFilter {
            subject: text(&q.subject, "subject")?,
            actor: text(&q.actor, "actor")?,
            kind,
            since: q.since,
            until: q.until,
            before_seq: q.before,
            limit,
        })
        .await?;
    let next_before = (rows.len() == usize::try_from(limit).unwrap_or(0))
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    Ok(AuditPage {
        records: rows
            .into_iter()
            .map(|r| AuditEntry {
                seq: r.seq,
                at: r.at,
                detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null),
                kind: r.kind,
                actor: r.actor,
                subject: r.subject,
                outcome: r.outcome,
            })
            .collect(),
        next_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_the_first_within() {
        let now = 1_000_000;
        assert_eq!(mark(now - 1, now), "overdue");
        assert_eq!(mark(now + 3600, now), "6h");
        assert_eq!(mark(now + 7 * 3600, now), "24h");
        assert_eq!(mark(now + 30 * 3600, now), "72h");
        assert_eq!(mark(now + 80 * 3600, now), "later");
    }

    #[test]
    fn ratios_need_something_asked() {
        assert_eq!(ratio(0, 0), None);
        assert_eq!(ratio(3, 1), Some(0.75));
    }
}
