//! `tessera proxy inbound|outbound`: wires the sidecar (identity from the agent, the policy
//! bundle from the authority, metrics) and runs it until a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use axum::routing::get;
use tessera_core::SpiffeId;
use tessera_policy::path::PathCase;
use tessera_proxy::inbound::InboundConfig;
use tessera_proxy::outbound::{OutboundConfig, TokenSource};
use tessera_proxy::{Identity, ProxyMetrics};
use tessera_verify::{
    spawn_feed, Authorizer, AuthzMetrics, BundleSource, FeedMetrics, Freshness, JwksCache,
    RevocationState, Verifier, VerifierConfig, VerifyMetrics,
};

use crate::cli::{ProxyCommand, ProxyCommon};
use crate::support::{init_logs, serve_admin, wait_for_signal};

pub(crate) async fn run(command: ProxyCommand) -> anyhow::Result<u8> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ProxyMetrics::register(&mut registry);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // The change stream's state, for `/readyz`.
    let mut health: Option<RevocationState> = None;
    let format = match &command {
        ProxyCommand::Inbound { common, .. } | ProxyCommand::Outbound { common, .. } => {
            common.log_format
        }
    };
    // Held until the sidecar stops: dropping it flushes and ends the trace export.
    let _tracing = init_logs(format, "info", "tessera-proxy", None)?;
    let (task, listen, common) = match command {
        ProxyCommand::Inbound {
            listen,
            upstream,
            server,
            server_ca,
            sample_allows,
            max_body,
            require_token,
            case_insensitive_paths,
            handshake_timeout,
            upstream_h2,
            revocation_fail_closed,
            common,
        } => {
            let identity = identity(&common, &metrics).await?;
            let me = identity
                .spiffe_id()
                .ok_or_else(|| anyhow!("the agent gave no SVID"))?;
            let (source, base, http) = authority(&server, server_ca.as_deref(), &identity)?;
            let authz_metrics = AuthzMetrics::register(&mut registry);
            let (authz, _log) = Authorizer::new(me.clone())
                .with_metrics(authz_metrics)
                .with_decision_log(source.clone(), sample_allows);
            let authz = authz.with_path_case(if case_insensitive_paths {
                PathCase::Insensitive
            } else {
                PathCase::Sensitive
            });
            authz.spawn_bundle_sync(source.clone());
            let revocations = subscribe(source, revocation_fail_closed, &mut registry);
            health = Some(revocations.clone());
            let listener = bind(listen).await?;
            let listen = listener.local_addr()?;
            let mut cfg = InboundConfig::new(upstream);
            cfg.max_body = max_body;
            cfg.handshake_timeout = handshake_timeout;
            cfg.upstream_h2 = upstream_h2;
            cfg.revocations = revocations.clone();
            if require_token {
                let config =
                    VerifierConfig::access_token(server.trim_end_matches('/'), me.as_str())
                        .map_err(|e| anyhow!("{e}"))?;
                let jwks = JwksCache::with_client(base.join("jwks")?, http.clone());
                cfg.require_token = Some(
                    Verifier::new(config, jwks)
                        .with_revocations(revocations)
                        .with_metrics(VerifyMetrics::register(&mut registry)),
                );
            }
            let (m, stop) = (metrics.clone(), stop.clone());
            let task = tokio::spawn(async move {
                tessera_proxy::inbound::serve(listener, cfg, identity, authz, m, stop).await
            });
            (task, listen, common)
        }
        ProxyCommand::Outbound {
            listen,
            target,
            target_id,
            attach_token,
            server,
            server_ca,
            allow_uid,
            revocation_fail_closed,
            common,
        } => {
            if !listen.ip().is_loopback() {
                bail!("--listen {listen}: the outbound side speaks plain HTTP, so it listens on loopback only");
            }
            let target_id = SpiffeId::parse(&target_id)
                .map_err(|e| anyhow!("--target-id `{target_id}`: {e}"))?;
            let identity = identity(&common, &metrics).await?;
            let listener = bind(listen).await?;
            let listen = listener.local_addr()?;
            let token = match (attach_token, &server) {
                (true, Some(server)) => Some(token_source(server, server_ca.as_deref())?),
                _ => None,
            };
            let revocations = match &server {
                Some(server) => {
                    let (source, _, _) = authority(server, server_ca.as_deref(), &identity)?;
                    let r = subscribe(source, revocation_fail_closed, &mut registry);
                    health = Some(r.clone());
                    r
                }
                None => RevocationState::default(),
            };
            let cfg = OutboundConfig {
                target,
                target_id,
                connect_timeout: std::time::Duration::from_secs(10),
                token,
                allowed_uids: allow_uid,
                revocations,
            };
            let (m, stop) = (metrics.clone(), stop.clone());
            let task = tokio::spawn(async move {
                tessera_proxy::outbound::serve(listener, cfg, identity, m, stop).await
            });
            (task, listen, common)
        }
    };
    let mut line = format!("tessera: proxy ready listen={listen}");
    if let Some(addr) = common.admin_listen {
        let ready = axum::Router::new().route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move { readiness(health.as_ref()) }
            }),
        );
        let url = serve_admin(addr, registry, ready).await?;
        line.push_str(&format!(" admin={url}"));
    }
    let signal = wait_for_signal();
    println!("{line}");
    let _ = std::io::stdout().flush();
    let mut task = task;
    tokio::select! {
        () = signal => {
            let _ = stop_tx.send(true);
            let _ = (&mut task).await;
        }
        r = &mut task => {
            r.map_err(|e| anyhow!("the proxy stopped: {e}"))??;
        }
    }
    Ok(0)
}

/// The authority at `server`, reached with `server_ca` (if given) and authenticated by this
/// sidecar's JWT-SVID: (source for the policy bundle and the change stream, base URL, client).
fn authority(
    server: &str,
    server_ca: Option<&Path>,
    identity: &Arc<Identity>,
) -> anyhow::Result<(BundleSource, reqwest::Url, reqwest::Client)> {
    let mut http = reqwest::Client::builder();
    if let Some(ca) = server_ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read `{}`", ca.display()))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let base: reqwest::Url = format!("{}/", server.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("`{server}` is not a URL"))?;
    let audience = server.trim_end_matches('/').to_owned();
    let for_token = identity.clone();
    let http = http.build()?;
    let source = BundleSource::new(base.clone(), http.clone(), move || {
        let (id, aud) = (for_token.clone(), audience.clone());
        Box::pin(async move { id.jwt_svid(&aud).await.map_err(|e| e.to_string()) })
    });
    Ok((source, base, http))
}

/// A revocation state kept current from the authority's change stream (pushed, within
/// milliseconds; resumed after an outage), its metrics in `registry`.
fn subscribe(
    source: BundleSource,
    fail_closed: Option<std::time::Duration>,
    registry: &mut prometheus_client::registry::Registry,
) -> RevocationState {
    let metrics = FeedMetrics::register(registry);
    let state = match fail_closed {
        Some(max) => RevocationState::fail_closed(max, Some(metrics)),
        None => RevocationState::new(Some(metrics)),
    };
    spawn_feed(source, state.clone());
    state
}

/// 200 while the revocation state is current (or there is none to keep), 503 before its first
/// snapshot and while the change stream is silent.
fn readiness(state: Option<&RevocationState>) -> (axum::http::StatusCode, String) {
    match state.map(RevocationState::freshness) {
        None | Some(Freshness::Fresh) => (axum::http::StatusCode::OK, "ready\n".into()),
        Some(Freshness::Unknown) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "revocation state: no snapshot yet\n".into(),
        ),
        Some(Freshness::Stale) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "revocation state: stale (the change stream is silent); enforcing what is known\n"
                .into(),
        ),
    }
}

/// Keeps `tessera_proxy_svid_expiry_seconds` current.
fn watch_expiry(identity: Arc<Identity>, metrics: ProxyMetrics) {
    tokio::spawn(async move {
        loop {
            if let Some(c) = identity.current() {
                metrics
                    .svid_expiry_seconds
                    .set(c.not_after - tessera_core::now_unix());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

async fn identity(common: &ProxyCommon, metrics: &ProxyMetrics) -> anyhow::Result<Arc<Identity>> {
    let socket = common
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&common.socket);
    let want = common
        .id
        .as_deref()
        .map(|s| SpiffeId::parse(s).map_err(|e| anyhow!("--id `{s}`: {e}")))
        .transpose()?;
    let identity = Identity::start(Path::new(socket), want).await?;
    watch_expiry(identity.clone(), metrics.clone());
    Ok(identity)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on `{addr}`"))
}

/// The authority for the outbound side's tokens: an `https://` URL and the CA to trust it by.
fn token_source(server: &str, ca: Option<&Path>) -> anyhow::Result<TokenSource> {
    let url: reqwest::Url = format!("{}/", server.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("--server `{server}` is not a URL"))?;
    if url.scheme() != "https" {
        bail!("--server `{server}`: tokens are asked for over mutual TLS, so it must be https://");
    }
    let Some(ca) = ca else {
        bail!("--attach-token needs --server-ca: the CA the authority's TLS certificate chains to");
    };
    let pem = std::fs::read(ca).with_context(|| format!("cannot read `{}`", ca.display()))?;
    TokenSource::from_pem(url, &pem).map_err(|e| anyhow!("`{}`: {e}", ca.display()))
}
