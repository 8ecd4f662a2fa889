//! The shipped policy model and what identity files compile into: the Cedar schema, the
//! default policies, entities for workloads, services and routes, and the Cedar text of grants
//! and just-in-time scopes.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema};
use tessera_core::manifest::{Grant, JitScope, Workload};
use tessera_core::SpiffeId;

/// The schema every policy set is validated against (strict mode).
pub const SCHEMA_TEXT: &str = include_str!("../model/tessera.cedarschema");

/// Policies shipped with Tessera and always in force.
pub const DEFAULT_POLICIES: &str = include_str!("../model/default.cedar");

/// The name the shipped policies carry in explanations.
pub const DEFAULT_POLICIES_NAME: &str = "tessera:default.cedar";

pub const ISSUE_TOKEN: &str = "issue_token";
pub const READ_SECRET: &str = "read_secret";
pub const DESCRIBE_SECRET: &str = "describe_secret";

/// HTTP methods the schema knows; a call with any other method is denied.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

static SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA_TEXT)
        .map(|(s, _warnings)| s)
        .map_err(|e| e.to_string())
});

pub fn schema() -> Result<&'static Schema, String> {
    SCHEMA.as_ref().map_err(Clone::clone)
}

pub fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let t = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

/// The attributes a workload has as a principal and as a resource.
pub fn common_attrs(w: &Workload) -> HashMap<String, RestrictedExpression> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    HashMap::from([
        (
            "environment".to_owned(),
            s(w.environment.as_ref().map_or("", |e| e.as_str())),
        ),
        ("owner".to_owned(), s(w.owner.as_str())),
        ("kind".to_owned(), s(w.kind.as_str())),
        ("trust_domain".to_owned(), s(w.id.trust_domain_str())),
    ])
}

fn tags(w: &Workload) -> impl Iterator<Item = (String, RestrictedExpression)> + '_ {
    w.tags
        .iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
}

pub fn workload_entity(w: &Workload, deploys_to: &[&SpiffeId]) -> Result<Entity, String> {
    let mut attrs = common_attrs(w);
    let targets: Result<Vec<_>, String> = deploys_to
        .iter()
        .map(|t| uid("Service", t.as_str()).map(RestrictedExpression::new_entity_uid))
        .collect();
    attrs.insert(
        "deploys_to".to_owned(),
        RestrictedExpression::new_set(targets?),
    );
    Entity::new_with_tags(
        uid("Workload", w.id.as_str())?,
        attrs,
        HashSet::new(),
        tags(w),
    )
    .map_err(|e| e.to_string())
}

/// A caller of another, federated trust domain: known here only by its SPIFFE ID (its
/// authority's identity files are not ours), so it has no owner, environment or tags, and is
/// never a deployment workload.
pub fn federated_entity(id: &SpiffeId) -> Result<Entity, String> {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let attrs = HashMap::from([
        ("environment".to_owned(), s("")),
        ("owner".to_owned(), s("")),
        ("kind".to_owned(), s("runtime")),
        ("trust_domain".to_owned(), s(id.trust_domain_str())),
        ("deploys_to".to_owned(), RestrictedExpression::new_set([])),
    ]);
    Entity::new(uid("Workload", id.as_str())?, attrs, HashSet::new()).map_err(|e| e.to_string())
}

pub fn service_entity(w: &Workload) -> Result<Entity, String> {
    Entity::new_with_tags(
        uid("Service", w.id.as_str())?,
        common_attrs(w),
        HashSet::new(),
        tags(w),
    )
    .map_err(|e| e.to_string())
}

/// The entity for one request to `service`. The route ID is not meaningful to policies (they
/// read `method` and `path`); it only has to be a valid, distinct entity ID.
pub fn route_entity(service: &Workload, method: &str, path: &str) -> Result<Entity, String> {
    let service_uid = uid("Service", service.id.as_str())?;
    let mut attrs = common_attrs(service);
    attrs.insert(
        "service".to_owned(),
        RestrictedExpression::new_entity_uid(service_uid.clone()),
    );
    attrs.insert(
        "method".to_owned(),
        RestrictedExpression::new_string(method.to_owned()),
    );
    attrs.insert(
        "path".to_owned(),
        RestrictedExpression::new_string(path.to_owned()),
    );
    Entity::new_with_tags(
        uid("Route", &format!("{} {method} {path}", service.id))?,
        attrs,
        HashSet::from([service_uid]),
        tags(service),
    )
    .map_err(|e| e.to_string())
}

/// The Cedar text of a grant: one policy for tokens, one for calls.
pub fn grant_policies(g: &Grant) -> (String, String) {
    // INVARIANT: SPIFFE IDs and scopes never contain `"` or `\` (their parsers refuse both), so
    // interpolating them into Cedar string literals cannot change the policy's structure.
    let scopes: Vec<String> = g.scopes.iter().map(|s| format!("\"{s}\"")).collect();
    // Strict validation refuses the empty set literal `[]`: a grant of no scopes says so.
    let condition = if scopes.is_empty() {
        "context.scopes.isEmpty()".to_owned()
    } else {
        format!("[{}].containsAll(context.scopes)", scopes.join(", "))
    };
    let issue = format!(
        "permit (principal == Workload::\"{}\", action == Action::\"{ISSUE_TOKEN}\", resource == Service::\"{}\")\nwhen {{ {condition} }};",
        g.from, g.to
    );
    let call = if g.routes.is_empty() {
        // A grant without routes lets the caller use any route of the service, as an Istio
        // AuthorizationPolicy rule with only `from` does.
        format!(
            "permit (principal == Workload::\"{}\", action in Action::\"call\", resource in Service::\"{}\");",
            g.from, g.to
        )
    } else {
        let rules: Vec<String> = g
            .routes
            .iter()
            .map(|r| {
                let methods = if r.methods.is_empty() {
                    "true".to_owned()
                } else {
                    let list: Vec<String> = r
                        .methods
                        .iter()
                        .map(|m| format!("Action::\"{m}\""))
                        .collect();
                    format!("action in [{}]", list.join(", "))
                };
                let paths = if r.paths.is_empty() {
                    "true".to_owned()
                } else {
                    let list: Vec<String> = r
                        .paths
                        .iter()
                        // INVARIANT: manifest parsing refuses `"`, `\` and control characters in
                        // route paths, so only the wildcard `*` means anything in the literal.
                        .map(|p| format!("resource.path like \"{p}\""))
                        .collect();
                    format!("({})", list.join(" || "))
                };
                format!("({methods} && {paths})")
            })
            .collect();
        format!(
            "permit (principal == Workload::\"{}\", action in Action::\"call\", resource in Service::\"{}\")\nwhen {{ {} }};",
            g.from,
            g.to,
            rules.join(" || ")
        )
    };
    (issue, call)
}

/// One condition of a just-in-time scope, compiled to a `forbid`: its text and what it asks.
#[derive(Debug)]
pub struct JitRule {
    pub text: String,
    pub requirement: String,
}

/// The `forbid` policies that enforce a just-in-time scope of `target`.
pub fn jit_policies(target: &SpiffeId, j: &JitScope) -> Vec<JitRule> {
    let head = format!(
        "forbid (principal, action == Action::\"{ISSUE_TOKEN}\", resource == Service::\"{target}\")"
    );
    let has = format!("context.scopes.contains(\"{}\")", j.scope);
    let mut rules = vec![JitRule {
        text: format!(
            "{head}\nwhen {{ {has} && !([\"{}\"].containsAll(context.scopes)) }};",
            j.scope
        ),
        requirement: "must be asked for alone".to_owned(),
    }];
    if !j.environments.is_empty() {
        let envs: Vec<String> = j.environments.iter().map(|e| format!("\"{e}\"")).collect();
        rules.push(JitRule {
            text: format!(
                "{head}\nwhen {{ {has} && !([{}].contains(principal.environment)) }};",
                envs.join(", ")
            ),
            requirement: format!(
                "only for callers in environment {}",
                j.environments
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        });
    }
    if let Some(h) = j.hours {
        let inside = if h.start < h.end {
            format!("context.hour >= {} && context.hour < {}", h.start, h.end)
        } else {
            format!("context.hour >= {} || context.hour < {}", h.start, h.end)
        };
        rules.push(JitRule {
            text: format!("{head}\nwhen {{ {has} && !({inside}) }};"),
            requirement: format!("only between {h} UTC"),
        });
    }
    if let Some(age) = j.max_token_age {
        rules.push(JitRule {
            text: format!(
                "{head}\nwhen {{ {has} && context.token_age > {} }};",
                age.as_secs()
            ),
            requirement: format!(
                "only with a subject token at most {} old",
                humantime::format_duration(age.0)
            ),
        });
    }
    rules
}
