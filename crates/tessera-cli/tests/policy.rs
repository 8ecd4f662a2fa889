//! Authorization end to end: strict validation, explanations, just-in-time scopes, rate limits,
//! deployment kept apart, shadow sets with their diff on real traffic, promote and rollback (on
//! SQLite and PostgreSQL); and the library authorizer protecting a real axum service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const INVENTORY: &str = "spiffe://example.org/prod/inventory-api";
const ORDERS: &str = "spiffe://example.org/prod/order-processor";
const PAYMENTS: &str = "spiffe://example.org/prod/payments-api";
const PIPELINE: &str = "spiffe://example.org/deploy/orders-pipeline";
const DEV_TOOL: &str = "spiffe://example.org/dev/tool";

const POLICY_MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/order-processor"
owner = "team-orders"
purpose = "Turns checkout events into orders"
environment = "prod"

[[workload]]
id = "spiffe://example.org/prod/inventory-api"
owner = "team-warehouse"
purpose = "Owns stock levels"
environment = "prod"
aliases = ["inventory-api"]
scopes = ["inventory:read", "inventory:reserve", "inventory:admin"]
jit = [{ scope = "inventory:admin", max_ttl = "60s" }]

[[workload]]
id = "spiffe://example.org/prod/payments-api"
owner = "team-payments"
purpose = "Charges customers"
environment = "prod"
scopes = ["payments:charge"]

[[workload]]
id = "spiffe://example.org/deploy/orders-pipeline"
owner = "team-orders"
purpose = "Deploys order-processor"
environment = "prod"
kind = "deployment"

[[workload]]
id = "spiffe://example.org/dev/tool"
owner = "team-tools"
purpose = "A dev tool someone granted prod access by mistake"
environment = "dev"

[[grant]]
from = "spiffe://example.org/prod/order-processor"
to = "spiffe://example.org/prod/inventory-api"
scopes = ["inventory:read", "inventory:reserve", "inventory:admin"]
routes = [{ methods = ["GET", "POST"], paths = ["/api/v1/inventory/*"] }]
why = "The order flow checks and reserves stock"

[[grant]]
from = "spiffe://example.org/deploy/orders-pipeline"
to = "spiffe://example.org/prod/inventory-api"
scopes = ["inventory:read"]
why = "A deployment identity reaching a run-time service: the shipped policy forbids it"

[[grant]]
from = "spiffe://example.org/dev/tool"
to = "spiffe://example.org/prod/inventory-api"
scopes = ["inventory:read"]
why = "The environment policy must catch this"

[[grant]]
from = "spiffe://example.org/prod/order-processor"
to = "spiffe://example.org/prod/payments-api"
scopes = ["payments:charge"]
token_rate = "3/m"
why = "Orders are charged"

[[client]]
id = "orders"
workload = "spiffe://example.org/prod/order-processor"
auth = "client_secret"

[[client]]
id = "pipeline"
workload = "spiffe://example.org/deploy/orders-pipeline"
auth = "client_secret"

[[client]]
id = "inventory"
workload = "spiffe://example.org/prod/inventory-api"
auth = "client_secret"

[policies]
files = ["policies/*.cedar"]
"#;

const ENV_POLICY: &str = include_str!("../../../examples/policies/environments.cedar");

fn write_mesh(dir: &Path, mesh: &str) -> String {
    write(dir, "mesh.toml", mesh);
    write(dir, "policies/environments.cedar", ENV_POLICY);
    // The test runs on loopback: if `context.source_ip` did not reach the policy (0.0.0.0), no
    // payments token would be issued below.
    write(
        dir,
        "policies/network.cedar",
        "forbid (principal, action == Action::\"issue_token\", resource == Service::\"spiffe://example.org/prod/payments-api\")\nunless { context.source_ip.isInRange(ip(\"127.0.0.0/8\")) };\n",
    );
    dir.join("mesh.toml").to_str().unwrap().to_owned()
}

fn secret(s: &Server, id: &str) -> String {
    let o = tessera(&s.data, &["client", "secret", id]);
    assert!(o.status.success(), "client secret: {}", stderr(&o));
    stdout(&o).lines().next().unwrap().to_owned()
}

async fn token_for(
    s: &Server,
    client: (&str, &str),
    form: &[(&str, &str)],
) -> (u16, Value, Option<String>) {
    let mut f = vec![("grant_type", "client_credentials")];
    f.extend_from_slice(form);
    let resp = reqwest::Client::new()
        .post(format!("{}/token", s.url))
        .basic_auth(client.0, Some(client.1))
        .form(&f)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, resp.json().await.unwrap(), retry)
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn explain(s: &Server, args: &[&str]) -> (i32, String) {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    let o = tessera(&s.data, &all);
    (
        o.status.code().unwrap(),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

async fn lifecycle(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let mesh = write_mesh(files.path(), POLICY_MESH);

    // Validation offline, with file and line.
    let o = cli(&["policy", "validate", "-f", &mesh]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("valid against the Tessera schema"),
        "{}",
        stdout(&o)
    );
    let bad = tempfile::tempdir().unwrap();
    let bad_mesh = write_mesh(bad.path(), POLICY_MESH);
    write(bad.path(), "policies/typo.cedar", "// a typo\n\nforbid (principal, action, resource)\nwhen { principal.envronment == \"x\" };\n");
    let o = cli(&["policy", "validate", "-f", &bad_mesh]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("policies/typo.cedar:4: fails validation"),
        "{}",
        stderr(&o)
    );
    // An invalid set is never applied, not even in part.
    let o = tessera(&s.data, &["apply", "-f", &bad_mesh]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("envronment"), "{}", stderr(&o));
    let o = tessera(&s.data, &["get", "workloads", "--output", "json"]);
    assert_eq!(stdout(&o).trim(), "[]", "nothing half-applied");

    let o = tessera(&s.data, &["apply", "-f", &mesh]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    let orders = secret(&s, "orders");
    let pipeline = secret(&s, "pipeline");

    // Explain: allowed, naming the grant and its line.
    let (code, out) = explain(
        &s,
        &[
            "--from",
            ORDERS,
            "--to",
            INVENTORY,
            "--scope",
            "inventory:read",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ALLOW") && out.contains("mesh.toml:37"),
        "{out}"
    );
    // Denied by default, with what is missing.
    let (code, out) = explain(&s, &["--from", INVENTORY, "--to", PAYMENTS]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("no grant from `{INVENTORY}` to `{PAYMENTS}`")),
        "{out}"
    );
    // Circumstances: the caller's address, given or unknown.
    let (code, out) = explain(
        &s,
        &[
            "--from",
            ORDERS,
            "--to",
            PAYMENTS,
            "--source-ip",
            "127.0.0.1",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = explain(&s, &["--from", ORDERS, "--to", PAYMENTS]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("policies/network.cedar:1"), "{out}");
    // A forbid overriding a grant: the policy file and line.
    let (code, out) = explain(
        &s,
        &[
            "--from",
            DEV_TOOL,
            "--to",
            INVENTORY,
            "--scope",
            "inventory:read",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("policies/environments.cedar:5"), "{out}");
    // A call outside the grant's routes.
    let (code, out) = explain(
        &s,
        &[
            "--from",
            ORDERS,
            "--to",
            INVENTORY,
            "--method",
            "DELETE",
            "--path",
            "/api/v1/inventory/7",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("allows GET,POST /api/v1/inventory/*; not DELETE /api/v1/inventory/7"),
        "{out}"
    );
    let (code, out) = explain(
        &s,
        &[
            "--from",
            ORDERS,
            "--to",
            INVENTORY,
            "--method",
            "GET",
            "--path",
            "/api/v1/inventory/7",
        ],
    );
    assert_eq!(code, 0, "{out}");

    // `describe` says what a grant is worth under the policy in force, and shows JIT and rates.
    let o = tessera(&s.data, &["describe", "workload", DEV_TOOL]);
    assert!(
        stdout(&o)
            .contains("IN EFFECT NOW (from an unknown address): denied, forbidden by policy `policies/environments.cedar#0`"),
        "{}",
        stdout(&o)
    );
    let o = tessera(&s.data, &["describe", "workload", INVENTORY]);
    assert!(
        stdout(&o).contains("just in time: inventory:admin alone, at most 1m"),
        "{}",
        stdout(&o)
    );
    let o = tessera(&s.data, &["describe", "workload", ORDERS]);
    assert!(stdout(&o).contains("tokens at most: 3/m"), "{}", stdout(&o));
    // The payments grant holds only from loopback (network.cedar): said, with the reason.
    assert!(
        stdout(&o).contains("denied, forbidden by policy `policies/network.cedar#0`"),
        "{}",
        stdout(&o)
    );
    assert_eq!(stdout(&o).matches("IN EFFECT").count(), 1, "{}", stdout(&o));

    // Deployment apart from run time, by the shipped policy.
    let (status, body, _) = token_for(
        &s,
        ("pipeline", &pipeline),
        &[("audience", "inventory-api")],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("deployment-apart-token"),
        "{body}"
    );
    let (_, out) = explain(&s, &["--from", PIPELINE, "--to", INVENTORY]);
    assert!(out.contains("deployment = true"), "{out}");

    // Just-in-time: never by default, alone only, for at most 60 s.
    let (status, body, _) =
        token_for(&s, ("orders", &orders), &[("audience", "inventory-api")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "inventory:read inventory:reserve", "{body}");
    let (status, body, _) = token_for(
        &s,
        ("orders", &orders),
        &[("audience", "inventory-api"), ("scope", "inventory:admin")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 60);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 60);
    let (status, body, _) = token_for(
        &s,
        ("orders", &orders),
        &[
            ("audience", "inventory-api"),
            ("scope", "inventory:admin inventory:read"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("must be asked for alone"),
        "{body}"
    );

    // Rate limits per caller and target: 3 a minute, then 429 with Retry-After.
    for _ in 0..3 {
        let (status, body, _) = token_for(&s, ("orders", &orders), &[("audience", PAYMENTS)]).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, retry) = token_for(&s, ("orders", &orders), &[("audience", PAYMENTS)]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    // Other targets are not limited by it.
    let (status, _, _) = token_for(&s, ("orders", &orders), &[("audience", "inventory-api")]).await;
    assert_eq!(status, 200);
    let metrics = get_text(&format!("{}/metrics", s.url)).await;
    assert!(
        metrics.contains("tessera_rate_limited_total{point=\"issue\"} 1"),
        "{metrics}"
    );

    // Every denial's audit record carries the explanation.
    let o = tessera(&s.data, &["audit", "tail", "-n", "50", "--output", "json"]);
    let audit: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let denial = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "token.denied" && r["subject"] == PIPELINE)
        .expect("the pipeline's denial is audited");
    let detail: Value = serde_json::from_str(denial["detail"].as_str().unwrap()).unwrap();
    let has = |key: &str, text: &str| {
        detail[key]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().contains(text))
    };
    assert!(has("determined_by", "deployment-apart-token"), "{detail}");
    assert!(has("missing", "deployment = true"), "{detail}");
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "token.limited"));

    // Shadow: a candidate that takes `inventory:reserve` away, evaluated on real requests and
    // not enforced.
    let candidate = tempfile::tempdir().unwrap();
    let cand_mesh = write_mesh(
        candidate.path(),
        &POLICY_MESH.replace(
            "scopes = [\"inventory:read\", \"inventory:reserve\", \"inventory:admin\"]\nroutes",
            "scopes = [\"inventory:read\", \"inventory:admin\"]\nroutes",
        ),
    );
    let o = tessera(&s.data, &["policy", "diff"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no shadow policy set is loaded"),
        "{}",
        stderr(&o)
    );
    let o = tessera(&s.data, &["apply", "--shadow", "-f", &cand_mesh]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("loaded as shadow policy set"),
        "{}",
        stdout(&o)
    );
    // Wait for the shadow to load (the server reloads on commit; the test's CLI already did).
    for _ in 0..3 {
        let (status, body, _) = token_for(
            &s,
            ("orders", &orders),
            &[
                ("audience", "inventory-api"),
                ("scope", "inventory:reserve"),
            ],
        )
        .await;
        assert_eq!(status, 200, "not enforced: {body}");
    }
    for _ in 0..2 {
        let (status, _, _) = token_for(
            &s,
            ("orders", &orders),
            &[("audience", "inventory-api"), ("scope", "inventory:read")],
        )
        .await;
        assert_eq!(status, 200);
    }
    let o = tessera(&s.data, &["policy", "diff", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let diff: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(diff["evaluated"], 5, "{diff}");
    assert_eq!(diff["newly_denied"], 3, "{diff}");
    assert_eq!(diff["newly_allowed"], 0, "{diff}");
    assert_eq!(diff["changed"][0]["caller"], ORDERS);
    assert_eq!(diff["changed"][0]["target"], INVENTORY);
    assert_eq!(
        diff["changed"][0]["example"],
        "issue_token [inventory:reserve]"
    );
    // Explain with the shadow set.
    let (code, out) = explain(
        &s,
        &[
            "--from",
            ORDERS,
            "--to",
            INVENTORY,
            "--scope",
            "inventory:reserve",
            "--shadow",
        ],
    );
    assert_eq!(code, 1, "{out}");
    // Policy tests as code, against the active set, the shadow set and a candidate.
    let cases = write(
        files.path(),
        "cases.toml",
        &format!(
            r#"
[[case]]
name = "orders reserve stock"
from = "{ORDERS}"
to = "{INVENTORY}"
scopes = ["inventory:reserve"]
expect = "allow"

[[case]]
name = "orders read over GET"
from = "{ORDERS}"
to = "{INVENTORY}"
method = "GET"
path = "/api/v1/inventory/42"
expect = "allow"

[[case]]
name = "no escape by dot segments"
from = "{ORDERS}"
to = "{INVENTORY}"
method = "GET"
path = "/api/v1/inventory/../admin"
expect = "deny"

[[case]]
name = "dev tool kept out of prod"
from = "{DEV_TOOL}"
to = "{INVENTORY}"
scopes = ["inventory:read"]
expect = "deny"
"#
        ),
    );
    let cases = cases.to_str().unwrap();
    let o = tessera(&s.data, &["policy", "test", cases]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("4 case(s), 0 failed"), "{}", stdout(&o));
    let o = tessera(&s.data, &["policy", "test", cases, "--shadow"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("FAIL  orders reserve stock: expected allow, got deny"),
        "{}",
        stdout(&o)
    );
    let o = tessera(&s.data, &["policy", "test", cases, "-f", &cand_mesh]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // A shadow set holds only policy: other changes are refused with what to do.
    let other = tempfile::tempdir().unwrap();
    let other_mesh = write_mesh(
        other.path(),
        &POLICY_MESH.replace("Charges customers", "Charges"),
    );
    let o = tessera(&s.data, &["apply", "--shadow", "-f", &other_mesh]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "apply these changes first: ~ workload spiffe://example.org/prod/payments-api"
        ),
        "{}",
        stderr(&o)
    );

    // Promote: now enforced.
    let o = tessera(&s.data, &["policy", "promote"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (status, _, _) = token_for(
        &s,
        ("orders", &orders),
        &[
            ("audience", "inventory-api"),
            ("scope", "inventory:reserve"),
        ],
    )
    .await;
    assert_eq!(status, 400, "promoted");
    let o = tessera(&s.data, &["policy", "status", "--output", "json"]);
    let st: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(st["shadow"].is_null(), "{st}");
    let statuses: Vec<&str> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "promoted", "superseded"], "{st}");
    // Rollback: the previous set again.
    let o = tessera(&s.data, &["policy", "rollback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("rollback to 1"), "{}", stdout(&o));
    let (status, body, _) = token_for(
        &s,
        ("orders", &orders),
        &[
            ("audience", "inventory-api"),
            ("scope", "inventory:reserve"),
        ],
    )
    .await;
    assert_eq!(status, 200, "rolled back: {body}");
    let o = tessera(&s.data, &["audit", "verify"]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[tokio::test]
async fn policy_lifecycle_sqlite() {
    lifecycle(Backend::Sqlite).await;
}

#[tokio::test]
async fn policy_lifecycle_postgres() {
    lifecycle(Backend::Postgres).await;
}

const LIB_MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/order-processor"
owner = "team-orders"
purpose = "Turns checkout events into orders"
environment = "prod"

[[workload]]
id = "spiffe://example.org/prod/inventory-api"
owner = "team-warehouse"
purpose = "Owns stock levels"
environment = "prod"
aliases = ["inventory-api"]
scopes = ["inventory:read"]

[[grant]]
from = "spiffe://example.org/prod/order-processor"
to = "spiffe://example.org/prod/inventory-api"
scopes = ["inventory:read"]
routes = [{ methods = ["GET"], paths = ["/api/v1/inventory/*"] }]
call_rate = "20/m"
why = "The order flow checks stock"

[[client]]
id = "orders"
workload = "spiffe://example.org/prod/order-processor"
auth = "client_secret"

[[client]]
id = "inventory"
workload = "spiffe://example.org/prod/inventory-api"
auth = "client_secret"
"#;

/// One raw HTTP/1.1 request, so that the path reaches the service exactly as written (HTTP
/// clients resolve dot segments before sending).
async fn raw_get(addr: std::net::SocketAddr, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: inventory\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The library authorizer protecting a small axum service: decisions made locally from the
/// fetched bundle, kept current by long poll, kept when the authority is down; denials (and
/// sampled allows) in the audit trail; rate limits; a shadow diff on recorded traffic.
#[tokio::test]
async fn library_authorizer_protects_an_axum_service() {
    use axum::routing::get;
    use tessera_verify::{
        Authorizer, AuthzMetrics, BundleSource, JwksCache, RequireTokenLayer, Verifier,
        VerifierConfig,
    };

    let mut s = server(Backend::Sqlite, &[]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let mesh = write(files.path(), "mesh.toml", LIB_MESH);
    let o = tessera(&s.data, &["apply", "-f", mesh.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (orders, inventory) = (secret(&s, "orders"), secret(&s, "inventory"));

    // The service: verification and authorization in a few lines.
    let base: reqwest::Url = format!("{}/", s.url).parse().unwrap();
    let verifier = Verifier::new(
        VerifierConfig::access_token(&s.url, INVENTORY).unwrap(),
        JwksCache::new(base.join("jwks").unwrap()),
    );
    let source = BundleSource::client_credentials(
        base.clone(),
        reqwest::Client::new(),
        "inventory".into(),
        inventory.clone(),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = AuthzMetrics::register(&mut registry);
    let (authz, _log) = Authorizer::new(INVENTORY.parse().unwrap())
        .with_metrics(metrics.clone())
        .with_decision_log(source.clone(), 1);
    authz.spawn_bundle_sync(source);
    let app = axum::Router::new()
        .route("/api/v1/inventory/{*item}", get(|| async { "stock" }))
        .route("/admin", get(|| async { "admin" }))
        .layer(RequireTokenLayer::new(verifier).authorize(authz.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let deadline = Instant::now() + Duration::from_secs(10);
    while authz.version().is_none() {
        assert!(Instant::now() < deadline, "no policy bundle loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_version = authz.version().unwrap();

    let (status, body, _) =
        token_for(&s, ("orders", &orders), &[("audience", "inventory-api")]).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("http://{addr}{path}"))
            .bearer_auth(&token)
            .send()
    };
    let d = authz.decide(
        &ORDERS.parse().unwrap(),
        "GET",
        "/api/v1/inventory/42",
        &[],
        tessera_verify::Authn::Jwt,
        &tessera_verify::Env::now(),
    );
    assert!(d.allowed, "{d:?}");
    let r = get("/api/v1/inventory/42").await.unwrap();
    if r.status() != 200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let o = tessera(&s.data, &["audit", "tail", "-n", "3"]);
        panic!("{:?} {}", r.headers(), stdout(&o));
    }
    let denied = get("/admin").await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["tessera-decision"], "deny");
    assert_eq!(
        raw_get(addr, "/api/v1/inventory/../../admin", &token).await,
        403
    );
    assert_eq!(
        raw_get(addr, "/api/v1/inventory/%2e%2e/%2e%2e/admin", &token).await,
        403
    );
    // An encoded slash is read differently by servers: refused before any decision.
    assert_eq!(
        raw_get(addr, "/api/v1/inventory/x%2F..%2F..%2Fadmin", &token).await,
        400
    );
    assert_eq!(
        http.get(format!("http://{addr}/api/v1/inventory/42"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // The inventory's own token (sub: inventory-api) for itself is not a grant to call it.
    let (_, body, _) = token_for(&s, ("inventory", &inventory), &[("audience", &s.url)]).await;
    let own = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        raw_get(addr, "/api/v1/inventory/42", &own).await,
        401,
        "audience is the authority, not the service"
    );

    // The records endpoint refuses more than 1,000 records, and bodies over 2 MiB.
    let record = serde_json::json!({"caller": ORDERS, "method": "GET", "path": "/", "allowed": false, "reason": "x", "at": 0});
    let records = |n: usize| serde_json::json!({ "records": vec![record.clone(); n] });
    let post = |body: Value| {
        reqwest::Client::new()
            .post(format!("{}/v1/policy/decisions", s.url))
            .bearer_auth(&own)
            .json(&body)
            .send()
    };
    assert_eq!(post(records(1_001)).await.unwrap().status(), 400);
    let big = serde_json::json!({"records": [], "pad": "x".repeat(3 * 1024 * 1024)});
    assert_eq!(post(big).await.unwrap().status(), 413);

    // Denials reach the audit trail, with the service as actor and the caller as subject.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = tessera(&s.data, &["audit", "tail", "-n", "50", "--output", "json"]);
        let audit: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let recorded: Vec<&Value> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "call.denied")
            .collect();
        // Three denials: `/admin` and the two dot-segment spellings (the encoded slash was
        // refused before any decision).
        if recorded.len() >= 3 {
            assert!(recorded
                .iter()
                .all(|r| r["actor"] == INVENTORY && r["subject"] == ORDERS));
            let d: Value = serde_json::from_str(recorded[0]["detail"].as_str().unwrap()).unwrap();
            assert_eq!(d["method"], "GET");
            assert!(
                !d["missing"].as_array().unwrap().is_empty(),
                "explained: {d}"
            );
            assert!(
                d["reason"]
                    .as_str()
                    .unwrap()
                    .contains("no grant or policy permits it")
                    || d["reason"].as_str().unwrap().contains("encoded slash"),
                "{d}"
            );
            assert!(
                audit
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["kind"] == "call.allowed"),
                "allows sampled 1 in 1"
            );
            break;
        }
        assert!(Instant::now() < deadline, "denials not recorded: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A shadow set that drops the route: its diff counts the recorded calls it would deny.
    let cand = write(
        files.path(),
        "cand/mesh.toml",
        &LIB_MESH.replace(
            "paths = [\"/api/v1/inventory/*\"]",
            "paths = [\"/api/v2/*\"]",
        ),
    );
    let o = tessera(
        &s.data,
        &["apply", "--shadow", "-f", cand.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..3 {
        assert_eq!(
            get(&format!("/api/v1/inventory/{i}"))
                .await
                .unwrap()
                .status(),
            200,
            "not enforced"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = tessera(&s.data, &["policy", "diff", "--output", "json"]);
        let diff: Value = serde_json::from_str(&stdout(&o)).unwrap();
        if diff["newly_denied"] == 3 {
            assert_eq!(diff["changed"][0]["action"], "GET");
            assert_eq!(diff["changed"][0]["caller"], ORDERS);
            assert_eq!(diff["changed"][0]["target"], INVENTORY);
            break;
        }
        assert!(Instant::now() < deadline, "shadow diff: {diff}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = tessera(&s.data, &["policy", "discard"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A change reaches the service by long poll, without a restart: GET /admin granted.
    let changed = LIB_MESH.replace(
        "paths = [\"/api/v1/inventory/*\"]",
        "paths = [\"/api/v1/inventory/*\", \"/admin\"]",
    );
    let mesh = write(files.path(), "mesh.toml", &changed);
    let o = tessera(&s.data, &["apply", "-f", mesh.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while authz.version().as_deref() == Some(first_version.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the bundle did not follow the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get("/admin").await.unwrap().status(), 200);

    // The authority stops: decisions go on with the last good bundle.
    s.proc.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get("/api/v1/inventory/7").await.unwrap().status(), 200);
    assert_eq!(raw_get(addr, "/api/v1/orders", &token).await, 403);

    // The rate limit (20 a minute per caller): the calls above used some; the rest of the
    // burst passes, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..30 {
        let r = get("/api/v1/inventory/1").await.unwrap();
        if r.status() == 429 {
            limited = Some(
                r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let retry = limited.expect("a 429 within the minute's budget");
    assert!((1..=3).contains(&retry), "{retry}");
    assert!(metrics.count("limited") >= 1);
    assert!(metrics.count("deny") >= 4);
    assert!(metrics.count("allow") >= 5);
}
