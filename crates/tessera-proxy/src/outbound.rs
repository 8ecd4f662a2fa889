//! The outbound sidecar: the application speaks plain HTTP to a loopback port; the proxy
//! originates mTLS with the workload's SVID and accepts only a server presenting exactly the
//! target's SPIFFE ID. Upstream connections are pooled and kept alive. Optionally it attaches an
//! access token for the target, obtained with the SVID itself (RFC 8705 `tls_client_auth`) and
//! so bound to it.
//!
//! Everything that depends on the SVID lives in one [`Generation`]: the connection pool (whose
//! handshakes all present that SVID) and the token bound to it. A rotation starts a new
//! generation for new requests; requests under way finish on theirs, so a token never travels
//! over a connection made with another certificate.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
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
    /// Attach an access token for the target to requests that carry no `Authorization`.
    pub token: Option<TokenSource>,
    /// The unix users whose processes may use this sidecar's identity (the owner of the
    /// connecting loopback socket, from the kernel). Empty: the sidecar's own user only.
    pub allowed_uids: Vec<u32>,
    /// What the authority has withdrawn (kept current by its change stream): no call leaves
    /// under a revoked identity or to a revoked target, and the pooled connections are dropped
    /// when either is withdrawn.
    pub revocations: tessera_verify::RevocationState,
}

/// The user this process runs as (the owner of `/proc/self`).
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Where access tokens come from: the authority's URL and the CA its TLS certificate chains to.
#[derive(Debug, Clone)]
pub struct TokenSource {
    /// The authority's base URL (`https://`: the SVID is presented in the TLS handshake).
    pub server: reqwest::Url,
    pub roots: Vec<CertificateDer<'static>>,
}

impl TokenSource {
    /// `server` and the PEM certificates of the CA(s) its TLS certificate chains to.
    pub fn from_pem(server: reqwest::Url, pem: &[u8]) -> Result<Self, ProxyError> {
        use rustls::pki_types::pem::PemObject;
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProxyError::Tls(format!("not PEM certificates: {e}")))?;
        if roots.is_empty() {
            return Err(ProxyError::Tls("no PEM certificate found".into()));
        }
        Ok(Self { server, roots })
    }
}

/// The client side of mTLS: the SVID `client` presents and a server that must be exactly
/// `target_id`, its chain checked against its own trust domain's bundle from `identity`.
pub fn tls_config(
    identity: Arc<Identity>,
    client: Arc<dyn ResolvesClientCert>,
    target_id: SpiffeId,
) -> Result<rustls::ClientConfig, ProxyError> {
    let verifier = tessera_ca::SpiffeServerVerifier::new(identity, target_id);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .dangerous()
        // Not weaker than webpki: `SpiffeServerVerifier` validates the chain with webpki
        // against the target's trust domain and then requires the exact SPIFFE ID; SPIFFE
        // authenticates by ID, not by DNS name, which is all this replaces.
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(client);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// One SVID, always: the certificate of a generation.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
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

/// What requests made with one SVID share: their connections and their token.
struct Generation {
    certified: Arc<CertifiedKey>,
    client: Client<MtlsConnector, Body>,
    token: Option<BoundToken>,
}

/// An access token for the target bound to the generation's SVID, refreshed at half its life.
struct BoundToken {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    client_id: String,
    audience: String,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    value: HeaderValue,
    refresh_at: std::time::Instant,
    expires_at: std::time::Instant,
}

/// A token request refused or failed: said to the application in a 502 body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TokenError(String);

impl BoundToken {
    async fn get(&self) -> Result<HeaderValue, TokenError> {
        let mut cached = self.cached.lock().await;
        let now = std::time::Instant::now();
        if let Some(c) = cached.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(c.value.clone());
        }
        match self.fetch().await {
            Ok((value, life)) => {
                *cached = Some(Cached {
                    value: value.clone(),
                    refresh_at: now + life / 2,
                    expires_at: now + life,
                });
                Ok(value)
            }
            // The authority is unreachable: the token held serves until it expires (the
            // receiving verifier's leeway covers one sent in its last second).
            Err(e) => match cached
                .as_ref()
                .filter(|c| now + Duration::from_secs(1) < c.expires_at)
            {
                Some(c) => {
                    tracing::warn!(error = %e, "token refresh failed; using the token held");
                    Ok(c.value.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fetch(&self) -> Result<(HeaderValue, Duration), TokenError> {
        #[derive(serde::Deserialize)]
        struct Ok {
            access_token: String,
            expires_in: u64,
        }
        #[derive(serde::Deserialize)]
        struct Refused {
            error: String,
            #[serde(default)]
            error_description: String,
        }
        let resp = self
            .http
            .post(self.endpoint.clone())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("audience", self.audience.as_str()),
            ])
            .send()
            .await
            .map_err(|e| TokenError(format!("the authority is unreachable: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| TokenError(format!("the authority's answer was cut: {e}")))?;
        if !status.is_success() {
            let why = serde_json::from_slice::<Refused>(&body).map_or_else(
                |_| format!("the authority answered {status}"),
                |r| format!("{}: {}", r.error, r.error_description),
            );
            return Err(TokenError(format!("no access token for the target: {why}")));
        }
        let ok: Ok = serde_json::from_slice(&body)
            .map_err(|e| TokenError(format!("the authority's token response: {e}")))?;
        let value = HeaderValue::try_from(format!("Bearer {}", ok.access_token))
            .map_err(|_| TokenError("the authority's token is not a header value".into()))?;
        Ok((value, Duration::from_secs(ok.expires_in)))
    }
}

struct Ctx {
    cfg: OutboundConfig,
    identity: Arc<Identity>,
    metrics: ProxyMetrics,
    generation: std::sync::RwLock<Option<Arc<Generation>>>,
}

impl Ctx {
    /// The generation of the SVID in force, starting a new one after a rotation.
    fn generation(&self) -> Result<Arc<Generation>, ProxyError> {
        let current = self
            .identity
            .current()
            .ok_or_else(|| ProxyError::Agent("no SVID yet".into()))?;
        let fresh = |g: &Option<Arc<Generation>>| {
            g.as_ref()
                .filter(|g| Arc::ptr_eq(&g.certified, &current.certified))
                .cloned()
        };
        if let Some(g) = self.generation.read().ok().and_then(|g| fresh(&g)) {
            return Ok(g);
        }
        let mut slot = self
            .generation
            .write()
            .map_err(|_| ProxyError::Agent("generation lock poisoned".into()))?;
        if let Some(g) = fresh(&slot) {
            return Ok(g);
        }
        let g = Arc::new(self.start_generation(&current)?);
        *slot = Some(g.clone());
        Ok(g)
    }

    fn start_generation(
        &self,
        current: &crate::identity::Current,
    ) -> Result<Generation, ProxyError> {
        let fixed: Arc<dyn ResolvesClientCert> = Arc::new(FixedCert(current.certified.clone()));
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(
            self.identity.clone(),
            fixed.clone(),
            self.cfg.target_id.clone(),
        )?));
        let connector = MtlsConnector {
            tls,
            target: self.cfg.target,
            timeout: self.cfg.connect_timeout,
            metrics: self.metrics.clone(),
        };
        let token = match &self.cfg.token {
            None => None,
            Some(source) => Some(bound_token(source, fixed, current, &self.cfg.target_id)?),
        };
        Ok(Generation {
            certified: current.certified.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            token,
        })
    }
}

fn bound_token(
    source: &TokenSource,
    fixed: Arc<dyn ResolvesClientCert>,
    current: &crate::identity::Current,
    target_id: &SpiffeId,
) -> Result<BoundToken, ProxyError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in &source.roots {
        roots
            .add(c.clone())
            .map_err(|e| ProxyError::Tls(format!("the authority's CA: {e}")))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(fixed);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    // The issuer the target's verifier expects is the URL both sides are given.
    let endpoint = source
        .server
        .join("token")
        .map_err(|e| ProxyError::Tls(format!("the authority's URL: {e}")))?;
    Ok(BoundToken {
        http,
        endpoint,
        client_id: current.spiffe_id.to_string(),
        audience: target_id.to_string(),
        cached: tokio::sync::Mutex::new(None),
    })
}

/// Serves the loopback port until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    cfg: OutboundConfig,
    identity: Arc<Identity>,
    metrics: ProxyMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    if cfg
        .token
        .as_ref()
        .is_some_and(|t| t.server.scheme() != "https")
    {
        return Err(ProxyError::Tls(
            "access tokens are requested over mutual TLS: the authority's URL must be https://"
                .into(),
        ));
    }
    let ctx = Arc::new(Ctx {
        cfg,
        identity,
        metrics,
        generation: std::sync::RwLock::new(None),
    });
    // The first generation now, so a misconfiguration is said at start.
    ctx.generation()?;
    // Ends with `serve`: a `JoinHandle` dropped would leave it waiting forever.
    let watcher = tokio::spawn(drop_pool_on_withdrawal(ctx.clone()));
    let result = accept_loop(&ctx, listener, &mut stop).await;
    watcher.abort();
    result
}

async fn accept_loop(
    ctx: &Arc<Ctx>,
    listener: TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    let allowed: std::sync::Arc<Vec<u32>> =
        std::sync::Arc::new(if ctx.cfg.allowed_uids.is_empty() {
            own_uid().into_iter().collect()
        } else {
            ctx.cfg.allowed_uids.clone()
        });
    tessera_listen::raise_nofile_limit();
    let gate = tessera_listen::Gate::new(tessera_listen::Limits::from_nofile(0.5));
    let mut backoff = tessera_listen::Backoff::new("outbound sidecar");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            () = crate::stopped(stop) => None,
        };
        let Some(accepted) = accepted else {
            return Ok(());
        };
        let Some((mut stream, peer)) = backoff.take(accepted).await else {
            continue;
        };
        let Ok(ticket) = gate.admit(tessera_listen::Source::Ip(peer.ip())) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let allowed = allowed.clone();
        tokio::spawn(async move {
            // The identity is lent only to the processes of allowed users: the kernel says
            // who owns the other end of this loopback connection.
            let owner = match stream.local_addr() {
                Ok(local) => tokio::task::spawn_blocking(move || {
                    tessera_agent::attest::tcp_socket_uid(peer, local)
                })
                .await
                .ok()
                .flatten(),
                Err(_) => None,
            };
            if !owner.is_some_and(|uid| allowed.contains(&uid)) {
                ctx.metrics.handshake_failed("local_user_refused");
                const BODY: &str = "this sidecar's identity is not for your unix user\n";
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(traced(&ctx, req).await) }
            });
            tessera_listen::serve_http(stream, service, ticket, std::future::pending()).await;
        });
    }
}

/// When this sidecar's identity or its target's is withdrawn, the generation (and with it the
/// pool of connections that present the SVID) is dropped; requests under way finish on it.
async fn drop_pool_on_withdrawal(ctx: Arc<Ctx>) {
    let mut withdrawals = ctx.cfg.revocations.withdrawals();
    loop {
        let id = match withdrawals.recv().await {
            Ok(tessera_verify::Withdrawn::Workload { id, .. }) => Some(id),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let me = ctx.identity.spiffe_id().map(|s| s.to_string());
        let ours = id.as_ref().is_none_or(|id| {
            id.as_str() == ctx.cfg.target_id.as_str() || me.as_deref() == Some(id.as_str())
        });
        if ours {
            if let Ok(mut g) = ctx.generation.write() {
                *g = None;
            }
        }
    }
}

/// [`forward`] inside the span of this hop (the client side of the mTLS call): the
/// application's trace continued, the target's identity and what became of the request.
async fn traced(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let span = tracing::info_span!(
        target: tessera_telemetry::TARGET,
        "outbound",
        "otel.name" = "tessera.proxy.outbound",
        "otel.kind" = "client",
        "otel.status_code" = tracing::field::Empty,
        "http.request.method" = req.method().as_str(),
        "server.address" = %ctx.cfg.target,
        "tessera.caller" = tracing::field::Empty,
        "tessera.target" = ctx.cfg.target_id.as_str(),
        "tessera.authn" = if ctx.cfg.token.is_some() { "mtls+jwt" } else { "mtls" },
        "tessera.outcome" = tracing::field::Empty,
        "http.response.status_code" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        return forward(ctx, req).await;
    }
    if let Some(me) = ctx.identity.spiffe_id() {
        span.record("tessera.caller", me.as_str());
    }
    tessera_telemetry::continue_trace(&span, req.headers());
    tessera_telemetry::within(span, forward(ctx, req)).await
}

async fn forward(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let me = ctx
        .identity
        .spiffe_id()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let revoked = &ctx.cfg.revocations;
    if revoked.workload_revoked(&me) || revoked.workload_revoked(ctx.cfg.target_id.as_str()) {
        outcome(ctx, &me, "revoked");
        return plain(
            StatusCode::FORBIDDEN,
            "this sidecar's identity or its target's has been revoked\n",
        );
    }
    if revoked.refuses_all() {
        outcome(ctx, &me, "revocation_stale");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sidecar does not know the authority's current revocations (fail closed)\n",
        );
    }
    let generation = match ctx.generation() {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "no SVID to call the target with");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no SVID yet\n");
        }
    };
    let (mut parts, body) = req.into_parts();
    let Some(uri) = crate::retarget(&parts.uri, ctx.cfg.target) else {
        return plain(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The application's own credential (e.g. a delegated token) is passed on as it is.
    if let (Some(token), false) = (
        &generation.token,
        parts.headers.contains_key(header::AUTHORIZATION),
    ) {
        match token.get().await {
            Ok(value) => {
                parts.headers.insert(header::AUTHORIZATION, value);
            }
            Err(e) => {
                outcome(ctx, &me, "no_token");
                tracing::warn!(error = %e, target = %ctx.cfg.target_id, "no access token");
                return plain(StatusCode::BAD_GATEWAY, format!("{e}\n"));
            }
        }
    }
    // The inbound sidecar continues this hop's trace.
    tessera_telemetry::inject(&tracing::Span::current(), &mut parts.headers);
    let out = Request::from_parts(
        parts,
        body.map_err(|e| Box::new(e) as crate::BoxError).boxed(),
    );
    match generation.client.request(out).await {
        Ok(resp) => {
            outcome(ctx, &me, "forwarded");
            crate::relay(resp)
        }
        Err(e) => {
            outcome(ctx, &me, "upstream_error");
            tracing::warn!(error = %e, target = %ctx.cfg.target_id, "the target refused or failed");
            plain(
                StatusCode::BAD_GATEWAY,
                "the target could not be reached over mutual TLS\n",
            )
        }
    }
}

/// Counts what became of a request and puts it on the request's span.
fn outcome(ctx: &Ctx, me: &str, what: &'static str) {
    ctx.metrics.request(me, ctx.cfg.target_id.as_str(), what);
    tracing::Span::current().record("tessera.outcome", what);
}
