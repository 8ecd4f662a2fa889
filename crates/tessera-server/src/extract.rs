//! Axum extractors: who is calling, and which issuer a request addressed. Each asks
//! `domain::caller` (or `App`) and answers a refusal through `error.rs`, so a handler that takes
//! one runs only for a caller that proved itself.

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header;
use axum::http::request::Parts;
use tessera_core::SpiffeId;

use crate::app::{App, Issuer};
use crate::domain::caller::{self, Actor, Agent, Reader};
use crate::error::ApiError;
use crate::tls::{PeerCertificates, SourceIp};

/// The `Authorization` header; one that is not text counts as present and wrong (never as
/// absent, which would fall through to another way of proving identity).
fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""))
}

/// A workload calling a Tessera workload API with a token: a Tessera access token for the
/// authority, or its JWT-SVID for an issuer of this authority.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadCaller(pub SpiffeId);

impl FromRequestParts<Arc<App>> for WorkloadCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let snap = app.snapshot();
        Ok(Self(caller::workload_caller(
            app,
            &snap,
            authorization(parts),
        )?))
    }
}

/// A workload calling an API that also accepts its X.509-SVID over mTLS (the vault, database
/// credentials).
#[derive(Debug, Clone)]
pub(crate) struct SecretReader(pub Reader);

impl FromRequestParts<Arc<App>> for SecretReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let snap = app.snapshot();
        let reader = caller::reader(
            app,
            &snap,
            authorization(parts),
            parts.extensions.get::<PeerCertificates>(),
            parts.extensions.get::<SourceIp>().map(|s| s.0),
        )?;
        Ok(Self(reader))
    }
}

/// A subscriber to the change stream: a node agent by its X.509-SVID, or a workload by its
/// token or X.509-SVID. Its own identity, never a shared credential.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber(pub SpiffeId);

impl FromRequestParts<Arc<App>> for Subscriber {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let snap = app.snapshot();
        let peer = parts.extensions.get::<PeerCertificates>();
        if authorization(parts).is_none() {
            if let Ok(agent) = caller::agent_of(app, &snap, peer) {
                return Ok(Self(agent.spiffe_id));
            }
        }
        let reader = caller::reader(
            app,
            &snap,
            authorization(parts),
            peer,
            parts.extensions.get::<SourceIp>().map(|s| s.0),
        )?;
        Ok(Self(reader.id))
    }
}

/// A node agent, by the X.509-SVID of the connection: known and not revoked.
#[derive(Debug, Clone)]
pub(crate) struct AgentCaller(pub Agent);

impl FromRequestParts<Arc<App>> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let snap = app.snapshot();
        Ok(Self(caller::agent_of(
            app,
            &snap,
            parts.extensions.get::<PeerCertificates>(),
        )?))
    }
}

/// The administrator, as one of the admin guards in `router.rs` recorded it. A request that no
/// guard passed has none and is refused (fail closed).
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(|| ApiError::Client {
                description: "an admin credential is required".into(),
                basic: false,
            })
    }
}

/// The issuer a request addressed: the trust domain in the path (`/{td}/token`), or the first
/// trust domain at the base URL. 404 for a trust domain this authority does not serve.
#[derive(Debug, Clone)]
pub(crate) struct IssuerPath(pub Issuer);

impl FromRequestParts<Arc<App>> for IssuerPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let td = match RawPathParams::from_request_parts(parts, app).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == "td")
                .map(|(_, v)| v.to_owned()),
            Err(_) => None,
        };
        Ok(Self(app.issuer_for(td.as_deref())?))
    }
}

/// The console's session cookie: `__Host-` prefixed (Secure, path `/`, no domain) outside
/// `--dev`, whose plain HTTP cannot carry a Secure cookie.
pub(crate) fn session_cookie_name(app: &App) -> &'static str {
    if app.config.dev {
        "tessera_console"
    } else {
        "__Host-tessera_console"
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A person signed in to the console (their session cookie names a live session). Refused with
/// 401 otherwise.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleSession {
    pub view: crate::app::console::SessionView,
    /// The cookie's value, to end the session.
    pub cookie: String,
}

impl ConsoleSession {
    /// The session of a request's cookie, if any.
    pub(crate) fn of(app: &App, headers: &axum::http::HeaderMap) -> Option<Self> {
        let cookie = cookie_value(headers, session_cookie_name(app))?;
        let view = app.console.sessions.get(&cookie)?;
        Some(Self { view, cookie })
    }
}

impl FromRequestParts<Arc<App>> for ConsoleSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        Self::of(app, &parts.headers).ok_or_else(|| ApiError::Client {
            description: "sign in to the console first".into(),
            basic: false,
        })
    }
}
