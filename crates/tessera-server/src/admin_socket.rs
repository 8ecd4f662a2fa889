//! The admin API on `DATA/admin.sock` (0600): serves the admin router `router.rs` built, with
//! the connecting process's unix user (the kernel's peer credentials) as connect info for its
//! guard.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::start_error::StartError;

/// The connecting process's unix user, from the kernel.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub uid: Option<u32>,
}

/// Binds the socket now (refusing a data folder another server is using) and returns the
/// future that serves `router` on it until `stop`, then removes the socket.
pub(crate) fn serve(
    router: Router,
    path: &Path,
    mut stop: watch::Receiver<bool>,
) -> Result<impl Future<Output = ()> + Send + 'static, StartError> {
    let listen_err = |m: String| StartError::Listen {
        addr: path.display().to_string(),
        message: m,
    };
    if path.exists() {
        // A socket nobody answers on is left over from a stopped server; one that answers is a
        // server already running on this data folder.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(listen_err(
                "another server is using this data folder".into(),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| listen_err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| listen_err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| listen_err(e.to_string()))?;
    let path = path.to_path_buf();
    Ok(async move {
        // Only the server's own user can connect (0600); the cap still bounds what it holds.
        let gate = tessera_listen::Gate::new(tessera_listen::Limits::from_nofile(0.1));
        let mut backoff = tessera_listen::Backoff::new("admin socket");
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let Some((stream, _)) = backoff.take(accepted).await else {
                continue;
            };
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let Ok(ticket) = gate.admit(tessera_listen::Source::Uid(uid.unwrap_or(u32::MAX)))
            else {
                continue;
            };
            let router = router.clone().layer(Extension(ConnectInfo(Peer { uid })));
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper_util::service::TowerToHyperService::new(router);
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                tessera_listen::serve_http(stream, service, ticket, stopped).await;
            });
        }
        let _ = std::fs::remove_file(path);
    })
}
