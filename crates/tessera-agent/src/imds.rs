//! A managed-identity endpoint on loopback that speaks the Azure Instance Metadata Service
//! protocol (`/metadata/identity/oauth2/token`, api-version 2018-02-01) and the App Service
//! protocol (`/msi/token`, api-version 2019-08-01), so unmodified managed-identity clients get
//! Tessera access tokens. The caller is attested like a Workload API caller, by the process that
//! owns the other end of the TCP connection in the kernel's socket table.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tessera_core::SpiffeId;
use tokio::net::TcpListener;

use crate::attest::{self, Binding};
use crate::{Agent, AgentError, CallerRefusal};

/// The connection's peer as bound at accept, or why it could not be.
#[derive(Clone)]
struct Bound(Arc<Result<Binding, String>>);

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    if !addr.ip().is_loopback() {
        return Err(AgentError::Config(format!(
            "--imds-listen must be a loopback address, not `{addr}`: the endpoint hands out tokens to local processes"
        )));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config(format!("cannot listen on `{addr}`: {e}")))
}

#[derive(Clone)]
struct Ctx {
    agent: Arc<Agent>,
    local: SocketAddr,
}

/// Serves the endpoint: every connection admitted by the listener's gate and bound to the
/// process at its other end when it is accepted.
pub(crate) async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let app = Router::new()
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/msi/token", get(app_service_token))
        .with_state(Ctx { agent, local });
    let gate = tessera_listen::Gate::new(tessera_listen::Limits::from_nofile(0.25));
    let mut backoff = tessera_listen::Backoff::new("managed identity");
    loop {
        let Some((stream, peer)) = backoff.take(listener.accept().await).await else {
            continue;
        };
        // Refused: closed at once (every connection has a request in flight).
        let Ok(ticket) = gate.admit(tessera_listen::Source::Ip(peer.ip())) else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let uptime = attest::uptime();
            let binding = tokio::task::spawn_blocking(move || {
                attest::tcp_peer(peer, local, uptime).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err("attestation could not run".into()));
            let app = app.layer(Extension(Bound(Arc::new(binding))));
            let service = hyper_util::service::TowerToHyperService::new(app);
            tessera_listen::serve_http(stream, service, ticket, std::future::pending()).await;
        });
    }
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
    resource: Option<String>,
    /// Selects one identity when the caller has several (as Azure's user-assigned identities).
    client_id: Option<String>,
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Imds,
    AppService,
}

async fn imds_token(
    State(ctx): State<Ctx>,
    Extension(bound): Extension<Bound>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    // IMDS demands `Metadata: true`, which a forged cross-site or proxied request lacks.
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    token(ctx, bound, headers, q, Protocol::Imds, "2018-02-01").await
}

async fn app_service_token(
    State(ctx): State<Ctx>,
    Extension(bound): Extension<Bound>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if headers
        .get("x-identity-header")
        .is_none_or(|v| v.is_empty())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required header X-IDENTITY-HEADER not specified",
        );
    }
    token(ctx, bound, headers, q, Protocol::AppService, "2019-08-01").await
}

/// Headers only a proxy or a relay adds: a request carrying one was relayed (SSRF), and the
/// identity is the connecting process's, not its client's.
const RELAY_HEADERS: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
    "via",
];

/// The `Host` a local client sends: the listen address, or `localhost` on its port. Any other
/// name is a browser led here by DNS rebinding.
fn host_is_local(headers: &HeaderMap, local: SocketAddr) -> bool {
    let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let port = local.port();
    host == local.to_string()
        || host == format!("localhost:{port}")
        // A client may omit the port only when it is the scheme's default.
        || (port == 80 && (host == local.ip().to_string() || host == "localhost"))
}

async fn token(
    ctx: Ctx,
    bound: Bound,
    headers: HeaderMap,
    q: TokenQuery,
    protocol: Protocol,
    version: &str,
) -> Response {
    if let Some(h) = RELAY_HEADERS.iter().find(|h| headers.contains_key(**h)) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("requests carrying `{h}` are refused: they were relayed"),
        );
    }
    if !host_is_local(&headers, ctx.local) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "the Host header must be `{}` or `localhost:{}`",
                ctx.local,
                ctx.local.port()
            ),
        );
    }
    if q.api_version.as_deref() != Some(version) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("api-version must be {version}"),
        );
    }
    let Some(resource) = q.resource.filter(|r| !r.is_empty() && r.len() <= 512) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "resource must be specified",
        );
    };
    let binding = match bound.0.as_ref() {
        Ok(b) => b.clone(),
        Err(e) => {
            return error(
                StatusCode::FORBIDDEN,
                "invalid_request",
                &format!("the caller cannot be attested: {e}"),
            )
        }
    };
    let process = match ctx.agent.attest_caller(binding, None).await {
        Ok((p, _)) => p,
        Err(CallerRefusal::Refused(why)) => {
            return error(
                StatusCode::FORBIDDEN,
                "invalid_request",
                &format!("the caller cannot be attested: {why}"),
            )
        }
        Err(e @ CallerRefusal::Unavailable) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &e.to_string(),
            )
        }
    };
    let state = ctx.agent.state();
    let mut ids: Vec<SpiffeId> = state
        .matching(&process)
        .map(|r| r.spiffe_id.clone())
        .collect();
    ids.sort();
    if let Some(c) = &q.client_id {
        ids.retain(|id| id.as_str() == c);
    }
    let id = match ids.as_slice() {
        [one] => one.clone(),
        [] => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found: no workload registration matches this process",
            )
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "several identities match this process: pass client_id=<SPIFFE ID>",
            )
        }
    };
    let t = match ctx.agent.access_token(&id, &resource).await {
        Ok(t) => t,
        Err(AgentError::Refused(why)) => {
            return error(StatusCode::BAD_REQUEST, "invalid_resource", &why);
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                &e.to_string(),
            )
        }
    };
    let now = tessera_core::now_unix();
    // IMDS sends every number as a string; clients parse them so.
    let body = match protocol {
        Protocol::Imds => json!({
            "access_token": t.access_token,
            "refresh_token": "",
            "expires_in": (t.expires_at - now).max(0).to_string(),
            "expires_on": t.expires_at.to_string(),
            "ext_expires_in": (t.expires_at - now).max(0).to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": id.to_string(),
        }),
        Protocol::AppService => json!({
            "access_token": t.access_token,
            "expires_on": t.expires_at.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": id.to_string(),
        }),
    };
    (StatusCode::OK, Json(body)).into_response()
}
