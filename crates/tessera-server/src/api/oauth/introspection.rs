//! `POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009), for authenticated clients.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tessera_token::claims::{audience_contains, numeric_date};

use crate::api::oauth::client_auth::{authenticate, AuthedClient};
use crate::api::oauth::form::{no_store, Form};
use crate::app::{App, Issuer, Snapshot};
use crate::domain::caller::our_token;
use crate::domain::issue::OAuthCode;
use crate::domain::rotation::revoke_token;
use crate::error::ApiError;
use crate::extract::IssuerPath;

/// The common start of introspection and revocation: a form, an authenticated client, and the
/// `token` parameter.
async fn token_request(
    app: &App,
    issuer: &Issuer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Arc<Snapshot>, AuthedClient, String), ApiError> {
    let form = Form::parse(headers, body)?;
    let snap = app.snapshot();
    let client = authenticate(app, &snap, issuer, headers, &form).await?;
    let token = form
        .get("token")
        .ok_or_else(|| ApiError::oauth(OAuthCode::InvalidRequest, "`token` is missing"))?
        .to_owned();
    Ok((snap, client, token))
}

/// `POST /introspect`: RFC 7662. Only `{"active": false}` for anything inactive, and a client
/// sees only tokens it holds or that are addressed to its workload.
pub(crate) async fn post_introspect(
    State(app): State<Arc<App>>,
    IssuerPath(issuer): IssuerPath,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (snap, client, token) = token_request(&app, &issuer, &headers, &body).await?;
        let token = token.as_str();
        let inactive = json!({"active": false});
        let Some(claims) = our_token(&app, &snap, &issuer, token) else {
            return Ok(inactive);
        };
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let iat = numeric_date(&claims, "iat").ok().flatten().unwrap_or(0);
        if snap.revoked_jtis.contains_key(jti) || snap.workload_revoked(sub, iat) {
            return Ok(inactive);
        }
        let caller_workload = snap
            .clients
            .get(&client.id)
            .map(|c| c.spec.workload.to_string());
        let holder = claims.get("client_id").and_then(Value::as_str) == Some(client.id.as_str());
        let audience =
            caller_workload.is_some_and(|w| audience_contains(&claims, &[w.as_str()]).is_ok());
        if !(holder || audience) {
            return Ok(inactive);
        }
        let mut out = claims;
        out.insert("active".into(), Value::Bool(true));
        out.insert("token_type".into(), Value::String("Bearer".into()));
        Ok::<_, ApiError>(Value::Object(out))
    }
    .await;
    match result {
        Ok(v) => no_store(Json(v).into_response()),
        Err(e) => e.into_response(),
    }
}

/// `POST /revoke`: RFC 7009. A client may revoke the tokens issued to it; the answer is 200
/// whether or not the token was valid, so it reveals nothing.
pub(crate) async fn post_revoke(
    State(app): State<Arc<App>>,
    IssuerPath(issuer): IssuerPath,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (snap, client, token) = token_request(&app, &issuer, &headers, &body).await?;
        let token = token.as_str();
        let Some(claims) = our_token(&app, &snap, &issuer, token) else {
            return Ok(());
        };
        if claims.get("client_id").and_then(Value::as_str) != Some(client.id.as_str()) {
            return Ok(());
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let exp = numeric_date(&claims, "exp").ok().flatten().unwrap_or(0);
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        revoke_token(&app, &jti, exp, &client.id, &sub).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match result {
        Ok(()) => no_store(axum::http::StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}
