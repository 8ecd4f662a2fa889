//! Authorization decisions with Cedar.
//!
//! Grants compile to Cedar `permit` policies; `.cedar` files named by identity files add policies
//! that apply to every request. Cedar evaluates every policy in the set it is given, so the engine
//! keeps one small slice per (caller, target) pair: the grant's policy plus the global policies.
//! A decision therefore costs the same with ten grants or ten thousand.
//!
//! Deny by default, and fail closed: a decision in which any policy failed to evaluate is a
//! denial (Cedar skips erroring policies, so an erroring `forbid` would otherwise allow).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, RestrictedExpression,
};
use tessera_core::manifest::{Grant, Workload};
use tessera_core::{Scope, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file `{file}` does not parse: {message}")]
    Parse { file: String, message: String },
    #[error("grant at {source_loc} does not compile: {message}")]
    Grant { source_loc: String, message: String },
    #[error("workload `{id}` cannot be described to the policy engine: {message}")]
    Entity { id: String, message: String },
}

/// What an authorization decided, and which policies or errors made it so.
/// How a token was asked for, beyond who, what and which scopes: on behalf of another workload
/// (RFC 8693 delegation: `actor` is the service acting), or in exchange for an outside token
/// (`trust` names the trust). In Cedar: `context.delegated`, `context.actor`, `context.trust`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueContext {
    pub actor: Option<SpiffeId>,
    pub trust: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Where each determining policy came from: `grant (mesh.toml:17)` or `policies/x.cedar#0`.
    pub determined_by: Vec<String>,
    /// Evaluation errors; any error makes the decision a denial.
    pub errors: Vec<String>,
}

impl Decision {
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

struct Slice {
    policies: PolicySet,
    entities: Entities,
}

/// The compiled policy state: immutable; a new one is built when identity files change.
pub struct PolicyEngine {
    authorizer: Authorizer,
    slices: HashMap<(SpiffeId, SpiffeId), Arc<Slice>>,
    global: PolicySet,
    principals: HashMap<SpiffeId, Entity>,
    services: HashMap<SpiffeId, Entity>,
    /// The scopes grants give each (caller, target) pair, so a request never scans all grants.
    granted: HashMap<(SpiffeId, SpiffeId), Vec<Scope>>,
    /// Policy ID to a place a person can find: a grant's source or a policy file.
    origins: HashMap<String, String>,
    /// Decisions already made by this engine. Sound because the engine never changes and a
    /// decision depends only on (caller, target, scopes): the request context holds nothing else.
    /// INVARIANT: when the context gains time- or request-dependent attributes, this cache must
    /// key on them or go.
    decided: std::sync::RwLock<HashMap<DecisionKey, Decision>>,
}

type DecisionKey = (SpiffeId, SpiffeId, Vec<Scope>);

/// Bounds the decision cache; when full it is cleared, not grown.
const MAX_CACHED_DECISIONS: usize = 100_000;

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("slices", &self.slices.len())
            .finish_non_exhaustive()
    }
}

const ISSUE_TOKEN: &str = "issue_token";

fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let t = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

fn entity(type_name: &str, w: &Workload) -> Result<Entity, PolicyError> {
    let err = |message: String| PolicyError::Entity {
        id: w.id.to_string(),
        message,
    };
    let mut attrs = HashMap::new();
    if let Some(env) = &w.environment {
        attrs.insert(
            "environment".to_owned(),
            RestrictedExpression::new_string(env.to_string()),
        );
    }
    attrs.insert(
        "owner".to_owned(),
        RestrictedExpression::new_string(w.owner.to_string()),
    );
    attrs.insert(
        "kind".to_owned(),
        RestrictedExpression::new_string(w.kind.as_str().to_owned()),
    );
    attrs.insert(
        "trust_domain".to_owned(),
        RestrictedExpression::new_string(w.id.trust_domain_str().to_owned()),
    );
    let tags = RestrictedExpression::new_record(
        w.tags
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
    )
    .map_err(|e| err(e.to_string()))?;
    attrs.insert("tags".to_owned(), tags);
    Entity::new(
        uid(type_name, w.id.as_str()).map_err(err)?,
        attrs,
        HashSet::new(),
    )
    .map_err(|e| err(e.to_string()))
}

/// The Cedar text of a grant's issuance policy.
fn grant_policy(g: &Grant) -> String {
    // INVARIANT: SPIFFE IDs and scopes never contain `"` or `\` (their parsers refuse both), so
    // interpolating them into Cedar string literals cannot change the policy's structure.
    let scopes: Vec<String> = g.scopes.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "permit (principal == Workload::\"{}\", action == Action::\"{ISSUE_TOKEN}\", resource == Service::\"{}\")\nwhen {{ [{}].containsAll(context.scopes) }};",
        g.from,
        g.to,
        scopes.join(", ")
    )
}

impl PolicyEngine {
    /// Compiles workloads, grants and policy files (name, text) into an engine.
    pub fn build(
        workloads: &[Workload],
        grants: &[Grant],
        files: &[(String, String)],
    ) -> Result<Self, PolicyError> {
        let mut origins = HashMap::new();
        let mut global = PolicySet::new();
        for (name, text) in files {
            let parse_err = |message: String| PolicyError::Parse {
                file: name.clone(),
                message,
            };
            let set = PolicySet::from_str(text).map_err(|e| parse_err(e.to_string()))?;
            // Policy IDs must be unique across files; renumber them under the file name.
            let mut policies: Vec<&Policy> = set.policies().collect();
            policies.sort_by_key(|p| p.id().to_string());
            for (i, p) in policies.into_iter().enumerate() {
                let id = format!("{name}#{i}");
                origins.insert(id.clone(), format!("policy `{id}`"));
                global
                    .add(p.new_id(PolicyId::new(&id)))
                    .map_err(|e| parse_err(e.to_string()))?;
            }
            if set.templates().next().is_some() {
                return Err(parse_err("policy templates are not supported here".into()));
            }
        }

        let mut entities = HashMap::new();
        let mut services = HashMap::new();
        for w in workloads {
            entities.insert(w.id.clone(), entity("Workload", w)?);
            services.insert(w.id.clone(), entity("Service", w)?);
        }

        let mut slices = HashMap::new();
        let mut granted: HashMap<(SpiffeId, SpiffeId), Vec<Scope>> = HashMap::new();
        for (i, g) in grants.iter().enumerate() {
            let scopes = granted.entry((g.from.clone(), g.to.clone())).or_default();
            scopes.extend(g.scopes.iter().cloned());
            scopes.sort();
            scopes.dedup();
            let grant_err = |message: String| PolicyError::Grant {
                source_loc: g.source.clone(),
                message,
            };
            let id = format!("grant{i}");
            let policy = Policy::parse(Some(PolicyId::new(&id)), grant_policy(g))
                .map_err(|e| grant_err(e.to_string()))?;
            origins.insert(
                id,
                format!("grant `{}` -> `{}` ({})", g.from, g.to, g.source),
            );
            let mut set = global.clone();
            set.add(policy).map_err(|e| grant_err(e.to_string()))?;
            let mut members = Vec::new();
            if let Some(p) = entities.get(&g.from) {
                members.push(p.clone());
            }
            if let Some(r) = services.get(&g.to) {
                members.push(r.clone());
            }
            let slice_entities =
                Entities::from_entities(members, None).map_err(|e| grant_err(e.to_string()))?;
            slices.insert(
                (g.from.clone(), g.to.clone()),
                Arc::new(Slice {
                    policies: set,
                    entities: slice_entities,
                }),
            );
        }
        Ok(Self {
            authorizer: Authorizer::new(),
            slices,
            global,
            principals: entities,
            services,
            granted,
            origins,
            decided: std::sync::RwLock::new(HashMap::new()),
        })
    }

    /// May `from` receive a token for `to` carrying `scopes`? (A direct request: not delegated,
    /// not federated; the one that is cached.)
    pub fn decide_issue(&self, from: &SpiffeId, to: &SpiffeId, scopes: &[Scope]) -> Decision {
        let mut sorted = scopes.to_vec();
        sorted.sort();
        sorted.dedup();
        let key = (from.clone(), to.clone(), sorted);
        if let Some(d) = self.decided.read().ok().and_then(|m| m.get(&key).cloned()) {
            return d;
        }
        let decision = self.evaluate_issue_with(from, to, &key.2, &IssueContext::default());
        if let Ok(mut m) = self.decided.write() {
            if m.len() >= MAX_CACHED_DECISIONS {
                m.clear();
            }
            m.insert(key, decision.clone());
        }
        decision
    }

    /// The Cedar evaluation behind [`PolicyEngine::decide_issue`], without the cache.
    pub fn evaluate_issue(&self, from: &SpiffeId, to: &SpiffeId, scopes: &[Scope]) -> Decision {
        self.evaluate_issue_with(from, to, scopes, &IssueContext::default())
    }

    /// [`PolicyEngine::evaluate_issue`] for a delegated or federated request. The context always
    /// holds every key (`scopes`, `delegated`, `actor`, `trust`), so that a policy reading one
    /// never errors on a direct request (an erroring policy denies).
    pub fn evaluate_issue_with(
        &self,
        from: &SpiffeId,
        to: &SpiffeId,
        scopes: &[Scope],
        extra: &IssueContext,
    ) -> Decision {
        let deny = |e: String| Decision {
            allowed: false,
            determined_by: Vec::new(),
            errors: vec![e],
        };
        let (principal, action, resource) = match (
            uid("Workload", from.as_str()),
            uid("Action", ISSUE_TOKEN),
            uid("Service", to.as_str()),
        ) {
            (Ok(p), Ok(a), Ok(r)) => (p, a, r),
            _ => return deny("the request cannot be expressed in Cedar".into()),
        };
        let context = Context::from_pairs([
            (
                "scopes".to_owned(),
                RestrictedExpression::new_set(
                    scopes
                        .iter()
                        .map(|s| RestrictedExpression::new_string(s.as_str().to_owned())),
                ),
            ),
            (
                "delegated".to_owned(),
                RestrictedExpression::new_bool(extra.actor.is_some()),
            ),
            (
                "actor".to_owned(),
                RestrictedExpression::new_string(
                    extra
                        .actor
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
            ),
            (
                "trust".to_owned(),
                RestrictedExpression::new_string(extra.trust.clone().unwrap_or_default()),
            ),
        ]);
        let context = match context {
            Ok(c) => c,
            Err(e) => return deny(e.to_string()),
        };
        let request = match Request::new(principal, action, resource, context, None) {
            Ok(r) => r,
            Err(e) => return deny(e.to_string()),
        };
        let response = match self.slices.get(&(from.clone(), to.clone())) {
            Some(slice) => {
                self.authorizer
                    .is_authorized(&request, &slice.policies, &slice.entities)
            }
            None => {
                // No grant for this pair: only global policies can permit it.
                let members = [
                    self.principals.get(from).cloned(),
                    self.services.get(to).cloned(),
                ];
                let entities = match Entities::from_entities(members.into_iter().flatten(), None) {
                    Ok(e) => e,
                    Err(e) => return deny(e.to_string()),
                };
                self.authorizer
                    .is_authorized(&request, &self.global, &entities)
            }
        };
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let mut determined_by: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| {
                self.origins
                    .get(id.to_string().as_str())
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            })
            .collect();
        determined_by.sort();
        Decision {
            allowed: errors.is_empty() && response.decision() == cedar_policy::Decision::Allow,
            determined_by,
            errors,
        }
    }

    /// The scopes grants give `from` toward `to`, sorted; empty without a grant.
    pub fn granted_scopes(&self, from: &SpiffeId, to: &SpiffeId) -> &[Scope] {
        self.granted
            .get(&(from.clone(), to.clone()))
            .map(Vec::as_slice)
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

/// Grants overdue for review at `now_unix`, as (from, to, review_by) triples.
pub fn overdue_grants(grants: &[Grant], now_unix: i64) -> Vec<&Grant> {
    grants
        .iter()
        .filter(|g| g.review_by.is_some_and(|d| d.end_unix() < now_unix))
        .collect()
}

#[cfg(test)]
mod tests;
