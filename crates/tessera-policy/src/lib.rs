//! Authorization decisions with Cedar, everywhere Tessera makes one: token issuance, calls at
//! the receiving service (library and sidecar), secret reads.
//!
//! One model ([`model::SCHEMA_TEXT`]): principals are workloads; resources are services,
//! routes of a service and secrets. Grants compile into Cedar policies of that model; `.cedar`
//! files add `permit` and `forbid` policies; Tessera ships a default set. A whole set is
//! validated against the schema in strict mode before it is used, and policies naming a
//! workload that does not exist are refused.
//!
//! Cedar evaluates every policy in the set it is given, so the engine keeps one small slice per
//! (caller, target) pair: that pair's grant policies plus the global policies. A decision costs
//! the same with ten grants or ten thousand.
//!
//! Deny by default, and fail closed: a decision in which any policy failed to evaluate is a
//! denial (Cedar skips erroring policies, so an erroring `forbid` would otherwise allow).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};
use tessera_core::manifest::{Grant, Workload};
use tessera_core::{Scope, SpiffeId, TrustDomain};

pub mod bundle;
pub mod limit;
pub mod model;
pub mod path;

pub use bundle::{DecisionRecord, PolicyBundle};
/// The Cedar entity type of [`secret_entity`], for callers of [`PolicyEngine::decide_secret`].
pub type SecretEntity = Entity;
use model::{uid, DESCRIBE_SECRET, ISSUE_TOKEN, READ_SECRET};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy (file or compiled grant) that does not parse or does not validate; `at` is
    /// `file:line`.
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    #[error("workload `{id}` cannot be described to the policy engine: {message}")]
    Entity { id: String, message: String },
    #[error("the shipped policy model does not load: {0}")]
    Model(String),
}

/// How a token was asked for, beyond who, what and which scopes: on behalf of another workload
/// (RFC 8693 delegation: `actor` is the service acting), or in exchange for an outside token
/// (`trust` names the trust). In Cedar: `context.delegated`, `context.actor`, `context.trust`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueContext {
    pub actor: Option<SpiffeId>,
    pub trust: Option<String>,
}

/// The circumstances of a request: in Cedar, `context.now`, `context.hour`,
/// `context.source_ip` and `context.token_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Env {
    /// Unix seconds.
    pub now: i64,
    pub source_ip: Option<IpAddr>,
    /// Seconds since the presented (or subject) token was issued; 0 when there is none.
    pub token_age: i64,
}

impl Env {
    /// Now, from the system clock, with nothing else known.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Self {
            now,
            source_ip: None,
            token_age: 0,
        }
    }

    pub fn at(now: i64) -> Self {
        Self {
            now,
            source_ip: None,
            token_age: 0,
        }
    }

    fn pairs(&self) -> Vec<(String, RestrictedExpression)> {
        let ip = self
            .source_ip
            .map_or_else(|| "0.0.0.0".to_owned(), |ip| ip.to_string());
        vec![
            ("now".to_owned(), RestrictedExpression::new_long(self.now)),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long(self.now.rem_euclid(86_400) / 3_600),
            ),
            ("source_ip".to_owned(), RestrictedExpression::new_ip(ip)),
            (
                "token_age".to_owned(),
                RestrictedExpression::new_long(self.token_age.max(0)),
            ),
        ]
    }
}

/// How the caller of a route or secret proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Authn {
    Jwt,
    Mtls,
    MtlsJwt,
}

impl Authn {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Mtls => "mtls",
            Self::MtlsJwt => "mtls+jwt",
        }
    }
}

/// One request to a route of a service.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: &'a str,
    /// As received; normalised before the decision ([`path::normalize`]).
    pub path: &'a str,
    /// The verified token's scopes; empty for mTLS alone.
    pub scopes: &'a [Scope],
    pub authn: Authn,
    /// For a delegated token (RFC 8693 `act`): the workload acting for the token's subject.
    /// Policies see it as `context.delegated` and `context.actor`.
    pub actor: Option<&'a SpiffeId>,
}

/// What an authorization decided, and which policies or errors made it so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// Where each determining policy came from, e.g. `grant `a` -> `b` (mesh.toml:17)` or
    /// `policy `environments.cedar#0` (policies/environments.cedar:6)`.
    pub determined_by: Vec<String>,
    /// Evaluation errors; any error makes the decision a denial.
    pub errors: Vec<String>,
}

impl Decision {
    fn deny(error: String) -> Self {
        Self {
            allowed: false,
            determined_by: Vec::new(),
            errors: vec![error],
        }
    }

    /// A one-line reason a person can act on.
    pub fn reason(&self) -> String {
        if self.allowed {
            return format!("allowed by {}", self.determined_by.join(", "));
        }
        if !self.errors.is_empty() {
            return format!(
                "a policy failed to evaluate, which denies ({})",
                self.errors.join("; ")
            );
        }
        if self.determined_by.is_empty() {
            "no grant or policy permits it".to_owned()
        } else {
            format!("forbidden by {}", self.determined_by.join(", "))
        }
    }
}

/// A decision with what a person needs to change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The request in words, e.g. `a -> b: issue_token [b:read]`.
    pub request: String,
    #[serde(flatten)]
    pub decision: Decision,
    /// For a denial: the grant or condition that is missing, or the policy to change.
    pub missing: Vec<String>,
}

struct Slice {
    policies: PolicySet,
    /// The caller and the target. Kept small: a slice exists per granted pair, and the
    /// allocator pays for every byte of 10,000 of them on each decision.
    entities: Entities,
}

/// Where a policy came from, for explanations.
#[derive(Debug, Clone)]
struct Origin {
    /// Shown in decisions: `grant `a` -> `b` (mesh.toml:17)`.
    label: String,
    /// Shown for denials by this policy: what would change the outcome.
    hint: Option<String>,
}

/// The compiled policy state: immutable; a new one is built when identity files change.
pub struct PolicyEngine {
    authorizer: Authorizer,
    /// The schema's actions with their groups. A call's action entity goes into its request's
    /// entities: without it `action in Action::"call"` would match nothing, and a `forbid`
    /// written that way would never fire. (`issue_token` has no group, so issuance needs none.)
    actions: Entities,
    slices: HashMap<(SpiffeId, SpiffeId), Arc<Slice>>,
    global: PolicySet,
    principals: HashMap<SpiffeId, Entity>,
    services: HashMap<SpiffeId, Entity>,
    /// Trust domains of other authorities this one federates with: their workloads may be
    /// callers (principals) though no local identity file declares them.
    federated: HashSet<String>,
    workloads: HashMap<SpiffeId, Workload>,
    grants: HashMap<(SpiffeId, SpiffeId), Grant>,
    origins: HashMap<String, Origin>,
    policy_count: usize,
    /// Decisions already made for direct issuance requests. Sound only while no policy can
    /// read the request's circumstances: see [`PolicyEngine::cacheable`].
    decided: std::sync::RwLock<HashMap<DecisionKey, Decision>>,
    /// The same for calls, keyed by the normalised path; under the same invariant.
    decided_calls: std::sync::RwLock<HashMap<CallKey, Decision>>,
    /// INVARIANT: true only if no user policy mentions a circumstance (`now`, `hour`,
    /// `source_ip`, `token_age`), so that an issuance decision depends only on caller, target
    /// and scopes, and a call's only on caller, target, method, normalised path, scopes and
    /// authn. Just-in-time scopes do read them, so token requests for those are never cached.
    cacheable: bool,
}

type DecisionKey = (SpiffeId, SpiffeId, Vec<Scope>);
type CallKey = (
    SpiffeId,
    SpiffeId,
    String,
    String,
    Vec<Scope>,
    Authn,
    Option<SpiffeId>,
);

/// Bounds the decision cache; when full it is cleared, not grown.
const MAX_CACHED_DECISIONS: usize = 100_000;

/// Words that, in a policy, make decisions depend on more than caller, target and scopes.
const CIRCUMSTANCES: [&str; 4] = ["now", "hour", "source_ip", "token_age"];

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("slices", &self.slices.len())
            .field("policies", &self.policy_count)
            .finish_non_exhaustive()
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// The first source offset a Cedar diagnostic points at.
fn diagnostic_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

/// A policy file parsed into policies with their start lines, IDs renumbered `name#i`.
fn parse_file(name: &str, text: &str) -> Result<Vec<(Policy, usize)>, PolicyError> {
    let set = PolicySet::from_str(text).map_err(|e| PolicyError::Invalid {
        at: format!(
            "{name}:{}",
            diagnostic_offset(&e).map_or(1, |o| line_of(text, o))
        ),
        message: format!("does not parse: {}", first_line(&e.to_string())),
    })?;
    if set.templates().next().is_some() {
        return Err(PolicyError::Invalid {
            at: name.to_owned(),
            message: "policy templates are not supported".into(),
        });
    }
    let mut policies: Vec<(Policy, usize)> = set
        .policies()
        .map(|p| {
            // A parsed policy displays as its own source text, so its position is findable.
            let offset = text.find(&p.to_string()).unwrap_or(0);
            (p.clone(), offset)
        })
        .collect();
    policies.sort_by_key(|(_, offset)| *offset);
    Ok(policies
        .into_iter()
        .enumerate()
        .map(|(i, (p, offset))| {
            (
                p.new_id(PolicyId::new(format!("{name}#{i}"))),
                line_of(text, offset),
            )
        })
        .collect())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

impl PolicyEngine {
    /// Compiles workloads, grants and policy files (name, text) into an engine, after checking
    /// the whole set against the schema in strict mode.
    pub fn build(
        workloads: &[Workload],
        grants: &[Grant],
        files: &[(String, String)],
    ) -> Result<Self, PolicyError> {
        Self::build_federated(workloads, grants, files, &[])
    }

    /// [`PolicyEngine::build`] for an authority that federates with `federated` trust domains:
    /// a grant or a policy may name a workload of one of them as a caller.
    pub fn build_federated(
        workloads: &[Workload],
        grants: &[Grant],
        files: &[(String, String)],
        federated: &[TrustDomain],
    ) -> Result<Self, PolicyError> {
        let federated: HashSet<String> = federated.iter().map(|t| t.to_string()).collect();
        let schema = model::schema().map_err(PolicyError::Model)?;
        let mut origins: HashMap<String, Origin> = HashMap::new();
        let mut global = PolicySet::new();
        // Where each policy's text lives, to turn a validation error into `file:line`.
        let mut texts: HashMap<String, (String, String, usize)> = HashMap::new();
        // Grants may come from workloads of a federated trust domain, which no local identity
        // file declares (the server checks at apply that their trust domain is federated).
        let known: HashSet<&str> = workloads
            .iter()
            .map(|w| w.id.as_str())
            .chain(grants.iter().map(|g| g.from.as_str()))
            .collect();
        let mut cacheable = true;

        let mut add_file = |name: &str, text: &str, shipped: bool| -> Result<(), PolicyError> {
            for (p, line) in parse_file(name, text)? {
                let id = p.id().to_string();
                let at = format!("{name}:{line}");
                for e in p.entity_literals() {
                    let t = e.type_name().to_string();
                    let id = e.id().unescaped();
                    let foreign_caller = t == "Workload"
                        && SpiffeId::parse(id)
                            .is_ok_and(|i| federated.contains(i.trust_domain_str()));
                    if (t == "Workload" || t == "Service") && !known.contains(id) && !foreign_caller
                    {
                        return Err(PolicyError::Invalid {
                            at,
                            message: format!(
                                "refers to {t}::\"{}\", which no identity file declares",
                                e.id().unescaped()
                            ),
                        });
                    }
                }
                if !shipped {
                    let src = p.to_string();
                    if CIRCUMSTANCES.iter().any(|w| src.contains(w)) {
                        cacheable = false;
                    }
                }
                origins.insert(
                    id.clone(),
                    Origin {
                        label: if shipped {
                            format!("shipped policy `{}` ({at})", p.annotation("id").unwrap_or(&id))
                        } else {
                            format!("policy `{id}` ({at})")
                        },
                        hint: Some(if shipped {
                            "a grant from a deployment workload to a run-time service needs `deployment = true`".to_owned()
                        } else {
                            format!("change or remove the forbid at {at}")
                        }),
                    },
                );
                texts.insert(id.clone(), (name.to_owned(), text.to_owned(), line));
                global.add(p).map_err(|e| PolicyError::Invalid {
                    at: format!("{name}:{line}"),
                    message: e.to_string(),
                })?;
            }
            Ok(())
        };
        add_file(model::DEFAULT_POLICIES_NAME, model::DEFAULT_POLICIES, true)?;
        for (name, text) in files {
            add_file(name, text, false)?;
        }

        // Just-in-time scopes: `forbid` policies on the service's `issue_token`.
        for w in workloads {
            for j in &w.jit {
                for (k, rule) in model::jit_policies(&w.id, j).into_iter().enumerate() {
                    let id = format!("jit:{}:{}#{k}", w.id, j.scope);
                    let policy =
                        Policy::parse(Some(PolicyId::new(&id)), &rule.text).map_err(|e| {
                            PolicyError::Invalid {
                                at: w.source.clone(),
                                message: format!("jit scope `{}` does not compile: {e}", j.scope),
                            }
                        })?;
                    origins.insert(
                        id.clone(),
                        Origin {
                            label: format!(
                                "jit scope `{}` of `{}`: {} ({})",
                                j.scope, w.id, rule.requirement, w.source
                            ),
                            hint: Some(format!(
                                "`{}` is issued {} ({})",
                                j.scope, rule.requirement, w.source
                            )),
                        },
                    );
                    texts.insert(id, (w.source.clone(), rule.text.clone(), 0));
                    global.add(policy).map_err(|e| PolicyError::Invalid {
                        at: w.source.clone(),
                        message: e.to_string(),
                    })?;
                }
            }
        }

        let mut deploys: HashMap<&SpiffeId, Vec<&SpiffeId>> = HashMap::new();
        for g in grants.iter().filter(|g| g.deployment) {
            deploys.entry(&g.from).or_default().push(&g.to);
        }
        let mut principals = HashMap::new();
        let mut services = HashMap::new();
        for w in workloads {
            let err = |message: String| PolicyError::Entity {
                id: w.id.to_string(),
                message,
            };
            let d = deploys.get(&w.id).map(Vec::as_slice).unwrap_or_default();
            principals.insert(w.id.clone(), model::workload_entity(w, d).map_err(err)?);
            services.insert(w.id.clone(), model::service_entity(w).map_err(err)?);
        }
        for g in grants {
            if !principals.contains_key(&g.from) {
                let entity =
                    model::federated_entity(&g.from).map_err(|message| PolicyError::Entity {
                        id: g.from.to_string(),
                        message,
                    })?;
                principals.insert(g.from.clone(), entity);
            }
        }

        // Every grant's policies, validated together with the global ones below.
        let mut all = global.clone();
        let mut per_pair: BTreeMap<(SpiffeId, SpiffeId), Vec<Policy>> = BTreeMap::new();
        let mut grant_map = HashMap::new();
        for (i, g) in grants.iter().enumerate() {
            let (issue, call) = model::grant_policies(g);
            let label = format!("grant `{}` -> `{}` ({})", g.from, g.to, g.source);
            for (suffix, text) in [("token", issue), ("call", call)] {
                let id = format!("grant{i}:{suffix}");
                let policy = Policy::parse(Some(PolicyId::new(&id)), &text).map_err(|e| {
                    PolicyError::Invalid {
                        at: g.source.clone(),
                        message: format!("grant does not compile: {e}"),
                    }
                })?;
                origins.insert(
                    id.clone(),
                    Origin {
                        label: label.clone(),
                        hint: None,
                    },
                );
                texts.insert(id, (g.source.clone(), text, 0));
                all.add(policy.clone()).map_err(|e| PolicyError::Invalid {
                    at: g.source.clone(),
                    message: e.to_string(),
                })?;
                per_pair
                    .entry((g.from.clone(), g.to.clone()))
                    .or_default()
                    .push(policy);
            }
            grant_map.insert((g.from.clone(), g.to.clone()), g.clone());
        }

        let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            let id = e.policy_id().to_string();
            let (at, message) = match texts.get(&id) {
                Some((name, text, line)) if *line > 0 => {
                    // The error's own position inside the file, when Cedar gives one.
                    let line = diagnostic_offset(e).map_or(*line, |o| line_of(text, o));
                    (format!("{name}:{line}"), e.to_string())
                }
                Some((source, _, _)) => (source.clone(), e.to_string()),
                None => (id.clone(), e.to_string()),
            };
            return Err(PolicyError::Invalid {
                at,
                message: format!("fails validation against the Tessera schema: {message}"),
            });
        }

        let actions = schema
            .action_entities()
            .map_err(|e| PolicyError::Model(e.to_string()))?;
        let mut slices = HashMap::new();
        for (pair, policies) in per_pair {
            let err = |message: String| PolicyError::Invalid {
                at: pair.0.to_string(),
                message,
            };
            let mut set = global.clone();
            for p in policies {
                set.add(p).map_err(|e| err(e.to_string()))?;
            }
            let members = [
                principals.get(&pair.0).cloned(),
                services.get(&pair.1).cloned(),
            ];
            let entities = Entities::from_entities(members.into_iter().flatten(), None)
                .map_err(|e| err(e.to_string()))?;
            slices.insert(
                pair,
                Arc::new(Slice {
                    policies: set,
                    entities,
                }),
            );
        }
        Ok(Self {
            authorizer: Authorizer::new(),
            actions,
            slices,
            policy_count: all.policies().count(),
            global,
            principals,
            services,
            federated,
            workloads: workloads
                .iter()
                .map(|w| (w.id.clone(), w.clone()))
                .collect(),
            grants: grant_map,
            origins,
            decided: std::sync::RwLock::new(HashMap::new()),
            decided_calls: std::sync::RwLock::new(HashMap::new()),
            cacheable,
        })
    }

    /// The caller's entity: a declared workload's, or, for a caller of a federated trust
    /// domain that no grant names, one made for it (it has only its trust domain).
    fn principal(&self, from: &SpiffeId) -> Option<Entity> {
        match self.principals.get(from) {
            Some(p) => Some(p.clone()),
            None if self.federated.contains(from.trust_domain_str()) => {
                model::federated_entity(from).ok()
            }
            None => None,
        }
    }

    /// [`PolicyEngine::build`] from policy files as identity files and the store hold them.
    pub fn from_files(
        workloads: &[Workload],
        grants: &[Grant],
        files: &[tessera_core::manifest::PolicyFile],
    ) -> Result<Self, PolicyError> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|p| (p.name.clone(), p.text.clone()))
            .collect();
        Self::build(workloads, grants, &files)
    }

    /// [`PolicyEngine::build_federated`] from policy files as the store holds them.
    pub fn from_files_federated(
        workloads: &[Workload],
        grants: &[Grant],
        files: &[tessera_core::manifest::PolicyFile],
        federated: &[TrustDomain],
    ) -> Result<Self, PolicyError> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|p| (p.name.clone(), p.text.clone()))
            .collect();
        Self::build_federated(workloads, grants, &files, federated)
    }

    /// How many Cedar policies the whole set holds (shipped, files, grants, jit).
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Whether direct issuance decisions may be cached (no policy reads circumstances).
    pub fn cacheable(&self) -> bool {
        self.cacheable
    }

    pub fn workload(&self, id: &SpiffeId) -> Option<&Workload> {
        self.workloads.get(id)
    }

    pub fn grant(&self, from: &SpiffeId, to: &SpiffeId) -> Option<&Grant> {
        self.grants.get(&(from.clone(), to.clone()))
    }

    /// May `from` receive a token for `to` carrying `scopes`?
    pub fn decide_issue(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        scopes: &[Scope],
        extra: &IssueContext,
        env: &Env,
    ) -> Decision {
        let mut sorted = scopes.to_vec();
        sorted.sort();
        sorted.dedup();
        let jit = self
            .workloads
            .get(to)
            .is_some_and(|w| sorted.iter().any(|s| w.jit_scope(s).is_some()));
        let use_cache = self.cacheable && !jit && extra == &IssueContext::default();
        if !use_cache {
            return self.evaluate_issue(from, to, &sorted, extra, env);
        }
        let key = (from.clone(), to.clone(), sorted);
        if let Some(d) = self.decided.read().ok().and_then(|m| m.get(&key).cloned()) {
            return d;
        }
        let decision = self.evaluate_issue(from, to, &key.2, extra, env);
        if let Ok(mut m) = self.decided.write() {
            if m.len() >= MAX_CACHED_DECISIONS {
                m.clear();
            }
            m.insert(key, decision.clone());
        }
        decision
    }

    /// The Cedar evaluation behind [`PolicyEngine::decide_issue`], without the cache. The
    /// context always holds every key the schema declares, so that a policy reading one never
    /// errors on a request that has no value for it (an erroring policy denies).
    pub fn evaluate_issue(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        scopes: &[Scope],
        extra: &IssueContext,
        env: &Env,
    ) -> Decision {
        let mut pairs = env.pairs();
        pairs.push((
            "scopes".to_owned(),
            RestrictedExpression::new_set(
                scopes
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.as_str().to_owned())),
            ),
        ));
        pairs.push((
            "delegated".to_owned(),
            RestrictedExpression::new_bool(extra.actor.is_some()),
        ));
        pairs.push((
            "actor".to_owned(),
            RestrictedExpression::new_string(
                extra
                    .actor
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        ));
        pairs.push((
            "trust".to_owned(),
            RestrictedExpression::new_string(extra.trust.clone().unwrap_or_default()),
        ));
        let resource = match uid("Service", to.as_str()) {
            Ok(r) => r,
            Err(e) => return Decision::deny(e),
        };
        self.evaluate(from, Some(to), ISSUE_TOKEN, resource, None, pairs)
    }

    /// May `from` make this call to a route of `to`? Decided locally, on the normalised path.
    pub fn decide_call(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        call: &Call<'_>,
        env: &Env,
    ) -> Decision {
        let path = match path::normalize(call.path) {
            Ok(p) => p,
            Err(e) => return Decision::deny(e),
        };
        if !model::METHODS.contains(&call.method) {
            return Decision::deny(format!(
                "method `{}` is not one policies know",
                call.method.escape_debug()
            ));
        }
        let key = self.cacheable.then(|| {
            let mut scopes = call.scopes.to_vec();
            scopes.sort();
            scopes.dedup();
            (
                from.clone(),
                to.clone(),
                call.method.to_owned(),
                path.clone(),
                scopes,
                call.authn,
                call.actor.cloned(),
            )
        });
        if let Some(k) = &key {
            if let Some(d) = self
                .decided_calls
                .read()
                .ok()
                .and_then(|m| m.get(k).cloned())
            {
                return d;
            }
        }
        let decision = self.evaluate_route(from, to, call, &path, env);
        if let Some(k) = key {
            if let Ok(mut m) = self.decided_calls.write() {
                if m.len() >= MAX_CACHED_DECISIONS {
                    m.clear();
                }
                m.insert(k, decision.clone());
            }
        }
        decision
    }

    /// [`PolicyEngine::decide_call`] without its cache: always a Cedar evaluation.
    pub fn evaluate_call(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        call: &Call<'_>,
        env: &Env,
    ) -> Decision {
        match path::normalize(call.path) {
            Ok(p) if model::METHODS.contains(&call.method) => {
                self.evaluate_route(from, to, call, &p, env)
            }
            Ok(_) => Decision::deny(format!(
                "method `{}` is not one policies know",
                call.method.escape_debug()
            )),
            Err(e) => Decision::deny(e),
        }
    }

    /// The Cedar evaluation of a call on the normalised `path`.
    fn evaluate_route(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        call: &Call<'_>,
        path: &str,
        env: &Env,
    ) -> Decision {
        let Some(service) = self.workloads.get(to) else {
            return Decision::deny(format!("`{to}` is not a workload of this policy set"));
        };
        let route = match model::route_entity(service, call.method, path) {
            Ok(r) => r,
            Err(e) => return Decision::deny(e),
        };
        let mut pairs = env.pairs();
        pairs.push((
            "scopes".to_owned(),
            RestrictedExpression::new_set(
                call.scopes
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.as_str().to_owned())),
            ),
        ));
        pairs.push((
            "authn".to_owned(),
            RestrictedExpression::new_string(call.authn.as_str().to_owned()),
        ));
        pairs.push((
            "delegated".to_owned(),
            RestrictedExpression::new_bool(call.actor.is_some()),
        ));
        pairs.push((
            "actor".to_owned(),
            RestrictedExpression::new_string(
                call.actor.map(ToString::to_string).unwrap_or_default(),
            ),
        ));
        let resource = route.uid();
        self.evaluate(from, Some(to), call.method, resource, Some(route), pairs)
    }

    /// May `from` read the secret `secret`'s value? The secret is described by its metadata.
    pub fn decide_read_secret(
        &self,
        from: &SpiffeId,
        secret: &Entity,
        authn: Authn,
        env: &Env,
    ) -> Decision {
        self.decide_secret(from, secret, SecretAction::Read, authn, env)
    }

    /// May `from` read the secret's value (`Read`) or only its metadata (`Describe`)?
    pub fn decide_secret(
        &self,
        from: &SpiffeId,
        secret: &Entity,
        action: SecretAction,
        authn: Authn,
        env: &Env,
    ) -> Decision {
        let mut pairs = env.pairs();
        pairs.push((
            "authn".to_owned(),
            RestrictedExpression::new_string(authn.as_str().to_owned()),
        ));
        let action = match action {
            SecretAction::Read => READ_SECRET,
            SecretAction::Describe => DESCRIBE_SECRET,
        };
        self.evaluate(
            from,
            None,
            action,
            secret.uid(),
            Some(secret.clone()),
            pairs,
        )
    }

    /// `to` picks the slice (the pair's grants plus the global policies); without it, or
    /// without a grant for the pair, only the global policies apply.
    fn evaluate(
        &self,
        from: &SpiffeId,
        to: Option<&SpiffeId>,
        action: &str,
        resource: EntityUid,
        resource_entity: Option<Entity>,
        context: Vec<(String, RestrictedExpression)>,
    ) -> Decision {
        let (principal, action) = match (uid("Workload", from.as_str()), uid("Action", action)) {
            (Ok(p), Ok(a)) => (p, a),
            _ => return Decision::deny("the request cannot be expressed in Cedar".into()),
        };
        let context = match Context::from_pairs(context) {
            Ok(c) => c,
            Err(e) => return Decision::deny(e.to_string()),
        };
        let action_entity = self.actions.get(&action).cloned();
        let request = match Request::new(principal, action, resource, context, None) {
            Ok(r) => r,
            Err(e) => return Decision::deny(e.to_string()),
        };
        let slice = to.and_then(|to| self.slices.get(&(from.clone(), to.clone())));
        let built;
        let (policies, entities) = match (slice, resource_entity) {
            // The issuance hot path: everything was built with the slice.
            (Some(s), None) => (&s.policies, &s.entities),
            (Some(s), Some(extra)) => match s
                .entities
                .clone()
                .add_entities([Some(extra), action_entity].into_iter().flatten(), None)
            {
                Ok(e) => {
                    built = e;
                    (&s.policies, &built)
                }
                Err(e) => return Decision::deny(e.to_string()),
            },
            (None, extra) => {
                let members = [
                    self.principal(from),
                    to.and_then(|t| self.services.get(t).cloned()),
                    extra,
                    action_entity,
                ];
                match Entities::from_entities(members.into_iter().flatten(), None) {
                    Ok(e) => {
                        built = e;
                        (&self.global, &built)
                    }
                    Err(e) => return Decision::deny(e.to_string()),
                }
            }
        };
        let response = self.authorizer.is_authorized(&request, policies, entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(p) => {
                    format!("{}: {}", self.label(p.policy_id().as_ref()), p.inner())
                }
            })
            .collect();
        let mut determined_by: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| self.label(id.as_ref()))
            .collect();
        determined_by.sort();
        determined_by.dedup();
        Decision {
            allowed: errors.is_empty() && response.decision() == cedar_policy::Decision::Allow,
            determined_by,
            errors,
        }
    }

    fn label(&self, id: &str) -> String {
        self.origins
            .get(id)
            .map_or_else(|| id.to_owned(), |o| o.label.clone())
    }

    /// Hints for the policies that forbade a decision.
    fn hints(&self, d: &Decision) -> Vec<String> {
        let mut out = Vec::new();
        for label in &d.determined_by {
            if let Some(h) = self
                .origins
                .values()
                .find(|o| &o.label == label)
                .and_then(|o| o.hint.clone())
            {
                out.push(h);
            }
        }
        out
    }

    /// [`PolicyEngine::decide_issue`] with what is missing for a denial.
    pub fn explain_issue(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        scopes: &[Scope],
        extra: &IssueContext,
        env: &Env,
    ) -> Explanation {
        let scope_list: Vec<&str> = scopes.iter().map(Scope::as_str).collect();
        // As the token endpoint answers: scopes come from grants only. A Cedar `permit` may
        // allow the pair, and a `forbid` take a scope away, but no policy gives a scope.
        let granted = self.granted_scopes(from, to);
        let ungranted: Vec<String> = scopes
            .iter()
            .filter(|s| !granted.contains(s))
            .map(|s| format!("`{s}`"))
            .collect();
        if !ungranted.is_empty() {
            return Explanation {
                request: format!("`{from}` -> `{to}`: issue_token [{}]", scope_list.join(" ")),
                decision: Decision::deny(format!(
                    "invalid_scope: no grant gives `{from}` {} on `{to}` (scopes come from grants; a policy can allow a pair, not give a scope)",
                    ungranted.join(", ")
                )),
                missing: vec![match self.grants.get(&(from.clone(), to.clone())) {
                    Some(g) => format!(
                        "the grant ({}) gives {}; not {}",
                        g.source,
                        list_or_none(g.scopes.iter().map(|s| format!("`{s}`"))),
                        ungranted.join(", ")
                    ),
                    None => format!(
                        "a grant from `{from}` to `{to}` with {}",
                        ungranted.join(", ")
                    ),
                }],
            };
        }
        let decision = self.evaluate_issue(from, to, scopes, extra, env);
        let missing = self.missing(from, to, &decision, |g| {
            let lacking: Vec<String> = scopes
                .iter()
                .filter(|s| !g.scopes.contains(s))
                .map(|s| format!("`{s}`"))
                .collect();
            format!(
                "the grant ({}) gives {}; not {}",
                g.source,
                list_or_none(g.scopes.iter().map(|s| format!("`{s}`"))),
                lacking.join(", ")
            )
        });
        Explanation {
            request: format!("`{from}` -> `{to}`: issue_token [{}]", scope_list.join(" ")),
            decision,
            missing,
        }
    }

    /// [`PolicyEngine::decide_call`] with what is missing for a denial.
    pub fn explain_call(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        call: &Call<'_>,
        env: &Env,
    ) -> Explanation {
        let decision = self.decide_call(from, to, call, env);
        let missing = self.missing(from, to, &decision, |g| {
            let list = |v: &[String], sep: &str, none: &str| {
                if v.is_empty() {
                    none.to_owned()
                } else {
                    v.join(sep)
                }
            };
            let routes: Vec<String> = g
                .routes
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        list(&r.methods, ",", "any method"),
                        list(&r.paths, " ", "any path")
                    )
                })
                .collect();
            format!(
                "the grant ({}) allows {}; not {} {}",
                g.source,
                routes.join("; "),
                call.method,
                call.path
            )
        });
        Explanation {
            request: format!("`{from}` -> `{to}`: {} {}", call.method, call.path),
            decision,
            missing,
        }
    }

    /// What a denial lacks: unknown workloads; the policy that failed or forbade (and, with no
    /// grant, the grant too: lifting a forbid is not enough); or, when nothing permitted, the
    /// grant or what the grant does not cover (`gap`).
    fn missing(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        decision: &Decision,
        gap: impl FnOnce(&Grant) -> String,
    ) -> Vec<String> {
        let mut missing = Vec::new();
        if decision.allowed {
            return missing;
        }
        missing.extend(self.unknown(from, to));
        let no_grant = || format!("no grant from `{from}` to `{to}`");
        if !decision.errors.is_empty() {
            missing.push(
                "fix the request or the policy that fails to evaluate: an error denies".into(),
            );
        } else if !decision.determined_by.is_empty() {
            missing.extend(self.hints(decision));
            if self.grant(from, to).is_none() {
                missing.push(no_grant());
            }
        } else {
            missing.push(self.grant(from, to).map_or_else(no_grant, gap));
        }
        missing
    }

    fn unknown(&self, from: &SpiffeId, to: &SpiffeId) -> Vec<String> {
        let mut out = Vec::new();
        if !self.workloads.contains_key(from)
            && !self.principals.contains_key(from)
            && !self.federated.contains(from.trust_domain_str())
        {
            out.push(format!(
                "`{from}` is not a workload any identity file declares"
            ));
        }
        if !self.workloads.contains_key(to) {
            out.push(format!(
                "`{to}` is not a workload any identity file declares"
            ));
        }
        out
    }

    /// The scopes grants give `from` toward `to`, sorted; empty without a grant.
    pub fn granted_scopes(&self, from: &SpiffeId, to: &SpiffeId) -> &[Scope] {
        self.grants
            .get(&(from.clone(), to.clone()))
            .map(|g| g.scopes.as_slice())
            .unwrap_or_default()
    }

    /// How many policies a decision for this pair evaluates (for tests and metrics).
    pub fn slice_len(&self, from: &SpiffeId, to: &SpiffeId) -> usize {
        self.slices.get(&(from.clone(), to.clone())).map_or_else(
            || self.global.policies().count(),
            |s| s.policies.policies().count(),
        )
    }
}

fn list_or_none(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "no scopes".to_owned()
    } else {
        v.join(", ")
    }
}

/// What is asked of a secret: its value, or only its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAction {
    Read,
    Describe,
}

/// Builds the Cedar entity of a secret from its metadata (for [`PolicyEngine::decide_read_secret`]).
pub fn secret_entity(
    name: &str,
    trust_domain: &str,
    environment: &str,
    owner: &str,
    tags: &BTreeMap<String, String>,
) -> Result<Entity, String> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let attrs = HashMap::from([
        ("name".to_owned(), s(name)),
        ("environment".to_owned(), s(environment)),
        ("owner".to_owned(), s(owner)),
        ("kind".to_owned(), s("secret")),
        ("trust_domain".to_owned(), s(trust_domain)),
    ]);
    Entity::new_with_tags(
        uid("Secret", name)?,
        attrs,
        HashSet::new(),
        tags.iter().map(|(k, v)| (k.clone(), s(v))),
    )
    .map_err(|e| e.to_string())
}

/// Grants overdue for review at `now_unix`, as (from, to, review_by) triples.
pub fn overdue_grants(grants: &[Grant], now_unix: i64) -> Vec<&Grant> {
    grants
        .iter()
        .filter(|g| g.review_by.is_some_and(|d| d.end_unix() < now_unix))
        .collect()
}

#[cfg(test)]
mod tests;
