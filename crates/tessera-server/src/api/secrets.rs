//! The vault over HTTP: workloads read secrets and their metadata with their own identity (a
//! Tessera token for the authority, a JWT-SVID, or the X.509-SVID of the connection), every read
//! on the record before the value leaves; administrators write, rotate, disable, delete, restore
//! and purge.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tessera_core::admin_api::{
    PutSecretRequest, SecretChanged, SecretDeleted, SecretDescription, SecretMetadata,
    SecretReaderInfo, SecretRequest, SecretValue, SecretVersionSet, SecretWritten,
};
use tessera_core::{Label, SecretName};
use tessera_policy::{Authn, Env, SecretAction};
use tessera_store::{AuditEvent, AuditKind, Op, Outcome, SecretRecord, SecretVersionRecord};
use tessera_vault::Envelope;

use crate::app::App;
use crate::domain::caller::Actor;
use crate::domain::secrets::{
    decide, entity, live, metadata, open, purge_one, subject, version_of, SecretsError,
    DEFAULT_RETENTION_SECS,
};
use crate::error::ApiError;
use crate::extract::SecretReader;
use crate::metrics::ResultLabels;

/// The longest a reader may wait for a new version in one request.
const MAX_WAIT_SECS: u64 = 60;

fn parse_name(name: &str) -> Result<SecretName, ApiError> {
    SecretName::parse(name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub(crate) fn workload_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/secrets/{*name}", get(read_secret))
        .route("/v1/secret-metadata/{*name}", get(read_metadata))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    version: Option<i64>,
    /// Long poll: answer when the current version is newer than `after`, or 304 after `wait`
    /// seconds (at most 60).
    after: Option<i64>,
    wait: Option<u64>,
}

/// `GET /v1/secrets/NAME[?version=N][&after=V&wait=S]`: the value, for a workload allowed to read it.
async fn read_secret(
    State(app): State<Arc<App>>,
    SecretReader(reader): SecretReader,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let name = parse_name(&name)?;
    let snap = app.snapshot();
    let (who, authn) = (&reader.id, reader.authn);
    // Metadata and the version in one round trip; the version is unused if the caller may not
    // read (the decision needs the metadata).
    let mut found = app
        .store
        .secret_with_version(name.as_str(), q.version)
        .await?;
    let meta = found.as_ref().map(|(s, _)| s);
    decide(&app, &snap, &reader, &name, meta, SecretAction::Read).await?;
    if let Some(after) = q.after {
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(q.wait.unwrap_or(30).min(MAX_WAIT_SECS));
        let mut changes = app.secret_changes.subscribe();
        while found
            .as_ref()
            .is_some_and(|(s, _)| s.current_version <= after && s.deleted_at.is_none())
        {
            // Woken by a write on this server; other servers' writes are seen within a second.
            let tick = tokio::time::sleep(Duration::from_secs(1));
            tokio::select! {
                _ = changes.changed() => {}
                () = tick => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(StatusCode::NOT_MODIFIED.into_response());
                }
            }
            found = app
                .store
                .secret_with_version(name.as_str(), q.version)
                .await?;
        }
    }
    let (s, v) = found.map_or((None, None), |(s, v)| (Some(s), v));
    let s = live(&name, s)?;
    let v = v.ok_or_else(|| {
        ApiError::NotFound(format!(
            "secret `{name}` has no version {}",
            q.version.unwrap_or(s.current_version)
        ))
    })?;
    let version = v.version;
    let now = tessera_core::now_unix();
    if !v.enabled {
        return Err(ApiError::Forbidden(format!(
            "version {version} of secret `{name}` is disabled"
        )));
    }
    if v.not_before.is_some_and(|nbf| now < nbf) {
        return Err(ApiError::Forbidden(format!(
            "version {version} of secret `{name}` is not valid yet"
        )));
    }
    if v.expires_at.is_some_and(|exp| exp <= now) {
        return Err(ApiError::Forbidden(format!(
            "version {version} of secret `{name}` has expired"
        )));
    }
    let value = open(&app, &name, &v)?;
    // Fail closed: the value leaves only once its read is on the record.
    app.audit
        .append(AuditEvent {
            kind: AuditKind::SecretRead,
            actor: who.to_string(),
            subject: subject(&name),
            outcome: Outcome::Ok,
            detail: json!({"version": version, "authn": authn.as_str()}),
        })
        .await
        .inspect_err(|_| {
            app.metrics.audit_failures.inc();
        })?;
    app.metrics
        .secret_reads
        .get_or_create(&ResultLabels { result: "ok" })
        .inc();
    let mut body = json!({
        "name": name,
        "version": version,
        "current_version": s.current_version,
        "content_type": s.content_type,
        "created_at": v.created_at,
        "expires_at": v.expires_at,
        "value_base64": STANDARD.encode(&value),
    });
    if let (Ok(text), Value::Object(m)) = (String::from_utf8(value), &mut body) {
        m.insert("value".into(), Value::String(text));
    }
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// `GET /v1/secret-metadata/NAME`: owner, versions and dates, never values.
async fn read_metadata(
    State(app): State<Arc<App>>,
    SecretReader(reader): SecretReader,
    Path(name): Path<String>,
) -> Result<Json<SecretMetadata>, ApiError> {
    let name = parse_name(&name)?;
    let snap = app.snapshot();
    let s = app.store.secret(name.as_str()).await?;
    decide(
        &app,
        &snap,
        &reader,
        &name,
        s.as_ref(),
        SecretAction::Describe,
    )
    .await?;
    let s = live(&name, s)?;
    let versions = app.store.secret_versions(name.as_str()).await?;
    let current = versions.iter().find(|v| v.version == s.current_version);
    Ok(Json(metadata(
        &s,
        current,
        Some(&versions),
        tessera_core::now_unix(),
    )))
}

// ---- Admin side -----------------------------------------------------------------------------

pub(crate) fn admin_routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/secrets", get(list_secrets))
        .route("/v1/secrets/put", post(put_secret))
        .route("/v1/secrets/get", post(admin_get))
        .route("/v1/secrets/describe", post(describe_secret))
        .route("/v1/secrets/version", post(set_version))
        .route("/v1/secrets/delete", post(delete_secret))
        .route("/v1/secrets/restore", post(restore_secret))
        .route("/v1/secrets/purge", post(purge_secret))
}

/// `POST /admin/v1/secrets/put`: a new secret (owner and purpose required) or a new version of
/// one; metadata given replaces what was stored.
async fn put_secret(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<PutSecretRequest>,
) -> Result<Json<SecretWritten>, ApiError> {
    let name = parse_name(&req.name)?;
    if name.as_str().starts_with("db/") {
        return Err(ApiError::BadRequest(
            "`db/` names the dynamic database roles (`tessera db role put`); choose another name"
                .into(),
        ));
    }
    let value = STANDARD
        .decode(req.value.as_bytes())
        .map_err(|_| ApiError::BadRequest("`value` must be base64".into()))?;
    if value.len() > tessera_vault::MAX_VALUE_BYTES {
        return Err(ApiError::TooLarge(format!(
            "a secret value is at most 25 KiB; this one is {} bytes",
            value.len()
        )));
    }
    if value.is_empty() {
        return Err(ApiError::BadRequest("the value is empty".into()));
    }
    if req.rotation_period.is_some_and(|p| p < 60) {
        return Err(ApiError::BadRequest(
            "`rotation_period` is at least a minute".into(),
        ));
    }
    if let (Some(nbf), Some(exp)) = (req.not_before, req.expires_at) {
        if exp <= nbf {
            return Err(ApiError::BadRequest(
                "`expires_at` must come after `not_before`".into(),
            ));
        }
    }
    let label = |v: &Option<String>, what: &str| -> Result<Option<String>, ApiError> {
        v.as_deref()
            .map(|s| {
                Label::parse(s)
                    .map(|l| l.to_string())
                    .map_err(|e| ApiError::BadRequest(format!("`{what}`: {e}")))
            })
            .transpose()
    };
    let (owner, environment) = (
        label(&req.owner, "owner")?,
        label(&req.environment, "environment")?,
    );
    let now = tessera_core::now_unix();
    let existing = app.store.secret(name.as_str()).await?;
    let mut meta = match existing {
        Some(s) if s.deleted_at.is_some() => {
            return Err(ApiError::Conflict(format!(
            "secret `{name}` is deleted: restore it (`tessera secret restore`) or purge it first"
        )))
        }
        Some(s) => s,
        None if req.rotate => {
            return Err(ApiError::NotFound(format!("no secret `{name}` to rotate")))
        }
        None => SecretRecord {
            name: name.to_string(),
            owner: owner
                .clone()
                .ok_or_else(|| ApiError::BadRequest("a new secret needs an `owner`".into()))?,
            purpose: req
                .purpose
                .clone()
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| ApiError::BadRequest("a new secret needs a `purpose`".into()))?,
            content_type: "text/plain".into(),
            environment: String::new(),
            tags: BTreeMap::new(),
            rotation_period: None,
            current_version: 0,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            purge_after: None,
        },
    };
    if let Some(o) = owner {
        meta.owner = o;
    }
    if let Some(p) = req.purpose.filter(|p| !p.trim().is_empty()) {
        meta.purpose = p.chars().take(500).collect();
    }
    if let Some(c) = req.content_type {
        meta.content_type = c.chars().take(100).collect();
    }
    if let Some(e) = environment {
        meta.environment = e;
    }
    if let Some(t) = req.tags {
        meta.tags = t;
    }
    if req.rotation_period.is_some() {
        meta.rotation_period = req.rotation_period;
    }
    meta.updated_at = now;
    let version = meta.current_version + 1;
    let sealed = Envelope::new(app.kek())
        .seal(&name, version, &value)
        .map_err(ApiError::unavailable)?;
    let record = SecretVersionRecord {
        name: name.to_string(),
        version,
        ciphertext: sealed.ciphertext,
        wrapped_key: sealed.wrapped_key,
        created_at: now,
        created_by: actor.0.clone(),
        enabled: true,
        not_before: req.not_before,
        expires_at: req.expires_at,
    };
    let kind = if req.rotate {
        AuditKind::SecretRotated
    } else {
        AuditKind::SecretWritten
    };
    app.store
        .commit(
            &[Op::UpsertSecret(meta), Op::InsertSecretVersion(record)],
            &[AuditEvent {
                kind,
                actor: actor.0,
                subject: subject(&name),
                outcome: Outcome::Ok,
                detail: json!({"version": version, "bytes": value.len()}),
            }],
        )
        .await
        .map_err(SecretsError::from)?;
    app.secret_changes.send_modify(|n| *n += 1);
    Ok(Json(SecretWritten {
        name: name.to_string(),
        version,
    }))
}

/// `POST /admin/v1/secrets/get`: the value, for an administrator; audited like any read.
async fn admin_get(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<SecretRequest>,
) -> Result<Json<SecretValue>, ApiError> {
    let name = parse_name(&req.name)?;
    let s = live(&name, app.store.secret(name.as_str()).await?)?;
    let v = version_of(&app, &name, &s, req.version).await?;
    let version = v.version;
    let value = open(&app, &name, &v)?;
    app.audit
        .append(AuditEvent {
            kind: AuditKind::SecretRead,
            actor: actor.0,
            subject: subject(&name),
            outcome: Outcome::Ok,
            detail: json!({"version": version, "authn": "admin"}),
        })
        .await
        .inspect_err(|_| {
            app.metrics.audit_failures.inc();
        })?;
    Ok(Json(SecretValue {
        name: name.to_string(),
        version,
        enabled: v.enabled,
        value_base64: STANDARD.encode(&value),
    }))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    deleted: bool,
}

/// `GET /admin/v1/secrets[?deleted=true]`: metadata of every secret, with what is overdue.
async fn list_secrets(
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<SecretMetadata>>, ApiError> {
    let now = tessera_core::now_unix();
    let mut out = Vec::new();
    for s in app.store.secrets(q.deleted).await? {
        let current = app.store.secret_version(&s.name, s.current_version).await?;
        out.push(metadata(&s, current.as_ref(), None, now));
    }
    Ok(Json(out))
}

/// `POST /admin/v1/secrets/describe`: metadata, versions (never values), who may read it and
/// who may see its metadata under the policy in force.
async fn describe_secret(
    State(app): State<Arc<App>>,
    Json(req): Json<SecretRequest>,
) -> Result<Json<SecretDescription>, ApiError> {
    let name = parse_name(&req.name)?;
    let s = app
        .store
        .secret(name.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no secret `{name}`")))?;
    let versions = app.store.secret_versions(name.as_str()).await?;
    let snap = app.snapshot();
    let e = entity(&app, &name, Some(&s))?;
    let env = Env::now();
    let (mut readers, mut metadata_readers) = (Vec::new(), Vec::new());
    for w in snap.workloads.values().filter(|w| w.revoked_at.is_none()) {
        let id = &w.spec.id;
        let may = |a| snap.engine.decide_secret(id, &e, a, Authn::Jwt, &env);
        let read = may(SecretAction::Read);
        if read.allowed {
            readers.push(SecretReaderInfo {
                workload: id.clone(),
                by: read.determined_by,
            });
        } else if may(SecretAction::Describe).allowed {
            metadata_readers.push(id.clone());
        }
    }
    let current = versions.iter().find(|v| v.version == s.current_version);
    Ok(Json(SecretDescription {
        metadata: metadata(&s, current, Some(&versions), tessera_core::now_unix()),
        readers,
        metadata_readers,
    }))
}

/// `POST /admin/v1/secrets/version`: enables or disables one version.
async fn set_version(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<SecretRequest>,
) -> Result<Json<SecretVersionSet>, ApiError> {
    let name = parse_name(&req.name)?;
    let (Some(version), Some(enabled)) = (req.version, req.enabled) else {
        return Err(ApiError::BadRequest(
            "`version` and `enabled` are required".into(),
        ));
    };
    app.store
        .commit(
            &[Op::SetSecretVersion {
                name: name.to_string(),
                version,
                enabled,
            }],
            &[AuditEvent {
                kind: if enabled {
                    AuditKind::SecretEnabled
                } else {
                    AuditKind::SecretDisabled
                },
                actor: actor.0,
                subject: subject(&name),
                outcome: Outcome::Ok,
                detail: json!({"version": version}),
            }],
        )
        .await
        .map_err(SecretsError::from)?;
    app.secret_changes.send_modify(|n| *n += 1);
    Ok(Json(SecretVersionSet {
        name: name.to_string(),
        version,
        enabled,
    }))
}

/// `POST /admin/v1/secrets/delete`: soft delete, restorable for the retention period.
async fn delete_secret(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<SecretRequest>,
) -> Result<Json<SecretDeleted>, ApiError> {
    let name = parse_name(&req.name)?;
    let retention = req.retention.unwrap_or(DEFAULT_RETENTION_SECS);
    if !(0..=365 * 24 * 3600).contains(&retention) {
        return Err(ApiError::BadRequest(
            "the retention is 0 to 365 days".into(),
        ));
    }
    let now = tessera_core::now_unix();
    app.store
        .commit(
            &[Op::DeleteSecret {
                name: name.to_string(),
                at: now,
                purge_after: now + retention,
            }],
            &[AuditEvent {
                kind: AuditKind::SecretDeleted,
                actor: actor.0,
                subject: subject(&name),
                outcome: Outcome::Ok,
                detail: json!({"purge_after": now + retention}),
            }],
        )
        .await
        .map_err(SecretsError::from)?;
    app.secret_changes.send_modify(|n| *n += 1);
    Ok(Json(SecretDeleted {
        name: name.to_string(),
        deleted_at: now,
        purge_after: now + retention,
    }))
}

/// `POST /admin/v1/secrets/restore`: undoes a delete.
async fn restore_secret(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<SecretRequest>,
) -> Result<Json<SecretChanged>, ApiError> {
    let name = parse_name(&req.name)?;
    app.store
        .commit(
            &[Op::RestoreSecret(name.to_string())],
            &[AuditEvent {
                kind: AuditKind::SecretRestored,
                actor: actor.0,
                subject: subject(&name),
                outcome: Outcome::Ok,
                detail: json!({}),
            }],
        )
        .await
        .map_err(SecretsError::from)?;
    app.secret_changes.send_modify(|n| *n += 1);
    Ok(Json(SecretChanged {
        name: name.to_string(),
        restored: Some(true),
        purged: None,
    }))
}

/// `POST /admin/v1/secrets/purge`: removes a deleted secret and all its versions for good.
async fn purge_secret(
    State(app): State<Arc<App>>,
    actor: Actor,
    Json(req): Json<SecretRequest>,
) -> Result<Json<SecretChanged>, ApiError> {
    let name = parse_name(&req.name)?;
    purge_one(&app, &name, &actor.0).await?;
    Ok(Json(SecretChanged {
        name: name.to_string(),
        restored: None,
        purged: Some(true),
    }))
}
