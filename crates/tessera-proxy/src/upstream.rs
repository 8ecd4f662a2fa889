//! The inbound sidecar's connections to its upstream, owned by the downstream connection that
//! uses them.
//!
//! A pooled client shared by every connection (hyper's) drives each upstream connection from a
//! task of its own, so every request crossed two tasks and usually both cores. Here the
//! upstream connections are driven by the downstream connection's own task ([`Driver`], polled
//! beside it), reused only by it, bounded, and closed with it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::Body;

/// Idle upstream connections kept per downstream connection (HTTP/1.1; one HTTP/2 connection
/// carries every request).
const IDLE_PER_DOWNSTREAM: usize = 8;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot connect to the upstream `{addr}`: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream HTTP: {0}")]
    Http(#[from] hyper::Error),
}

type Driving = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

struct Shared {
    addr: SocketAddr,
    h2: bool,
    idle: Mutex<Vec<Sender>>,
    drive: mpsc::UnboundedSender<Driving>,
}

/// One downstream connection's way to the upstream. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Upstream(Arc<Shared>);

/// Drives a downstream connection's upstream connections; poll it beside the downstream
/// connection, in the same task, until that connection ends.
pub(crate) struct Driver {
    rx: mpsc::UnboundedReceiver<Driving>,
}

impl Driver {
    /// Never completes: its connections end with the downstream one (dropped with this).
    pub(crate) async fn run(mut self) {
        let mut conns = FuturesUnordered::new();
        loop {
            tokio::select! {
                c = self.rx.recv() => match c {
                    Some(c) => conns.push(c),
                    // No new connection can come: finish the open ones.
                    None => {
                        while conns.next().await.is_some() {}
                        std::future::pending::<()>().await;
                    }
                },
                Some(()) = conns.next(), if !conns.is_empty() => {}
            }
        }
    }
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr, h2: bool) -> (Self, Driver) {
        let (drive, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            addr,
            h2,
            idle: Mutex::new(Vec::new()),
            drive,
        };
        (Self(Arc::new(shared)), Driver { rx })
    }

    /// Sends `req` on an idle connection, or a new one. An HTTP/1.1 connection is reused once
    /// the response's body has been passed on (it returns when that body is dropped).
    pub(crate) async fn request(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let sender = match self.idle_sender().await {
            Some(s) => s,
            None => self.connect().await?,
        };
        match sender {
            Sender::H2(mut s) => {
                let resp = s.send_request(req).await?;
                Ok(crate::relay(resp))
            }
            Sender::H1(mut s) => {
                let resp = s.send_request(req).await?;
                let back = Back {
                    to: self.0.clone(),
                    sender: Some(s),
                };
                Ok(relay_returning(resp, back))
            }
        }
    }

    async fn idle_sender(&self) -> Option<Sender> {
        loop {
            let next = self.0.idle.lock().ok()?.pop()?;
            match next {
                Sender::H2(s) => {
                    if s.is_closed() {
                        continue;
                    }
                    // Multiplexed: it stays available to every request.
                    if let Ok(mut idle) = self.0.idle.lock() {
                        idle.push(Sender::H2(s.clone()));
                    }
                    return Some(Sender::H2(s));
                }
                // Idle means its last response is over; `ready` only waits for the connection
                // to notice, and fails if it closed meanwhile.
                Sender::H1(mut s) => {
                    if s.ready().await.is_ok() {
                        return Some(Sender::H1(s));
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let addr = self.0.addr;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        let (sender, driving): (Sender, Driving) = if self.0.h2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), io).await?;
            let s = Sender::H2(s);
            (
                s,
                Box::pin(async move {
                    if let Err(e) = c.await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                }),
            )
        } else {
            let (s, c) = http1::Builder::new().writev(true).handshake(io).await?;
            (
                Sender::H1(s),
                Box::pin(async move {
                    if let Err(e) = c.await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                }),
            )
        };
        // The driver lives as long as the downstream connection that owns this handle.
        let _ = self.0.drive.send(driving);
        Ok(sender)
    }
}

/// Puts an HTTP/1.1 connection back among the idle ones when dropped (after its response body
/// was passed on, or abandoned: then `ready` finds it closed and it is discarded).
struct Back {
    to: Arc<Shared>,
    sender: Option<http1::SendRequest<Body>>,
}

impl Back {
    /// Marks the guard as used by the closure that carries it.
    fn keep(&self) {}
}

impl Drop for Back {
    fn drop(&mut self) {
        let Some(s) = self.sender.take() else { return };
        if s.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.to.idle.lock() {
            if idle.len() < IDLE_PER_DOWNSTREAM {
                idle.push(Sender::H1(s));
            }
        }
    }
}

/// [`crate::relay`], with `back` dropped when the body is.
fn relay_returning(resp: Response<Incoming>, back: Back) -> Response<Body> {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    crate::strip_hop_by_hop(&mut parts.headers);
    let body = body
        .map_err(move |e| {
            back.keep();
            Box::new(e) as crate::BoxError
        })
        .boxed();
    Response::from_parts(parts, body)
}
