//! The inbound sidecar's connections to its upstream, owned by the downstream connection that
//! uses them.
//!
//! A pooled client shared by every connection (hyper's) drives each upstream connection from a
//! task of its own, so every request crossed two tasks and usually both cores. Here the
//! upstream connections are driven by the downstream connection's own task ([`Driver`], polled
//! beside it), reused only by it, bounded, and closed with it.
//!
//! A downstream connection's first request goes through a [`Pool`] shared by all of them
//! instead: a client that opens a connection per request would otherwise open an upstream
//! connection per request too. From its second request on, a connection has shown it is kept
//! alive, and gets its own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
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
    #[error("upstream HTTP: {0}")]
    Pooled(#[from] hyper_util::client::legacy::Error),
    #[error("bad request target")]
    Target,
}

/// Upstream connections shared by every downstream connection, each driven by a task of its
/// own: for first requests.
pub(crate) struct Pool {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Pool {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }
}

type Driving = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

struct Shared {
    addr: SocketAddr,
    h2: bool,
    pool: Arc<Pool>,
    /// Whether a request went through the shared pool already.
    first_sent: std::sync::atomic::AtomicBool,
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
    pub(crate) fn new(addr: SocketAddr, h2: bool, pool: Arc<Pool>) -> (Self, Driver) {
        let (drive, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            addr,
            h2,
            pool,
            first_sent: std::sync::atomic::AtomicBool::new(false),
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
        use std::sync::atomic::Ordering;
        if !self.0.first_sent.swap(true, Ordering::Relaxed) {
            return self.pooled(req).await;
        }
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

    /// Through the shared pool, which needs the upstream named in the request.
    async fn pooled(&self, req: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        parts.uri = crate::retarget(&parts.uri, self.0.addr).ok_or(UpstreamError::Target)?;
        let pool = &self.0.pool;
        let client = if self.0.h2 { &pool.http2 } else { &pool.http1 };
        let resp = client.request(Request::from_parts(parts, body)).await?;
        Ok(crate::relay(resp))
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
            // Multiplexed: every later request of this downstream connection shares it.
            if let Ok(mut idle) = self.0.idle.lock() {
                idle.push(Sender::H2(s.clone()));
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An HTTP/1.1 upstream that counts its connections and the ones closed, answering each
    /// request `ok`.
    async fn upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, c) = (opened.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                o.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        (addr, opened, closed)
    }

    fn get(path: &str) -> Request<Body> {
        let body = crate::full(bytes::Bytes::new());
        Request::builder()
            .uri(path)
            .header(http::header::HOST, "upstream")
            .body(body)
            .unwrap()
    }

    async fn text(r: Response<Body>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_kept_alive_connection_reuses_its_own_upstream_connection_and_closes_it() {
        let (addr, opened, closed) = upstream().await;
        let pool = Arc::new(Pool::new());
        let (up, driver) = Upstream::new(addr, false, pool.clone());
        let downstream = async {
            // The first request through the shared pool, then five on one connection of its own.
            for _ in 0..6 {
                let r = up.request(get("/x")).await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(text(r).await, "ok");
            }
            // Two at once: a second connection of its own.
            let (a, b) = tokio::join!(up.request(get("/a")), up.request(get("/b")));
            assert_eq!(text(a.unwrap()).await, "ok");
            assert_eq!(text(b.unwrap()).await, "ok");
        };
        tokio::select! {
            () = downstream => {}
            () = driver.run() => unreachable!("the driver never ends on its own"),
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            3,
            "the pool's, then two of its own"
        );
        // The downstream connection ends (its task drops the driver and the handle): its own
        // upstream connections close; the pool's stays.
        drop(up);
        for _ in 0..100 {
            if closed.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 2);
        drop(pool);
    }

    #[tokio::test]
    async fn an_h2c_upstream_connection_carries_every_later_request() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(crate::full(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let (up, driver) = Upstream::new(addr, true, Arc::new(Pool::new()));
        let requests = async {
            for _ in 0..5 {
                let r = up.request(get("http://upstream/x")).await.unwrap();
                assert_eq!(text(r).await, "ok");
            }
            let (a, b) = tokio::join!(
                up.request(get("http://upstream/a")),
                up.request(get("http://upstream/b"))
            );
            assert_eq!(text(a.unwrap()).await, "ok");
            assert_eq!(text(b.unwrap()).await, "ok");
        };
        tokio::select! {
            () = requests => {}
            () = driver.run() => unreachable!(),
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "the pool's, then one of its own for every later request"
        );
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error_not_a_hang() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (up, driver) = Upstream::new(addr, false, Arc::new(Pool::new()));
        let requests = async {
            assert!(up.request(get("/first")).await.is_err());
            assert!(matches!(
                up.request(get("/second")).await,
                Err(UpstreamError::Connect { .. })
            ));
        };
        tokio::select! {
            () = requests => {}
            () = driver.run() => unreachable!(),
        }
    }
}
