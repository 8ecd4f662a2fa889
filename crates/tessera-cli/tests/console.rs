//! The web console end to end: in Debian's Chromium driven by Playwright (`interop/
//! console_e2e.py`), signing in with the admin credential, a one-time link and an outside OIDC
//! provider (node-oidc-provider from npm); the console's views over the admin API on SQLite and
//! PostgreSQL (overview, workloads, the access graph with reported calls, expiries, audit
//! search, grant reviews, the advisor and `tessera advise`); the session cookie outside `--dev`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};
use tessera_testkit::{spawn_ready, Proc};

const ORDERS: &str = "spiffe://example.org/prod/order-processor";
const INVENTORY: &str = "spiffe://example.org/prod/inventory-api";
const PAYMENTS: &str = "spiffe://example.org/prod/payments-api";
const LEGACY: &str = "spiffe://example.org/prod/legacy-batch";
const EVIL: &str = "spiffe://example.org/prod/evil";

/// Script in a purpose, a grant's reason and (by a client ID) an audit field.
const XSS: &str = r#"<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>"#;

fn mesh() -> String {
    format!(
        r#"
[[workload]]
id = "{ORDERS}"
owner = "team-orders"
purpose = "Turns checkout events into orders"
environment = "prod"

[[workload]]
id = "{INVENTORY}"
owner = "team-warehouse"
purpose = "Owns stock levels"
environment = "prod"
aliases = ["inventory-api"]
scopes = ["inventory:read", "inventory:reserve", "inventory:admin"]

[[workload]]
id = "{PAYMENTS}"
owner = "team-payments"
purpose = "Charges customers"
environment = "prod"
scopes = ["payments:charge", "payments:refund"]

[[workload]]
id = "{LEGACY}"
owner = "team-legacy"
purpose = "The nightly export nobody owns any more"
environment = "prod"

[[workload]]
id = "{EVIL}"
owner = "team-evil"
purpose = '{XSS}'
environment = "prod"

[[grant]]
from = "{ORDERS}"
to = "{INVENTORY}"
scopes = ["inventory:read", "inventory:reserve"]
routes = [{{ methods = ["GET", "POST"], paths = ["/api/v1/inventory/*"] }}]
why = "The order flow checks and reserves stock"
review_by = "2030-06-30"

[[grant]]
from = "{ORDERS}"
to = "{PAYMENTS}"
scopes = ["payments:charge", "payments:refund"]
why = "Orders are charged"
review_by = "2020-01-31"

[[grant]]
from = "{LEGACY}"
to = "{INVENTORY}"
scopes = ["inventory:read"]
why = "The nightly export reads stock"
review_by = "2030-01-31"

[[grant]]
from = "{EVIL}"
to = "{ORDERS}"
scopes = []
why = '{XSS}'
review_by = "2021-01-01"

[[client]]
id = "orders"
workload = "{ORDERS}"
auth = "client_secret"

[[client]]
id = "inventory"
workload = "{INVENTORY}"
auth = "client_secret"

[[client]]
id = "legacy"
workload = "{LEGACY}"
auth = "client_secret"

[[client]]
id = "unused"
workload = "{PAYMENTS}"
auth = "client_secret"
"#
    )
}

fn client_secret(s: &Server, id: &str) -> String {
    let o = tessera(&s.data, &["client", "secret", id]);
    assert!(o.status.success(), "client secret: {}", stderr(&o));
    stdout(&o).lines().next().unwrap().to_owned()
}

async fn token(s: &Server, client: (&str, &str), form: &[(&str, &str)]) -> (u16, Value) {
    let mut f = vec![("grant_type", "client_credentials")];
    f.extend_from_slice(form);
    post_form(&format!("{}/token", s.url), Some(client), &f).await
}

fn admin_token(s: &Server) -> String {
    std::fs::read_to_string(s.data.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn admin_get(s: &Server, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/admin{path}", s.url))
        .bearer_auth(admin_token(s))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn admin_post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/admin{path}", s.url))
        .bearer_auth(admin_token(s))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Traffic for the views: tokens, a refused client authentication with markup as its client ID,
/// and calls `inventory-api` reports having allowed (and one it denied).
async fn traffic(s: &Server) {
    let orders = client_secret(s, "orders");
    let inventory = client_secret(s, "inventory");
    let legacy = client_secret(s, "legacy");
    let _ = client_secret(s, "unused");
    for _ in 0..3 {
        let (st, b) = token(
            s,
            ("orders", &orders),
            &[("audience", "inventory-api"), ("scope", "inventory:read")],
        )
        .await;
        assert_eq!(st, 200, "{b}");
    }
    let (st, b) = token(s, ("legacy", &legacy), &[("audience", INVENTORY)]).await;
    assert_eq!(st, 200, "{b}");
    let (st, _) = token(s, (XSS, "wrong"), &[("audience", INVENTORY)]).await;
    assert_eq!(st, 401);
    let (st, b) = token(s, ("inventory", &inventory), &[("audience", &s.url)]).await;
    assert_eq!(st, 200, "{b}");
    let own = b["access_token"].as_str().unwrap().to_owned();
    let now = tessera_core::now_unix();
    let call = |caller: &str, method: &str, path: &str, allowed: bool| json!({"caller": caller, "method": method, "path": path, "allowed": allowed, "reason": "test", "at": now});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/policy/decisions", s.url))
        .bearer_auth(&own)
        .json(&json!({"records": [
            call(ORDERS, "GET", "/api/v1/inventory/42", true),
            call(ORDERS, "GET", "/api/v1/inventory/43", true),
            call(LEGACY, "GET", "/api/v1/inventory/all", true),
            call(PAYMENTS, "DELETE", "/api/v1/inventory/42", false),
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

fn npm_root() -> String {
    let o = Command::new("npm").args(["root", "-g"]).output().unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

fn interop(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// The records of `kind` by an actor starting with `actor`.
fn audited(s: &Server, kind: &str, actor: &str) -> Vec<Value> {
    let o = tessera(&s.data, &["audit", "tail", "-n", "500", "--output", "json"]);
    let all: Value = serde_json::from_str(&stdout(&o)).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind && r["actor"].as_str().unwrap().starts_with(actor))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn console_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("identity");
    std::fs::create_dir_all(&files).unwrap();
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    std::fs::write(dir.path().join("client-secret"), "console-secret-4711\n").unwrap();
    let config = write(
        dir.path(),
        "server.toml",
        &format!(
            r#"
[console]
identity_dir = "{}"

[console.oidc]
issuer = "{issuer}"
client_id = "tessera-console"
client_secret_file = "{}"
admin_groups = ["platform-admins"]
viewer_groups = ["engineering"]
private_network = true
"#,
            files.display(),
            dir.path().join("client-secret").display()
        ),
    );
    let data = dir.path().join("data");
    let s = server_on(&data, None, &["--config", config.to_str().unwrap()]);
    let mesh_file = write(&files, "mesh.toml", &mesh());
    let o = tessera(&s.data, &["apply", "-f", mesh_file.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    traffic(&s).await;
    let legacy = client_secret(&s, "legacy");

    // A shadow candidate that takes `payments:refund` away, to promote from the console.
    let cand = write(
        dir.path(),
        "candidate/mesh.toml",
        &mesh().replace(
            "scopes = [\"payments:charge\", \"payments:refund\"]\nwhy",
            "scopes = [\"payments:charge\"]\nwhy",
        ),
    );
    let o = tessera(
        &s.data,
        &["apply", "--shadow", "-f", cand.to_str().unwrap()],
    );
    assert!(o.status.success(), "shadow: {}", stderr(&o));

    let mut idp = Command::new("node");
    idp.arg(interop("oidc_provider.mjs"))
        .arg(idp_port.to_string())
        .arg(format!("{}/ui/oidc/callback", s.url))
        .arg("console-secret-4711")
        .env("NODE_GLOBAL_ROOT", npm_root());
    let _idp: Proc = spawn_ready(idp, "ready");

    let o = tessera(&s.data, &["console", "link", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let link: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let review_date = time::OffsetDateTime::now_utc().date() + time::Duration::days(90);
    let cfg = json!({
        "base": s.url, "credential": admin_token(&s), "link": link["url"], "oidc_issuer": issuer,
        "client_id": "legacy", "client_secret": legacy, "revoke_id": LEGACY,
        "caller": ORDERS, "service": INVENTORY, "overdue_from": ORDERS, "overdue_to": PAYMENTS,
        "review_date": review_date.to_string(), "evil_id": EVIL,
        "shots": shots, "axe": format!("{}/axe-core/axe.min.js", npm_root()),
    });
    let cfg_file = write(dir.path(), "e2e.json", &cfg.to_string());
    let out = Command::new("python3")
        .arg(interop("console_e2e.py"))
        .arg(&cfg_file)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("all steps passed"),
        "the browser test failed:\n{log}\n{}\nserver: {}",
        String::from_utf8_lossy(&out.stderr),
        s.proc.stderr()
    );
    for png in [
        "02-overview",
        "04-workload",
        "05-graph",
        "08-reviewed",
        "12-viewer",
    ] {
        assert!(shots.join(format!("{png}.png")).exists(), "{png}");
    }

    // The callback by hand: a state from another browser, and an answer naming another
    // issuer (RFC 9207), are both refused, and a state works once.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = || async {
        let r = http
            .get(format!("{}/ui/oidc/start", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(&format!("{issuer}/auth?")),
            "{location}"
        );
        assert!(
            location.contains("code_challenge_method=S256"),
            "{location}"
        );
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let state = reqwest::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        (state, cookie)
    };
    let callback = |query: String, cookie: String| {
        let http = http.clone();
        let url = format!("{}/ui/oidc/callback?{query}", s.url);
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            r.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    let (state, _) = start().await;
    let (_, other_browser) = start().await;
    assert_eq!(
        callback(format!("code=x&state={state}"), other_browser).await,
        "/ui/?error=state"
    );
    let (state, cookie) = start().await;
    let evil = format!("code=x&state={state}&iss=https%3A%2F%2Fevil.example");
    assert_eq!(callback(evil, cookie.clone()).await, "/ui/?error=provider");
    assert_eq!(
        callback(format!("code=x&state={state}"), cookie).await,
        "/ui/?error=state",
        "used up"
    );

    // What the browser did is in the audit trail under the person's name.
    assert!(!audited(&s, "console.signin", "console:admin:credential").is_empty());
    assert!(!audited(&s, "console.signin", "console:oidc:alice").is_empty());
    assert!(!audited(&s, "console.signin_refused", "console:oidc:carol").is_empty());
    let revoked = audited(&s, "revoke.workload", "console:admin:credential");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["subject"], LEGACY);
    let reviewed = audited(&s, "grant.reviewed", "console:admin");
    assert_eq!(reviewed.len(), 1, "{reviewed:?}");
    assert_eq!(reviewed[0]["subject"], format!("{ORDERS} -> {PAYMENTS}"));
    assert!(!audited(&s, "policy.promoted", "console:").is_empty());
    // The review was written to the managed identity file, beside its comment.
    let text = std::fs::read_to_string(&mesh_file).unwrap();
    assert!(
        text.contains(&format!(
            "review_by = \"{review_date}\"  # extended by admin:credential on "
        )),
        "{text}"
    );
    assert!(text.contains("still used by the nightly export"), "{text}");
    assert!(!text.contains("2020-01-31"), "{text}");
    // And the file still applies, with no change left to make but the promoted candidate's.
    let o = tessera(
        &s.data,
        &["apply", "--dry-run", "-f", mesh_file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

async fn views(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    apply_ok(&s, files.path(), "mesh.toml", &mesh(), &[]);
    traffic(&s).await;

    // The overview counts the day's records.
    let (st, o) = admin_get(&s, "/v1/overview").await;
    assert_eq!(st, 200, "{o}");
    assert!(o["issued"].as_i64().unwrap() >= 5, "{o}");
    assert_eq!(o["calls_allowed"], 3, "{o}");
    assert_eq!(o["calls_denied"], 1, "{o}");
    assert!(o["unauthorized_attempts"].as_i64().unwrap() >= 2, "{o}");
    assert_eq!(o["workloads"], 5);
    assert_eq!(o["grants_overdue"], 2, "{o}");

    // Workloads: search, filters, paging, last issuance.
    let (_, p) = admin_get(&s, "/v1/workloads?q=stock").await;
    assert_eq!(p["total"], 1, "{p}");
    assert_eq!(p["rows"][0]["id"], INVENTORY);
    assert_eq!(p["rows"][0]["grants_in"], 2);
    let (_, p) = admin_get(&s, "/v1/workloads?owner=team-orders").await;
    assert_eq!(p["total"], 1);
    assert!(p["rows"][0]["last_issued"].as_i64().is_some(), "{p}");
    assert_eq!(p["rows"][0]["overdue"], 2, "{p}");
    // Order-processor and payments-api (their grant), evil (its own).
    let (_, p) = admin_get(&s, "/v1/workloads?overdue=true").await;
    assert_eq!(p["total"], 3, "{p}");
    let (_, p) = admin_get(&s, "/v1/workloads?limit=2&offset=2").await;
    assert_eq!(
        (p["total"].as_u64(), p["rows"].as_array().unwrap().len()),
        (Some(5), 2)
    );
    assert_eq!(p["owners"].as_array().unwrap().len(), 5);

    // The graph around inventory-api: two granted callers with their reported calls, and
    // payments-api, which called without a grant.
    let (st, g) = admin_get(&s, &format!("/v1/graph?center={INVENTORY}")).await;
    assert_eq!(st, 200, "{g}");
    let edge = |from: &str| {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["from"] == from && e["to"] == INVENTORY)
            .cloned()
            .unwrap_or_else(|| panic!("no edge from {from}: {g}"))
    };
    assert_eq!(edge(ORDERS)["granted"], true);
    assert_eq!(edge(ORDERS)["effective"], "allowed");
    assert_eq!(edge(ORDERS)["calls_allowed"], 2);
    assert_eq!(edge(LEGACY)["calls_allowed"], 1);
    assert_eq!(edge(PAYMENTS)["granted"], false);
    assert_eq!(edge(PAYMENTS)["calls_denied"], 1);
    assert_eq!(g["nodes"].as_array().unwrap().len(), 4, "{g}");
    // Filters apply to the neighbours; the workloads of a filter without a centre.
    let (_, g) = admin_get(
        &s,
        &format!("/v1/graph?center={INVENTORY}&owner=team-orders"),
    )
    .await;
    assert_eq!(g["nodes"].as_array().unwrap().len(), 2, "{g}");
    assert_eq!(
        g["edges"][0]["calls_allowed"], 2,
        "the calls of a kept neighbour stay: {g}"
    );
    let (_, g) = admin_get(&s, "/v1/graph?environment=prod").await;
    assert_eq!(g["nodes"].as_array().unwrap().len(), 5, "{g}");
    assert_eq!(g["edges"].as_array().unwrap().len(), 5, "{g}");
    assert_eq!(
        admin_get(&s, "/v1/graph?center=spiffe://example.org/nope")
            .await
            .0,
        404
    );
    assert_eq!(admin_get(&s, "/v1/graph?center=%3Cscript%3E").await.0, 400);

    // The review list: overdue grants, of or to an owner's workloads.
    let (_, due) = admin_get(&s, "/v1/get/grants?overdue=true").await;
    assert_eq!(due.as_array().unwrap().len(), 2, "{due}");
    let (_, due) = admin_get(&s, "/v1/get/grants?overdue=true&owner=team-payments").await;
    assert_eq!(due.as_array().unwrap().len(), 1, "{due}");
    assert_eq!(due[0]["to_owner"], "team-payments");

    // Expiries: overdue reviews, marked.
    let (_, x) = admin_get(&s, "/v1/expiries").await;
    let reviews: Vec<&Value> = x["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "grant_review")
        .collect();
    assert_eq!(reviews.len(), 2, "{x}");
    assert!(reviews.iter().all(|e| e["mark"] == "overdue"), "{x}");

    // The audit trail searched by kind, subject and actor, a page at a time.
    let (_, a) = admin_get(&s, "/v1/audit/search?kind=token.issued&limit=2").await;
    assert_eq!(a["records"].as_array().unwrap().len(), 2);
    let before = a["next_before"].as_i64().unwrap();
    let (_, b) = admin_get(
        &s,
        &format!("/v1/audit/search?kind=token.issued&limit=2&before={before}"),
    )
    .await;
    assert!(b["records"][0]["seq"].as_i64().unwrap() < before);
    let (_, a) = admin_get(
        &s,
        &format!("/v1/audit/search?subject={LEGACY}&kind=token.issued"),
    )
    .await;
    assert_eq!(a["records"].as_array().unwrap().len(), 1, "{a}");
    let (_, a) = admin_get(&s, &format!("/v1/audit/search?actor={INVENTORY}")).await;
    assert_eq!(a["records"].as_array().unwrap().len(), 4, "{a}");
    assert_eq!(admin_get(&s, "/v1/audit/search?kind=nonsense").await.0, 400);

    // A review without a managed folder: in force at once, recorded, and the change described.
    let (st, r) = admin_post(
        &s,
        "/v1/grants/review",
        json!({"from": ORDERS, "to": PAYMENTS, "action": "withdraw", "reason": "payments moved to the checkout service"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["applied"], false);
    assert!(
        r["change"]
            .as_str()
            .unwrap()
            .contains("remove the [[grant]]"),
        "{r}"
    );
    let (st, b) = token(
        &s,
        ("orders", &client_secret(&s, "orders")),
        &[("audience", PAYMENTS)],
    )
    .await;
    assert_eq!(st, 400, "the withdrawn grant no longer issues: {b}");
    let bad = [
        json!({"from": ORDERS, "to": PAYMENTS, "action": "extend", "review_by": "2030-01-01", "reason": "x"}),
        json!({"from": EVIL, "to": ORDERS, "action": "extend", "review_by": "2020-01-01", "reason": "x"}),
        json!({"from": EVIL, "to": ORDERS, "action": "extend", "review_by": "2999-01-01", "reason": "x"}),
        json!({"from": EVIL, "to": ORDERS, "action": "extend", "reason": "x"}),
        json!({"from": EVIL, "to": ORDERS, "action": "withdraw", "reason": ""}),
        json!({"from": EVIL, "to": ORDERS, "action": "withdraw", "reason": "a\nb"}),
    ];
    for (i, body) in bad.into_iter().enumerate() {
        let (st, r) = admin_post(&s, "/v1/grants/review", body).await;
        assert!(st == 400 || st == 404, "case {i}: {st} {r}");
    }

    // The advisor: scopes never asked for, a grant never used, a client never used, with the
    // narrower grant; and the CLI.
    let o = tessera(
        &s.data,
        &[
            "advise",
            "--window",
            "1d",
            "--output",
            "json",
            "--write",
            files.path().join("advised").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let advice: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let find = |kind: &str, subject: &str| {
        advice["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == kind && f["subject"] == subject)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} for {subject}: {advice}"))
    };
    let scopes = find("unused_scopes", ORDERS);
    assert_eq!(scopes["target"], INVENTORY);
    assert!(
        scopes["suggestion"]
            .as_str()
            .unwrap()
            .contains("scopes = [\"inventory:read\"]"),
        "{scopes}"
    );
    let routes = find("unused_routes", ORDERS);
    assert!(
        routes["suggestion"]
            .as_str()
            .unwrap()
            .contains("methods = [\"GET\"]"),
        "{routes}"
    );
    assert_eq!(find("unused_grant", EVIL)["suggestion"], "");
    assert_eq!(find("idle_client", "unused")["kind"], "idle_client");
    assert_eq!(find("idle_workload", PAYMENTS)["kind"], "idle_workload");
    assert!(advice["records_read"].as_u64().unwrap() >= 8);
    let written =
        std::fs::read_to_string(files.path().join("advised/advised-grants.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&written).unwrap();
    assert!(!parsed["grant"].as_array().unwrap().is_empty(), "{written}");
    let o = tessera(&s.data, &["advise", "--window", "1d"]);
    assert!(stdout(&o).contains("unused_scopes"), "{}", stdout(&o));
    assert!(!stdout(&o).contains('\u{1b}'));
}

#[tokio::test(flavor = "multi_thread")]
async fn console_views_on_sqlite() {
    views(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn console_views_on_postgres() {
    views(Backend::Postgres).await;
}

/// Outside `--dev` (HTTPS), the session cookie is `__Host-`, Secure, HttpOnly and
/// SameSite=Strict; the console's pages carry a strict CSP; a sign-in needs the credential.
#[tokio::test(flavor = "multi_thread")]
async fn console_session_cookie_outside_dev() {
    let dir = tempfile::tempdir().unwrap();
    let p = tls_server(dir.path(), &["example.org"]);
    let url = p.ready.clone();
    let ca = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let page = http.get(format!("{url}/ui/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    let r = http
        .post(format!("{url}/ui/signin"))
        .json(&json!({"credential": "tat_nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // A form post from another site is no JSON: refused before anything is checked.
    let r = http
        .post(format!("{url}/ui/signin"))
        .form(&[("credential", token.trim())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let r = http
        .post(format!("{url}/ui/signin"))
        .json(&json!({"credential": token.trim()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-tessera_console="), "{cookie}");
    for part in [
        "Path=/",
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(part), "{part}: {cookie}");
    }
    let value = cookie.split(';').next().unwrap().to_owned();
    let r = http
        .get(format!("{url}/admin/v1/overview"))
        .header("cookie", &value)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    // The same cookie without its prefix is not a session.
    let bare = value.replacen("__Host-", "", 1);
    let r = http
        .get(format!("{url}/admin/v1/overview"))
        .header("cookie", bare)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// A console OIDC configuration that cannot work is refused at start, in one line.
#[test]
fn console_oidc_config_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (cfg, want) in [
        ("[console.oidc]\nissuer = \"http://idp.example\"\nclient_id = \"c\"\nadmin_groups = [\"a\"]\n", "use https"),
        ("[console.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\n", "admin_groups"),
        ("[console.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nadmin_groups = [\"a\"]\nclient_secret_file = \"/nonexistent\"\n", "client_secret_file"),
        ("[console.oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nadmin_groups = [\"a\"]\nscopes = 1\n", "unknown field"),
    ] {
        let p = write(dir.path(), "server.toml", cfg);
        let o = Command::new(BIN)
            .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{cfg}");
        let err = stderr(&o);
        assert!(err.contains(want) && err.lines().count() == 1, "{want}: {err}");
    }
}
