//! Dynamic PostgreSQL credentials: a workload allowed to read secret `db/ROLE` gets a fresh role
//! made from the role's template, under a lease (default 1 h, renewable up to its maximum). At
//! the lease's end, on its revocation, or on the workload's, the role is dropped and its sessions
//! are ended; a database that is down is retried until the drop is done. Leases are stored
//! (written before their role exists), so a restart or a crash leaves nothing unrecorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tessera_core::{Label, SecretName};
use tessera_policy::SecretAction;
use tessera_store::{
    AuditEvent, DbConnectionRecord, DbRoleRecord, LeaseFilter, LeaseRecord, Op, StoreError,
};
use tessera_vault::role::Credentials;
use tessera_vault::RoleTemplate;

use crate::admin::Actor;
use crate::error::ApiError;
use crate::tls::ConnInfo;
use crate::App;

/// Admin pools to the declared databases, by connection name; made anew when the URL, the admin
/// user or the password's version changes.
#[derive(Default)]
pub struct Pools {
    pools: tokio::sync::Mutex<HashMap<String, (PoolKey, PgPool)>>,
    /// One role change at a time per database: concurrent GRANTs on one table fail in
    /// PostgreSQL ("tuple concurrently updated"), and its catalog serializes them anyway.
    serial: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pools {
    fn serial(&self, connection: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = match self.serial.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.entry(connection.to_owned()).or_default().clone()
    }
}

#[derive(PartialEq, Eq)]
struct PoolKey {
    url: String,
    user: String,
    version: i64,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools(..)")
    }
}

const DEFAULT_TTL: i64 = 3600;
const MAX_TTL_CAP: i64 = 30 * 24 * 3600;

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::Conflict(m),
        other => ApiError::unavailable(other),
    }
}

fn label(s: &str, what: &str) -> Result<Label, ApiError> {
    Label::parse(s).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

/// The secret name a role is read as in policies: `db/ROLE`.
pub fn role_secret(role: &Label) -> Result<SecretName, ApiError> {
    SecretName::parse(&format!("db/{}", role.as_str().to_ascii_lowercase()))
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// An admin pool to `conn`, made anew when its password secret has a new version.
async fn pool(app: &App, conn: &DbConnectionRecord) -> Result<PgPool, ApiError> {
    let name = SecretName::parse(&conn.password_secret).map_err(ApiError::unavailable)?;
    let (version, password) = crate::vault::current_value(app, &name).await?;
    let key = PoolKey {
        url: conn.url.clone(),
        user: conn.admin_user.clone(),
        version,
    };
    let mut pools = app.db_pools.pools.lock().await;
    if let Some((k, p)) = pools.get(&conn.name) {
        if *k == key {
            return Ok(p.clone());
        }
    }
    let password = String::from_utf8(password)
        .map_err(|_| ApiError::unavailable("the admin password is not text"))?;
    let opts: PgConnectOptions = conn
        .url
        .parse::<PgConnectOptions>()
        .map_err(|e| ApiError::unavailable(format!("database `{}`: {e}", conn.name)))?
        .username(&conn.admin_user)
        .password(&password);
    let p = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts);
    pools.insert(conn.name.clone(), (key, p.clone()));
    Ok(p)
}

/// Runs the statements in one transaction.
async fn run(pool: &PgPool, statements: &[String]) -> Result<(), sqlx::Error> {
    let (pool, statements) = (pool.clone(), statements.to_vec());
    let handle = tokio::runtime::Handle::current();
    // On a blocking thread with `block_on`, which needs no `Send` future: rustc cannot prove
    // `Send` for sqlx's executor over a non-'static SQL string (rust-lang/rust#102211).
    tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let mut tx = pool.begin().await?;
            for s in &statements {
                sqlx::raw_sql(s).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    })
    .await
    .map_err(|e| sqlx::Error::Protocol(format!("the database task failed: {e}")))?
}

// ---- Admin ----------------------------------------------------------------------------------

pub fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/db/connections", post(put_connection))
        .route("/v1/db/roles", post(put_role))
        .route("/v1/db/leases", get(list_leases))
        .route("/v1/db/leases/revoke", post(admin_revoke))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionRequest {
    name: String,
    url: String,
    admin_user: String,
    password_secret: String,
}

/// `POST /admin/v1/db/connections`: declares a database; its admin password is the current
/// version of a vault secret. Checked by connecting before it is stored.
async fn put_connection(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<ConnectionRequest>,
) -> Result<Json<Value>, ApiError> {
    let name = label(&req.name, "connection name")?;
    let opts: PgConnectOptions = req
        .url
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("`url`: {e}")))?;
    let url =
        reqwest::Url::parse(&req.url).map_err(|e| ApiError::BadRequest(format!("`url`: {e}")))?;
    if url.password().is_some() || !url.username().is_empty() {
        return Err(ApiError::BadRequest(
            "`url` holds no credentials: the admin user is `admin_user`, its password a vault secret".into(),
        ));
    }
    let _ = opts;
    SecretName::parse(&req.password_secret).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let conn = DbConnectionRecord {
        name: name.to_string(),
        url: req.url,
        admin_user: req.admin_user,
        password_secret: req.password_secret,
        created_at: tessera_core::now_unix(),
    };
    let p = pool(&app, &conn).await.map_err(|e| match e {
        ApiError::Unavailable(d) | ApiError::NotFound(d) => {
            ApiError::BadRequest(format!("the password secret: {d}"))
        }
        other => other,
    })?;
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
                kind: "db.connection".into(),
                actor: actor.0,
                subject: format!("db:{name}"),
                outcome: "ok".into(),
                detail: json!({"url": conn.url, "admin_user": conn.admin_user, "password_secret": conn.password_secret}),
            }],
        )
        .await?;
    Ok(Json(json!({"name": name, "checked": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRequest {
    name: String,
    connection: String,
    creation: Vec<String>,
    #[serde(default)]
    revocation: Vec<String>,
    default_ttl: Option<i64>,
    max_ttl: Option<i64>,
}

/// `POST /admin/v1/db/roles`: a role template (statements with `{{name}}`, `{{password}}`,
/// `{{expiry}}`).
async fn put_role(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<RoleRequest>,
) -> Result<Json<Value>, ApiError> {
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
                kind: "db.role".into(),
                actor: actor.0,
                subject: format!("db-role:{name}"),
                outcome: "ok".into(),
                detail: json!({"connection": role.connection, "default_ttl": default_ttl, "max_ttl": max_ttl}),
            }],
        )
        .await
        .map_err(conflict)?;
    Ok(Json(
        json!({"name": name, "read_as": format!("db/{}", name.as_str().to_ascii_lowercase())}),
    ))
}

fn lease_json(l: &LeaseRecord) -> Value {
    json!({
        "lease_id": l.id, "role": l.role, "username": l.username, "workload": l.workload,
        "created_at": l.created_at, "expires_at": l.expires_at, "max_expires_at": l.max_expires_at,
        "state": l.state, "revoked_at": l.revoked_at, "attempts": l.attempts, "last_error": l.last_error,
    })
}

/// `GET /admin/v1/db/leases`: leases not yet revoked (and why a revocation is still pending).
async fn list_leases(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let leases = app.store.leases(LeaseFilter::Open).await?;
    Ok(Json(Value::Array(leases.iter().map(lease_json).collect())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRequest {
    id: String,
}

/// `POST /admin/v1/db/leases/revoke`: ends a lease now (its role is dropped within seconds).
async fn admin_revoke(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<LeaseRequest>,
) -> Result<Json<Value>, ApiError> {
    end(&app, &req.id, &actor.0).await?;
    Ok(Json(json!({"lease_id": req.id, "state": "revoking"})))
}

async fn end(app: &App, id: &str, actor: &str) -> Result<(), ApiError> {
    app.store
        .commit(
            &[Op::EndLease(id.to_owned())],
            &[AuditEvent {
                kind: "lease.ended".into(),
                actor: actor.to_owned(),
                subject: format!("lease:{id}"),
                outcome: "ok".into(),
                detail: json!({}),
            }],
        )
        .await
        .map_err(conflict)?;
    app.lease_changes.notify_one();
    Ok(())
}

// ---- Workloads ------------------------------------------------------------------------------

pub fn workload_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/db/creds/{role}", post(creds))
        .route("/v1/db/leases/{id}/renew", post(renew))
        .route("/v1/db/leases/{id}/revoke", post(revoke))
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
async fn creds(
    State(app): State<Arc<App>>,
    Path(role): Path<String>,
    conn: ConnInfo,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = creds_request(&body)?;
    let role = label(&role, "role")?;
    let secret = role_secret(&role)?;
    let reader =
        crate::vault::authorize(&app, &conn, &headers, &secret, SecretAction::Read).await?;
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
        state: "active".into(),
        revoked_at: None,
        attempts: 0,
        last_error: None,
    };
    // Recorded first (fail closed): a role exists only with a lease that says to drop it.
    app.store
        .commit(
            &[Op::InsertLease(lease.clone())],
            &[AuditEvent {
                kind: "lease.created".into(),
                actor: reader.to_string(),
                subject: format!("lease:{id}"),
                outcome: "ok".into(),
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
        "database": c.url,
        "expires_at": lease.expires_at,
        "max_expires_at": lease.max_expires_at,
        "lease_duration": ttl,
    })))
}

/// The holder's own lease, or 404 (another workload's leases are not its business).
async fn own_lease(
    app: &App,
    conn: &ConnInfo,
    headers: &HeaderMap,
    id: &str,
) -> Result<(LeaseRecord, tessera_core::SpiffeId), ApiError> {
    let who = crate::vault::identify(app, conn, headers)?;
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
async fn renew(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    conn: ConnInfo,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = creds_request(&body)?;
    let (lease, who) = own_lease(&app, &conn, &headers, &id).await?;
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
                kind: "lease.renewed".into(),
                actor: who.to_string(),
                subject: format!("lease:{id}"),
                outcome: "ok".into(),
                detail: json!({"expires_at": expires_at}),
            }],
        )
        .await
        .map_err(conflict)?;
    Ok(Json(
        json!({"lease_id": id, "expires_at": expires_at, "at_maximum": expires_at == lease.max_expires_at}),
    ))
}

/// `POST /v1/db/leases/ID/revoke`: the holder gives its lease back.
async fn revoke(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    conn: ConnInfo,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, who) = own_lease(&app, &conn, &headers, &id).await?;
    end(&app, &id, who.as_str()).await?;
    Ok(Json(json!({"lease_id": id, "state": "revoking"})))
}

// ---- Revocation -----------------------------------------------------------------------------

/// Drops the roles of leases that ended (or whose workload was revoked), every second or when
/// told; a failure is retried on the next round and said in the lease and the log.
pub fn spawn_revoker(
    app: Arc<App>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut round = 0u64;
        loop {
            if round.is_multiple_of(10) {
                if let Err(e) = end_leases_of_revoked_workloads(&app).await {
                    tracing::warn!(error = %e, "checking leases of revoked workloads failed");
                }
            }
            round += 1;
            if let Err(e) = revoke_due(&app).await {
                tracing::warn!(error = %e, "lease revocation round failed; retrying");
            }
            let wake = tokio::time::timeout(Duration::from_secs(1), app.lease_changes.notified());
            tokio::select! {
                _ = wake => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    })
}

async fn end_leases_of_revoked_workloads(app: &App) -> Result<(), ApiError> {
    let snap = app.snapshot();
    for l in app.store.leases(LeaseFilter::Open).await? {
        let revoked = tessera_core::SpiffeId::parse(&l.workload)
            .ok()
            .and_then(|id| snap.workloads.get(&id).map(|w| w.revoked_at.is_some()))
            .unwrap_or(true);
        if revoked && l.state == "active" {
            end(app, &l.id, "server").await?;
        }
    }
    Ok(())
}

async fn revoke_due(app: &App) -> Result<(), ApiError> {
    let now = tessera_core::now_unix();
    for l in app.store.leases(LeaseFilter::Due(now)).await? {
        let done = match app.store.db_connection(&l.connection).await? {
            None => Err("the lease's database connection is no longer declared".to_owned()),
            Some(c) => match pool(app, &c).await {
                Err(e) => Err(e.to_string()),
                Ok(p) => {
                    let serial = app.db_pools.serial(&c.name);
                    let _one = serial.lock().await;
                    drop_role(&p, &l).await.map_err(|e| e.to_string())
                }
            },
        };
        let (op, event) = match done {
            Ok(()) => (
                Op::LeaseRevocation {
                    id: l.id.clone(),
                    revoked_at: Some(now),
                    error: None,
                },
                Some(AuditEvent {
                    kind: "lease.revoked".into(),
                    actor: "server".into(),
                    subject: format!("lease:{}", l.id),
                    outcome: "ok".into(),
                    detail: json!({"role": l.role, "username": l.username, "workload": l.workload,
                                   "reason": if l.state == "active" { "expired" } else { "revoked" }}),
                }),
            ),
            Err(e) => {
                tracing::warn!(lease = %l.id, username = %l.username, error = %e,
                    "could not drop a lease's role; retrying until it is done");
                let first = l.attempts == 0 || l.last_error.is_none();
                (
                    Op::LeaseRevocation {
                        id: l.id.clone(),
                        revoked_at: None,
                        error: Some(e.chars().take(300).collect()),
                    },
                    first.then(|| AuditEvent {
                        kind: "lease.revoke_failed".into(),
                        actor: "server".into(),
                        subject: format!("lease:{}", l.id),
                        outcome: "error".into(),
                        detail: json!({"error": e.chars().take(300).collect::<String>(), "retrying": true}),
                    }),
                )
            }
        };
        app.store.commit(&[op], event.as_slice()).await?;
    }
    Ok(())
}

async fn drop_role(pool: &PgPool, l: &LeaseRecord) -> Result<(), sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(l.username.clone())
        .fetch_optional(pool)
        .await?
        .is_some();
    if exists {
        run(pool, &l.revocation).await?;
    }
    Ok(())
}
