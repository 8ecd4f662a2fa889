//! The admin API's views for seeing and reviewing trust (the console's pages, `tessera advise`):
//! overview, workloads, the access graph, expiries, the audit trail searched, grant reviews and
//! the least-privilege advisor. Mounted by `router.rs` with the rest of the admin API.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tessera_core::admin_api::{
    AccessGraph, Advice, AuditPage, Expiries, GrantReviewRequest, GrantReviewed, Overview,
    WorkloadPage,
};

use crate::app::App;
use crate::domain::access::{self, AuditQuery, GraphQuery, WorkloadQuery};
use crate::domain::caller::Actor;
use crate::domain::{advisor, review};
use crate::error::ApiError;

pub(crate) fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/overview", get(get_overview))
        .route("/v1/workloads", get(get_workloads))
        .route("/v1/graph", get(get_graph))
        .route("/v1/expiries", get(get_expiries))
        .route("/v1/audit/search", get(get_audit))
        .route("/v1/grants/review", post(post_review))
        .route("/v1/advise", get(get_advice))
}

async fn get_overview(State(app): State<Arc<App>>) -> Result<Json<Overview>, ApiError> {
    let snap = app.snapshot();
    Ok(Json(
        access::overview(&app, &snap, tessera_core::now_unix()).await?,
    ))
}

async fn get_workloads(
    State(app): State<Arc<App>>,
    Query(q): Query<WorkloadQuery>,
) -> Result<Json<WorkloadPage>, ApiError> {
    let snap = app.snapshot();
    Ok(Json(
        access::workloads(&app, &snap, &q, tessera_core::now_unix()).await?,
    ))
}

async fn get_graph(
    State(app): State<Arc<App>>,
    Query(q): Query<GraphQuery>,
) -> Result<Json<AccessGraph>, ApiError> {
    let snap = app.snapshot();
    Ok(Json(
        access::graph(&app, &snap, &q, tessera_core::now_unix()).await?,
    ))
}

#[derive(Deserialize)]
struct Within {
    within: Option<i64>,
}

async fn get_expiries(
    State(app): State<Arc<App>>,
    Query(q): Query<Within>,
) -> Result<Json<Expiries>, ApiError> {
    let snap = app.snapshot();
    Ok(Json(
        access::expiries(
            &app,
            &snap,
            tessera_core::now_unix(),
            q.within.unwrap_or(72 * 3600),
        )
        .await?,
    ))
}

async fn get_audit(
    State(app): State<Arc<App>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    Ok(Json(access::audit_page(&app, &q).await?))
}

async fn post_review(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<GrantReviewRequest>,
) -> Result<Json<GrantReviewed>, ApiError> {
    Ok(Json(review::review(&app, &actor.0, &req).await?))
}

#[derive(Deserialize)]
struct AdviceQuery {
    /// Seconds of records to read (default 30 days).
    window: Option<i64>,
}

async fn get_advice(
    State(app): State<Arc<App>>,
    Query(q): Query<AdviceQuery>,
) -> Result<Json<Advice>, ApiError> {
    let snap = app.snapshot();
    Ok(Json(
        advisor::advise(&app, &snap, q.window, tessera_core::now_unix()).await?,
    ))
}
