//! Every route of the server, every body limit, and both admin guards. The only file that
//! mounts: each feature in `api/` lists its routes, and this file puts them together.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::admin_socket::Peer;
use crate::api;
use crate::app::console::Role;
use crate::app::App;
use crate::domain::caller::{bearer, Actor};
use crate::error::ApiError;
use crate::extract::ConsoleSession;

/// OAuth and discovery requests: a form or nothing.
pub(crate) const MAX_OAUTH_BODY: usize = 64 * 1024;
/// Workload APIs with small JSON bodies (the vault, database credentials).
pub(crate) const MAX_WORKLOAD_BODY: usize = 64 * 1024;
/// The node agents' API: a sign request carries up to 1,000 CSRs of about 500 bytes each.
pub(crate) const MAX_AGENT_BODY: usize = 1024 * 1024;
/// A batch of decision records (at most 1,000, each a few hundred bytes) from a service.
pub(crate) const MAX_RECORDS_BODY: usize = 2 * 1024 * 1024;
/// The admin API, over HTTP and on the socket alike: identity files can be large.
pub(crate) const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;
/// The console's own routes: a sign-in carries one credential.
pub(crate) const MAX_CONSOLE_BODY: usize = 16 * 1024;

/// Admin routes a console viewer may use besides reading: `explain` changes nothing.
const VIEWER_POSTS: &[&str] = &["/v1/explain"];

/// Caps a group of routes: extractors refuse a larger body (413), and so does the body itself
/// when it is streamed.
fn limited(routes: Router<Arc<App>>, max: usize) -> Router<Arc<App>> {
    routes
        .layer(DefaultBodyLimit::max(max))
        .layer(RequestBodyLimitLayer::new(max))
}

/// The admin API without a guard; each way in adds its own.
fn admin_routes() -> Router<Arc<App>> {
    let routes = api::admin::routes()
        .merge(api::secrets::admin_routes())
        .merge(api::dbcreds::admin_routes())
        .merge(api::policy::admin_routes())
        .merge(api::log::admin_routes())
        .merge(api::console::admin_routes())
        .merge(api::access::admin_routes());
    limited(routes, MAX_ADMIN_BODY)
}

/// The API on the TCP listener: discovery, OAuth, the agents' and workloads' APIs, and the admin
/// API under `/admin` for the admin credential.
pub(crate) fn api_router(app: Arc<App>) -> Router {
    Router::new()
        .merge(limited(
            api::discovery::routes()
                .merge(api::oauth::routes())
                .merge(api::log::routes()),
            MAX_OAUTH_BODY,
        ))
        .nest("/agent/v1", limited(api::agents::routes(), MAX_AGENT_BODY))
        .merge(limited(
            api::secrets::workload_routes()
                .merge(api::dbcreds::workload_routes())
                .merge(api::changes::routes()),
            MAX_WORKLOAD_BODY,
        ))
        .nest(
            "/v1/policy",
            limited(api::policy::workload_routes(), MAX_RECORDS_BODY),
        )
        .nest("/admin", admin_over_http(app.clone()))
        .merge(console_routes())
        .fallback(|| async {
            ApiError::NotFound(
                "no such endpoint; see /.well-known/oauth-authorization-server".into(),
            )
        })
        .layer(middleware::from_fn(crate::trace::request_span))
        .with_state(app)
}

/// The console: its assets and sign-in, with the headers every console page carries.
fn console_routes() -> Router<Arc<App>> {
    limited(api::console::routes(), MAX_CONSOLE_BODY).layer(middleware::from_fn(
        |req: Request, next: Next| async move {
            let mut resp = next.run(req).await;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(api::console::CONTENT_SECURITY_POLICY),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            h.insert(
                "cross-origin-opener-policy",
                HeaderValue::from_static("same-origin"),
            );
            resp
        },
    ))
}

/// The admin API over HTTP: `Authorization: Bearer <admin credential>`, checked against its
/// keyed hash in constant time; or, without an `Authorization` header, a console session
/// (SameSite=Strict cookie) whose CSRF token comes with every state change, and whose viewers
/// only read.
fn admin_over_http(app: Arc<App>) -> Router<Arc<App>> {
    admin_routes().layer(middleware::from_fn(move |mut req: Request, next: Next| {
        let app = app.clone();
        async move {
            let authorization = req.headers().get(header::AUTHORIZATION);
            if authorization.is_none() {
                if let Some(session) = ConsoleSession::of(&app, req.headers()) {
                    if let Err(refusal) = console_may(&session, &req) {
                        return refusal.into_response();
                    }
                    req.extensions_mut()
                        .insert(Actor(session.view.person.actor()));
                    let mut resp = next.run(req).await;
                    resp.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    return resp;
                }
            }
            match bearer(authorization.and_then(|v| v.to_str().ok())) {
                Some(t) if app.is_admin_token(t) => {
                    req.extensions_mut().insert(Actor("admin:token".into()));
                    next.run(req).await
                }
                _ => ApiError::Client {
                    description: "an admin credential is required".into(),
                    basic: false,
                }
                .into_response(),
            }
        }
    }))
}

/// What a console session may do on the admin API: read; change state with its CSRF token;
/// and, as a viewer, nothing that changes state.
fn console_may(session: &ConsoleSession, req: &Request) -> Result<(), ApiError> {
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if reading {
        return Ok(());
    }
    if !api::console::csrf_ok(req.headers(), &session.view.csrf) {
        return Err(ApiError::Forbidden(
            "the console's CSRF token is missing or wrong".into(),
        ));
    }
    if session.view.person.role == Role::Viewer && !VIEWER_POSTS.contains(&req.uri().path()) {
        return Err(ApiError::Forbidden(format!(
            "`{}` is a viewer: only an admin may change anything",
            session.view.person.name
        )));
    }
    Ok(())
}

/// The admin API on the unix socket: the caller's unix user must be the server's own, root, or
/// one of `admin_uids`.
pub(crate) fn admin_socket_router(app: Arc<App>) -> Router {
    // `/proc/self` is owned by this process's effective user: no unsafe call needed.
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mut allowed: Vec<u32> = app.config.admin_uids.clone();
    allowed.push(0);
    allowed.extend(own_uid);
    admin_routes()
        .layer(middleware::from_fn(
            move |ConnectInfo(peer): ConnectInfo<Peer>, mut req: Request, next: Next| {
                let allowed = allowed.clone();
                async move {
                    match peer.uid {
                        Some(uid) if allowed.contains(&uid) => {
                            req.extensions_mut()
                                .insert(Actor(format!("admin:uid={uid}")));
                            next.run(req).await
                        }
                        Some(uid) => ApiError::Forbidden(format!(
                            "unix user {uid} is not an administrator of this server"
                        ))
                        .into_response(),
                        None => ApiError::Forbidden("the caller's unix user is unknown".into())
                            .into_response(),
                    }
                }
            },
        ))
        .with_state(app)
}
