//! Identity as code on the server side: check a desired state against what is stored and what
//! this authority serves, and turn it into the operations that make it so.
//!
//! `apply` merges: objects in the files are created or updated, others are kept. With `prune`,
//! stored objects missing from the files are deleted. Either way the result must be whole (every
//! grant names workloads that exist, every scope is defined) or nothing changes.

use std::collections::{BTreeMap, BTreeSet};

pub(crate) use tessera_core::admin_api::{ApplyRequest, ApplyResponse};
use tessera_core::manifest::{ClientAuth, DesiredState, Federation, Grant, PolicyFile, Workload};
use tessera_core::TrustDomain;
use tessera_store::Op;
use tessera_verify::KeySet;

use crate::app::{App, Snapshot};
use crate::domain::bundle_federation;
use crate::domain::federation::check_rules;

/// Why a desired state cannot be applied; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An object in the files is invalid here; `origin` is its `file:line`.
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    /// The result would not be whole (a policy does not compile against it).
    #[error("{0}")]
    Incomplete(String),
}

fn is_policy_op(op: &Op) -> bool {
    matches!(
        op,
        Op::UpsertGrant(_) | Op::DeleteGrant { .. } | Op::UpsertPolicy(_) | Op::DeletePolicy(_)
    )
}

/// Lines of a plan in a stable order for people: by object, not by kind of change.
pub(crate) fn sorted_lines(lines: &[String]) -> Vec<String> {
    let mut out = lines.to_vec();
    out.sort_by(|a, b| a.get(2..).cmp(&b.get(2..)));
    out
}

/// What applying a desired state would do, and the policy set that would result.
#[derive(Debug)]
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    /// One line per op, in the same order (`+ grant a -> b`).
    pub lines: Vec<String>,
    pub grants: Vec<Grant>,
    pub policies: Vec<PolicyFile>,
}

impl Plan {
    /// Whether the plan changes grants or policy files (and so makes a new policy set version).
    pub(crate) fn changes_policy(&self) -> bool {
        self.ops.iter().any(is_policy_op)
    }

    /// Operations other than on grants and policy files (which a shadow load cannot make).
    pub(crate) fn other_changes(&self) -> Vec<&str> {
        self.ops
            .iter()
            .zip(self.lines.iter())
            .filter(|(op, _)| !is_policy_op(op))
            .map(|(_, l)| l.as_str())
            .collect()
    }
}

fn invalid(source: &str, msg: String) -> ApplyError {
    ApplyError::Invalid {
        origin: source.to_owned(),
        message: msg,
    }
}

/// Strips the `source` so that moving a definition between files is not a change.
fn same<T: Clone + PartialEq>(a: &T, b: &T, strip: impl Fn(&mut T)) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    strip(&mut a);
    strip(&mut b);
    a == b
}

pub(crate) fn plan(
    app: &App,
    current: &Snapshot,
    desired: &DesiredState,
    prune: bool,
) -> Result<Plan, ApplyError> {
    // 1. Each object on its own: served trust domains, environment bindings, client keys.
    for w in &desired.workloads {
        if w.id.path().starts_with("/tessera/") || w.id.path() == "/tessera" {
            return Err(invalid(
                &w.source,
                format!(
                    "workload `{}`: paths under `/tessera/` name the authority and its agents",
                    w.id
                ),
            ));
        }
        let td = w.id.trust_domain_str();
        let Some(cfg) = app
            .config
            .trust_domains
            .iter()
            .find(|t| t.name.as_str() == td)
        else {
            let served: Vec<String> = app
                .config
                .trust_domains
                .iter()
                .map(|t| t.name.to_string())
                .collect();
            return Err(invalid(&w.source, format!(
                "workload `{}` is in trust domain `{td}`, which this authority does not serve (it serves: {})",
                w.id,
                served.join(", ")
            )));
        };
        if let Some(env) = &cfg.environment {
            if w.environment.as_ref() != Some(env) {
                return Err(invalid(
                    &w.source,
                    format!(
                    "trust domain `{td}` holds only workloads of environment `{env}`; `{}` says {}",
                    w.id,
                    w.environment.as_ref().map_or("none".to_owned(), |e| format!("`{e}`"))
                ),
                ));
            }
        }
    }
    for c in &desired.clients {
        if c.auth == ClientAuth::PrivateKeyJwt {
            let keys = KeySet::from_jwks(c.jwks.as_deref().unwrap_or_default().as_bytes())
                .map_err(|e| {
                    invalid(
                        &c.source,
                        format!("client `{}`: its JWKS is not usable: {e}", c.id),
                    )
                })?;
            if keys.is_empty() {
                return Err(invalid(
                    &c.source,
                    format!("client `{}`: its JWKS holds no ES256 or EdDSA key", c.id),
                ));
            }
        }
    }
    for f in &desired.federations {
        let td = f.trust_domain.as_str();
        if app.serves(td).is_some() {
            return Err(invalid(
                &f.source,
                format!("federation with `{td}`: this authority serves that trust domain itself"),
            ));
        }
        bundle_federation::endpoint_url(f, app.config.dev)
            .map_err(|e| invalid(&f.source, format!("federation with `{td}`: {e}")))?;
        if let Some(t) = &f.token_issuer {
            if url::Url::parse(t).is_err() {
                return Err(invalid(
                    &f.source,
                    format!("federation with `{td}`: `token_issuer` `{t}` is not a URL"),
                ));
            }
        }
    }
    for c in &desired.clusters {
        let name = &c.name;
        if app.serves(c.trust_domain.as_str()).is_none() {
            return Err(invalid(
                &c.source,
                format!(
                    "cluster `{name}`: trust domain `{}` is not served here",
                    c.trust_domain
                ),
            ));
        }
        let ok = url::Url::parse(&c.issuer).is_ok_and(|u| {
            u.username().is_empty()
                && u.password().is_none()
                && (u.scheme() == "https"
                    || (u.scheme() == "http"
                        && app.config.dev
                        && u.host_str().is_some_and(tessera_core::is_loopback_host)))
        });
        if !ok {
            return Err(invalid(
                &c.source,
                format!("cluster `{name}`: `issuer` `{}` must be an https URL without credentials (plain http only for a --dev server, on loopback)", c.issuer),
            ));
        }
        if let Some(j) = &c.jwks {
            KeySet::from_jwks_with_rsa(j.as_bytes()).map_err(|e| {
                invalid(
                    &c.source,
                    format!("cluster `{name}`: its JWKS is not usable: {e}"),
                )
            })?;
        }
        if let Some(other) = current
            .clusters
            .iter()
            .find(|o| o.issuer == c.issuer && o.name != c.name)
            // Unless that cluster is redeclared here (then with another issuer) or pruned.
            .filter(|o| !prune && !desired.clusters.iter().any(|d| d.name == o.name))
        {
            return Err(invalid(
                &c.source,
                format!(
                    "cluster `{name}`: cluster `{}` already has issuer `{}`",
                    other.name, c.issuer
                ),
            ));
        }
    }
    for t in &desired.trusts {
        check_rules(t).map_err(|e| invalid(&t.source, e.to_string()))?;
        if let Some(j) = &t.jwks {
            KeySet::from_jwks_with_rsa(j.as_bytes()).map_err(|e| {
                invalid(
                    &t.source,
                    format!("trust `{}`: its JWKS is not usable: {e}", t.name),
                )
            })?;
        }
    }

    // 2. The state that would result.
    let mut workloads: BTreeMap<String, Workload> = if prune {
        BTreeMap::new()
    } else {
        current
            .workloads
            .iter()
            .map(|(k, v)| (k.to_string(), v.spec.clone()))
            .collect()
    };
    workloads.extend(
        desired
            .workloads
            .iter()
            .map(|w| (w.id.to_string(), w.clone())),
    );
    let mut grants: BTreeMap<(String, String), Grant> = if prune {
        BTreeMap::new()
    } else {
        current
            .grants
            .iter()
            .map(|g| ((g.from.to_string(), g.to.to_string()), g.clone()))
            .collect()
    };
    grants.extend(
        desired
            .grants
            .iter()
            .map(|g| ((g.from.to_string(), g.to.to_string()), g.clone())),
    );
    let mut clients: BTreeMap<String, &tessera_core::manifest::Client> = if prune {
        BTreeMap::new()
    } else {
        current
            .clients
            .iter()
            .map(|(k, v)| (k.clone(), &v.spec))
            .collect()
    };
    clients.extend(desired.clients.iter().map(|c| (c.id.to_string(), c)));
    let mut federations: BTreeMap<&str, &Federation> = if prune {
        BTreeMap::new()
    } else {
        current
            .federations
            .iter()
            .map(|(td, f)| (td.as_str(), &f.spec))
            .collect()
    };
    federations.extend(
        desired
            .federations
            .iter()
            .map(|f| (f.trust_domain.as_str(), f)),
    );

    // 3. The result must be whole.
    for w in workloads.values() {
        if let Some(td) = w
            .federates_with
            .iter()
            .find(|td| !federations.contains_key(td.as_str()))
        {
            return Err(invalid(
                &w.source,
                format!(
                    "workload `{}` federates with `{td}`, with which no `[[federation]]` is declared",
                    w.id
                ),
            ));
        }
    }
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for w in workloads.values() {
        names.insert(w.id.as_str(), w.id.as_str());
    }
    for w in workloads.values() {
        for a in &w.aliases {
            if let Some(other) = names.insert(a.as_str(), w.id.as_str()) {
                if other != w.id.as_str() {
                    return Err(invalid(
                        &w.source,
                        format!("alias `{a}` of `{}` already names `{other}`", w.id),
                    ));
                }
            }
        }
    }
    for g in grants.values() {
        let from = workloads.get(g.from.as_str());
        let to = workloads.get(g.to.as_str());
        // A caller of a federated trust domain is declared by its own authority, not here.
        let federated = federations.contains_key(g.from.trust_domain_str());
        if from.is_none() && !federated {
            return Err(invalid(
                &g.source,
                format!("grant from `{}`: no such workload (nor a trust domain this authority federates with)", g.from),
            ));
        }
        let Some(to) = to else {
            return Err(invalid(
                &g.source,
                format!("grant to `{}`: no such workload", g.to),
            ));
        };
        for s in &g.scopes {
            if !to.scopes.contains(s) {
                return Err(invalid(
                    &g.source,
                    format!(
                        "grant to `{}`: scope `{s}` is not one of the scopes it defines ({})",
                        g.to,
                        to.scopes
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    for c in clients.values() {
        if !workloads.contains_key(c.workload.as_str()) {
            return Err(invalid(
                &c.source,
                format!(
                    "client `{}`: workload `{}` does not exist",
                    c.id, c.workload
                ),
            ));
        }
    }
    for t in &desired.trusts {
        for m in &t.map {
            if !workloads.contains_key(m.workload.as_str()) {
                return Err(invalid(
                    &t.source,
                    format!(
                        "trust `{}`: maps to `{}`, which does not exist",
                        t.name, m.workload
                    ),
                ));
            }
        }
    }
    let policies: Vec<(String, String)> = {
        let mut p: BTreeMap<String, String> = if prune {
            BTreeMap::new()
        } else {
            current
                .policies
                .iter()
                .map(|p| (p.name.clone(), p.text.clone()))
                .collect()
        };
        p.extend(
            desired
                .policies
                .iter()
                .map(|f| (f.name.clone(), f.text.clone())),
        );
        p.into_iter().collect()
    };
    let ws: Vec<Workload> = workloads.values().cloned().collect();
    let gs: Vec<Grant> = grants.values().cloned().collect();
    let federated: Vec<TrustDomain> = federations
        .values()
        .map(|f| f.trust_domain.clone())
        .collect();
    tessera_policy::PolicyEngine::build_federated(&ws, &gs, &policies, &federated)
        .map_err(|e| ApplyError::Incomplete(e.to_string()))?;

    // 4. The operations, and a line for each change.
    let mut ops = Vec::new();
    let mut lines = Vec::new();
    for w in &desired.workloads {
        match current.workloads.get(&w.id) {
            Some(cur) if same(&cur.spec, w, |x| x.source.clear()) => {}
            Some(_) => {
                lines.push(format!("~ workload {}", w.id));
                ops.push(Op::UpsertWorkload(w.clone()));
            }
            None => {
                lines.push(format!("+ workload {}", w.id));
                ops.push(Op::UpsertWorkload(w.clone()));
            }
        }
    }
    let current_grants: BTreeMap<(&str, &str), &Grant> = current
        .grants
        .iter()
        .map(|g| ((g.from.as_str(), g.to.as_str()), g))
        .collect();
    for g in &desired.grants {
        match current_grants.get(&(g.from.as_str(), g.to.as_str())) {
            Some(cur) if same(*cur, g, |x| x.source.clear()) => {}
            found => {
                lines.push(format!(
                    "{} grant {} -> {}",
                    if found.is_some() { "~" } else { "+" },
                    g.from,
                    g.to
                ));
                ops.push(Op::UpsertGrant(g.clone()));
            }
        }
    }
    for c in &desired.clients {
        match current.clients.get(c.id.as_str()) {
            Some(cur) if same(&cur.spec, c, |x| x.source.clear()) => {}
            found => {
                lines.push(format!(
                    "{} client {}",
                    if found.is_some() { "~" } else { "+" },
                    c.id
                ));
                ops.push(Op::UpsertClient(c.clone()));
            }
        }
    }
    for t in &desired.trusts {
        match current.trusts.iter().find(|x| x.name == t.name) {
            Some(cur) if same(cur, t, |x| x.source.clear()) => {}
            found => {
                lines.push(format!(
                    "{} trust {}",
                    if found.is_some() { "~" } else { "+" },
                    t.name
                ));
                ops.push(Op::UpsertTrust(t.clone()));
            }
        }
    }
    for f in &desired.federations {
        match current.federations.get(&f.trust_domain) {
            Some(cur) if same(&cur.spec, f, |x| x.source.clear()) => {}
            found => {
                lines.push(format!(
                    "{} federation {}",
                    if found.is_some() { "~" } else { "+" },
                    f.trust_domain
                ));
                ops.push(Op::UpsertFederation(f.clone()));
            }
        }
    }
    for c in &desired.clusters {
        match current.clusters.iter().find(|x| x.name == c.name) {
            Some(cur) if same(cur, c, |x| x.source.clear()) => {}
            found => {
                lines.push(format!(
                    "{} cluster {}",
                    if found.is_some() { "~" } else { "+" },
                    c.name
                ));
                ops.push(Op::UpsertCluster(c.clone()));
            }
        }
    }
    for p in &desired.policies {
        match current.policies.iter().find(|x| x.name == p.name) {
            Some(cur) if cur.text == p.text => {}
            found => {
                lines.push(format!(
                    "{} policy {}",
                    if found.is_some() { "~" } else { "+" },
                    p.name
                ));
                ops.push(Op::UpsertPolicy(p.clone()));
            }
        }
    }
    if prune {
        let keep: BTreeSet<&str> = desired.workloads.iter().map(|w| w.id.as_str()).collect();
        for id in current
            .workloads
            .keys()
            .filter(|id| !keep.contains(id.as_str()))
        {
            lines.push(format!("- workload {id}"));
            ops.push(Op::DeleteWorkload(id.to_string()));
        }
        let keep: BTreeSet<(&str, &str)> = desired
            .grants
            .iter()
            .map(|g| (g.from.as_str(), g.to.as_str()))
            .collect();
        for g in current
            .grants
            .iter()
            .filter(|g| !keep.contains(&(g.from.as_str(), g.to.as_str())))
        {
            lines.push(format!("- grant {} -> {}", g.from, g.to));
            ops.push(Op::DeleteGrant {
                from: g.from.to_string(),
                to: g.to.to_string(),
            });
        }
        let keep: BTreeSet<&str> = desired.clients.iter().map(|c| c.id.as_str()).collect();
        for id in current
            .clients
            .keys()
            .filter(|id| !keep.contains(id.as_str()))
        {
            lines.push(format!("- client {id}"));
            ops.push(Op::DeleteClient(id.clone()));
        }
        let keep: BTreeSet<&str> = desired.trusts.iter().map(|t| t.name.as_str()).collect();
        for t in current
            .trusts
            .iter()
            .filter(|t| !keep.contains(t.name.as_str()))
        {
            lines.push(format!("- trust {}", t.name));
            ops.push(Op::DeleteTrust(t.name.to_string()));
        }
        let keep: BTreeSet<&str> = desired
            .federations
            .iter()
            .map(|f| f.trust_domain.as_str())
            .collect();
        for td in current
            .federations
            .keys()
            .filter(|td| !keep.contains(td.as_str()))
        {
            lines.push(format!("- federation {td}"));
            ops.push(Op::DeleteFederation(td.to_string()));
        }
        let keep: BTreeSet<&str> = desired.clusters.iter().map(|c| c.name.as_str()).collect();
        for c in current
            .clusters
            .iter()
            .filter(|c| !keep.contains(c.name.as_str()))
        {
            lines.push(format!("- cluster {}", c.name));
            ops.push(Op::DeleteCluster(c.name.to_string()));
        }
        let keep: BTreeSet<&str> = desired.policies.iter().map(|p| p.name.as_str()).collect();
        for p in current
            .policies
            .iter()
            .filter(|p| !keep.contains(p.name.as_str()))
        {
            lines.push(format!("- policy {}", p.name));
            ops.push(Op::DeletePolicy(p.name.clone()));
        }
    }
    Ok(Plan {
        ops,
        lines,
        grants: gs,
        policies: policies
            .into_iter()
            .map(|(name, text)| PolicyFile { name, text })
            .collect(),
    })
}
