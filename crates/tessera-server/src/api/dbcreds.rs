//! Dynamic PostgreSQL credentials over HTTP: administrators declare databases and role
//! templates and see leases; a workload allowed to read secret `db/ROLE` gets a fresh role under
//! a lease, renews it and gives it back.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use tessera_core::admin_api::{
    DbConnectionDeclared, DbConnectionRequest, DbRoleDeclared, DbRoleRequest, LeaseEnding,
    LeaseInfo, LeaseRequest,
};
use tessera_core::{Label, SecretName};
use tessera_policy::SecretAction;
use tessera_store::{
    AuditEvent, AuditKind, DbConnectionRecord, DbRoleRecord, LeaseFilter, LeaseRecord, LeaseState,
    Op, Outcome,
};
use tessera_vault::role::Credentials;
use tessera_vault::RoleTemplate;

use crate::app::App;
use crate::domain::caller::{Actor, Reader};
use crate::domain::leases::{end, pool, role_secret, run, LeaseError, DEFAULT_TTL, MAX_TTL_CAP};
use crate::domain::secrets::decide;
use crate::error::ApiError;
use crate::extract::SecretReader;

fn label(s: &str, what: &str) -> Result<Label, ApiError> {
    Label::parse(s).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

pub(crate) fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/db/connections", post(put_connection))
        .route("/v1/db/roles", post(put_role))
        .route("/v1/db/leases", get(list_leases))
        .route("/v1/db/leases/revoke", post(admin_revoke))
}

/// `POST /admin/v1/db/connections`: declares a database; its admin password is the current
/// version of a vault secret. Checked by connecting before it is stored.
async fn put_connection(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<DbConnectionRequest>,
) -> Result<Json<DbConnectionDeclared>, ApiError> {
    let name = label(&req.name, "connection name")?;
    let url =
        tessera_vault::DbUrl::parse(&req.url).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // The driver must read it too (its own options parser).
    url.as_str()
        .parse::<PgConnectOptions>()
        .map_err(|e| ApiError::BadRequest(format!("`url`: {e}")))?;
    SecretName::parse(&req.password_secret).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let conn = DbConnectionRecord {
        name: name.to_string(),
        url: url.to_string(),
        admin_user: req.admin_user,
        password_secret: req.password_secret,
        created_at: tessera_core::now_unix(),
    };
    let p = pool(&app, &conn)
        .await
        .map_err(|e| ApiError::BadRequest(format!("the password secret: {e}")))?;
    sqlx::query("SELECT 1").execute(&p).await.map_err(|e| {
        ApiError::BadRequest(format!(
            "cannot log in to `{}` as `{}`: {e}",
            conn.url, conn.admin_user
        ))
    })?;
    app.store
        .commit(
            &[Op::UpsertDbConnection(conn.clone())],
            &[AuditEvent {
                kind: AuditKind::DbConnection,
                actor: actor.0,
                subject: format!("db:{name}"),
                outcome: Outcome::Ok,
                detail: json!({"url": conn.url, "admin_user": conn.admin_user, "password_secret": conn.password_secret}),
            }],
        )
        .await?;
    Ok(Json(DbConnectionDeclared {
        name: name.to_string(),
        checked: true,
    }))
}

/// `POST /admin/v1/db/roles`: a role template (statements with `{{name}}`, `{{password}}`,
/// `{{expiry}}`).
async fn put_role(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<DbRoleRequest>,
) -> Result<Json<DbRoleDeclared>, ApiError> {
    let name = label(&req.name, "role name")?;
    role_secret(&name)?;
    let t = RoleTemplate::new(req.creation, req.revocation)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let default_ttl = req.default_ttl.unwrap_or(DEFAULT_TTL);
    let max_ttl = req.max_ttl.unwrap_or(24 * 3600);
    if !(60..=MAX_TTL_CAP).contains(&default_ttl) || !(default_ttl..=MAX_TTL_CAP).contains(&max_ttl)
    {
        return Err(ApiError::BadRequest(
            "`default_ttl` is 1 minute to 30 days and `max_ttl` at least `default_ttl`".into(),
        ));
    }
    if app.store.db_connection(&req.connection).await?.is_none() {
        return Err(ApiError::BadRequest(format!(
            "no database connection `{}`",
            req.connection
        )));
    }
    let role = DbRoleRecord {
        name: name.to_string(),
        connection: req.connection,
        creation: t.creation,
        revocation: t.revocation,
        default_ttl,
        max_ttl,
        created_at: tessera_core::now_unix(),
    };
    app.store
        .commit(
            &[Op::UpsertDbRole(role.clone())],
            &[AuditEvent {
                kind: AuditKind::DbRole,
                actor: actor.0,
                subject: format!("db-role:{name}"),
                outcome: Outcome::Ok,
                detail: json!({"connection": role.connection, "default_ttl": default_ttl, "max_ttl": max_ttl}),
            }],
        )
        .await
        .map_err(LeaseError::from)?;
    Ok(Json(DbRoleDeclared {
        name: name.to_string(),
        read_as: format!("db/{}", name.as_str().to_ascii_lowercase()),
    }))
}

fn lease_info(l: &LeaseRecord) -> LeaseInfo {
    LeaseInfo {
        lease_id: l.id.clone(),
        role: l.role.clone(),
        username: l.username.clone(),
        workload: l.workload.clone(),
        created_at: l.created_at,
        expires_at: l.expires_at,
        max_expires_at: l.max_expires_at,
        state: l.state.to_string(),
        revoked_at: l.revoked_at,
        attempts: l.attempts,
        last_error: l.last_error.clone(),
    }
}

/// `GET /admin/v1/db/leases`: leases not yet revoked (and why a revocation is still pending).
async fn list_leases(State(app): State<Arc<App>>) -> Result<Json<Vec<LeaseInfo>>, ApiError> {
    let leases = app.store.leases(LeaseFilter::Open).await?;
    Ok(Json(leases.iter().map(lease_info).collect()))
}

/// `POST /admin/v1/db/leases/revoke`: ends a lease now (its role is dropped within seconds).
async fn admin_revoke(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<LeaseRequest>,
) -> Result<Json<LeaseEnding>, ApiError> {
    end(&app, &req.id, &actor.0).await?;
    Ok(Json(LeaseEnding {
        lease_id: req.id,
        state: LeaseState::Revoking.to_string(),
    }))
}

pub(crate) fn workload_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/db/creds/{role}", post(post_creds))
        .route("/v1/db/leases/{id}/renew", post(renew_lease))
        .route("/v1/db/leases/{id}/revoke", post(give_back_lease))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredsRequest {
    /// Seconds; at most the role's maximum.
    ttl: Option<i64>,
}

/// An optional JSON body: empty means the defaults.
fn creds_request(body: &[u8]) -> Result<CredsRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CredsRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body: {e}")))
}

/// `POST /v1/db/creds/ROLE`: a new role for the calling workload, under a lease.
async fn post_creds(
    State(app): State<Arc<App>>,
    SecretReader(caller): SecretReader,
    Path(role): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = creds_request(&body)?;
    let role = label(&role, "role")?;
    let secret = role_secret(&role)?;
    decide(
        &app,
        &app.snapshot(),
        &caller,
        &secret,
        None,
        SecretAction::Read,
    )
    .await?;
    let reader = caller.id;
    let r = app
        .store
        .db_role(role.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no database role `{role}`")))?;
    let c = app
        .store
        .db_connection(&r.connection)
        .await?
        .ok_or_else(|| ApiError::unavailable(format!("role `{role}`: its connection is gone")))?;
    let ttl = req.ttl.unwrap_or(r.default_ttl).clamp(10, r.max_ttl);
    let now = tessera_core::now_unix();
    let id = tessera_token::strict::b64_encode(
        tessera_token::seal::random_bytes::<12>().map_err(ApiError::unavailable)?,
    );
    let creds = Credentials::generate(role.as_str(), now + ttl).map_err(ApiError::unavailable)?;
    let template = RoleTemplate {
        creation: r.creation.clone(),
        revocation: r.revocation.clone(),
    };
    let lease = LeaseRecord {
        id: id.clone(),
        role: role.to_string(),
        connection: c.name.clone(),
        username: creds.username.clone(),
        workload: reader.to_string(),
        revocation: template.revocation_sql(&creds.username),
        created_at: now,
        expires_at: now + ttl,
        max_expires_at: now + r.max_ttl,
        state: LeaseState::Active,
        revoked_at: None,
        attempts: 0,
        last_error: None,
    };
    // Recorded first (fail closed): a role exists only with a lease that says to drop it.
    app.store
        .commit(
            &[Op::InsertLease(lease.clone())],
            &[AuditEvent {
                kind: AuditKind::LeaseCreated,
                actor: reader.to_string(),
                subject: format!("lease:{id}"),
                outcome: Outcome::Ok,
                detail: json!({"role": role.as_str(), "username": creds.username, "expires_at": lease.expires_at}),
            }],
        )
        .await?;
    let made = match pool(&app, &c).await {
        Ok(p) => {
            let serial = app.db_pools.serial(&c.name);
            let _one = serial.lock().await;
            run(&p, &template.creation_sql(&creds))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = made {
        tracing::warn!(lease = %id, role = %role, error = %e, "creating a database role failed");
        // The role may half exist: the lease's revocation cleans up.
        let _ = end(&app, &id, "server").await;
        return Err(ApiError::Unavailable(format!("role `{role}`: {e}")));
    }
    Ok(Json(json!({
        "lease_id": id,
        "username": creds.username,
        "password": creds.password,
        "database": tessera_vault::DbUrl::sanitized(&c.url),
        "expires_at": lease.expires_at,
        "max_expires_at": lease.max_expires_at,
        "lease_duration": ttl,
    })))
}

/// The holder's own lease, or 404 (another workload's leases are not its business).
async fn own_lease(
    app: &App,
    caller: Reader,
    id: &str,
) -> Result<(LeaseRecord, tessera_core::SpiffeId), ApiError> {
    let who = caller.id;
    let lease = app
        .store
        .leases(LeaseFilter::Id(id))
        .await?
        .into_iter()
        .next()
        .filter(|l| l.workload == who.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no lease `{id}` of yours")))?;
    Ok((lease, who))
}

/// `POST /v1/db/leases/ID/renew`: extends the lease (and the role's `VALID UNTIL`), never past
/// its maximum.
async fn renew_lease(
    State(app): State<Arc<App>>,
    SecretReader(caller): SecretReader,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = creds_request(&body)?;
    let (lease, who) = own_lease(&app, caller.clone(), &id).await?;
    // Renewing is reading again: the holder must still be granted the role.
    let role = label(&lease.role, "role")?;
    decide(
        &app,
        &app.snapshot(),
        &caller,
        &role_secret(&role)?,
        None,
        SecretAction::Read,
    )
    .await?;
    let r = app.store.db_role(&lease.role).await?;
    let ttl = req
        .ttl
        .or(r.as_ref().map(|r| r.default_ttl))
        .unwrap_or(DEFAULT_TTL)
        .max(10);
    let now = tessera_core::now_unix();
    let expires_at = (now + ttl).min(lease.max_expires_at);
    if expires_at <= lease.expires_at {
        return Ok(Json(
            json!({"lease_id": id, "expires_at": lease.expires_at, "at_maximum": true}),
        ));
    }
    let c = app
        .store
        .db_connection(&lease.connection)
        .await?
        .ok_or_else(|| ApiError::unavailable("the lease's connection is gone"))?;
    let until = tessera_vault::role::pg_timestamp(expires_at)
        .ok_or_else(|| ApiError::unavailable("the lease's end is not a date"))?;
    // INVARIANT: usernames are made by `Credentials::generate` from `[a-z0-9_]`.
    let sql = format!("ALTER ROLE \"{}\" VALID UNTIL '{until}'", lease.username);
    let p = pool(&app, &c).await?;
    run(&p, &[sql])
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    app.store
        .commit(
            &[Op::RenewLease {
                id: id.clone(),
                expires_at,
            }],
            &[AuditEvent {
                kind: AuditKind::LeaseRenewed,
                actor: who.to_string(),
                subject: format!("lease:{id}"),
                outcome: Outcome::Ok,
                detail: json!({"expires_at": expires_at}),
            }],
        )
        .await
        .map_err(LeaseError::from)?;
    Ok(Json(
        json!({"lease_id": id, "expires_at": expires_at, "at_maximum": expires_at == lease.max_expires_at}),
    ))
}

/// `POST /v1/db/leases/ID/revoke`: the holder gives its lease back.
async fn give_back_lease(
    State(app): State<Arc<App>>,
    SecretReader(caller): SecretReader,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, who) = own_lease(&app, caller, &id).await?;
    end(&app, &id, who.as_str()).await?;
    Ok(Json(json!({"lease_id": id, "state": "revoking"})))
}

// ---- Revocation -----------------------------------------------------------------------------
