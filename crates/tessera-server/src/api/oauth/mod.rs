//! The OAuth 2.0 endpoints. Inside this feature imports run one way:
//! `token.rs` -> `federated.rs` -> `delegation.rs` -> `client_auth.rs` -> `form.rs`,
//! `federated.rs` -> `chaining.rs` -> `form.rs`, and `introspection.rs` -> `client_auth.rs`.

use std::sync::Arc;

use axum::routing::post;
use axum::Router;

use crate::app::App;

pub(crate) mod chaining;
pub(crate) mod client_auth;
pub(crate) mod delegation;
pub(crate) mod federated;
pub(crate) mod form;
pub(crate) mod introspection;
pub(crate) mod token;

/// `/token`, `/introspect`, `/revoke`, at the base URL and under `/{td}`.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/token", post(token::post_token))
        .route("/{td}/token", post(token::post_token))
        .route("/introspect", post(introspection::post_introspect))
        .route("/{td}/introspect", post(introspection::post_introspect))
        .route("/revoke", post(introspection::post_revoke))
        .route("/{td}/revoke", post(introspection::post_revoke))
}
