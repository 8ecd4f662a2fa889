//! The agent's own admin socket, `DATA/admin.sock`: for the agent's operator (its own unix user
//! or root), never for workloads. `GET /v1/attest?pid=N` attests a process as the Workload API
//! would and says which registrations its selectors match, and which they nearly match (for
//! `tessera agent attest --pid`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::{attest, Agent, AgentError};

/// What `agent attest --pid` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttestReport {
    pub pid: i32,
    /// Every selector the process has.
    pub selectors: Vec<String>,
    /// Registrations it gets.
    pub matches: Vec<String>,
    /// Registrations with some of their selectors matched: the ones missing.
    pub near: Vec<NearMiss>,
    /// Why the process could not be attested in full (its runtime or kubelet failed): it
    /// then gets no SVID at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NearMiss {
    pub spiffe_id: String,
    pub missing: Vec<String>,
}

/// The admin socket's path in the agent's data folder.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": "invalid_request", "error_description": why.into()})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct AttestQuery {
    pid: i32,
}

async fn get_attest(State(agent): State<Arc<Agent>>, Query(q): Query<AttestQuery>) -> Response {
    if q.pid <= 0 {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a process id", q.pid),
        );
    }
    let a = agent.clone();
    let attested = tokio::task::spawn_blocking(move || {
        let peer = attest::peer_of(q.pid)?;
        attest::attest(peer, a.digests(), true)
    })
    .await;
    let mut p = match attested {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return refuse(StatusCode::NOT_FOUND, e.to_string()),
        Err(_) => return refuse(StatusCode::SERVICE_UNAVAILABLE, "attestation could not run"),
    };
    let refused = agent.enrich(&mut p).await.err();
    let state = agent.state();
    let mut matches = Vec::new();
    let mut near = Vec::new();
    for r in state.registrations.values() {
        let missing: Vec<String> = r
            .selectors
            .iter()
            .filter(|s| !p.matches(s))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() && !r.selectors.is_empty() {
            matches.push(r.spiffe_id.to_string());
        } else if missing.len() < r.selectors.len() {
            near.push(NearMiss {
                spiffe_id: r.spiffe_id.to_string(),
                missing,
            });
        }
    }
    matches.sort();
    near.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
    if refused.is_some() {
        // As the Workload API would: a caller whose runtime or kubelet failed gets nothing.
        matches.clear();
    }
    Json(AttestReport {
        pid: p.pid,
        selectors: p.selectors(),
        matches,
        near,
        refused,
    })
    .into_response()
}

/// Binds the admin socket (mode 0600; a stale one is replaced). Another agent serving on the
/// same data folder stops this one; a socket that cannot be made (a data path too long for a
/// socket's name, say) only costs `agent attest`: the agent still serves workloads.
pub(crate) fn bind(data_dir: &Path) -> Result<Option<tokio::net::UnixListener>, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(crate::file_err(
            &path,
            "another agent is serving on this data folder",
        ));
    }
    let _ = std::fs::remove_file(&path);
    let bound = tokio::net::UnixListener::bind(&path).and_then(|l| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map(|()| l)
    });
    match bound {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(socket = %path.display(), error = %e, "no admin socket: `tessera agent attest` cannot reach this agent");
            Ok(None)
        }
    }
}

/// Serves the admin socket to the agent's own user and root only (the file mode says so too;
/// this holds where the mode was loosened or the folder shared).
pub(crate) async fn serve(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    let me = nix::unistd::geteuid().as_raw();
    let app = Router::new()
        .route("/v1/attest", get(get_attest))
        .with_state(agent);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == me || c.uid() == 0);
        if !allowed {
            continue;
        }
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
