//! `tessera dev`: a server on loopback with embedded storage, a demo mesh applied, and an
//! allowed and a denied service-to-service token request shown with their audit records.
#![expect(
    clippy::indexing_slicing,
    reason = "indexing a serde_json::Value by key yields Null for a missing key; it cannot panic"
)]

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use tessera_server::ServerConfig;
use tessera_verify::{JwksCache, Verifier, VerifierConfig};

use crate::admin_client::AdminClient;
use crate::cli::{DevArgs, LogFormat};
use crate::commands::{init_logs, wait_for_signal};

const MESH: &str = r#"# The demo mesh of `tessera dev`.

[[workload]]
id = "spiffe://example.org/prod/order-processor"
owner = "team-orders"
purpose = "Turns checkout events into orders and reserves stock for them"
environment = "prod"
selectors = ["unix:uid:1001"]

[[workload]]
id = "spiffe://example.org/prod/inventory-api"
owner = "team-warehouse"
purpose = "Owns stock levels"
environment = "prod"
aliases = ["inventory-api", "https://inventory.internal.example.org"]
scopes = ["inventory:read", "inventory:reserve", "inventory:admin"]

[[workload]]
id = "spiffe://example.org/prod/payments-api"
owner = "team-payments"
purpose = "Charges customers"
environment = "prod"
aliases = ["payments-api"]
scopes = ["payments:charge"]

[[grant]]
from = "spiffe://example.org/prod/order-processor"
to = "spiffe://example.org/prod/inventory-api"
scopes = ["inventory:read", "inventory:reserve"]
routes = [{ methods = ["GET", "POST"], paths = ["/api/v1/inventory/*"] }]
why = "The order flow checks and reserves stock"
review_by = "2027-06-30"

[[client]]
id = "order-processor"
workload = "spiffe://example.org/prod/order-processor"
auth = "client_secret"
secret_ttl = "1h"

[policies]
files = ["policies/*.cedar"]
"#;

const POLICY: &str = r#"// A workload never reaches a service of another environment, whatever a grant says.
forbid (principal, action, resource)
when { principal.environment != resource.environment };
"#;

struct Steps {
    failed: usize,
}

impl Steps {
    fn ok(&mut self, what: &str) {
        println!("  ok    {what}");
    }
    fn fail(&mut self, what: &str) {
        self.failed += 1;
        println!("  FAIL  {what}");
    }
}

pub async fn run(a: DevArgs) -> anyhow::Result<u8> {
    init_logs(LogFormat::Text, "warn,sqlx=warn");
    let temp;
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tessera-dev-")
                .tempdir()
                .context("temporary data folder")?;
            temp.path().to_path_buf()
        }
    };
    let mut cfg = ServerConfig::new(data.join("server"));
    cfg.dev = true;
    cfg.listen = a.listen;
    let running = tessera_server::start(cfg, None).await?;
    let url = running.url.clone();
    println!("tessera: ready url={url}");
    let _ = std::io::stdout().flush();
    println!(
        "\nTessera dev: an authority for trust domain example.org with embedded storage in {}\n",
        data.display()
    );

    let mut steps = Steps { failed: 0 };
    let result = demo(
        &mut steps,
        &data,
        &url,
        AdminClient::at(running.admin_socket.clone()),
    )
    .await;
    if let Err(e) = &result {
        steps.fail(&format!("the demo stopped: {e:#}"));
    }
    println!();
    if steps.failed == 0 {
        println!("every step behaved");
    } else {
        println!("{} step(s) did not behave", steps.failed);
    }
    if !a.once {
        println!(
            "\nThe server keeps running at {url} (admin: tessera --data {} ...). Ctrl-C stops it.",
            data.join("server").display()
        );
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
    }
    running.shutdown();
    running.wait().await;
    Ok(if steps.failed == 0 { 0 } else { 1 })
}

async fn demo(steps: &mut Steps, data: &Path, url: &str, admin: AdminClient) -> anyhow::Result<()> {
    // 1. Identity as code.
    let files = data.join("identity");
    std::fs::create_dir_all(files.join("policies"))?;
    std::fs::write(files.join("mesh.toml"), MESH)?;
    std::fs::write(files.join("policies/environments.cedar"), POLICY)?;
    let state = tessera_core::manifest::load(&files.join("mesh.toml"))?;
    let applied = admin
        .post(
            "/v1/apply",
            json!({"state": state, "dry_run": false, "prune": false}),
        )
        .await?;
    let n = applied["changes"].as_array().map_or(0, Vec::len);
    println!("1. apply {}", files.join("mesh.toml").display());
    for c in applied["changes"].as_array().cloned().unwrap_or_default() {
        println!("        {}", c.as_str().unwrap_or_default());
    }
    if n == 6 {
        steps.ok("identity files applied")
    } else {
        steps.fail(&format!("expected 6 changes, saw {n}"))
    }

    // 2. A client secret: the fallback for workloads without a node agent.
    let secret = admin
        .post("/v1/client/secret", json!({"client_id": "order-processor"}))
        .await?;
    let secret = secret["secret"]
        .as_str()
        .ok_or_else(|| anyhow!("no secret returned"))?
        .to_owned();
    println!("\n2. tessera client secret order-processor");
    steps.ok(&format!(
        "secret issued ({}…, shown once, stored as a keyed hash)",
        secret.get(..8).unwrap_or_default()
    ));

    // 3. Allowed: order-processor -> inventory-api.
    let http = reqwest::Client::new();
    let token_url = format!("{url}/token");
    println!("\n3. order-processor asks for a token to inventory-api (scope inventory:read)");
    let resp = http
        .post(&token_url)
        .basic_auth("order-processor", Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", "inventory-api"),
            ("scope", "inventory:read"),
        ])
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    if status.is_success() && !token.is_empty() {
        steps.ok(&format!(
            "token issued, expires in {} s",
            body["expires_in"]
        ));
    } else {
        steps.fail(&format!("token refused: {status} {body}"));
    }
    let verifier = Verifier::new(
        VerifierConfig::access_token(url, "spiffe://example.org/prod/inventory-api")?,
        JwksCache::new(reqwest::Url::parse(&format!("{url}/jwks"))?),
    );
    match verifier.verify(&token).await {
        Ok(v) => {
            steps.ok(&format!(
                "inventory-api verified it: sub={} scope={:?} jti={}",
                v.subject,
                v.scopes.join(" "),
                v.jti.as_deref().unwrap_or_default()
            ));
            if v.has_scope("inventory:reserve") {
                steps.fail("the token carries a scope that was not asked for");
            }
        }
        Err(e) => steps.fail(&format!("inventory-api refused the token: {e}")),
    }

    // 4. Denied: no grant to payments-api.
    println!("\n4. order-processor asks for a token to payments-api");
    let resp = http
        .post(&token_url)
        .basic_auth("order-processor", Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", "payments-api"),
        ])
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if status.as_u16() == 400 && body["error"] == "invalid_target" {
        steps.ok(&format!(
            "denied: {} ({})",
            body["error"].as_str().unwrap_or_default(),
            body["error_description"].as_str().unwrap_or_default()
        ));
    } else {
        steps.fail(&format!("expected invalid_target, got {status} {body}"));
    }

    // 5. The audit trail.
    println!("\n5. tessera audit tail -n 4");
    let tail = admin.get("/v1/audit/tail?n=4").await?;
    print!(
        "{}",
        crate::render::audit(&tail)
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    );
    let kinds: Vec<&str> = tail
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["kind"].as_str()).collect())
        .unwrap_or_default();
    if kinds.contains(&"token.issued") && kinds.last() == Some(&"token.denied") {
        steps.ok("the issuance and the denial are in the audit trail");
    } else {
        steps.fail(&format!("audit trail does not show both calls: {kinds:?}"));
    }
    let verified = admin.get("/v1/audit/verify").await?;
    if verified["ok"] == Value::Bool(true) {
        steps.ok(&format!(
            "audit chain intact ({} records)",
            verified["records"]
        ));
    } else {
        steps.fail(&format!("audit chain: {}", verified["error"]));
    }
    Ok(())
}
