//! `POST /token` and `POST /{td}/token`: RFC 6749 §4.4 client credentials (client secrets, RFC
//! 7523 assertions, RFC 8705 `tls_client_auth` with the workload's X.509-SVID), RFC 8707
//! targets; token exchange and `jwt-bearer` go on to `federated.rs`. Every grant ends in
//! `domain::issue::commit`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::oauth::client_auth::{
    audited, authenticate_deferred, client_failure, other_client_auth, replayed,
};
use crate::api::oauth::federated;
use crate::api::oauth::form::{no_store, truncate, Form};
use crate::app::{App, Issuer, Snapshot};
use crate::domain::issue::{self, GrantType, IssueError, MintOptions, OAuthCode};
use crate::error::ApiError;
use crate::extract::IssuerPath;
use crate::metrics::IssueLabels;
use crate::tls::{ConnInfo, PeerCertificates};

/// `POST /token`: parses the form, picks the grant, counts and times the result.
pub(crate) async fn post_token(
    State(app): State<Arc<App>>,
    IssuerPath(issuer): IssuerPath,
    conn: ConnInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let form = match Form::parse(&headers, &body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let grant_type = match form.get("grant_type").map(|g| (g, GrantType::parse(g))) {
        Some((_, Some(g))) => g,
        Some((other, None)) => {
            count(&app, "other", "refused");
            return ApiError::oauth(
                OAuthCode::UnsupportedGrantType,
                format!(
                    "grant type `{}` is not supported here (client_credentials, token-exchange and jwt-bearer are)",
                    truncate(other, 80)
                ),
            )
            .into_response();
        }
        None => {
            return ApiError::oauth(OAuthCode::InvalidRequest, "`grant_type` is missing")
                .into_response()
        }
    };
    let snap = app.snapshot();
    let result = match grant_type {
        GrantType::ClientCredentials => {
            client_credentials(&app, &snap, &issuer, &conn, &headers, &form).await
        }
        g => federated::exchange(&app, &snap, &issuer, &conn, &headers, &form, g).await,
    };
    let resp = match result {
        Ok(body) => {
            count(&app, grant_type.as_str(), "issued");
            no_store(Json(body).into_response())
        }
        Err(e) => {
            let result = match &e {
                ApiError::Client { .. } => "client_auth_failed",
                ApiError::Unavailable(_) => "error",
                _ => "denied",
            };
            count(&app, grant_type.as_str(), result);
            e.into_response()
        }
    };
    app.metrics
        .issue_seconds
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn count(app: &App, grant_type: &'static str, result: &'static str) {
    app.metrics
        .tokens
        .get_or_create(&IssueLabels { grant_type, result })
        .inc();
}

async fn client_credentials(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    conn: &ConnInfo,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Value, ApiError> {
    if let Some(peer) = conn
        .peer
        .as_ref()
        .filter(|_| !other_client_auth(headers, form))
    {
        return tls_client_credentials(app, snap, issuer, conn, form, peer).await;
    }
    let client = authenticate_deferred(app, snap, issuer, headers, form).await?;
    let entry = snap
        .clients
        .get(&client.id)
        .ok_or_else(|| ApiError::unavailable("authenticated client vanished"))?;
    let mut req = form.issue_request(
        conn,
        entry.spec.workload.clone(),
        client.id.clone(),
        client.method,
        GrantType::ClientCredentials,
    );
    // The assertion's `jti` is claimed with the request's record, granted or denied.
    req.claim = client.claim.clone();
    match issue::commit(app, snap, issuer, &req).await {
        Ok(minted) => Ok(minted.response()),
        Err(IssueError::Replayed) => Err(replayed(app, &client.id).await),
        Err(e) => Err(e.into()),
    }
}

/// RFC 8705 §2.1 `tls_client_auth` for workloads: the client certificate is the workload's
/// X.509-SVID (its chain validated by the listener against its trust domain's bundle) and
/// `client_id` is its SPIFFE ID. No secret is involved. The token is bound to that certificate
/// (`cnf.x5t#S256`, RFC 8705 §3) and never outlives it.
async fn tls_client_credentials(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    conn: &ConnInfo,
    form: &Form,
    peer: &PeerCertificates,
) -> Result<Value, ApiError> {
    const M: &str = "tls_client_auth";
    let claimed = form.get("client_id").ok_or_else(|| {
        ApiError::oauth(
            OAuthCode::InvalidRequest,
            "`client_id` is required with tls_client_auth (RFC 8705 §2): the SPIFFE ID of the client certificate",
        )
    })?;
    let fail = |why: &str| audited(app, client_failure(app, M, Some(claimed), why));
    let Some(leaf) = peer.0.first() else {
        return Err(fail("no client certificate").await);
    };
    let id = match tessera_ca::leaf_spiffe_id(leaf) {
        Ok(id) => id,
        Err(e) => return Err(fail(&format!("client certificate: {e}")).await),
    };
    if claimed != id.as_str() {
        return Err(fail("`client_id` is not the SPIFFE ID of the client certificate").await);
    }
    if id.trust_domain_str() != issuer.td.as_str() {
        return Err(
            fail("the client certificate is of another trust domain than this issuer's").await,
        );
    }
    if !snap.workloads.contains_key(&id) {
        return Err(fail("no such workload is declared").await);
    }
    let now = tessera_core::now_unix();
    let not_after = match tessera_ca::validity(leaf) {
        Some((_, naf)) if naf > now => naf,
        // A keep-alive connection can outlast its certificate.
        _ => return Err(fail("the client certificate has expired").await),
    };
    let mut req = form.issue_request(
        conn,
        id.clone(),
        id.to_string(),
        M,
        GrantType::ClientCredentials,
    );
    req.options = MintOptions {
        not_after: Some(not_after),
        cnf: Some(json!({"x5t#S256": tessera_token::x5t_s256(leaf.as_ref())})),
        ..MintOptions::default()
    };
    Ok(issue::commit(app, snap, issuer, &req).await?.response())
}
