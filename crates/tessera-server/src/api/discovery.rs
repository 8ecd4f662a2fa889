//! What anyone may read: health, readiness, metrics, RFC 8414 / OpenID metadata, the JWKS, the
//! SPIFFE bundle and the revocation list.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::{ca, status_lists, App};
use crate::domain::issue::GrantType;
use crate::error::ApiError;
use crate::extract::IssuerPath;

/// Every discovery route, at the base URL and under `/{td}` where an issuer is named.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route(
            "/.well-known/oauth-authorization-server/{td}",
            get(metadata),
        )
        .route("/{td}/.well-known/openid-configuration", get(metadata))
        .route("/jwks", get(jwks))
        .route("/{td}/jwks", get(jwks))
        .route("/bundle/{td}", get(bundle))
        .route("/revocations", get(revocations))
        .route("/{td}/revocations", get(revocations))
        .route("/statuslists/{list}", get(status_list))
        .route("/{td}/statuslists/{list}", get(status_list))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: storage unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unreachable\n").into_response()
        }
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &app.registry).is_err() {
        return ApiError::unavailable("metrics encoding failed").into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn metadata(IssuerPath(issuer): IssuerPath) -> Response {
    let doc = json!({
        "issuer": issuer.url,
        "token_endpoint": issuer.endpoint("token"),
        "jwks_uri": issuer.endpoint("jwks"),
        "introspection_endpoint": issuer.endpoint("introspect"),
        "revocation_endpoint": issuer.endpoint("revoke"),
        "grant_types_supported": [GrantType::ClientCredentials.as_str(), GrantType::TokenExchange.as_str(), GrantType::JwtBearer.as_str()],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth"],
        // RFC 8705 §3.3: workloads authenticating with their X.509-SVID get tokens bound to it.
        "tls_client_certificate_bound_access_tokens": true,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": [],
        "tessera_revocation_list_endpoint": issuer.endpoint("revocations"),
        "tessera_trust_domain": issuer.td.as_str(),
    });
    cached(Json(doc).into_response(), 300)
}

fn cached(mut resp: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={secs}")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp
}

async fn jwks(State(app): State<Arc<App>>, IssuerPath(issuer): IssuerPath) -> Response {
    let snap = app.snapshot();
    let set =
        tessera_token::JwkSet::from_keys(snap.keys.published(&issuer.td, tessera_core::now_unix()));
    cached(Json(set).into_response(), app.config.jwks_max_age.as_secs())
}

/// The SPIFFE bundle of a trust domain: a JWKS with `use` set to the SVID kind and the
/// `spiffe_sequence` and `spiffe_refresh_hint` members (SPIFFE Trust Domain and Bundle §4).
async fn bundle(State(app): State<Arc<App>>, IssuerPath(issuer): IssuerPath) -> Response {
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let mut keys: Vec<Value> = snap
        .cas
        .published(&issuer.td, now)
        .iter()
        .filter_map(ca::x509_jwk)
        .collect();
    keys.extend(snap.keys.published(&issuer.td, now).into_iter().map(|k| {
        let mut jwk = k.to_jwk();
        jwk.insert("use".into(), "jwt-svid".into());
        Value::Object(jwk)
    }));
    let refresh = app.config.jwks_max_age.as_secs();
    let doc =
        json!({"keys": keys, "spiffe_sequence": snap.version, "spiffe_refresh_hint": refresh});
    cached(Json(doc).into_response(), refresh)
}

/// How long a verifier may cache a status list (the draft's `ttl`), and how long its
/// signature holds.
const STATUS_LIST_TTL: i64 = 30;
const STATUS_LIST_LIFETIME: i64 = 600;

/// A token status list (draft-ietf-oauth-status-list), signed by the issuer's current key.
async fn status_list(
    State(app): State<Arc<App>>,
    IssuerPath(issuer): IssuerPath,
    axum::extract::Path(params): axum::extract::Path<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let list = params.get("list").map(String::as_str).unwrap_or_default();
    if !status_lists::valid_list_id(list) {
        return Err(ApiError::NotFound(format!(
            "no status list `{}`",
            list.chars().take(40).collect::<String>()
        )));
    }
    let snap = app.snapshot();
    let now = tessera_core::now_unix();
    let key = snap
        .keys
        .signing(&issuer.td, now)
        .ok_or_else(|| ApiError::unavailable("no signing key"))?;
    let lst = status_lists::compressed_bits(list, snap.revoked_jtis.keys())
        .map_err(|e| ApiError::unavailable(format!("status list compression: {e}")))?;
    let claims = json!({
        "sub": issuer.endpoint(&format!("statuslists/{list}")),
        "iat": now,
        "exp": now + STATUS_LIST_LIFETIME,
        "ttl": STATUS_LIST_TTL,
        "status_list": {"bits": 1, "lst": tessera_token::strict::b64_encode(lst)},
    });
    let jwt = tessera_token::jws::sign(&key.key, "statuslist+jwt", &claims)
        .map_err(|e| ApiError::unavailable(format!("signing the status list: {e}")))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/statuslist+jwt".to_owned(),
            ),
            (header::CACHE_CONTROL, format!("max-age={STATUS_LIST_TTL}")),
        ],
        jwt,
    )
        .into_response())
}

/// Unexpired revoked token IDs and revoked workloads, for verifiers that poll.
async fn revocations(State(app): State<Arc<App>>, IssuerPath(issuer): IssuerPath) -> Response {
    let now = tessera_core::now_unix();
    let tokens = match app.store.revoked_tokens(now).await {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let snap = app.snapshot();
    let workloads: Vec<Value> = snap
        .workloads
        .values()
        .filter(|w| w.spec.id.trust_domain_str() == issuer.td.as_str())
        .filter_map(|w| {
            w.revoked_at
                .map(|at| json!({"sub": w.spec.id, "revoked_at": at}))
        })
        .collect();
    let revoked: Vec<Value> = tokens
        .into_iter()
        .map(|(jti, exp)| json!({"jti": jti, "exp": exp}))
        .collect();
    cached(
        Json(json!({"revoked": revoked, "revoked_workloads": workloads})).into_response(),
        5,
    )
}
