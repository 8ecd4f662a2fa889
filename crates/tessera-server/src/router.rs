//! Every route of the server, every body limit, and both admin guards. The only file that
//! mounts: each feature in `api/` lists its routes, and this file puts them together.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::admin_socket::Peer;
use crate::api;
use crate::app::App;
use crate::domain::caller::{bearer, Actor};
use crate::error::ApiError;

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
        .merge(api::log::admin_routes());
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
        .fallback(|| async {
            ApiError::NotFound(
                "no such endpoint; see /.well-known/oauth-authorization-server".into(),
            )
        })
        .layer(middleware::from_fn(crate::trace::request_span))
        .with_state(app)
}

/// The admin API over HTTP: `Authorization: Bearer <admin credential>`, checked against its
/// keyed hash in constant time.
fn admin_over_http(app: Arc<App>) -> Router<Arc<App>> {
    admin_routes().layer(middleware::from_fn(move |mut req: Request, next: Next| {
        let app = app.clone();
        async move {
            let token = bearer(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            );
            match token {
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
