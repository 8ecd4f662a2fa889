//! Dynamic PostgreSQL credentials, the authority's side: a role per lease made from its
//! template, and the revoker's rounds that drop the roles of leases that ended (or whose workload
//! was revoked), retrying a database that is down until the drop is done.

use std::time::Duration;

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tessera_core::{Label, SecretName};
use tessera_store::{
    AuditEvent, AuditKind, DbConnectionRecord, LeaseFilter, LeaseRecord, LeaseState, Op, Outcome,
    StoreError,
};

use crate::app::db_pools::PoolKey;
use crate::app::App;
use crate::domain::secrets::{current_value, SecretsError};

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached or refused a statement.
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Store(StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

impl From<StoreError> for LeaseError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Conflict(m),
            other => Self::Store(other),
        }
    }
}

/// A lease's lifetime when neither the role nor the request says.
pub(crate) const DEFAULT_TTL: i64 = 3600;

/// The longest a role template may let a lease live.
pub(crate) const MAX_TTL_CAP: i64 = 30 * 24 * 3600;

/// The secret name a role is read as in policies: `db/ROLE`.
pub(crate) fn role_secret(role: &Label) -> Result<SecretName, LeaseError> {
    SecretName::parse(&format!("db/{}", role.as_str().to_ascii_lowercase()))
        .map_err(|e| LeaseError::Invalid(e.to_string()))
}

/// An admin pool to `conn`, made anew when its password secret has a new version.
pub(crate) async fn pool(app: &App, conn: &DbConnectionRecord) -> Result<PgPool, LeaseError> {
    let name = SecretName::parse(&conn.password_secret)
        .map_err(|e| LeaseError::Unavailable(e.to_string()))?;
    let (version, password) = current_value(app, &name).await?;
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
        .map_err(|_| LeaseError::Unavailable("the admin password is not text".into()))?;
    let opts: PgConnectOptions = conn
        .url
        .parse::<PgConnectOptions>()
        .map_err(|e| LeaseError::Unavailable(format!("database `{}`: {e}", conn.name)))?
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
pub(crate) async fn run(pool: &PgPool, statements: &[String]) -> Result<(), sqlx::Error> {
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

/// Ends a lease now: its role is dropped by the revoker within a second.
pub(crate) async fn end(app: &App, id: &str, actor: &str) -> Result<(), LeaseError> {
    app.store
        .commit(
            &[Op::EndLease(id.to_owned())],
            &[AuditEvent {
                kind: AuditKind::LeaseEnded,
                actor: actor.to_owned(),
                subject: format!("lease:{id}"),
                outcome: Outcome::Ok,
                detail: json!({}),
            }],
        )
        .await?;
    app.lease_changes.notify_one();
    Ok(())
}

// ---- Workloads ------------------------------------------------------------------------------

/// Ends the open leases of workloads that were revoked or removed, or that are no longer
/// granted their role (decided as for a reader over mTLS with a token, the strongest proof:
/// a holder that could renew under no circumstance loses its lease).
pub(crate) async fn end_leases_of_revoked_workloads(app: &App) -> Result<(), LeaseError> {
    let snap = app.snapshot();
    let env = tessera_policy::Env::now();
    for l in app.store.leases(LeaseFilter::Open).await? {
        let holder = tessera_core::SpiffeId::parse(&l.workload).ok();
        let revoked = holder
            .as_ref()
            .and_then(|id| snap.workloads.get(id).map(|w| w.revoked_at.is_some()))
            .unwrap_or(true);
        let ungranted = || {
            let (Some(id), Ok(role)) = (holder.as_ref(), tessera_core::Label::parse(&l.role))
            else {
                return true;
            };
            let Ok(name) = role_secret(&role) else {
                return true;
            };
            match crate::domain::secrets::entity(app, &name, None) {
                Ok(e) => {
                    !snap
                        .engine
                        .decide_secret(
                            id,
                            &e,
                            tessera_policy::SecretAction::Read,
                            tessera_policy::Authn::MtlsJwt,
                            &env,
                        )
                        .allowed
                }
                Err(_) => false,
            }
        };
        if l.state == LeaseState::Active && (revoked || ungranted()) {
            end(app, &l.id, "server").await?;
        }
    }
    Ok(())
}

/// Drops the roles of leases that are due; a failure is retried on the next round and said in
/// the lease and the log.
pub(crate) async fn revoke_due(app: &App) -> Result<(), LeaseError> {
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
                    kind: AuditKind::LeaseRevoked,
                    actor: "server".into(),
                    subject: format!("lease:{}", l.id),
                    outcome: Outcome::Ok,
                    detail: json!({"role": l.role, "username": l.username, "workload": l.workload,
                                   "reason": if l.state == LeaseState::Active { "expired" } else { "revoked" }}),
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
                        kind: AuditKind::LeaseRevokeFailed,
                        actor: "server".into(),
                        subject: format!("lease:{}", l.id),
                        outcome: Outcome::Error,
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
