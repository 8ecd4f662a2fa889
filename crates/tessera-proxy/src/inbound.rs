//! The inbound sidecar: mTLS in, policy, plain HTTP to the upstream on loopback.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tessera_core::SpiffeId;
use tessera_policy::{Authn, Env};
use tessera_verify::Authorizer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::upstream::{Pool, Upstream};
use crate::{full, plain, provider, strip_hop_by_hop, Body, Identity, ProxyError, ProxyMetrics};

/// The header that tells the upstream who called; any incoming one is removed first.
pub const CALLER_HEADER: &str = "x-tessera-caller";

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub upstream: SocketAddr,
    /// Request bodies larger than this are refused (413).
    pub max_body: usize,
    /// A client must finish its TLS handshake, and each request's headers, within this.
    pub handshake_timeout: Duration,
    /// Largest request head (all headers) accepted.
    pub max_header_bytes: usize,
    /// Also require a bearer access token for this service, issued to the caller the client
    /// certificate names.
    pub require_token: Option<tessera_verify::Verifier>,
    /// The upstream speaks HTTP/2 without TLS (h2c, e.g. gRPC): requests go to it as HTTP/2.
    /// Otherwise every request, HTTP/2 ones included, goes to it as HTTP/1.1.
    pub upstream_h2: bool,
    /// What the authority has withdrawn (kept current by its change stream): a revoked
    /// workload's connections are refused at the handshake and closed when open.
    pub revocations: tessera_verify::RevocationState,
}

impl InboundConfig {
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            max_body: 10 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            require_token: None,
            upstream_h2: false,
            revocations: tessera_verify::RevocationState::default(),
        }
    }
}

struct Ctx {
    cfg: InboundConfig,
    identity: Arc<Identity>,
    authz: Authorizer,
    metrics: ProxyMetrics,
    /// Upstream connections for downstream connections' first requests (`upstream.rs`).
    pool: Arc<Pool>,
}

/// The TLS configuration: the SVID in force (resolved per handshake, so rotation needs no
/// restart) and a mandatory client certificate checked against the caller's own trust domain.
pub fn tls_config(identity: Arc<Identity>) -> Result<rustls::ServerConfig, ProxyError> {
    let verifier = tessera_ca::SpiffeClientVerifier::new(identity.clone(), true);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(identity);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: a resumed session skips the client certificate, so a caller's
    // rotated, expired or revoked SVID would go on being accepted. Every connection proves the
    // SVID in force.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Serves until `stop` turns true; then stops accepting, lets open connections finish their
/// requests (at most 10 s) and returns.
pub async fn serve(
    listener: TcpListener,
    cfg: InboundConfig,
    identity: Arc<Identity>,
    authz: Authorizer,
    metrics: ProxyMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ProxyError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(identity.clone())?));
    let ctx = Arc::new(Ctx {
        cfg,
        identity,
        authz,
        metrics,
        pool: Arc::new(Pool::new()),
    });
    let live = Arc::new(());
    tessera_listen::raise_nofile_limit();
    let gate = tessera_listen::Gate::new(tessera_listen::Limits::from_nofile(0.75));
    let mut backoff = tessera_listen::Backoff::new("inbound sidecar");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => Some(r),
            () = crate::stopped(&mut stop) => None,
        };
        let Some(accepted) = accepted else {
            break;
        };
        let Some((stream, peer)) = backoff.take(accepted).await else {
            continue;
        };
        // Past the cap the oldest idle connection is closed; none idle: this one is refused.
        let Ok(ticket) = gate.admit(tessera_listen::Source::Ip(peer.ip())) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (ctx, acceptor, stop, live) =
            (ctx.clone(), acceptor.clone(), stop.clone(), live.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = connection(ctx, acceptor, stream, peer, stop, ticket.requests()) => {}
                () = ticket.evicted() => {}
            }
            drop(live);
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&live) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn connection(
    ctx: Arc<Ctx>,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    requests: tessera_listen::gate::Requests,
) {
    let timeout = ctx.cfg.handshake_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            ctx.metrics.handshake_failed("plain_http");
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 34\r\n\r\nthis port speaks mutual TLS only\r\n")
                .await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            ctx.metrics.handshake_failed("timeout");
            return;
        }
    }
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            ctx.metrics.handshake_failed(handshake_reason(&e));
            tracing::debug!(error = %e, %peer, "TLS handshake refused");
            return;
        }
        Err(_) => {
            ctx.metrics.handshake_failed("timeout");
            return;
        }
    };
    // INVARIANT: the verifier made a client certificate mandatory and validated its chain and
    // its one SPIFFE ID, so a finished handshake has a leaf that parses.
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned());
    let caller = leaf
        .as_ref()
        .and_then(|leaf| tessera_ca::leaf_spiffe_id(leaf).ok())
        .zip(leaf);
    let Some((caller, leaf)) = caller else {
        ctx.metrics.handshake_failed("no_spiffe_id");
        return;
    };
    let Some(me) = ctx.identity.spiffe_id() else {
        return;
    };
    // Listen before checking, so that a revocation between the two still closes it.
    let mut withdrawals = ctx.cfg.revocations.withdrawals();
    if ctx.cfg.revocations.workload_revoked(caller.as_str()) {
        ctx.metrics.handshake_failed("revoked");
        tracing::info!(%caller, %peer, "refused a revoked workload's certificate");
        return;
    }
    let withdrawn = {
        let (caller, revocations) = (caller.to_string(), ctx.cfg.revocations.clone());
        async move {
            loop {
                match withdrawals.recv().await {
                    Ok(tessera_verify::Withdrawn::Workload { id, .. }) if id == caller => return,
                    Ok(_) => {}
                    // Fell behind: ask the state itself.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if revocations.workload_revoked(&caller) {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    };
    ctx.metrics.handshakes.inc();
    let conn = Arc::new(Conn {
        counters: ctx.metrics.for_pair(caller.as_str(), me.as_str()),
        target: me,
        caller,
        leaf,
        source: peer.ip(),
    });
    // This connection's own way to the upstream, driven by this task (`upstream.rs`).
    let (upstream, driver) = Upstream::new(ctx.cfg.upstream, ctx.cfg.upstream_h2, ctx.pool.clone());
    let driver = driver.run();
    tokio::pin!(driver);
    let service = {
        let ctx = ctx.clone();
        hyper::service::service_fn(move |req| {
            let (ctx, conn, upstream) = (ctx.clone(), conn.clone(), upstream.clone());
            // A request in flight keeps the connection from eviction.
            let busy = requests.enter();
            async move {
                let r = traced(&ctx, &conn, &upstream, req).await;
                drop(busy);
                Ok::<_, Infallible>(r)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        // One buffer per response: over TLS each write is a record and a syscall.
        .writev(false)
        .max_buf_size(ctx.cfg.max_header_bytes.max(8192));
    builder
        .http2()
        .max_header_list_size(u32::try_from(ctx.cfg.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        }
        // Never completes; polled so that the upstream connections make progress.
        () = driver.as_mut() => {}
        // The caller's identity was withdrawn: the connection is dropped, requests in flight
        // included.
        () = withdrawn => {
            ctx.metrics.closed_revoked.inc();
            tracing::info!(%peer, "closed a revoked workload's open connection");
        }
        () = crate::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            // The requests in flight still need their upstream connections driven.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = driver.as_mut() => {}
            }
        }
    }
}

/// A metric label for a refused handshake, from the rustls error inside the I/O error.
fn handshake_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::NotValidYet,
        ) => "certificate_time",
        // The SPIFFE verifier's refusals: another trust domain, not an SVID, a bad chain.
        rustls::Error::General(_) | rustls::Error::InvalidCertificate(_) => "rejected_certificate",
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerIncompatible(_) => "tls_protocol",
        _ => "tls",
    }
}

/// What a connection knows once its handshake is done.
struct Conn {
    caller: SpiffeId,
    /// This sidecar's own SPIFFE ID when the connection was accepted.
    target: SpiffeId,
    /// The caller's certificate, to which a certificate-bound token must be bound.
    leaf: rustls::pki_types::CertificateDer<'static>,
    source: IpAddr,
    counters: crate::metrics::PairCounters,
}

impl Conn {
    /// Counts a request's outcome and puts it on the request's span.
    fn outcome(&self, decision: &'static str) {
        let c = &self.counters;
        match decision {
            "allow" => c.allow.inc(),
            "limited" => c.limited.inc(),
            "too_large" => c.too_large.inc(),
            "bad_token" => c.bad_token.inc(),
            _ => c.deny.inc(),
        };
        tracing::Span::current().record("tessera.decision", decision);
    }
}

/// [`handle`] inside the span of this hop: the caller's trace continued from `traceparent`,
/// the identities, how the caller authenticated and the decision (never a header's value).
async fn traced(
    ctx: &Ctx,
    conn: &Conn,
    upstream: &Upstream,
    req: Request<Incoming>,
) -> Response<Body> {
    let span = tracing::info_span!(
        target: tessera_telemetry::TARGET,
        "inbound",
        "otel.name" = "tessera.proxy.inbound",
        "otel.kind" = "server",
        "otel.status_code" = tracing::field::Empty,
        "http.request.method" = req.method().as_str(),
        "network.peer.address" = %conn.source,
        "tessera.caller" = conn.caller.as_str(),
        "tessera.target" = conn.target.as_str(),
        "tessera.authn" = tracing::field::Empty,
        "tessera.decision" = tracing::field::Empty,
        "tessera.decision.reason" = tracing::field::Empty,
        "url.path" = tracing::field::Empty,
        "tessera.verify.result" = tracing::field::Empty,
        "tessera.verify.reason" = tracing::field::Empty,
        "http.response.status_code" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    tessera_telemetry::continue_trace(&span, req.headers());
    tessera_telemetry::within(span, handle(ctx, conn, upstream, req)).await
}

async fn handle(
    ctx: &Ctx,
    conn: &Conn,
    upstream: &Upstream,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let (caller, source) = (&conn.caller, conn.source);
    let started = std::time::Instant::now();
    if ctx.cfg.revocations.refuses_all() {
        conn.outcome("revocation_stale");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sidecar does not know the authority's current revocations (fail closed)\n",
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > ctx.cfg.max_body) {
        conn.outcome("too_large");
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let mut env = Env {
        now: tessera_core::now_unix(),
        source_ip: Some(source),
        token_age: 0,
    };
    let (scopes, authn, subject, actors) = match &ctx.cfg.require_token {
        None => (Vec::new(), Authn::Mtls, caller.clone(), Vec::new()),
        // Only the first of several would be verified while the upstream may read another.
        Some(_) if req.headers().get_all(header::AUTHORIZATION).iter().count() > 1 => {
            return plain(
                StatusCode::BAD_REQUEST,
                "more than one Authorization header\n",
            );
        }
        Some(verifier) => match bearer(verifier, conn, &req).await {
            Ok((v, subject, actors)) => {
                let iat = v.claims.get("iat").and_then(serde_json::Value::as_i64);
                env.token_age = iat.map_or(0, |iat| env.now - iat);
                let scopes = v
                    .scopes
                    .iter()
                    .filter_map(|s| tessera_core::Scope::parse(s).ok())
                    .collect();
                (scopes, Authn::MtlsJwt, subject, actors)
            }
            Err(why) => {
                conn.outcome("bad_token");
                let mut r = plain(StatusCode::UNAUTHORIZED, why);
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                return r;
            }
        },
    };
    // The decision and the upstream see one path: the canonical form, or a 400.
    let span = tracing::Span::current();
    span.record("tessera.authn", authn.as_str());
    if let Err(e) = ctx.authz.canonicalize(&mut req) {
        conn.outcome("bad_path");
        return plain(StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    span.record("url.path", req.uri().path());
    let d = ctx.authz.decide_chain(
        &subject,
        &actors,
        req.method().as_str(),
        req.uri().path(),
        &scopes,
        authn,
        &env,
    );
    ctx.metrics.observe_decision(started.elapsed());
    span.record("tessera.decision.reason", d.reason.as_str());
    if let Some(limited) = &d.limited {
        conn.outcome("limited");
        let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded\n");
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(limited.retry_after_secs()),
        );
        return r;
    }
    if !d.allowed {
        conn.outcome("deny");
        let mut r = plain(StatusCode::FORBIDDEN, "denied by policy\n");
        r.headers_mut()
            .insert("tessera-decision", HeaderValue::from_static("deny"));
        return r;
    }
    conn.outcome("allow");
    forward(ctx, upstream, caller, req).await
}

/// The request's bearer token, verified for this service and held by the workload the client
/// certificate names: issued to it, or delegated to it (it is the token's current actor, RFC
/// 8693 `act`). A token passed on by any other workload is refused. Returns the token, its
/// subject and its actor chain (the current actor first).
async fn bearer(
    verifier: &tessera_verify::Verifier,
    conn: &Conn,
    req: &Request<Incoming>,
) -> Result<(tessera_verify::Verified, SpiffeId, Vec<SpiffeId>), &'static str> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or("a bearer access token is required\n")?;
    let span = tracing::Span::current();
    let verified = verifier.verify(token).await.map_err(|e| {
        span.record("tessera.verify.result", "refused");
        span.record("tessera.verify.reason", e.reason());
        "the access token is not valid for this service\n"
    })?;
    span.record("tessera.verify.result", "valid");
    let subject = SpiffeId::parse(&verified.subject)
        .map_err(|_| "the access token's subject is not a SPIFFE ID\n")?;
    let actors = tessera_verify::actor_chain(&verified.claims)
        .map_err(|_| "the access token's `act` chain cannot be read\n")?;
    let holder = actors.first().unwrap_or(&subject);
    if holder != &conn.caller {
        return Err("the access token was issued to another workload than the certificate's\n");
    }
    verified
        .check_certificate_binding(Some(conn.leaf.as_ref()))
        .map_err(|_| "the access token is bound to another certificate (RFC 8705)\n")?;
    Ok((verified, subject, actors))
}

/// Removes the caller header and every header an upstream could merge into it: WSGI, CGI and
/// PHP map `X_Tessera_Caller` and `x-tessera-caller` to the same variable (`_` and `-` are one
/// there, and case never counts).
fn drop_caller_lookalikes(headers: &mut http::HeaderMap) {
    let lookalikes: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().replace('_', "-") == CALLER_HEADER)
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(&name);
    }
}

async fn forward(
    ctx: &Ctx,
    upstream: &Upstream,
    caller: &SpiffeId,
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let h2 = ctx.cfg.upstream_h2;
    // HTTP/2 names the upstream in the request (`:authority`); HTTP/1.1 sends the origin form,
    // with a `Host` (an HTTP/2 caller sent none) naming the upstream.
    let uri = if h2 {
        crate::retarget(&parts.uri, ctx.cfg.upstream)
    } else {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        path.parse().ok()
    };
    let Some(uri) = uri else {
        return plain(StatusCode::BAD_REQUEST, "bad request target\n");
    };
    if !h2 && !parts.headers.contains_key(header::HOST) {
        let Ok(host) = HeaderValue::from_str(&ctx.cfg.upstream.to_string()) else {
            return plain(StatusCode::BAD_REQUEST, "bad request target\n");
        };
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    drop_caller_lookalikes(&mut parts.headers);
    let Ok(who) = HeaderValue::from_str(caller.as_str()) else {
        return plain(StatusCode::BAD_REQUEST, "caller cannot be named\n");
    };
    parts.headers.insert(CALLER_HEADER, who);
    // The upstream continues this hop's trace (while tracing is off, the caller's header passes
    // through as it came).
    tessera_telemetry::inject(&tracing::Span::current(), &mut parts.headers);
    // Most services speak HTTP/1.1 only: an HTTP/2 caller is translated unless the upstream is
    // declared h2c (gRPC needs HTTP/2, and its trailers, end to end).
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body = http_body_util::Limited::new(body, ctx.cfg.max_body).boxed();
    // A new request: the incoming one's extensions belong to the server connection.
    parts.extensions = http::Extensions::new();
    let out = Request::from_parts(parts, body);
    match upstream.request(out).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "upstream request failed");
            let mut r = Response::new(full(bytes::Bytes::from_static(b"upstream unavailable\n")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::handshake_reason;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn refused_handshakes_are_labelled_by_their_reason() {
        // What the SPIFFE verifier answers for a certificate outside its validity period
        // (`CaError::into_rustls`), and for any other refusal.
        assert_eq!(handshake_reason(&io(expired_refusal())), "certificate_time");
        assert_eq!(
            handshake_reason(&io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidYet
            ))),
            "certificate_time"
        );
        assert_eq!(
            handshake_reason(&io(rustls::Error::General("another trust domain".into()))),
            "rejected_certificate"
        );
        assert_eq!(
            handshake_reason(&io(rustls::Error::NoCertificatesPresented)),
            "no_client_certificate"
        );
        assert_eq!(handshake_reason(&std::io::Error::other("reset")), "io");
    }

    /// The refusal the SPIFFE verifier gives a genuine SVID presented after its end.
    fn expired_refusal() -> rustls::Error {
        use tessera_core::{SpiffeId, TrustDomain};
        let now = tessera_core::now_unix();
        let td = TrustDomain::parse("example.org").unwrap();
        let id = SpiffeId::parse("spiffe://example.org/api").unwrap();
        let (ca, _) = tessera_ca::CertificateAuthority::generate(&td, now, 86400).unwrap();
        let (_, csr) = tessera_ca::new_key_and_csr(&id).unwrap();
        let leaf = ca.sign_csr(&csr, &id, now, 60).unwrap().cert;
        let bundles = tessera_ca::StaticBundles::new(vec![(td, ca.cert().clone())]);
        let later = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now + 3600).unwrap(),
        ));
        tessera_ca::verify_chain(&[leaf], &bundles, later, tessera_ca::Usage::Client)
            .unwrap_err()
            .into_rustls()
    }
}
