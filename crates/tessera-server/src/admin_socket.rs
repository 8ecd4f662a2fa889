//! The admin API on `DATA/admin.sock` (0600): serves the admin router `router.rs` built, with
//! the connecting process's unix user (the kernel's peer credentials) as connect info for its
//! guard.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::start_error::StartError;

/// The connecting process's unix user, from the kernel.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Self {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
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
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<Peer>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        {
            tracing::error!(error = %e, "admin socket stopped");
        }
        let _ = std::fs::remove_file(path);
    })
}
