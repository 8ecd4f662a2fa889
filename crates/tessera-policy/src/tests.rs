use std::path::Path;

use tessera_core::manifest::parse_str;

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn scopes(list: &[&str]) -> Vec<Scope> {
    list.iter().map(|s| Scope::parse(s).unwrap()).collect()
}

const MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/a"
owner = "team-a"
purpose = "caller"
environment = "prod"

[[workload]]
id = "spiffe://example.org/prod/b"
owner = "team-b"
purpose = "service"
environment = "prod"
scopes = ["b:read", "b:write"]

[[workload]]
id = "spiffe://example.org/dev/c"
owner = "team-c"
purpose = "dev caller"
environment = "dev"

[[workload]]
id = "spiffe://example.org/deploy/d"
owner = "team-a"
purpose = "deployer"
environment = "prod"
kind = "deployment"

[[grant]]
from = "spiffe://example.org/prod/a"
to = "spiffe://example.org/prod/b"
scopes = ["b:read"]
why = "a reads b"

[[grant]]
from = "spiffe://example.org/dev/c"
to = "spiffe://example.org/prod/b"
scopes = ["b:read"]
why = "a mistake the environment policy must catch"

[[grant]]
from = "spiffe://example.org/deploy/d"
to = "spiffe://example.org/prod/b"
scopes = []
why = "another mistake"
"#;

const ENV_POLICY: &str = r#"
forbid (principal, action, resource)
when { principal.environment != resource.environment };

forbid (principal, action == Action::"issue_token", resource)
when { principal.kind == "deployment" && resource.kind == "runtime" };
"#;

fn engine(files: &[(&str, &str)]) -> PolicyEngine {
    let s = parse_str(Path::new("mesh.toml"), MESH).unwrap();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    PolicyEngine::build(&s.workloads, &s.grants, &files).unwrap()
}

#[test]
fn grant_permits_its_scopes_only() {
    let e = engine(&[]);
    let (a, b) = (
        id("spiffe://example.org/prod/a"),
        id("spiffe://example.org/prod/b"),
    );
    let d = e.decide_issue(&a, &b, &scopes(&["b:read"]));
    assert!(d.allowed, "{d:?}");
    assert!(d.determined_by[0].contains("mesh.toml:"), "{d:?}");
    assert!(e.decide_issue(&a, &b, &[]).allowed, "no scopes asked");
    assert!(!e.decide_issue(&a, &b, &scopes(&["b:write"])).allowed);
    assert!(
        !e.decide_issue(&a, &b, &scopes(&["b:read", "b:write"]))
            .allowed
    );
}

#[test]
fn deny_by_default() {
    let e = engine(&[]);
    let d = e.decide_issue(
        &id("spiffe://example.org/prod/b"),
        &id("spiffe://example.org/prod/a"),
        &[],
    );
    assert!(!d.allowed);
    assert_eq!(d.reason(), "no grant or policy permits it");
    let d = e.decide_issue(
        &id("spiffe://example.org/prod/unknown"),
        &id("spiffe://example.org/prod/b"),
        &[],
    );
    assert!(!d.allowed);
}

#[test]
fn forbid_overrides_grant() {
    let e = engine(&[("policies/environments.cedar", ENV_POLICY)]);
    let b = id("spiffe://example.org/prod/b");
    let d = e.decide_issue(&id("spiffe://example.org/dev/c"), &b, &scopes(&["b:read"]));
    assert!(!d.allowed);
    assert!(
        d.reason().contains("policies/environments.cedar#"),
        "{}",
        d.reason()
    );
    let d = e.decide_issue(&id("spiffe://example.org/deploy/d"), &b, &[]);
    assert!(!d.allowed, "deployment identity to a runtime service");
    assert!(
        e.decide_issue(&id("spiffe://example.org/prod/a"), &b, &scopes(&["b:read"]))
            .allowed
    );
}

#[test]
fn erroring_forbid_denies() {
    // `nonexistent` is no attribute: the forbid errors, and an erroring forbid must not allow.
    let e = engine(&[(
        "p.cedar",
        "forbid (principal, action, resource) when { principal.nonexistent == 1 };",
    )]);
    let d = e.decide_issue(
        &id("spiffe://example.org/prod/a"),
        &id("spiffe://example.org/prod/b"),
        &scopes(&["b:read"]),
    );
    assert!(!d.allowed);
    assert!(d.reason().contains("failed to evaluate"), "{}", d.reason());
}

#[test]
fn global_permit_applies_without_grant() {
    let e = engine(&[(
        "p.cedar",
        "permit (principal, action, resource) when { principal.owner == resource.owner };",
    )]);
    let d = e.decide_issue(
        &id("spiffe://example.org/deploy/d"),
        &id("spiffe://example.org/prod/a"),
        &[],
    );
    assert!(d.allowed, "{d:?}");
}

#[test]
fn bad_policy_file_is_named() {
    let s = parse_str(Path::new("mesh.toml"), MESH).unwrap();
    let err = PolicyEngine::build(
        &s.workloads,
        &s.grants,
        &[("bad.cedar".into(), "permit(".into())],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policy file `bad.cedar` does not parse"),
        "{err}"
    );
}

#[test]
fn slice_size_is_independent_of_grant_count() {
    let mut text = String::from(MESH);
    for i in 0..10_000 {
        text.push_str(&format!(
            "[[workload]]\nid = \"spiffe://example.org/gen/w{i}\"\nowner = \"o\"\npurpose = \"p\"\n[[grant]]\nfrom = \"spiffe://example.org/gen/w{i}\"\nto = \"spiffe://example.org/prod/b\"\nscopes = [\"b:read\"]\nwhy = \"load\"\n"
        ));
    }
    let s = parse_str(Path::new("big.toml"), &text).unwrap();
    let e = PolicyEngine::build(
        &s.workloads,
        &s.grants,
        &[("g.cedar".into(), ENV_POLICY.into())],
    )
    .unwrap();
    let (a, b) = (
        id("spiffe://example.org/prod/a"),
        id("spiffe://example.org/prod/b"),
    );
    // One grant policy plus the two global ones, whatever the number of grants.
    assert_eq!(e.slice_len(&a, &b), 3);
    assert!(e.decide_issue(&a, &b, &scopes(&["b:read"])).allowed);
    let generated = e.decide_issue(
        &id("spiffe://example.org/gen/w9999"),
        &b,
        &scopes(&["b:read"]),
    );
    assert!(
        !generated.allowed && !generated.errors.is_empty(),
        "no environment on generated workloads: the environment forbid errors, so deny"
    );
}

#[test]
fn overdue_and_granted() {
    let s = parse_str(
        Path::new("m.toml"),
        &MESH.replace(
            "why = \"a reads b\"",
            "why = \"a reads b\"\nreview_by = \"2020-01-01\"",
        ),
    )
    .unwrap();
    assert_eq!(overdue_grants(&s.grants, tessera_core::now_unix()).len(), 1);
    let e = PolicyEngine::build(&s.workloads, &s.grants, &[]).unwrap();
    let (a, b) = (
        id("spiffe://example.org/prod/a"),
        id("spiffe://example.org/prod/b"),
    );
    assert_eq!(e.granted_scopes(&a, &b), scopes(&["b:read"]).as_slice());
    assert!(e.granted_scopes(&b, &a).is_empty());
}

#[test]
fn cached_decisions_equal_fresh_ones() {
    let e = engine(&[("policies/environments.cedar", ENV_POLICY)]);
    let b = id("spiffe://example.org/prod/b");
    for (from, asked) in [
        ("spiffe://example.org/prod/a", vec!["b:read"]),
        ("spiffe://example.org/prod/a", vec!["b:write"]),
        ("spiffe://example.org/dev/c", vec!["b:read"]),
        ("spiffe://example.org/deploy/d", vec![]),
    ] {
        let (from, asked) = (id(from), scopes(&asked));
        let first = e.decide_issue(&from, &b, &asked);
        let again = e.decide_issue(&from, &b, &asked);
        assert_eq!(first, again);
        assert_eq!(
            first,
            e.evaluate_issue(&from, &b, &asked),
            "the cache returns what Cedar decides"
        );
    }
    // Scope order and duplicates do not make different decisions.
    let a = id("spiffe://example.org/prod/a");
    let twice = scopes(&["b:read", "b:read"]);
    assert!(e.decide_issue(&a, &b, &twice).allowed);
}
