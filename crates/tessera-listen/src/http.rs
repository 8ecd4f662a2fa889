//! One HTTP connection under the listener's limits: the request head within `head_timeout`,
//! closed when quiet for `idle_timeout` with no request in flight, or when the gate evicts it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::gate::{Activity, BusyGuard, Requests, Ticket};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one connection until it ends, is evicted, goes quiet, or `stop` resolves (then it
/// finishes the requests in flight, for at most the idle timeout).
pub async fn serve_http<I, S, B>(io: I, service: S, ticket: Ticket, stop: impl Future<Output = ()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let limits = *ticket.limits();
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: ticket.activity(),
        linger: None,
    });
    let service = Counted {
        inner: service,
        requests: ticket.requests(),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.head_timeout)
        .max_concurrent_streams(256);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::pin!(stop);
    let check = (limits.idle_timeout / 4).max(std::time::Duration::from_millis(250));
    let mut tick = tokio::time::interval(check);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = ticket.evicted() => {
                tracing::debug!("connection closed to make room for another");
                return;
            }
            () = &mut stop => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await;
                return;
            }
            _ = tick.tick() => {
                if ticket.is_idle() && ticket.quiet_for() >= limits.idle_timeout {
                    tracing::debug!("idle connection closed");
                    return;
                }
            }
        }
    }
}

/// The connection's I/O, recording when bytes move.
struct Tracked<I> {
    inner: I,
    activity: Activity,
    /// Set once the connection is shut down: how long and how much more is read and thrown
    /// away before the socket is dropped (nginx's lingering close). A response sent before the
    /// whole request was read (413, 401) is then read by the client; without it the kernel
    /// answers the unread bytes with a reset that can destroy the response in flight.
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

/// Lingering close: at most this long, at most this many bytes.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER)), 0));
        }
        let Some((deadline, drained)) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            if deadline.as_mut().poll(cx).is_ready() || *drained >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => *drained += buf.filled().len(),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The service, marking each request in flight until its response body is sent in full.
struct Counted<S> {
    inner: S,
    requests: Requests,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.requests.enter();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| CountedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted until it is sent or dropped.
struct CountedBody<B> {
    inner: B,
    _guard: BusyGuard,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{Gate, Source};
    use crate::limits::Limits;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            max_per_source: 4,
            handshake_timeout: Duration::from_secs(1),
            head_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(1),
        }
    }

    async fn start(gate: Gate) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, peer) = l.accept().await.unwrap();
                let Ok(ticket) = gate.admit(Source::Ip(peer.ip())) else {
                    continue;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                tokio::spawn(serve_http(s, svc, ticket, std::future::pending()));
            }
        });
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn half_a_head_is_closed_and_cannot_crowd_out_a_request() {
        let gate = Gate::new(limits());
        let addr = start(gate.clone()).await;
        // Eight held-open connections with half a request head, twice the cap.
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(gate.open() <= 4);
        assert!(get(addr).await.starts_with("HTTP/1.1 200"));
        // The head timeout closes what is left.
        let mut closed = 0;
        for mut s in held {
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
            if matches!(r, Ok(Ok(_)) | Ok(Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(closed, 8, "every held connection was closed");
    }
}
