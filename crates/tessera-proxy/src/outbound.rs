//! The outbound sidecar: the application speaks plain HTTP to a loopback port; the proxy
//! originates mTLS with the workload's SVID and accepts only a server presenting exactly the
//! target's SPIFFE ID. Upstream connections are pooled and kept alive.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tessera_core::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::{plain, provider, strip_hop_by_hop, Body, Identity, ProxyError, ProxyMetrics};

#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub target: SocketAddr,
    pub target_id: SpiffeId,
    pub connect_timeout: Duration,
}

/// The client side of mTLS: our SVID (current at each handshake) and a server that must be
/// exactly `target_id`, its chain checked against its own trust domain's bundle.
pub fn tls_config(
    identity: Arc<Identity>,
    target_id: SpiffeId,
) -> Result<rustls::ClientConfig, ProxyError> {
    let verifier = tessera_ca::SpiffeServerVerifier::new(identity.clone(), target_id);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .dangerous()
        // Not weaker than webpki: `SpiffeServerVerifier` validates the chain with webpki
        // against the target's trust domain and then requires the exact SPIFFE ID; SPIFFE
        // authenticates by ID, not by DNS name, which is all this replaces.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Dials the target and completes mTLS; hyper's pool keeps the connections.
#[derive(Clone)]
struct MtlsConnector {
    tls: tokio_rustls::TlsConnector,
    target: SocketAddr,
    timeout: Duration,
    metrics: ProxyMetrics,
}

struct MtlsStream(TokioIo<TlsStream<TcpStream>>);

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        let h2 = self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<http::Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<MtlsStream, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let dial = async {
                let tcp = TcpStream::connect(this.target).await?;
                let _ = tcp.set_nodelay(true);
                // SPIFFE names the server by its ID, checked by the verifier; an IP server name
                // sends no SNI.
                let name = ServerName::IpAddress(this.target.ip().into());
                this.tls.connect(name, tcp).await
            };
            match tokio::time::timeout(this.timeout, dial).await {
                Ok(Ok(tls)) => Ok(MtlsStream(TokioIo::new(tls))),
                Ok(Err(e)) => {
                    this.metrics.handshake_failed("upstream_tls");
                    Err(e)
                }
                Err(_) => {
                    this.metrics.handshake_failed("upstream_timeout");
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        })
    }
}

struct Ctx {
    cfg: OutboundConfig,
    identity: Arc<Identity>,
    metrics: ProxyMetrics,
    client: Client<MtlsConnector, Body>,
}

/// Serves the loopback port until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    cfg: OutboundConfig,
    identity: Arc<Identity>,
    metrics: ProxyMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(
        identity.clone(),
        cfg.target_id.clone(),
    )?));
    let connector = MtlsConnector {
        tls,
        target: cfg.target,
        timeout: cfg.connect_timeout,
        metrics: metrics.clone(),
    };
    let ctx = Arc::new(Ctx {
        client: Client::builder(TokioExecutor::new()).build(connector),
        cfg,
        identity,
        metrics,
    });
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            () = crate::stopped(&mut stop) => None,
        };
        let (stream, _) = match accepted {
            None => return Ok(()),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // E.g. out of file descriptors: wait a moment rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(forward(&ctx, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn forward(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let me = ctx
        .identity
        .spiffe_id()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{}{path}", ctx.cfg.target).parse::<http::Uri>() else {
        return plain(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let out = Request::from_parts(
        parts,
        body.map_err(|e| Box::new(e) as crate::BoxError).boxed(),
    );
    match ctx.client.request(out).await {
        Ok(resp) => {
            ctx.metrics
                .request(&me, ctx.cfg.target_id.as_str(), "forwarded");
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(
                parts,
                body.map_err(|e| Box::new(e) as crate::BoxError).boxed(),
            )
        }
        Err(e) => {
            ctx.metrics
                .request(&me, ctx.cfg.target_id.as_str(), "upstream_error");
            tracing::warn!(error = %e, target = %ctx.cfg.target_id, "the target refused or failed");
            plain(
                StatusCode::BAD_GATEWAY,
                "the target could not be reached over mutual TLS\n",
            )
        }
    }
}
