//! Issuance decisions with 10 and 10,000 grants: the per-pair slice keeps the cost flat.
//! Beside it, plain Cedar over the whole policy set, measured in the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: a failure should stop it loudly"
)]

use std::hint::black_box;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, EntityUid, PolicySet, Request, RestrictedExpression,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tessera_core::manifest::{parse_str, DesiredState};
use tessera_core::{Scope, SpiffeId};
use tessera_policy::{Env, IssueContext, PolicyEngine};

fn mesh(n: usize) -> DesiredState {
    let mut text = String::from("[[workload]]\nid = \"spiffe://example.org/target\"\nowner = \"o\"\npurpose = \"p\"\nenvironment = \"prod\"\nscopes = [\"read\"]\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[workload]]\nid = \"spiffe://example.org/w{i}\"\nowner = \"o\"\npurpose = \"p\"\nenvironment = \"prod\"\n[[grant]]\nfrom = \"spiffe://example.org/w{i}\"\nto = \"spiffe://example.org/target\"\nscopes = [\"read\"]\nwhy = \"bench\"\n"
        ));
    }
    parse_str(Path::new("bench.toml"), &text).unwrap()
}

const GLOBAL: &str =
    "forbid (principal, action, resource) when { principal.environment != resource.environment };";

fn bench(c: &mut Criterion) {
    let scopes = vec![Scope::parse("read").unwrap()];
    let target = SpiffeId::parse("spiffe://example.org/target").unwrap();
    let mut g = c.benchmark_group("decide_issue");
    for n in [10usize, 10_000] {
        let s = mesh(n);
        let engine = PolicyEngine::build(
            &s.workloads,
            &s.grants,
            &[("g.cedar".into(), GLOBAL.into())],
        )
        .unwrap();
        let caller = SpiffeId::parse(&format!("spiffe://example.org/w{}", n / 2)).unwrap();
        // The slice holds the pair's two grant policies and the global ones, whatever n is.
        assert_eq!(engine.slice_len(&caller, &target), 5, "n = {n}");
        assert!(
            engine
                .decide_issue(
                    &caller,
                    &target,
                    &scopes,
                    &IssueContext::default(),
                    &Env::now()
                )
                .allowed
        );
        g.bench_with_input(BenchmarkId::new("sliced", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    engine
                        .evaluate_issue(
                            black_box(&caller),
                            &target,
                            &scopes,
                            &IssueContext::default(),
                            &Env::now(),
                        )
                        .allowed,
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("sliced_cached", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    engine
                        .decide_issue(
                            black_box(&caller),
                            &target,
                            &scopes,
                            &IssueContext::default(),
                            &Env::now(),
                        )
                        .allowed,
                )
            })
        });
    }
    // The peer: plain Cedar, every grant in one policy set (no slicing).
    for n in [10usize, 1_000] {
        let mut text = String::from(GLOBAL);
        for i in 0..n {
            text.push_str(&format!("\npermit (principal == Workload::\"spiffe://example.org/w{i}\", action == Action::\"issue_token\", resource == Service::\"spiffe://example.org/target\") when {{ [\"read\"].containsAll(context.scopes) }};"));
        }
        let set = PolicySet::from_str(&text).unwrap();
        let auth = Authorizer::new();
        let p =
            EntityUid::from_str(&format!("Workload::\"spiffe://example.org/w{}\"", n / 2)).unwrap();
        let a = EntityUid::from_str("Action::\"issue_token\"").unwrap();
        let r = EntityUid::from_str("Service::\"spiffe://example.org/target\"").unwrap();
        let entities = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "Workload", "id": format!("spiffe://example.org/w{}", n / 2)}, "attrs": {"environment": "prod"}, "parents": []},
                {"uid": {"type": "Service", "id": "spiffe://example.org/target"}, "attrs": {"environment": "prod"}, "parents": []}
            ]),
            None,
        )
        .unwrap();
        g.bench_with_input(BenchmarkId::new("plain_cedar_whole_set", n), &n, |b, _| {
            b.iter(|| {
                let ctx = Context::from_pairs([(
                    "scopes".to_owned(),
                    RestrictedExpression::new_set([RestrictedExpression::new_string(
                        "read".into(),
                    )]),
                )])
                .unwrap();
                let req = Request::new(p.clone(), a.clone(), r.clone(), ctx, None).unwrap();
                black_box(auth.is_authorized(&req, &set, &entities).decision())
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("build_engine");
    g.sample_size(10);
    let s = mesh(10_000);
    g.bench_function("10000_grants", |b| {
        b.iter(|| {
            PolicyEngine::build(
                &s.workloads,
                &s.grants,
                &[("g.cedar".into(), GLOBAL.into())],
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
