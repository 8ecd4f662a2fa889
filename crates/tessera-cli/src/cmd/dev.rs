//! `tessera dev`: a server on loopback with embedded storage, a demo mesh applied, an allowed and
//! a denied service-to-service token request shown with their audit records, and a node agent
//! handing a local process its SVID.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use tessera_core::admin_api::ConsoleLink;
use tessera_server::ServerConfig;
use tessera_verify::{JwksCache, Verifier, VerifierConfig};

use crate::admin_client::AdminClient;
use crate::cli::{DevArgs, LogFormat};
use crate::render::field;
use crate::support::{init_logs, wait_for_signal};

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

pub(crate) async fn run(a: DevArgs) -> anyhow::Result<u8> {
    let _tracing = init_logs(LogFormat::Text, "warn,sqlx=warn", "tessera-dev", None)?;
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
    let stop = wait_for_signal();
    println!("tessera: ready url={url}");
    let _ = std::io::stdout().flush();
    println!(
        "\nTessera dev: an authority for trust domain example.org with embedded storage in {}\n",
        data.display()
    );

    let mut steps = Steps { failed: 0 };
    let admin = AdminClient::at(running.admin_socket.clone());
    println!("Console: {url}/ui/");
    match admin
        .send::<_, ConsoleLink>("/v1/console/link", &json!({}))
        .await
    {
        Ok(link) => println!(
            "Sign in once, within {} minutes: {}\n",
            link.expires_in / 60,
            link.url
        ),
        Err(e) => steps.fail(&format!("no console sign-in link: {e:#}")),
    }
    let result = demo(&mut steps, &data, &url, admin.clone()).await;
    if let Err(e) = &result {
        steps.fail(&format!("the demo stopped: {e:#}"));
    }
    let agent = match agent_demo(&mut steps, &data, &url, admin.clone()).await {
        Ok(a) => Some(a),
        Err(e) => {
            steps.fail(&format!("the agent demo stopped: {e:#}"));
            None
        }
    };
    let (stop_sidecars, sidecars) = tokio::sync::watch::channel(false);
    if let Some(a) = &agent {
        if let Err(e) = sidecar_demo(&mut steps, &data, &url, admin, &a.socket, sidecars).await {
            steps.fail(&format!("the sidecar demo stopped: {e:#}"));
        }
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
        stop.await;
    }
    let _ = stop_sidecars.send(true);
    if let Some(a) = &agent {
        a.abort();
        let _ = std::fs::remove_file(&a.socket);
    }
    running.shutdown();
    running.wait().await;
    Ok(if steps.failed == 0 { 0 } else { 1 })
}

/// 7. Two services talk through sidecars: mTLS with their SVIDs, policy at the receiving side.
async fn sidecar_demo(
    steps: &mut Steps,
    data: &Path,
    url: &str,
    admin: AdminClient,
    socket: &Path,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")?.uid();
    let (shop, stock) = (
        "spiffe://example.org/dev/shop",
        "spiffe://example.org/dev/stock",
    );
    let mesh = format!(
        r#"[[workload]]
id = "{shop}"
owner = "you"
purpose = "A demo web shop that reads stock"
environment = "dev"
selectors = ["unix:uid:{uid}"]

[[workload]]
id = "{stock}"
owner = "you"
purpose = "A demo stock service, unmodified, behind a sidecar"
environment = "dev"
selectors = ["unix:uid:{uid}"]

[[grant]]
from = "{shop}"
to = "{stock}"
routes = [{{ methods = ["GET"], paths = ["/stock/*"] }}]
why = "The shop shows what is in stock"
"#
    );
    let files = data.join("identity");
    std::fs::write(files.join("sidecars.toml"), &mesh)?;
    let state = tessera_core::manifest::load(&files.join("sidecars.toml"))?;
    admin
        .post(
            "/v1/apply",
            json!({"state": state, "dry_run": false, "prune": false}),
        )
        .await?;
    println!("\n7. shop -> stock through sidecars (mTLS with their SVIDs, policy at stock's side)");

    // The stock service: plain HTTP on loopback, unaware of any of this.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let caller = headers
            .get("x-tessera-caller")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_owned();
        format!("12 apples in stock (asked by {caller})\n")
    });
    tokio::spawn(async move { axum::serve(upstream, app).await });

    // Each sidecar waits until the agent holds its SVID (the registrations just arrived).
    let identity = |id: &'static str| async move {
        let want = tessera_core::SpiffeId::parse(id).map_err(|e| anyhow!("{e}"))?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            match tessera_proxy::Identity::start(socket, Some(want.clone())).await {
                Ok(i) => return Ok::<_, anyhow::Error>(i),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    };
    let (shop_id, stock_id) = (identity(shop).await?, identity(stock).await?);
    let base: reqwest::Url = format!("{}/", url.trim_end_matches('/')).parse()?;
    let audience = url.trim_end_matches('/').to_owned();
    let for_token = stock_id.clone();
    let source = tessera_verify::BundleSource::new(base, reqwest::Client::new(), move || {
        let (id, aud) = (for_token.clone(), audience.clone());
        Box::pin(async move { id.jwt_svid(&aud).await.map_err(|e| e.to_string()) })
    });
    let authz = tessera_verify::Authorizer::new(
        tessera_core::SpiffeId::parse(stock).map_err(|e| anyhow!("{e}"))?,
    );
    authz.spawn_bundle_sync(source);
    let metrics = tessera_proxy::ProxyMetrics::default();
    let inbound = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let inbound_addr = inbound.local_addr()?;
    tokio::spawn(tessera_proxy::inbound::serve(
        inbound,
        tessera_proxy::inbound::InboundConfig::new(upstream_addr),
        stock_id,
        authz.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let outbound = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let outbound_addr = outbound.local_addr()?;
    tokio::spawn(tessera_proxy::outbound::serve(
        outbound,
        tessera_proxy::outbound::OutboundConfig {
            target: inbound_addr,
            target_id: tessera_core::SpiffeId::parse(stock).map_err(|e| anyhow!("{e}"))?,
            connect_timeout: std::time::Duration::from_secs(5),
            token: None,
            allowed_uids: Vec::new(),
            revocations: tessera_verify::RevocationState::default(),
        },
        shop_id,
        metrics,
        stop,
    ));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while authz.version().is_none() {
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow!("stock's sidecar got no policy bundle"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!("        shop's outbound sidecar http://{outbound_addr}  ->  mTLS  ->  stock's inbound sidecar {inbound_addr}  ->  http://{upstream_addr}");
    let http = reqwest::Client::new();
    for (path, want) in [("/stock/apples", 200u16), ("/admin", 403)] {
        let r = http
            .get(format!("http://{outbound_addr}{path}"))
            .send()
            .await?;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        let line = format!("GET {path} -> {status} {}", body.trim());
        if status == want {
            steps.ok(&line);
        } else {
            steps.fail(&format!("{line} (expected {want})"));
        }
    }
    Ok(())
}

/// 6. A node agent joins, and a separate local process gets its SVID with no secret at all.
async fn agent_demo(
    steps: &mut Steps,
    data: &Path,
    url: &str,
    admin: AdminClient,
) -> anyhow::Result<tessera_agent::Running> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")?.uid();
    let files = data.join("identity");
    let mesh = format!(
        "[[workload]]\nid = \"spiffe://example.org/dev/you\"\nowner = \"you\"\npurpose = \"Any process of unix user {uid} on this machine\"\nenvironment = \"dev\"\nselectors = [\"unix:uid:{uid}\"]\nx509_ttl = \"1h\"\n"
    );
    std::fs::write(files.join("agent.toml"), &mesh)?;
    let state = tessera_core::manifest::load(&files.join("agent.toml"))?;
    admin
        .post(
            "/v1/apply",
            json!({"state": state, "dry_run": false, "prune": false}),
        )
        .await?;
    println!("\n6. a node agent joins with a one-time token; a local process asks it who it is");
    let token = admin
        .post(
            "/v1/agents/tokens",
            json!({"agent_id": "dev-node", "ttl": 600}),
        )
        .await?;
    let token = field(&token, "token")
        .as_str()
        .ok_or_else(|| anyhow!("no join token returned"))?;
    let socket = data.join("agent.sock");
    let running = tessera_agent::run(tessera_agent::AgentConfig {
        server: url.to_owned(),
        join_token: Some(token.to_owned()),
        socket: socket.clone(),
        trust_bundle: None,
        imds_listen: None,
        data_dir: data.join("agent"),
        require_logged: false,
        log_key: None,
        container_runtime: None,
        container_env: Vec::new(),
        k8s_token_file: None,
        kubelet: None,
    })
    .await?;
    steps.ok(&format!(
        "agent {} serves the Workload API on {}",
        running.agent.spiffe_id(),
        socket.display()
    ));
    println!(
        "        SPIFFE_ENDPOINT_SOCKET=unix://{} tessera svid fetch",
        socket.display()
    );
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["svid", "fetch", "--output", "json", "--socket"])
        .arg(&socket)
        .output()
        .await?;
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let first = got.get(0).unwrap_or(&Value::Null);
    let id = field(first, "spiffe_id").as_str().unwrap_or_default();
    if out.status.success() && id == "spiffe://example.org/dev/you" {
        steps.ok(&format!(
            "process {} (uid {uid}) received the X.509-SVID of {id}, valid until {}",
            "`tessera svid fetch`",
            crate::render::time(field(first, "not_after"))
        ));
    } else {
        steps.fail(&format!(
            "the local process got no SVID: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // The agent signs an SVID for every registration it may serve, this one among them.
    let tail = admin.get("/v1/audit/tail?n=10").await?;
    let mine: Vec<Value> = tail
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            field(r, "kind") == "svid.issued"
                && field(r, "subject") == "spiffe://example.org/dev/you"
        })
        .collect();
    print!(
        "{}",
        crate::render::audit(&Value::Array(mine))
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    );
    Ok(running)
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
    let n = field(&applied, "changes").as_array().map_or(0, Vec::len);
    println!("1. apply {}", files.join("mesh.toml").display());
    for c in field(&applied, "changes")
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
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
    let secret = field(&secret, "secret")
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
    let token = field(&body, "access_token")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if status.is_success() && !token.is_empty() {
        steps.ok(&format!(
            "token issued, expires in {} s",
            field(&body, "expires_in")
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
    if status.as_u16() == 400 && field(&body, "error") == "invalid_target" {
        steps.ok(&format!(
            "denied: {} ({})",
            field(&body, "error").as_str().unwrap_or_default(),
            field(&body, "error_description")
                .as_str()
                .unwrap_or_default()
        ));
    } else {
        steps.fail(&format!("expected invalid_target, got {status} {body}"));
    }

    println!("\n   tessera explain --from …/order-processor --to …/payments-api");
    let x: tessera_policy::Explanation = admin
        .send(
            "/v1/explain",
            &serde_json::json!({
                "from": "spiffe://example.org/prod/order-processor",
                "to": "spiffe://example.org/prod/payments-api",
            }),
        )
        .await?;
    print!(
        "{}",
        crate::render::explanation(&x)
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    );
    let names_gap = x.missing.iter().any(|t| t.starts_with("no grant from"));
    if !x.decision.allowed && names_gap {
        steps.ok("the denial is explained: the grant that is missing");
    } else {
        steps.fail(&format!("explain did not name the missing grant: {x:?}"));
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
        .map(|a| a.iter().filter_map(|r| field(r, "kind").as_str()).collect())
        .unwrap_or_default();
    if kinds.contains(&"token.issued") && kinds.last() == Some(&"token.denied") {
        steps.ok("the issuance and the denial are in the audit trail");
    } else {
        steps.fail(&format!("audit trail does not show both calls: {kinds:?}"));
    }
    let verified = admin.get("/v1/audit/verify").await?;
    if *field(&verified, "ok") == Value::Bool(true) {
        steps.ok(&format!(
            "audit chain intact ({} records)",
            field(&verified, "records")
        ));
    } else {
        steps.fail(&format!("audit chain: {}", field(&verified, "error")));
    }
    Ok(())
}
