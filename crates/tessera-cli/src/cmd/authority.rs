//! The authority's commands: `server`, `apply`, `get`, `describe`, `federation test`,
//! `client secret`, `revoke`, `audit`, `keys`, and `verify` (a token checked offline against an
//! issuer's JWKS).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use tessera_core::admin_api::{
    AgentSummary, ApplyRequest, ApplyResponse, ClientSecretRequest, ClientSecretResponse,
    ClientSummary, FederationSummary, FederationTestRequest, FederationTestResponse, GrantSummary,
    KeyInfo, KeyRotateRequest, KeyRotated, KeyStatus, RevokeRequest, Revoked, TokenRevoked,
    TrustSummary, WorkloadSummary,
};
use tessera_server::{ConfigFile, ServerConfig, TrustDomainConfig};
use tessera_verify::{JwksCache, KeySet, Keys, Verifier, VerifierConfig};

use crate::cli::{
    ApplyArgs, ClientCommand, FederationCommand, KeysCommand, Kind, LogFormat, Output, ServerArgs,
    Target, VerifyArgs,
};
use crate::render;
use crate::support::{
    admin, form_query, init_logs, kek_from_env, parse_duration, print, wait_for_signal,
};

/// `tessera get KIND`.
pub(crate) async fn get(kind: String, target: Target) -> anyhow::Result<u8> {
    let admin = admin(&target)?;
    let path = format!("/v1/get/{kind}");
    match kind.as_str() {
        "workloads" => {
            let rows: Vec<WorkloadSummary> = admin.fetch(&path).await?;
            print(&target, &rows, || render::workloads(&rows));
        }
        "clients" => {
            let rows: Vec<ClientSummary> = admin.fetch(&path).await?;
            print(&target, &rows, || render::clients(&rows));
        }
        "grants" => {
            let rows: Vec<GrantSummary> = admin.fetch(&path).await?;
            print(&target, &rows, || render::grants(&rows));
        }
        "trusts" => {
            let rows: Vec<TrustSummary> = admin.fetch(&path).await?;
            print(&target, &rows, || render::trusts(&rows));
        }
        "agents" => {
            let rows: Vec<AgentSummary> = admin.fetch(&path).await?;
            print(&target, &rows, || render::agents(&rows));
        }
        "federations" => {
            let rows: Vec<FederationSummary> = admin.fetch(&path).await?;
            print(&target, &rows, || render::federations(&rows));
        }
        // The server names what can be listed.
        _ => {
            admin.get(&path).await?;
        }
    }
    Ok(0)
}

/// `tessera describe workload|trust ID`.
pub(crate) async fn describe(kind: String, id: String, target: Target) -> anyhow::Result<u8> {
    if kind == "federation" {
        let q = form_query("trust_domain", &id);
        let f: FederationSummary = admin(&target)?
            .fetch(&format!("/v1/describe/federation?{q}"))
            .await?;
        print(&target, &f, || render::describe_federation(&f));
        return Ok(0);
    }
    if kind == "trust" {
        let q = form_query("name", &id);
        let v = admin(&target)?
            .get(&format!("/v1/describe/trust?{q}"))
            .await?;
        print(&target, &v, || render::describe_trust(&v));
        return Ok(0);
    }
    let q = form_query("id", &id);
    let v = admin(&target)?
        .get(&format!("/v1/describe/workload?{q}"))
        .await?;
    print(&target, &v, || render::describe(&v));
    Ok(0)
}

/// `tessera federation test`: which rule an outside token matches (exit 1 when none does).
pub(crate) async fn federation(command: FederationCommand) -> anyhow::Result<u8> {
    let FederationCommand::Test {
        trust,
        token,
        target,
    } = command;
    let token = if token == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s.trim().to_owned()
    } else {
        token
    };
    let v: FederationTestResponse = admin(&target)?
        .send(
            "/v1/federation/test",
            &FederationTestRequest { trust, token },
        )
        .await?;
    print(&target, &v, || {
        if v.matched {
            format!(
                "matches trust `{}` rule {}: becomes {} (outside subject `{}`)\n",
                v.trust.as_deref().unwrap_or_default(),
                v.rule.unwrap_or_default(),
                v.workload
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                v.outside_sub.as_deref().unwrap_or_default()
            )
        } else {
            format!("no match: {}\n", v.reason.as_deref().unwrap_or_default())
        }
    });
    Ok(if v.matched { 0 } else { 1 })
}

/// `tessera client secret ID`: a new secret, shown once.
pub(crate) async fn client(command: ClientCommand) -> anyhow::Result<u8> {
    let ClientCommand::Secret {
        client_id,
        ttl,
        target,
    } = command;
    let ttl_secs = ttl
        .map(|t| parse_duration(&t))
        .transpose()?
        .map(|d| d.as_secs());
    let v: ClientSecretResponse = admin(&target)?
        .send(
            "/v1/client/secret",
            &ClientSecretRequest {
                client_id: client_id.clone(),
                ttl_secs,
            },
        )
        .await?;
    // The secret alone on the first line, so scripts can take it with `head -1`.
    println!("{}", v.secret);
    if target.output == Output::Json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        let exp = v
            .expires_at
            .map_or_else(|| "never".into(), |t| render::at(Some(t)));
        eprintln!("client `{client_id}`: new secret issued (expires: {exp}); it is shown once and stored only as a keyed hash");
    }
    Ok(0)
}

/// `tessera revoke workload|token|agent ID`.
pub(crate) async fn revoke(kind: String, id: String, target: Target) -> anyhow::Result<u8> {
    let admin = admin(&target)?;
    let text = || format!("revoked {kind} `{id}`\n");
    if kind == "token" {
        let req = RevokeRequest {
            jti: Some(id.clone()),
            ..RevokeRequest::default()
        };
        let v: TokenRevoked = admin.send("/v1/revoke/token", &req).await?;
        print(&target, &v, text);
    } else {
        let path = if kind == "workload" {
            "/v1/revoke/workload"
        } else {
            "/v1/revoke/agent"
        };
        let req = RevokeRequest {
            id: Some(id.clone()),
            ..RevokeRequest::default()
        };
        let v: Revoked = admin.send(path, &req).await?;
        print(&target, &v, || {
            let mut out = text();
            if let Some(d) = &v.dependents {
                if d.callers.is_empty() && d.targets.is_empty() {
                    out.push_str("no workload depended on it by a grant\n");
                }
                for c in &d.callers {
                    out.push_str(&format!("  caller that loses access: {c}\n"));
                }
                for t in &d.targets {
                    out.push_str(&format!("  target it could call: {t}\n"));
                }
            }
            out
        });
    }
    Ok(0)
}

/// `--require-logged`: `None` when the issuer's log proves the token's issuance, else the exit
/// code after saying why.
async fn require_logged(
    a: &VerifyArgs,
    token: &str,
    claims: &serde_json::Map<String, Value>,
) -> anyhow::Result<Option<u8>> {
    use tessera_verify::logged::{check_logged, fetch_log_key, Credential, LoggedError};
    let iss = a
        .issuer
        .as_deref()
        .ok_or_else(|| anyhow!("--require-logged needs --issuer (the log is the issuer's)"))?;
    let client = reqwest::Client::new();
    let log = match &a.log_key {
        Some(k) => tessera_log::NoteVerifier::parse(k).map_err(|e| anyhow!("--log-key: {e}"))?,
        None => fetch_log_key(&client, iss)
            .await
            .map_err(|e| anyhow!("cannot fetch the log key from `{iss}`: {e}"))?,
    };
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match check_logged(
        &client,
        iss,
        &log,
        Credential::Token {
            jti,
            compact: token,
        },
    )
    .await
    {
        Ok(_) => Ok(None),
        Err(LoggedError::Unavailable(e)) => {
            bail!("cannot ask the issuer's log whether the token was logged: {e}")
        }
        Err(e) => {
            eprintln!("tessera: token refused: its issuance is not in the issuer's log: {e}");
            Ok(Some(1))
        }
    }
}

/// `tessera keys list|rotate`.
pub(crate) async fn keys(command: KeysCommand) -> anyhow::Result<u8> {
    match command {
        KeysCommand::Rotate {
            trust_domain,
            target,
        } => {
            let v: Vec<KeyRotated> = admin(&target)?
                .send("/v1/keys/rotate", &KeyRotateRequest { trust_domain })
                .await?;
            print(&target, &v, || render::key_rotation(&v));
        }
        KeysCommand::List { target } => {
            let v: Vec<KeyInfo> = admin(&target)?.fetch("/v1/keys").await?;
            print(&target, &v, || render::keys(&v));
        }
        KeysCommand::Status { target } => {
            let v: Vec<KeyStatus> = admin(&target)?.fetch("/v1/keys/status").await?;
            print(&target, &v, || render::key_status(&v));
        }
    }
    Ok(0)
}

/// `tessera server`.
pub(crate) async fn server(a: ServerArgs) -> anyhow::Result<u8> {
    let file = match &a.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let _tracing = init_logs(
        a.log_format,
        "info,sqlx=warn",
        "tessera-server",
        file.otlp_endpoint.as_deref(),
    )?;
    let data = a
        .data
        .clone()
        .or(file.data.clone())
        .unwrap_or_else(|| PathBuf::from("./.tessera"));
    let mut cfg = ServerConfig::new(data);
    cfg.dev = a.dev;
    cfg.database_url = a.database_url.clone().or(file.database_url.clone());
    if let Some(l) = a.listen.or(file.listen) {
        cfg.listen = l;
    }
    cfg.public_url = a.public_url.clone().or(file.public_url.clone());
    cfg.tls_cert = a.tls_cert.clone().or(file.tls_cert.clone());
    cfg.tls_key = a.tls_key.clone().or(file.tls_key.clone());
    if let Some(alg) = file.key_alg()? {
        cfg.key_alg = alg;
    }
    if let Some(t) = file.jwks_max_age {
        cfg.jwks_max_age = t.0;
    }
    cfg.key_publish_ahead = match &a.key_publish_ahead {
        Some(s) => Some(parse_duration(s)?),
        None => file.key_publish_ahead.map(|t| t.0),
    };
    cfg.key_rotation_period = file.key_rotation_period.map(|t| t.0);
    if let Some(t) = file.ca_ttl {
        cfg.ca_ttl = t.0;
    }
    if let Some(t) = file.ca_publish_ahead {
        cfg.ca_publish_ahead = t.0;
    }
    cfg.admin_uids = file.admin_uids.clone();
    cfg.pkcs11 = file.pkcs11.clone();
    cfg.ca_root = file.ca_root;
    cfg.console_oidc = file.console.as_ref().and_then(|c| c.oidc.clone());
    cfg.identity_dir = file.console.as_ref().and_then(|c| c.identity_dir.clone());
    cfg.poll_interval = parse_duration(&a.poll_interval)?;
    let hooks = if a.notify_webhooks.is_empty() {
        &file.notify_webhooks
    } else {
        &a.notify_webhooks
    };
    cfg.notify_webhooks = hooks
        .iter()
        .map(|u| reqwest::Url::parse(u).map_err(|e| anyhow!("--notify-webhook `{u}`: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let sinks = if a.checkpoint_sinks.is_empty() {
        &file.checkpoint_sinks
    } else {
        &a.checkpoint_sinks
    };
    cfg.checkpoint_sinks = sinks
        .iter()
        .map(|s| tessera_server::CheckpointSink::parse(s).map_err(|e| anyhow!("{e}")))
        .collect::<anyhow::Result<_>>()?;
    let witnesses = if a.log_witnesses.is_empty() {
        &file.log_witnesses
    } else {
        &a.log_witnesses
    };
    cfg.witnesses = witnesses
        .iter()
        .map(|s| tessera_server::WitnessConfig::parse(s).map_err(|e| anyhow!("{e}")))
        .collect::<anyhow::Result<_>>()?;
    cfg.trust_domains = if a.trust_domains.is_empty() {
        file.trust_domains
            .into_iter()
            .map(TrustDomainConfig::from)
            .collect()
    } else {
        a.trust_domains
            .iter()
            .map(|t| {
                Ok(TrustDomainConfig {
                    name: tessera_core::TrustDomain::parse(t)
                        .map_err(|e| anyhow!("--trust-domain: {e}"))?,
                    environment: None,
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let running = tessera_server::start(cfg, kek_from_env()).await?;
    if let Some(ca) = &running.tls_ca {
        eprintln!(
            "tessera: the API's TLS certificate is signed by `{}`; give that file to clients",
            ca.display()
        );
    }
    let stop = wait_for_signal();
    println!("tessera: ready url={}", running.url);
    let _ = std::io::stdout().flush();
    stop.await;
    running.shutdown();
    running.wait().await;
    Ok(0)
}

/// `tessera apply -f PATH`.
pub(crate) async fn apply(a: ApplyArgs) -> anyhow::Result<u8> {
    let state = tessera_core::manifest::load(&a.path)?;
    for trust in &state.trusts {
        for map in &trust.map {
            for (claim, want) in &map.claims {
                let Some(pattern) = want.as_str().filter(|p| p.contains('*')) else {
                    continue;
                };
                if let Some(w) = tessera_core::glob::partial_segment_warning(
                    pattern,
                    tessera_core::glob::CLAIM_SEPARATORS,
                ) {
                    eprintln!("warning: trust `{}`, claim `{claim}`: {w}", trust.name);
                }
            }
        }
    }
    let req = ApplyRequest {
        state,
        dry_run: a.dry_run,
        prune: a.prune,
        shadow: a.shadow,
    };
    let v: ApplyResponse = admin(&a.target)?.send("/v1/apply", &req).await?;
    print(&a.target, &v, || {
        let mut o = String::new();
        for c in &v.changes {
            o.push_str(c);
            o.push('\n');
        }
        if v.changes.is_empty() {
            o.push_str("no changes\n");
        } else if v.applied {
            o.push_str(&format!("applied {} change(s)\n", v.changes.len()));
        } else {
            o.push_str(&format!(
                "dry run: {} change(s) not applied\n",
                v.changes.len()
            ));
        }
        o
    });
    Ok(0)
}

/// RFC 8414 §3: the metadata URL of an issuer, with `/.well-known/...` inserted before its path.
fn metadata_url(issuer: &str) -> anyhow::Result<reqwest::Url> {
    let url =
        reqwest::Url::parse(issuer).with_context(|| format!("issuer `{issuer}` is not a URL"))?;
    let path = url.path().trim_end_matches('/').to_owned();
    let mut m = url;
    m.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    Ok(m)
}

/// `tessera verify TOKEN` (exit 1 when refused).
pub(crate) async fn verify(a: VerifyArgs) -> anyhow::Result<u8> {
    let _tracing = init_logs(LogFormat::Text, "error", "tessera-verify", None)?;
    let token = if a.token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        s.trim().to_owned()
    } else {
        a.token.trim().to_owned()
    };
    let leeway = parse_duration(&a.leeway)?;
    if leeway > Duration::from_secs(300) {
        bail!("--leeway above 5m defeats expiry; keep it small");
    }
    let mut config = match a.kind {
        Kind::AccessToken => {
            let iss = a
                .issuer
                .as_deref()
                .ok_or_else(|| anyhow!("--issuer is required to verify an access token"))?;
            VerifierConfig::access_token(iss, &a.audience)?
        }
        Kind::JwtSvid => {
            let mut c = VerifierConfig::jwt_svid(&a.audience)?;
            c.issuer = a.issuer.clone();
            c
        }
    };
    config.leeway = leeway;
    let keys: Keys = match &a.jwks {
        Some(j) if j.starts_with("http://") || j.starts_with("https://") => {
            JwksCache::new(reqwest::Url::parse(j).with_context(|| format!("`{j}` is not a URL"))?)
                .into()
        }
        Some(path) => {
            let text = std::fs::read(path).with_context(|| format!("cannot read `{path}`"))?;
            KeySet::from_jwks(&text)
                .with_context(|| format!("`{path}`"))?
                .into()
        }
        None => {
            let iss = a
                .issuer
                .as_deref()
                .ok_or_else(|| anyhow!("give --jwks, or --issuer to discover the keys"))?;
            let meta_url = metadata_url(iss)?;
            let meta: Value = reqwest::get(meta_url.clone())
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("fetching `{meta_url}`"))?
                .json()
                .await
                .with_context(|| format!("`{meta_url}` is not JSON"))?;
            let jwks = meta
                .get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("`{meta_url}` names no jwks_uri"))?;
            JwksCache::new(reqwest::Url::parse(jwks)?).into()
        }
    };
    let verifier = Verifier::new(config, keys);
    // One shot: the issuer's revocation state now (revoked tokens, revoked workloads).
    match (&a.issuer, a.no_revocation_check) {
        (_, true) => {}
        (Some(iss), false) => {
            let url = reqwest::Url::parse(&format!("{}/revocations", iss.trim_end_matches('/')))
                .with_context(|| format!("--issuer `{iss}` is not a URL"))?;
            let list = tessera_verify::fetch_revocations(&reqwest::Client::new(), &url)
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot check revocation at `{url}`: {e} (--no-revocation-check skips it)"
                    )
                })?;
            verifier.set_revocations(list);
        }
        (None, false) => eprintln!(
            "tessera: not checked for revocation: give --issuer (or --no-revocation-check)"
        ),
    }
    match verifier.verify(&token).await {
        Ok(v) => {
            for s in &a.scope {
                if !v.has_scope(s) {
                    eprintln!("tessera: token refused: it does not carry scope `{s}`");
                    return Ok(1);
                }
            }
            if a.require_logged {
                if let Some(code) = require_logged(&a, &token, &v.claims).await? {
                    return Ok(code);
                }
            }
            println!("{}", serde_json::to_string_pretty(&v.claims)?);
            Ok(0)
        }
        Err(tessera_verify::VerifyError::KeysUnavailable(e)) => {
            bail!("the issuer's keys are not available: {e}")
        }
        Err(e) => {
            eprintln!("tessera: token refused: {e}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_that_begins_with_a_hyphen_is_an_id_not_a_flag() {
        use clap::Parser;
        let cli =
            crate::cli::Cli::try_parse_from(["tessera", "revoke", "token", "-5abc_Z"]).unwrap();
        match cli.command {
            crate::cli::Command::Revoke { kind, id, .. } => {
                assert_eq!((kind.as_str(), id.as_str()), ("token", "-5abc_Z"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metadata_url_inserts_well_known() {
        assert_eq!(
            metadata_url("https://a.example/").unwrap().as_str(),
            "https://a.example/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:8/example.org")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8/.well-known/oauth-authorization-server/example.org"
        );
    }
}
