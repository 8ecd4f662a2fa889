//! The least-privilege advisor: over a window of the audit trail, what each grant allows against
//! what was used (tokens issued, calls the services reported), grants never used, workloads and
//! clients with no issuance, identities that look shared, and deployment identities reaching
//! run-time services. Each finding carries its evidence and, where there is one, the narrower
//! grant to write instead. Reads only; decides nothing.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use tessera_core::admin_api::{Advice, Finding};
use tessera_core::manifest::{Grant, WorkloadKind};
use tessera_core::Scope;
use tessera_store::{AuditLine, StoreError};

use crate::app::{App, Snapshot};

/// Records read per query.
const PAGE: i64 = 20_000;
/// Default window: 30 days.
pub(crate) const DEFAULT_WINDOW: i64 = 30 * 86_400;
/// Distinct hosts (agents) or source addresses past which an identity looks shared.
const SHARED_AT: usize = 4;
/// Paths kept per grant as evidence.
const MAX_PATHS: usize = 20;

#[derive(Debug, Default)]
struct Use {
    tokens: u64,
    scopes: BTreeSet<String>,
    calls: u64,
    methods: BTreeSet<String>,
    paths: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Seen {
    /// caller -> target -> what was used (two levels: found by `&str`, no key built per record).
    pairs: HashMap<String, HashMap<String, Use>>,
    /// workload -> tokens and SVIDs issued for it.
    issued: HashMap<String, u64>,
    /// workload -> agents that obtained its X.509-SVIDs.
    hosts: HashMap<String, BTreeSet<String>>,
    /// client -> tokens and source addresses.
    clients: HashMap<String, (u64, BTreeSet<String>)>,
    read: u64,
}

impl Seen {
    /// The use of (caller, target), made on first sight; keys are copied only then.
    fn pair(&mut self, caller: &str, target: &str) -> Option<&mut Use> {
        if !self.pairs.contains_key(caller) {
            self.pairs.insert(caller.to_owned(), HashMap::new());
        }
        let targets = self.pairs.get_mut(caller)?;
        if !targets.contains_key(target) {
            targets.insert(target.to_owned(), Use::default());
        }
        targets.get_mut(target)
    }

    fn get(&self, caller: &str, target: &str) -> Option<&Use> {
        self.pairs.get(caller).and_then(|t| t.get(target))
    }
}

/// What the advisor reads of a `token.issued` record's detail (borrowed from its text).
#[derive(Deserialize)]
struct Issued<'a> {
    #[serde(borrow, default)]
    aud: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    scope: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source_ip: Option<Cow<'a, str>>,
}

/// Of an `svid.issued` record's detail.
#[derive(Deserialize)]
struct Svid<'a> {
    #[serde(borrow, default)]
    agent: Option<Cow<'a, str>>,
}

/// Of a `call.allowed` record's detail.
#[derive(Deserialize)]
struct Called<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
}

/// Reads every record of `kind` in the window, a page at a time, handing each to `f`.
async fn each(
    app: &App,
    kind: &str,
    since: i64,
    mut f: impl FnMut(&AuditLine),
) -> Result<u64, StoreError> {
    // Just before the window: `at >= since` is `(at, seq) > (since - 1, MAX)`.
    let mut after = (since - 1, i64::MAX);
    let mut n = 0;
    loop {
        let page = app.store.audit_kind_page(kind, after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(n);
        };
        after = (last.at, last.seq);
        for r in &page {
            f(r);
            n += 1;
        }
        if page.len() < usize::try_from(PAGE).unwrap_or(0) {
            return Ok(n);
        }
    }
}

async fn read(app: &App, since: i64) -> Result<Seen, StoreError> {
    let mut s = Seen::default();
    let mut read = 0;
    read += each(app, "token.issued", since, |r| {
        let Ok(d) = serde_json::from_str::<Issued<'_>>(&r.detail) else {
            return;
        };
        *s.issued.entry(r.subject.clone()).or_default() += 1;
        let c = s.clients.entry(r.actor.clone()).or_default();
        c.0 += 1;
        if let Some(ip) = d.source_ip {
            if c.1.len() <= SHARED_AT * 4 {
                c.1.insert(ip.into_owned());
            }
        }
        if let Some(u) = d.aud.and_then(|aud| s.pair(&r.subject, &aud)) {
            u.tokens += 1;
            for sc in d.scope.as_deref().unwrap_or("").split_whitespace() {
                if !u.scopes.contains(sc) {
                    u.scopes.insert(sc.to_owned());
                }
            }
        }
    })
    .await?;
    read += each(app, "svid.issued", since, |r| {
        *s.issued.entry(r.subject.clone()).or_default() += 1;
        if let Ok(Svid { agent: Some(agent) }) = serde_json::from_str::<Svid<'_>>(&r.detail) {
            let h = s.hosts.entry(r.subject.clone()).or_default();
            if h.len() <= SHARED_AT * 4 && !h.contains(agent.as_ref()) {
                h.insert(agent.into_owned());
            }
        }
    })
    .await?;
    read += each(app, "call.allowed", since, |r| {
        let d = serde_json::from_str::<Called<'_>>(&r.detail).ok();
        let Some(u) = s.pair(&r.subject, &r.actor) else {
            return;
        };
        u.calls += 1;
        let Some(d) = d else {
            return;
        };
        if let Some(m) = d.method {
            if !u.methods.contains(m.as_ref()) {
                u.methods.insert(m.into_owned());
            }
        }
        if let Some(p) = d.path {
            if u.paths.len() < MAX_PATHS && !u.paths.contains(p.as_ref()) {
                u.paths.insert(p.into_owned());
            }
        }
    })
    .await?;
    s.read = read;
    Ok(s)
}

/// A grant as identity-file text, with `scopes` (and the routes' methods) narrowed.
fn grant_toml(g: &Grant, scopes: &[String], methods: Option<&BTreeSet<String>>) -> String {
    let mut t = toml::map::Map::new();
    t.insert("from".into(), g.from.to_string().into());
    t.insert("to".into(), g.to.to_string().into());
    if !scopes.is_empty() {
        t.insert(
            "scopes".into(),
            toml::Value::Array(scopes.iter().map(|s| s.clone().into()).collect()),
        );
    }
    if !g.routes.is_empty() {
        let routes: Vec<toml::Value> = g
            .routes
            .iter()
            .map(|r| {
                let mut m = toml::map::Map::new();
                let ms: Vec<String> = match methods {
                    Some(used) => r
                        .methods
                        .iter()
                        .filter(|x| used.contains(*x))
                        .cloned()
                        .collect(),
                    None => r.methods.clone(),
                };
                if !ms.is_empty() {
                    m.insert(
                        "methods".into(),
                        toml::Value::Array(ms.into_iter().map(Into::into).collect()),
                    );
                }
                m.insert(
                    "paths".into(),
                    toml::Value::Array(r.paths.iter().map(|p| p.clone().into()).collect()),
                );
                toml::Value::Table(m)
            })
            .collect();
        t.insert("routes".into(), toml::Value::Array(routes));
    }
    t.insert("why".into(), g.why.clone().into());
    if let Some(d) = g.review_by {
        t.insert("review_by".into(), d.to_string().into());
    }
    if g.deployment {
        t.insert("deployment".into(), true.into());
    }
    let mut doc = toml::map::Map::new();
    doc.insert(
        "grant".into(),
        toml::Value::Array(vec![toml::Value::Table(t)]),
    );
    toml::to_string(&toml::Value::Table(doc)).unwrap_or_default()
}

fn finding(kind: &str, subject: String, summary: String) -> Finding {
    Finding {
        kind: kind.into(),
        subject,
        target: None,
        summary,
        evidence: vec![],
        suggestion: None,
        source: None,
    }
}

/// `GET /v1/advise` and `tessera advise`.
pub(crate) async fn advise(
    app: &App,
    snap: &Snapshot,
    window: Option<i64>,
    now: i64,
) -> Result<Advice, StoreError> {
    let window = window.unwrap_or(DEFAULT_WINDOW).clamp(3600, 366 * 86_400);
    let seen = read(app, now - window).await?;
    let days = window / 86_400;
    let mut findings = Vec::new();
    let empty = Use::default();
    for g in &snap.grants {
        let u = seen.get(g.from.as_str(), g.to.as_str()).unwrap_or(&empty);
        let f = |kind: &str, summary: String| {
            let mut x = finding(kind, g.from.to_string(), summary);
            x.target = Some(g.to.to_string());
            x.source = Some(g.source.clone());
            x
        };
        if u.tokens == 0 && u.calls == 0 {
            let mut x = f(
                "unused_grant",
                format!("never used in {days} days: no token issued for it, no call reported"),
            );
            x.evidence.push(format!("why: {}", g.why));
            x.suggestion = Some(String::new());
            findings.push(x);
            continue;
        }
        let granted: BTreeSet<String> = g.scopes.iter().map(Scope::to_string).collect();
        let unused: Vec<&String> = granted.difference(&u.scopes).collect();
        let used_scopes: Vec<String> = granted.intersection(&u.scopes).cloned().collect();
        if u.tokens > 0 && !unused.is_empty() {
            let mut x = f(
                "unused_scopes",
                format!(
                    "{} of {} scopes never asked for",
                    unused.len(),
                    granted.len()
                ),
            );
            x.evidence.push(format!(
                "{} tokens issued in {days} days, with scopes: {}",
                u.tokens,
                u.scopes.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
            x.evidence.push(format!(
                "never asked: {}",
                unused
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            x.suggestion = Some(grant_toml(g, &used_scopes, None));
            findings.push(x);
        }
        let granted_methods: BTreeSet<String> = g
            .routes
            .iter()
            .flat_map(|r| r.methods.iter().cloned())
            .collect();
        let unused_methods: Vec<&String> = granted_methods.difference(&u.methods).collect();
        if u.calls > 0 && !granted_methods.is_empty() && !unused_methods.is_empty() {
            let mut x = f(
                "unused_routes",
                format!(
                    "methods never called: {}",
                    unused_methods
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            );
            x.evidence.push(format!(
                "{} calls reported in {days} days, methods: {}",
                u.calls,
                u.methods.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
            x.evidence.push(format!(
                "paths called: {}",
                u.paths.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
            let scopes: Vec<String> = g.scopes.iter().map(Scope::to_string).collect();
            x.suggestion = Some(grant_toml(g, &scopes, Some(&u.methods)));
            findings.push(x);
        }
        let caller_kind = snap.workloads.get(&g.from).map(|w| w.spec.kind);
        let target_kind = snap.workloads.get(&g.to).map(|w| w.spec.kind);
        if caller_kind == Some(WorkloadKind::Deployment)
            && target_kind != Some(WorkloadKind::Deployment)
        {
            let mut x = f(
                "deployment_reaches_runtime",
                "a deployment identity may reach a run-time service".into(),
            );
            x.evidence.push(format!(
                "`deployment = true` on the grant; {} tokens, {} calls in {days} days",
                u.tokens, u.calls
            ));
            findings.push(x);
        }
    }
    let mut ids: Vec<_> = snap.workloads.values().collect();
    ids.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    for w in ids {
        let id = w.spec.id.to_string();
        if w.revoked_at.is_none() && !seen.issued.contains_key(&id) {
            let mut x = finding(
                "idle_workload",
                id.clone(),
                format!("no token or SVID issued in {days} days"),
            );
            x.evidence
                .push(format!("owner {}: {}", w.spec.owner, w.spec.purpose));
            x.source = Some(w.spec.source.clone());
            findings.push(x);
        }
        if let Some(hosts) = seen.hosts.get(&id).filter(|h| h.len() >= SHARED_AT) {
            let mut x = finding(
                "shared_identity",
                id.clone(),
                format!(
                    "obtained SVIDs on {}{} distinct hosts: one identity for many deployments?",
                    hosts.len(),
                    if hosts.len() > SHARED_AT * 4 { "+" } else { "" }
                ),
            );
            x.evidence.push(format!(
                "agents: {}",
                hosts.iter().take(10).cloned().collect::<Vec<_>>().join(" ")
            ));
            x.source = Some(w.spec.source.clone());
            findings.push(x);
        }
    }
    let mut clients: Vec<_> = snap.clients.values().collect();
    clients.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    for c in clients {
        let id = c.spec.id.to_string();
        match seen.clients.get(&id) {
            None => {
                let mut x = finding(
                    "idle_client",
                    id,
                    format!("no token issued to this client in {days} days"),
                );
                x.evidence.push(format!("client of {}", c.spec.workload));
                x.source = Some(c.spec.source.clone());
                x.suggestion = Some(String::new());
                findings.push(x);
            }
            Some((n, ips)) if ips.len() >= SHARED_AT => {
                let mut x = finding(
                    "shared_client",
                    id,
                    format!(
                        "used from {}{} source addresses: one credential in many places?",
                        ips.len(),
                        if ips.len() > SHARED_AT * 4 { "+" } else { "" }
                    ),
                );
                x.evidence.push(format!(
                    "{n} tokens; addresses: {}",
                    ips.iter().take(10).cloned().collect::<Vec<_>>().join(" ")
                ));
                x.source = Some(c.spec.source.clone());
                findings.push(x);
            }
            Some(_) => {}
        }
    }
    Ok(Advice {
        window_seconds: window,
        records_read: seen.read,
        findings,
    })
}
