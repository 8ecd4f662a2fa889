//! Point-of-use call decisions with 1,000 policies and 10,000 entities: p50/p99 per decision,
//! sliced (what the authorizer does) beside plain Cedar over the whole set, in the same run.
//! Percentiles need every sample, so this harness times each decision itself.
//!
//! Run: `cargo bench -p tessera-policy --bench point_of_use`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "a benchmark: a failure should stop it loudly"
)]

use std::hint::black_box;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use cedar_policy::{Authorizer, Context, PolicySet, Request, RestrictedExpression, Schema};
use tessera_core::manifest::parse_str;
use tessera_core::SpiffeId;
use tessera_policy::{model, Authn, Call, Env, PolicyEngine};

const WORKLOADS: usize = 10_000;
/// Each grant compiles to two policies (tokens, calls): 1,000 policies from grants.
const GRANTS: usize = 500;
const SAMPLES: usize = 200_000;

const GLOBAL: &str = r#"forbid (principal, action, resource) when { principal.environment != resource.environment };
forbid (principal, action in Action::"call", resource) when { resource.path like "/admin/*" && context.authn != "mtls+jwt" };"#;

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99), at(0.999))
}

fn main() {
    let mut text = String::new();
    for i in 0..WORKLOADS {
        text.push_str(&format!(
            "[[workload]]\nid = \"spiffe://example.org/w{i}\"\nowner = \"team-{}\"\npurpose = \"p\"\nenvironment = \"prod\"\ntags = {{ tier = \"t{}\" }}\n",
            i % 50,
            i % 3
        ));
    }
    for i in 0..GRANTS {
        text.push_str(&format!(
            "[[grant]]\nfrom = \"spiffe://example.org/w{}\"\nto = \"spiffe://example.org/w{}\"\nroutes = [{{ methods = [\"GET\", \"POST\"], paths = [\"/api/v1/items/*\", \"/api/v1/orders/*\"] }}]\nwhy = \"bench\"\n",
            i * 2,
            i * 2 + 1
        ));
    }
    let s = parse_str(Path::new("bench.toml"), &text).unwrap();
    let t = Instant::now();
    let engine = PolicyEngine::build(
        &s.workloads,
        &s.grants,
        &[("g.cedar".into(), GLOBAL.into())],
    )
    .unwrap();
    let build = t.elapsed();
    let policies = engine.policy_count();

    let from = SpiffeId::parse("spiffe://example.org/w500").unwrap();
    let to = SpiffeId::parse("spiffe://example.org/w501").unwrap();
    let call = Call {
        actor: None,
        method: "GET",
        path: "/api/v1/items/42",
        scopes: &[],
        authn: Authn::Mtls,
    };
    assert!(engine.decide_call(&from, &to, &call, &Env::now()).allowed);
    let mut sliced = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let env = Env::now();
        let t = Instant::now();
        black_box(
            engine
                .evaluate_call(black_box(&from), &to, &call, &env)
                .allowed,
        );
        sliced.push(t.elapsed().as_nanos() as u64);
    }
    // A repeated call (same caller, method and path) from the engine's decision cache.
    let mut cached = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let env = Env::now();
        let t = Instant::now();
        black_box(
            engine
                .decide_call(black_box(&from), &to, &call, &env)
                .allowed,
        );
        cached.push(t.elapsed().as_nanos() as u64);
    }

    // The peer: plain Cedar, the same policies in one set, every entity in one store (built
    // once, with the route already in it, so the peer pays no per-request entity cost).
    let schema = Schema::from_cedarschema_str(model::SCHEMA_TEXT).unwrap().0;
    let mut all = String::from(model::DEFAULT_POLICIES);
    all.push_str(GLOBAL);
    for g in &s.grants {
        let (issue, call) = model::grant_policies(g);
        all.push('\n');
        all.push_str(&issue);
        all.push('\n');
        all.push_str(&call);
    }
    let set = PolicySet::from_str(&all).unwrap();
    let target = s.workloads.iter().find(|w| w.id == to).unwrap();
    let route = model::route_entity(target, "GET", "/api/v1/items/42").unwrap();
    let route_uid = route.uid();
    let mut members: Vec<_> = s
        .workloads
        .iter()
        .map(|w| model::workload_entity(w, &[]).unwrap())
        .collect();
    members.extend(
        s.workloads
            .iter()
            .map(|w| model::service_entity(w).unwrap()),
    );
    members.push(route);
    let entities = schema
        .action_entities()
        .unwrap()
        .add_entities(members, None)
        .unwrap();
    let entity_count = entities.iter().count();
    let auth = Authorizer::new();
    let p = model::uid("Workload", from.as_str()).unwrap();
    let a = model::uid("Action", "GET").unwrap();
    let decide = || {
        let ctx = Context::from_pairs([
            ("scopes".to_owned(), RestrictedExpression::new_set([])),
            ("now".to_owned(), RestrictedExpression::new_long(0)),
            ("hour".to_owned(), RestrictedExpression::new_long(0)),
            (
                "source_ip".to_owned(),
                RestrictedExpression::new_ip("127.0.0.1"),
            ),
            ("token_age".to_owned(), RestrictedExpression::new_long(0)),
            (
                "authn".to_owned(),
                RestrictedExpression::new_string("mtls".into()),
            ),
        ])
        .unwrap();
        let req = Request::new(p.clone(), a.clone(), route_uid.clone(), ctx, None).unwrap();
        auth.is_authorized(&req, &set, &entities).decision()
    };
    assert_eq!(decide(), cedar_policy::Decision::Allow);
    let mut plain = Vec::with_capacity(SAMPLES / 10);
    for _ in 0..SAMPLES / 10 {
        let t = Instant::now();
        black_box(decide());
        plain.push(t.elapsed().as_nanos() as u64);
    }

    let (s50, s99, s999) = percentiles(sliced);
    let (c50, c99, c999) = percentiles(cached);
    let (p50, p99, p999) = percentiles(plain);
    println!("point-of-use decision: {policies} policies, {entity_count} entities, engine built in {build:.2?}");
    println!("  tessera sliced      p50 {s50:7.1} µs  p99 {s99:7.1} µs  p99.9 {s999:7.1} µs  ({SAMPLES} decisions)");
    println!("  tessera cached      p50 {c50:7.1} µs  p99 {c99:7.1} µs  p99.9 {c999:7.1} µs  ({SAMPLES} decisions)");
    println!("  plain cedar (whole) p50 {p50:7.1} µs  p99 {p99:7.1} µs  p99.9 {p999:7.1} µs  ({} decisions)", SAMPLES / 10);
}
