//! The transparency log over HTTP. Public: the latest checkpoint (with its cosignatures), the
//! log's verifier key, inclusion proofs by credential, consistency proofs. Admin: checkpoints on
//! demand, proofs by record number, the leaves, and verification against a checkpoint kept
//! elsewhere.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tessera_core::admin_api::AuditVerifyResponse;
use tessera_log::api::CheckpointResponse;
use tessera_log::{ConsistencyProof, Entries, InclusionProof};

use crate::app::App;
use crate::domain::log::{self as log, ProofOf};
use crate::error::ApiError;
use crate::extract::IssuerPath;

/// At the base URL and under `/{td}` (one log for every trust domain the server serves), so a
/// relying party finds it beside the issuer it knows.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/log/checkpoint", get(public_checkpoint))
        .route("/{td}/log/checkpoint", get(public_checkpoint))
        .route("/log/key", get(public_key))
        .route("/{td}/log/key", get(public_key))
        .route("/log/proof", get(public_proof))
        .route("/{td}/log/proof", get(public_proof))
        .route("/log/consistency", get(get_consistency))
}

pub(crate) fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/audit/checkpoint", get(checkpoint).post(checkpoint_now))
        .route("/v1/audit/prove", get(admin_prove))
        .route("/v1/audit/consistency", get(get_consistency))
        .route("/v1/audit/entries", get(get_entries))
        .route("/v1/audit/verify", get(verify_stored).post(verify_against))
}

fn text(body: String) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

async fn latest(app: &App) -> Result<(u64, String), ApiError> {
    match app.store.latest_checkpoint().await? {
        Some(c) => Ok(c),
        None => log::make_checkpoint(app)
            .await?
            .ok_or_else(|| ApiError::NotFound("the log is empty: no checkpoint yet".into())),
    }
}

async fn public_checkpoint(
    State(app): State<Arc<App>>,
    IssuerPath(_): IssuerPath,
) -> Result<impl IntoResponse, ApiError> {
    Ok(text(latest(&app).await?.1))
}

async fn public_key(State(app): State<Arc<App>>, IssuerPath(_): IssuerPath) -> impl IntoResponse {
    text(format!("{}\n", app.log.verifier().to_vkey()))
}

#[derive(Deserialize)]
struct CredentialQuery {
    jti: Option<String>,
    serial: Option<String>,
}

/// By credential only: whoever holds a token or certificate may ask for its proof; records
/// by number are the admin's.
async fn public_proof(
    State(app): State<Arc<App>>,
    IssuerPath(_): IssuerPath,
    Query(q): Query<CredentialQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    let c = match (q.jti, q.serial) {
        (Some(c), None) | (None, Some(c)) if !c.is_empty() && c.len() <= 256 => c,
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `jti` or `serial`".into(),
            ))
        }
    };
    Ok(Json(log::prove(&app, &ProofOf::Credential(c)).await?))
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: u64,
}

async fn get_consistency(
    State(app): State<Arc<App>>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    Ok(Json(log::consistency(&app, q.old, q.new).await?))
}

async fn checkpoint(State(app): State<Arc<App>>) -> Result<Json<CheckpointResponse>, ApiError> {
    let (size, checkpoint) = latest(&app).await?;
    Ok(Json(CheckpointResponse {
        size,
        checkpoint,
        log_key: app.log.verifier().to_vkey(),
    }))
}

async fn checkpoint_now(State(app): State<Arc<App>>) -> Result<Json<CheckpointResponse>, ApiError> {
    let (size, note) = log::make_checkpoint(&app)
        .await?
        .ok_or_else(|| ApiError::NotFound("the log is empty: no checkpoint yet".into()))?;
    log::publish(&app, size, &note).await;
    checkpoint(State(app)).await
}

#[derive(Deserialize)]
struct ProveQuery {
    of: String,
}

async fn admin_prove(
    State(app): State<Arc<App>>,
    Query(q): Query<ProveQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    Ok(Json(log::prove(&app, &ProofOf::parse(&q.of)).await?))
}

#[derive(Deserialize)]
struct EntriesQuery {
    start: u64,
    limit: Option<i64>,
}

async fn get_entries(
    State(app): State<Arc<App>>,
    Query(q): Query<EntriesQuery>,
) -> Result<Json<Entries>, ApiError> {
    Ok(Json(
        log::entries(&app, q.start, q.limit.unwrap_or(1000)).await?,
    ))
}

async fn verify_stored(State(app): State<Arc<App>>) -> Result<Json<AuditVerifyResponse>, ApiError> {
    verify(&app, &[]).await
}

#[derive(Deserialize)]
struct VerifyRequest {
    /// Signed checkpoints kept outside the database.
    #[serde(default)]
    checkpoints: Vec<String>,
}

async fn verify_against(
    State(app): State<Arc<App>>,
    Json(req): Json<VerifyRequest>,
) -> Result<Json<AuditVerifyResponse>, ApiError> {
    verify(&app, &req.checkpoints).await
}

async fn verify(app: &App, outside: &[String]) -> Result<Json<AuditVerifyResponse>, ApiError> {
    Ok(Json(match log::verify(app, outside).await? {
        Ok(n) => AuditVerifyResponse {
            ok: true,
            records: u64::try_from(n).ok(),
            error: None,
        },
        Err(e) => AuditVerifyResponse {
            ok: false,
            records: None,
            error: Some(e.to_string()),
        },
    }))
}
