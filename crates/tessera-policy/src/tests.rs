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

/// `examples/policies/environments.cedar`, as shipped to users.
const ENV_POLICY: &str = include_str!("../../../examples/policies/environments.cedar");

fn engine(files: &[(&str, &str)]) -> PolicyEngine {
    engine_with(MESH, files)
}

fn engine_with(mesh: &str, files: &[(&str, &str)]) -> PolicyEngine {
    let s = parse_str(Path::new("mesh.toml"), mesh).unwrap();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    PolicyEngine::build(&s.workloads, &s.grants, &files).unwrap()
}

fn build_err(mesh: &str, files: &[(&str, &str)]) -> String {
    let s = parse_str(Path::new("mesh.toml"), mesh).unwrap();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    PolicyEngine::build(&s.workloads, &s.grants, &files)
        .unwrap_err()
        .to_string()
}

const NOON: i64 = 1_790_000_000 - 1_790_000_000 % 86_400 + 12 * 3_600;

fn env() -> Env {
    Env::at(NOON)
}

fn issue(e: &PolicyEngine, from: &str, to: &str, asked: &[&str]) -> Decision {
    e.decide_issue(
        &id(from),
        &id(to),
        &scopes(asked),
        &IssueContext::default(),
        &env(),
    )
}

fn call(e: &PolicyEngine, from: &str, to: &str, method: &str, path: &str) -> Decision {
    e.decide_call(
        &id(from),
        &id(to),
        &Call {
            actor: None,
            method,
            path,
            scopes: &[],
            authn: Authn::Mtls,
        },
        &env(),
    )
}

const A: &str = "spiffe://example.org/prod/a";
const B: &str = "spiffe://example.org/prod/b";
const C: &str = "spiffe://example.org/dev/c";
const D: &str = "spiffe://example.org/deploy/d";

#[test]
fn grant_permits_its_scopes_only() {
    let e = engine(&[]);
    let d = issue(&e, A, B, &["b:read"]);
    assert!(d.allowed, "{d:?}");
    assert!(d.determined_by[0].contains("mesh.toml:"), "{d:?}");
    assert!(issue(&e, A, B, &[]).allowed, "no scopes asked");
    assert!(!issue(&e, A, B, &["b:write"]).allowed);
    assert!(!issue(&e, A, B, &["b:read", "b:write"]).allowed);
}

#[test]
fn deny_by_default() {
    let e = engine(&[]);
    let d = issue(&e, B, A, &[]);
    assert!(!d.allowed);
    assert_eq!(d.reason(), "no grant or policy permits it");
    assert!(!issue(&e, "spiffe://example.org/prod/unknown", B, &[]).allowed);
    // Calls and secret reads too.
    assert!(!call(&e, B, A, "GET", "/").allowed);
    let secret = secret_entity(
        "db-password",
        "example.org",
        "prod",
        "team-b",
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(
        !e.decide_read_secret(&id(A), &secret, Authn::Mtls, &env())
            .allowed
    );
}

#[test]
fn forbid_overrides_grant() {
    let e = engine(&[("policies/environments.cedar", ENV_POLICY)]);
    let d = issue(&e, C, B, &["b:read"]);
    assert!(!d.allowed);
    assert!(
        d.reason()
            .contains("policy `policies/environments.cedar#0` (policies/environments.cedar:5)"),
        "{}",
        d.reason()
    );
    assert!(issue(&e, A, B, &["b:read"]).allowed);
}

#[test]
fn deployment_is_kept_apart_unless_a_grant_says_so() {
    // The shipped policy alone (no user files) forbids deploy -> runtime, despite the grant.
    let e = engine(&[]);
    let d = issue(&e, D, B, &[]);
    assert!(!d.allowed);
    assert!(
        d.reason().contains("deployment-apart-token"),
        "{}",
        d.reason()
    );
    assert!(!call(&e, D, B, "GET", "/x").allowed);
    let x = e.explain_issue(&id(D), &id(B), &[], &IssueContext::default(), &env());
    assert!(
        x.missing.iter().any(|m| m.contains("deployment = true")),
        "{x:?}"
    );

    let explicit = MESH.replace(
        "why = \"another mistake\"",
        "why = \"deploys b\"\ndeployment = true",
    );
    let e = engine_with(&explicit, &[]);
    assert!(issue(&e, D, B, &[]).allowed);
    assert!(call(&e, D, B, "GET", "/x").allowed);
    // The flag reaches only the grant's own target.
    assert!(!issue(&e, D, A, &[]).allowed);
}

#[test]
fn erroring_forbid_denies() {
    // Validates (the types are right), but overflows at run time: Cedar skips an erroring
    // policy, and an erroring forbid must not leave the grant's permit standing.
    let e = engine(&[(
        "p.cedar",
        "forbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };",
    )]);
    let d = issue(&e, A, B, &["b:read"]);
    assert!(!d.allowed);
    assert!(d.reason().contains("failed to evaluate"), "{}", d.reason());
    assert!(d.errors[0].contains("p.cedar:1"), "{:?}", d.errors);
    assert!(!call(&e, A, B, "GET", "/").allowed);
    assert!(!e.cacheable(), "a policy reading `now` turns the cache off");
}

#[test]
fn global_permit_applies_without_grant() {
    let e = engine(&[(
        "p.cedar",
        "permit (principal, action == Action::\"issue_token\", resource) when { principal.owner == resource.owner };",
    )]);
    // d (team-a, deployment) -> a (team-a, runtime): the shipped forbid still wins.
    assert!(!issue(&e, D, A, &[]).allowed);
    let e = engine_with(&MESH.replace("kind = \"deployment\"", ""), &[(
        "p.cedar",
        "permit (principal, action == Action::\"issue_token\", resource) when { principal.owner == resource.owner };",
    )]);
    let d = issue(&e, D, A, &[]);
    assert!(d.allowed, "{d:?}");
    assert!(d.determined_by[0].contains("p.cedar:1"), "{d:?}");
}

#[test]
fn policies_are_validated_strictly_with_file_and_line() {
    let err = build_err(MESH, &[("bad.cedar", "\n\npermit(")]);
    assert!(err.starts_with("bad.cedar:3: does not parse"), "{err}");
    let err = build_err(
        MESH,
        &[(
            "typo.cedar",
            "// one\npermit (principal, action, resource);\n\nforbid (principal, action, resource)\nwhen { principal.envronment == \"x\" };\n",
        )],
    );
    assert!(err.starts_with("typo.cedar:5: fails validation"), "{err}");
    assert!(err.contains("envronment"), "{err}");
    let err = build_err(
        MESH,
        &[(
            "t.cedar",
            "permit (principal, action == Action::\"fly\", resource);",
        )],
    );
    assert!(err.starts_with("t.cedar:1: fails validation"), "{err}");
    // A string compared with a number: a type error strict mode refuses.
    let err = build_err(
        MESH,
        &[(
            "t.cedar",
            "forbid (principal, action, resource) when { principal.owner == 1 };",
        )],
    );
    assert!(err.contains("fails validation"), "{err}");
    let err = build_err(
        MESH,
        &[("ghost.cedar", "\npermit (principal == Workload::\"spiffe://example.org/prod/ghost\", action, resource);")],
    );
    assert!(
        err.starts_with("ghost.cedar:2: refers to Workload::\"spiffe://example.org/prod/ghost\""),
        "{err}"
    );
    let err = build_err(
        MESH,
        &[(
            "tpl.cedar",
            "permit (principal == ?principal, action, resource);",
        )],
    );
    assert!(err.contains("templates are not supported"), "{err}");
}

#[test]
fn shipped_examples_validate() {
    let e = engine(&[("environments.cedar", ENV_POLICY)]);
    assert!(e.policy_count() >= 4);
}

const ROUTED: &str = r#"routes = [{ methods = ["GET", "POST"], paths = ["/api/v1/b/*"] }, { methods = ["DELETE"], paths = ["/api/v1/b/cache"] }]
why = "a reads b""#;

#[test]
fn calls_are_decided_by_method_and_normalised_path() {
    let e = engine_with(&MESH.replace("why = \"a reads b\"", ROUTED), &[]);
    let d = call(&e, A, B, "GET", "/api/v1/b/items/7");
    assert!(d.allowed, "{d:?}");
    assert!(call(&e, A, B, "POST", "/api/v1/b/items?x=1").allowed);
    assert!(call(&e, A, B, "DELETE", "/api/v1/b/cache").allowed);
    assert!(!call(&e, A, B, "DELETE", "/api/v1/b/items/7").allowed);
    assert!(!call(&e, A, B, "PUT", "/api/v1/b/items/7").allowed);
    assert!(!call(&e, A, B, "GET", "/api/v1/admin").allowed);
    assert!(
        !call(&e, A, B, "GET", "/api/v1/b/../admin").allowed,
        "dot segments"
    );
    assert!(
        !call(&e, A, B, "GET", "/api/v1/b/%2e%2e/admin").allowed,
        "encoded dots"
    );
    assert!(
        !call(&e, A, B, "GET", "/api/v1/b/x%2F..%2F..%2Fadmin").allowed,
        "encoded slash"
    );
    assert!(
        !call(&e, A, B, "BREW", "/api/v1/b/x").allowed,
        "unknown method"
    );
    // A grant without routes: any route.
    assert!(call(&e, C, B, "PATCH", "/anything").allowed);
    // Tokens are decided apart from calls.
    assert!(issue(&e, A, B, &["b:read"]).allowed);

    let x = e.explain_call(
        &id(A),
        &id(B),
        &Call {
            actor: None,
            method: "PUT",
            path: "/api/v1/b/x",
            scopes: &[],
            authn: Authn::Jwt,
        },
        &env(),
    );
    assert!(!x.decision.allowed);
    assert!(
        x.missing[0].contains("GET,POST /api/v1/b/*; DELETE /api/v1/b/cache; not PUT /api/v1/b/x"),
        "{x:?}"
    );
}

#[test]
fn call_policies_read_context_and_route() {
    let e = engine(&[(
        "calls.cedar",
        r#"forbid (principal, action in Action::"call", resource) when { resource.path like "/admin/*" && context.authn != "mtls+jwt" };
forbid (principal, action, resource) when { !context.source_ip.isInRange(ip("127.0.0.0/8")) };"#,
    )]);
    let mut env = env();
    env.source_ip = Some("127.0.0.1".parse().unwrap());
    let mk = |authn, path| Call {
        actor: None,
        method: "GET",
        path,
        scopes: &[],
        authn,
    };
    assert!(
        e.decide_call(&id(A), &id(B), &mk(Authn::Jwt, "/x"), &env)
            .allowed
    );
    assert!(
        !e.decide_call(&id(A), &id(B), &mk(Authn::Jwt, "/admin/x"), &env)
            .allowed
    );
    assert!(
        e.decide_call(&id(A), &id(B), &mk(Authn::MtlsJwt, "/admin/x"), &env)
            .allowed
    );
    env.source_ip = Some("10.1.2.3".parse().unwrap());
    assert!(
        !e.decide_call(&id(A), &id(B), &mk(Authn::Jwt, "/x"), &env)
            .allowed
    );
    env.source_ip = None;
    assert!(
        !e.decide_call(&id(A), &id(B), &mk(Authn::Jwt, "/x"), &env)
            .allowed,
        "unknown source is 0.0.0.0"
    );
}

const JIT: &str = r#"scopes = ["b:read", "b:write", "b:admin"]
jit = [{ scope = "b:admin", max_ttl = "60s", environments = ["prod"], hours = "08-18", max_token_age = "5m" }]"#;

#[test]
fn jit_scopes_are_alone_and_conditional() {
    let mesh = MESH
        .replace("scopes = [\"b:read\", \"b:write\"]", JIT)
        .replace(
            "scopes = [\"b:read\"]\nwhy = \"a reads b\"",
            "scopes = [\"b:read\", \"b:admin\"]\nwhy = \"a reads b\"",
        )
        .replace(
            "scopes = [\"b:read\"]\nwhy = \"a mistake",
            "scopes = [\"b:admin\"]\nwhy = \"a mistake",
        );
    let e = engine_with(&mesh, &[]);
    let (a, b, c) = (id(A), id(B), id(C));
    let admin = scopes(&["b:admin"]);
    let plain = IssueContext::default();
    assert!(e.decide_issue(&a, &b, &admin, &plain, &env()).allowed);
    let d = e.decide_issue(&a, &b, &scopes(&["b:admin", "b:read"]), &plain, &env());
    assert!(!d.allowed);
    assert!(
        d.reason().contains("must be asked for alone"),
        "{}",
        d.reason()
    );
    // Outside the hours.
    let night = Env::at(NOON + 10 * 3_600);
    let d = e.decide_issue(&a, &b, &admin, &plain, &night);
    assert!(
        !d.allowed && d.reason().contains("between 08-18 UTC"),
        "{}",
        d.reason()
    );
    // An old subject token.
    let mut old = env();
    old.token_age = 301;
    let d = e.decide_issue(&a, &b, &admin, &plain, &old);
    assert!(
        !d.allowed && d.reason().contains("at most 5m old"),
        "{}",
        d.reason()
    );
    // A caller of another environment, granted the scope all the same.
    let d = e.decide_issue(&c, &b, &admin, &plain, &env());
    assert!(
        !d.allowed && d.reason().contains("environment `prod`"),
        "{}",
        d.reason()
    );
    // Ordinary scopes are unaffected, and cached as before.
    assert!(
        e.decide_issue(&a, &b, &scopes(&["b:read"]), &plain, &night)
            .allowed
    );
    assert_eq!(e.workload(&b).unwrap().jit[0].max_ttl.as_secs(), 60);
}

#[test]
fn explain_names_the_policy_and_what_is_missing() {
    let e = engine(&[("policies/environments.cedar", ENV_POLICY)]);
    let ctx = IssueContext::default();
    let x = e.explain_issue(&id(A), &id(B), &scopes(&["b:read"]), &ctx, &env());
    assert!(x.decision.allowed);
    assert_eq!(x.decision.determined_by.len(), 1);
    assert!(
        x.decision.determined_by[0].starts_with(
            "grant `spiffe://example.org/prod/a` -> `spiffe://example.org/prod/b` (mesh.toml:"
        ),
        "{x:?}"
    );
    assert!(x.missing.is_empty());

    let x = e.explain_issue(&id(A), &id(B), &scopes(&["b:write"]), &ctx, &env());
    assert!(!x.decision.allowed);
    assert!(
        x.missing[0].contains("gives `b:read`; not `b:write`"),
        "{x:?}"
    );

    let x = e.explain_issue(&id(B), &id(A), &[], &ctx, &env());
    assert_eq!(x.missing, vec![format!("no grant from `{B}` to `{A}`")]);

    let x = e.explain_issue(&id(C), &id(B), &scopes(&["b:read"]), &ctx, &env());
    assert!(
        x.decision.determined_by[0].contains("policies/environments.cedar:5"),
        "{x:?}"
    );
    assert!(
        x.missing[0].contains("change or remove the forbid at policies/environments.cedar:5"),
        "{x:?}"
    );

    let x = e.explain_issue(
        &id("spiffe://example.org/nobody"),
        &id(B),
        &[],
        &ctx,
        &env(),
    );
    assert!(
        x.missing[0].contains("not a workload any identity file declares"),
        "{x:?}"
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
    // The pair's two grant policies plus the two shipped and two user global ones, whatever
    // the number of grants.
    assert_eq!(e.slice_len(&id(A), &id(B)), 6);
    assert!(issue(&e, A, B, &["b:read"]).allowed);
    let generated = issue(&e, "spiffe://example.org/gen/w9999", B, &["b:read"]);
    assert!(
        !generated.allowed,
        "no environment on generated workloads: the environment forbid applies"
    );
    assert!(
        generated.reason().contains("g.cedar#0"),
        "{}",
        generated.reason()
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
    assert_eq!(
        e.granted_scopes(&id(A), &id(B)),
        scopes(&["b:read"]).as_slice()
    );
    assert!(e.granted_scopes(&id(B), &id(A)).is_empty());
}

#[test]
fn cached_decisions_equal_fresh_ones() {
    let e = engine(&[("policies/environments.cedar", ENV_POLICY)]);
    assert!(e.cacheable());
    let b = id(B);
    let ctx = IssueContext::default();
    for (from, asked) in [
        (A, vec!["b:read"]),
        (A, vec!["b:write"]),
        (C, vec!["b:read"]),
        (D, vec![]),
    ] {
        let (from, asked) = (id(from), scopes(&asked));
        let first = e.decide_issue(&from, &b, &asked, &ctx, &env());
        let again = e.decide_issue(&from, &b, &asked, &ctx, &env());
        assert_eq!(first, again);
        assert_eq!(
            first,
            e.evaluate_issue(&from, &b, &asked, &ctx, &env()),
            "the cache returns what Cedar decides"
        );
    }
    assert!(issue(&e, A, B, &["b:read", "b:read"]).allowed, "duplicates");
    // Calls too, keyed by the normalised path.
    let e = engine_with(
        &MESH.replace("why = \"a reads b\"", ROUTED),
        &[("env.cedar", ENV_POLICY)],
    );
    assert!(e.cacheable());
    for (from, m, p) in [
        (A, "GET", "/api/v1/b/1"),
        (A, "GET", "/api/v1/b/../../x"),
        (A, "PUT", "/api/v1/b/1"),
        (C, "GET", "/"),
        (D, "GET", "/"),
    ] {
        let c = Call {
            actor: None,
            method: m,
            path: p,
            scopes: &[],
            authn: Authn::Mtls,
        };
        let first = e.decide_call(&id(from), &id(B), &c, &env());
        assert_eq!(first, e.decide_call(&id(from), &id(B), &c, &env()));
        assert_eq!(
            first,
            e.evaluate_call(&id(from), &id(B), &c, &env()),
            "{from} {m} {p}"
        );
    }
}

#[test]
fn contexts_and_entities_conform_to_the_schema() {
    // Every request the engine builds must be one the schema accepts, or strict validation of
    // policies would promise nothing about evaluation.
    let schema = model::schema().unwrap();
    let s = parse_str(
        Path::new("mesh.toml"),
        &MESH.replace("scopes = [\"b:read\", \"b:write\"]", JIT),
    )
    .unwrap();
    let w = &s.workloads;
    let mut members: Vec<Entity> = w
        .iter()
        .map(|w| model::workload_entity(w, &[&w.id]).unwrap())
        .collect();
    members.extend(w.iter().map(|w| model::service_entity(w).unwrap()));
    let b = w.iter().find(|x| x.id.as_str() == B).unwrap();
    let route = model::route_entity(b, "GET", "/x").unwrap();
    members.push(route.clone());
    let secret = secret_entity(
        "s",
        "example.org",
        "prod",
        "o",
        &BTreeMap::from([("k".into(), "v".into())]),
    )
    .unwrap();
    members.push(secret.clone());
    Entities::from_entities(members, Some(schema)).expect("entities conform");

    let mut issue_ctx = env().pairs();
    issue_ctx.push(("scopes".into(), RestrictedExpression::new_set([])));
    issue_ctx.push(("delegated".into(), RestrictedExpression::new_bool(false)));
    issue_ctx.push((
        "actor".into(),
        RestrictedExpression::new_string(String::new()),
    ));
    issue_ctx.push((
        "trust".into(),
        RestrictedExpression::new_string(String::new()),
    ));
    let mut call_ctx = env().pairs();
    call_ctx.push(("scopes".into(), RestrictedExpression::new_set([])));
    call_ctx.push((
        "authn".into(),
        RestrictedExpression::new_string("jwt".into()),
    ));
    call_ctx.push(("delegated".into(), RestrictedExpression::new_bool(false)));
    call_ctx.push((
        "actor".into(),
        RestrictedExpression::new_string(String::new()),
    ));
    let mut secret_ctx = env().pairs();
    secret_ctx.push((
        "authn".into(),
        RestrictedExpression::new_string("mtls".into()),
    ));
    let principal = model::uid("Workload", A).unwrap();
    for (action, resource, ctx) in [
        ("issue_token", model::uid("Service", B).unwrap(), issue_ctx),
        ("GET", route.uid(), call_ctx),
        ("read_secret", secret.uid(), secret_ctx),
    ] {
        let action = model::uid("Action", action).unwrap();
        let ctx = Context::from_pairs(ctx).unwrap();
        Request::new(principal.clone(), action, resource, ctx, Some(schema))
            .expect("request conforms");
    }
}

#[test]
fn bundles_decide_as_the_server_does() {
    let s = parse_str(
        Path::new("mesh.toml"),
        &MESH.replace("why = \"a reads b\"", ROUTED),
    )
    .unwrap();
    let files = vec![tessera_core::manifest::PolicyFile {
        name: "env.cedar".into(),
        text: ENV_POLICY.into(),
    }];
    let full = PolicyBundle::cut(None, &s.workloads, &s.grants, &files);
    let for_b = PolicyBundle::cut(Some(&id(B)), &s.workloads, &s.grants, &files);
    assert_eq!(for_b.grants.len(), 3, "grants toward b only");
    assert_ne!(full.version, for_b.version);
    assert_eq!(
        for_b.version,
        PolicyBundle::cut(Some(&id(B)), &s.workloads, &s.grants, &files).version,
        "stable"
    );
    let json = serde_json::to_string(&for_b).unwrap();
    let back: PolicyBundle = serde_json::from_str(&json).unwrap();
    let (server, local) = (full.engine().unwrap(), back.engine().unwrap());
    for (from, m, p) in [
        (A, "GET", "/api/v1/b/1"),
        (A, "PUT", "/api/v1/b/1"),
        (C, "GET", "/"),
        (D, "GET", "/"),
    ] {
        assert_eq!(
            call(&server, from, B, m, p),
            call(&local, from, B, m, p),
            "{from} {m} {p}"
        );
    }
    let mut changed = s.grants.clone();
    changed[0].scopes.clear();
    assert_ne!(
        for_b.version,
        PolicyBundle::cut(Some(&id(B)), &s.workloads, &changed, &files).version
    );
}

#[test]
fn rate_limits_per_pair() {
    let s = parse_str(
        Path::new("m.toml"),
        &MESH.replace(
            "why = \"a reads b\"",
            "why = \"a reads b\"\ntoken_rate = \"3/m\"",
        ),
    )
    .unwrap();
    let limits = limit::Limits::from_grants(&s.grants, |g| g.token_rate);
    for _ in 0..3 {
        limits.check(&id(A), &id(B)).unwrap();
    }
    let refused = limits.check(&id(A), &id(B)).unwrap_err();
    assert_eq!(refused.rate.to_string(), "3/m");
    assert!(
        (1..=20).contains(&refused.retry_after_secs()),
        "{refused:?}"
    );
    // Other pairs are not limited by it.
    for _ in 0..100 {
        limits.check(&id(C), &id(B)).unwrap();
    }
}

proptest::proptest! {
    #[test]
    fn normalised_paths_hold_no_dot_segments(raw in "/[a-z./%2eEfF5c]{0,30}") {
        if let Ok(p) = path::normalize(&raw) {
            proptest::prop_assert!(p.starts_with('/'));
            proptest::prop_assert!(!p.split('/').any(|s| s == ".." || s == "."), "{p}");
            proptest::prop_assert!(!p.contains("//"), "{p}");
            proptest::prop_assert_eq!(path::normalize(&p), Ok(p), "idempotent");
        }
    }
}

#[test]
fn bundle_versions_ignore_order() {
    let s = parse_str(Path::new("mesh.toml"), MESH).unwrap();
    let files = vec![
        tessera_core::manifest::PolicyFile {
            name: "a.cedar".into(),
            text: ENV_POLICY.into(),
        },
        tessera_core::manifest::PolicyFile {
            name: "b.cedar".into(),
            text: String::new(),
        },
    ];
    let one = PolicyBundle::cut(Some(&id(B)), &s.workloads, &s.grants, &files);
    let (mut w, mut g, mut f) = (s.workloads.clone(), s.grants, files);
    w.reverse();
    g.reverse();
    f.reverse();
    let other = PolicyBundle::cut(Some(&id(B)), &w, &g, &f);
    assert_eq!(
        one.version, other.version,
        "a server holding the same set in another order"
    );
    assert_eq!(one, other);
}

#[test]
fn secret_grants_name_exact_secrets_or_explicit_prefixes() {
    let text = format!(
        "{MESH}\n{}",
        r#"
[[secret_grant]]
from = "spiffe://example.org/prod/a"
secrets = ["payments/stripe", "legacy/*"]
why = "charges cards"
review_by = "2030-01-01"

[[secret_grant]]
from = "spiffe://example.org/prod/b"
secrets = ["payments/stripe"]
access = "metadata"
why = "shows when the key rotates"
"#
    );
    let state = parse_str(Path::new("mesh.toml"), &text).unwrap();
    assert_eq!(state.policies.len(), 1, "one generated policy file");
    let e = PolicyEngine::from_files(&state.workloads, &state.grants, &state.policies).unwrap();
    let secret = |name: &str| {
        secret_entity(name, "example.org", "prod", "team-pay", &BTreeMap::new()).unwrap()
    };
    let may = |who: &str, name: &str, action: SecretAction| {
        e.decide_secret(&id(who), &secret(name), action, Authn::Jwt, &env())
            .allowed
    };
    assert!(may(A, "payments/stripe", SecretAction::Read));
    assert!(may(A, "payments/stripe", SecretAction::Describe));
    assert!(may(A, "legacy/db/password", SecretAction::Read));
    // Exact means exact: no neighbour, no prefix match without `/*`.
    assert!(!may(A, "payments/stripe2", SecretAction::Read));
    assert!(!may(A, "payments/other", SecretAction::Read));
    assert!(!may(A, "legacyx", SecretAction::Read));
    // Metadata only.
    assert!(may(B, "payments/stripe", SecretAction::Describe));
    assert!(!may(B, "payments/stripe", SecretAction::Read));
    // Nobody else.
    assert!(!may(C, "payments/stripe", SecretAction::Describe));
    // A grant for an undeclared workload is refused when the set is built.
    let bad = text.replace(
        "from = \"spiffe://example.org/prod/b\"\nsecrets",
        "from = \"spiffe://example.org/prod/ghost\"\nsecrets",
    );
    let state = parse_str(Path::new("mesh.toml"), &bad).unwrap();
    let err = PolicyEngine::from_files(&state.workloads, &state.grants, &state.policies)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ghost"), "{err}");
    // Patterns are parsed: a bare `*` or a path trick is refused at load.
    for pattern in ["*", "../a", "a/**"] {
        let t = text.replace("\"legacy/*\"", &format!("\"{pattern}\""));
        assert!(parse_str(Path::new("mesh.toml"), &t).is_err(), "{pattern}");
    }
}

/// `explain` answers as the token endpoint does: a Cedar `permit` allows a pair, but only
/// grants give scopes, so a scope no grant gives is `invalid_scope` in both places.
#[test]
fn explain_gives_no_scope_a_grant_does_not() {
    let e = engine(&[(
        "permit.cedar",
        "permit (principal == Workload::\"spiffe://example.org/prod/a\", action == Action::\"issue_token\", resource == Service::\"spiffe://example.org/prod/b\");\n",
    )]);
    let env = Env::now();
    let scope = |s: &str| Scope::parse(s).unwrap();
    let ctx = IssueContext::default();
    let x = e.explain_issue(&id(A), &id(B), &[scope("b:write")], &ctx, &env);
    assert!(!x.decision.allowed);
    assert!(x.decision.reason().contains("invalid_scope"), "{x:?}");
    let x = e.explain_issue(&id(A), &id(B), &[scope("b:read")], &ctx, &env);
    assert!(x.decision.allowed, "{x:?}");
    let x = e.explain_issue(&id(A), &id(B), &[], &ctx, &env);
    assert!(x.decision.allowed, "{x:?}");
}

#[test]
fn callers_of_federated_trust_domains_are_principals_under_policy() {
    let s = parse_str(Path::new("mesh.toml"), MESH).unwrap();
    let partner = TrustDomain::parse("partner.example").unwrap();
    // A grant from a federated workload: its caller is known by its SPIFFE ID alone.
    let mut grants = s.grants.clone();
    grants.push(
        parse_str(
            Path::new("g.toml"),
            r#"
[[grant]]
from = "spiffe://partner.example/shipping"
to = "spiffe://example.org/prod/b"
routes = [{ methods = ["GET"], paths = ["/invoices/*"] }]
why = "the partner prints invoices"
"#,
        )
        .unwrap()
        .grants
        .remove(0),
    );
    let e =
        PolicyEngine::build_federated(&s.workloads, &grants, &[], std::slice::from_ref(&partner))
            .unwrap();
    let shipping = "spiffe://partner.example/shipping";
    let b = "spiffe://example.org/prod/b";
    assert!(call(&e, shipping, b, "GET", "/invoices/7").allowed);
    assert!(!call(&e, shipping, b, "POST", "/invoices/7").allowed);
    // Deny by default: another workload of the partner, and one of an unfederated domain.
    assert!(
        !call(
            &e,
            "spiffe://partner.example/other",
            b,
            "GET",
            "/invoices/7"
        )
        .allowed
    );
    assert!(!call(&e, "spiffe://stranger.example/x", b, "GET", "/invoices/7").allowed);

    // A policy may name a partner's workload, or its trust domain, only when federated.
    let by_domain = (
        "partner.cedar",
        r#"permit (principal, action == Action::"GET", resource)
when { principal.trust_domain == "partner.example" && resource.path like "/status*" };"#,
    );
    let literal = (
        "literal.cedar",
        r#"forbid (principal == Workload::"spiffe://partner.example/shipping", action in Action::"call", resource)
when { resource.path like "/invoices/7*" };"#,
    );
    let files: Vec<(String, String)> = [by_domain, literal]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let e = PolicyEngine::build_federated(&s.workloads, &grants, &files, &[partner]).unwrap();
    assert!(call(&e, "spiffe://partner.example/other", b, "GET", "/status").allowed);
    assert!(!call(&e, "spiffe://stranger.example/x", b, "GET", "/status").allowed);
    assert!(
        !call(&e, shipping, b, "GET", "/invoices/7").allowed,
        "the forbid holds"
    );
    assert!(call(&e, shipping, b, "GET", "/invoices/8").allowed);
    let err = PolicyEngine::build(&s.workloads, &s.grants, &files[1..])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no identity file declares"), "{err}");
}
