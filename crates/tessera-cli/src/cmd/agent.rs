//! `tessera agent`, `tessera agent token create`, `tessera ca ...` and `tessera svid fetch`.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tessera_agent::proto::{JwtsvidRequest, X509svidRequest};
use tessera_agent::workload::{connect, request};
use tessera_agent::AgentConfig;
use tessera_core::admin_api::{
    CaCsr, CaCsrRequest, CaInfo, CaInstallRequest, CaRotateRequest, CaRotated, JoinTokenRequest,
    JoinTokenResponse,
};

use tessera_ca::pem;

use crate::cli::{AgentArgs, AgentCommand, AgentTokenCommand, CaCommand, Output};
use crate::render;
use crate::support::{admin, init_logs, parse_duration, print, serve_admin, wait_for_signal};

pub(crate) async fn run(a: AgentArgs) -> anyhow::Result<u8> {
    if let Some(AgentCommand::Token {
        command:
            AgentTokenCommand::Create {
                ttl,
                trust_domain,
                agent_id,
                target,
            },
    }) = a.command
    {
        let ttl = i64::try_from(parse_duration(&ttl)?.as_secs()).unwrap_or(i64::MAX);
        let req = JoinTokenRequest {
            trust_domain,
            ttl: Some(ttl),
            agent_id,
        };
        let v: JoinTokenResponse = admin(&target)?.send("/v1/agents/tokens", &req).await?;
        // The token alone on the first line, whatever the output format, so scripts can read it.
        println!("{}", v.token);
        print(&target, &v, || {
            format!(
                "agent `{}` in `{}` may join until {} (single use)\n",
                v.agent_id,
                v.trust_domain,
                render::at(Some(v.expires_at))
            )
        });
        return Ok(0);
    }
    if let Some(AgentCommand::Attest { pid, data, output }) = a.command {
        return attest(pid, &data, output).await;
    }
    let _tracing = init_logs(a.log_format, "info", "tessera-agent", None)?;
    let server = a
        .server
        .ok_or_else(|| anyhow!("--server URL is required to run the agent"))?;
    let socket = a
        .socket
        .ok_or_else(|| anyhow!("--socket PATH is required to run the agent"))?;
    let config = AgentConfig {
        server,
        join_token: a.join_token,
        socket,
        trust_bundle: a.trust_bundle,
        imds_listen: a.imds_listen,
        data_dir: a.data.clone(),
        require_logged: a.require_logged,
        log_key: a.log_key,
        container_runtime: a.container_runtime,
        container_env: a.container_env,
        k8s_token_file: a.k8s_token_file,
        kubelet: a.kubelet.map(|url| tessera_agent::kubelet::KubeletConfig {
            url,
            ca_file: a.kubelet_ca,
            token_file: a.kubelet_token_file,
            danger_skip_verify: a.danger_kubelet_skip_verify,
        }),
    };
    let running = tessera_agent::run(config).await?;
    let mut line = format!("tessera: agent ready socket={}", running.socket.display());
    if let Some(u) = &running.imds_url {
        line.push_str(&format!(" imds={u}"));
    }
    if let Some(addr) = a.admin_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = tessera_agent::metrics::AgentMetrics::register(&mut registry);
        tokio::spawn(metrics.keep_current(running.agent.clone()));
        let url = serve_admin(addr, registry, axum::Router::new()).await?;
        line.push_str(&format!(" admin={url}"));
    }
    let stop = wait_for_signal();
    println!("{line}");
    let _ = std::io::stdout().flush();
    stop.await;
    running.abort();
    let _ = std::fs::remove_file(&running.socket);
    let _ = std::fs::remove_file(tessera_agent::admin::socket_path(&a.data));
    Ok(0)
}

/// `tessera agent attest --pid PID`: asks the running agent.
async fn attest(pid: i32, data: &Path, output: Output) -> anyhow::Result<u8> {
    let socket = tessera_agent::admin::socket_path(data);
    if !socket.exists() {
        bail!(
            "no agent is running on this data folder (no admin socket at `{}`); pass --data",
            socket.display()
        );
    }
    let v = crate::admin_client::AdminClient::at(socket)
        .fetch::<tessera_agent::admin::AttestReport>(&format!("/v1/attest?pid={pid}"))
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render::attest_report(&v));
    }
    Ok(if v.matches.is_empty() { 1 } else { 0 })
}

pub(crate) async fn ca(command: CaCommand) -> anyhow::Result<u8> {
    match command {
        CaCommand::Rotate {
            trust_domain,
            activate_in,
            target,
        } => {
            let activate_in = activate_in
                .map(|s| parse_duration(&s).map(|d| d.as_secs()))
                .transpose()?;
            let req = CaRotateRequest {
                trust_domain,
                activate_in: activate_in.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            };
            let v: Vec<CaRotated> = admin(&target)?.send("/v1/ca/rotate", &req).await?;
            print(&target, &v, || render::ca_rotation(&v));
        }
        CaCommand::List { target } => {
            let v: Vec<CaInfo> = admin(&target)?.fetch("/v1/ca").await?;
            print(&target, &v, || render::cas(&v));
        }
        CaCommand::Csr {
            trust_domain,
            target,
        } => {
            let v: CaCsr = admin(&target)?
                .send("/v1/ca/csr", &CaCsrRequest { trust_domain })
                .await?;
            print(&target, &v, || v.csr_pem.clone());
        }
        CaCommand::Install {
            trust_domain,
            cert,
            activate_in,
            target,
        } => {
            let chain_pem = std::fs::read_to_string(&cert)
                .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", cert.display()))?;
            let activate_in = activate_in
                .map(|s| parse_duration(&s).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
                .transpose()?;
            let req = CaInstallRequest {
                trust_domain,
                chain_pem,
                activate_in,
            };
            let v: CaRotated = admin(&target)?.send("/v1/ca/install", &req).await?;
            let rows = vec![v];
            print(&target, &rows, || render::ca_rotation(&rows));
        }
        CaCommand::Root { target } => {
            let v: serde_json::Value = admin(&target)?.get("/v1/ca/root").await?;
            print(&target, &v, || {
                v.get("pem")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            });
        }
    }
    Ok(0)
}

/// Splits concatenated DER certificates.
fn split_ders(bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    Ok(tessera_ca::split_certificates(bytes)?
        .into_iter()
        .map(|c| c.to_vec())
        .collect())
}

pub(crate) async fn fetch(
    socket: &str,
    audience: &[String],
    write: Option<&Path>,
    id: Option<&str>,
    output: Output,
) -> anyhow::Result<u8> {
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    let mut client = connect(Path::new(path)).await?;
    if !audience.is_empty() {
        let resp = client
            .fetch_jwtsvid(request(JwtsvidRequest {
                audience: audience.to_vec(),
                // Empty asks for one JWT-SVID per identity the process has.
                spiffe_id: id.unwrap_or_default().to_owned(),
            }))
            .await
            .map_err(|s| anyhow!("{}", s.message()))?
            .into_inner();
        let v: Vec<Value> = resp
            .svids
            .iter()
            .map(|s| json!({"spiffe_id": s.spiffe_id, "token": s.svid}))
            .collect();
        match output {
            Output::Json => println!("{}", json!(v)),
            Output::Text => {
                for s in resp.svids {
                    println!("{}", s.svid);
                }
            }
        }
        return Ok(0);
    }
    let mut stream = client
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| anyhow!("{}", s.message()))?
        .ok_or_else(|| anyhow!("the Workload API closed the stream"))?;
    let mut rows = Vec::new();
    for s in &first.svids {
        let chain = split_ders(&s.x509_svid)?;
        let leaf = chain.first().context("an SVID without a certificate")?;
        let (nb, na) = tessera_ca::validity(leaf).unwrap_or((0, 0));
        rows.push(SvidRow {
            spiffe_id: s.spiffe_id.clone(),
            not_before: nb,
            not_after: na,
        });
    }
    if let Some(dir) = write {
        let chosen = match id {
            Some(id) => first.svids.iter().find(|s| s.spiffe_id == id),
            None => first.svids.first(),
        };
        let Some(s) = chosen else {
            bail!(
                "no SVID to write{}",
                id.map(|i| format!(" for `{i}`")).unwrap_or_default()
            );
        };
        std::fs::create_dir_all(dir)?;
        let chain: String = split_ders(&s.x509_svid)?
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect();
        let bundle: String = split_ders(&s.bundle)?
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect();
        std::fs::write(dir.join("svid.pem"), chain)?;
        std::fs::write(dir.join("bundle.pem"), bundle)?;
        let key = dir.join("svid.key");
        tessera_core::private_file::write_private(
            &key,
            pem("PRIVATE KEY", &s.x509_svid_key).as_bytes(),
        )
        .with_context(|| format!("cannot write `{}`", key.display()))?;
    }
    match output {
        Output::Json => println!("{}", json!(rows)),
        Output::Text => {
            for r in rows {
                println!(
                    "{}\tvalid until {}",
                    r.spiffe_id,
                    render::at(Some(r.not_after))
                );
            }
        }
    }
    Ok(0)
}

/// One X.509-SVID as `svid fetch` prints it.
#[derive(Debug, serde::Serialize)]
struct SvidRow {
    spiffe_id: String,
    not_before: i64,
    not_after: i64,
}
