//! A managed-identity endpoint on loopback that speaks the Azure Instance Metadata Service
//! protocol (`/metadata/identity/oauth2/token`, api-version 2018-02-01) and the App Service
//! protocol (`/msi/token`, api-version 2019-08-01), so unmodified managed-identity clients get
//! Tessera access tokens. The caller is attested like a Workload API caller, by the process that
//! owns the other end of the TCP connection in the kernel's socket table.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tessera_core::SpiffeId;
use tokio::net::TcpListener;

use crate::attest;
use crate::{Agent, AgentError};

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

pub(crate) async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let app = Router::new()
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/msi/token", get(app_service_token))
        .with_state(Ctx { agent, local });
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    {
        tracing::error!(error = %e, "the managed-identity endpoint stopped");
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
    token(ctx, peer, headers, q, Protocol::Imds, "2018-02-01").await
}

async fn app_service_token(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
    token(ctx, peer, headers, q, Protocol::AppService, "2019-08-01").await
}

async fn token(
    ctx: Ctx,
    peer: SocketAddr,
    headers: HeaderMap,
    q: TokenQuery,
    protocol: Protocol,
    version: &str,
) -> Response {
    // A request relayed by a proxy (SSRF) is refused: the identity is the connecting process's.
    if headers.contains_key("x-forwarded-for") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "requests carrying X-Forwarded-For are refused",
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
    let uptime = attest::uptime();
    let local = ctx.local;
    let agent = ctx.agent.clone();
    let attested = tokio::task::spawn_blocking(move || {
        let p = attest::tcp_peer(peer, local, uptime)?;
        attest::attest(p, agent.digests(), agent.state().want_digest)
    })
    .await;
    let process = match attested {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return error(
                StatusCode::FORBIDDEN,
                "invalid_request",
                &format!("the caller cannot be attested: {e}"),
            )
        }
        // The attestation task itself failed (it does not panic; this is defensive).
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "attestation could not run; try again",
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
