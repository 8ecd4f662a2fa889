//! `tessera proxy`: strict mTLS and per-call authorization for services that were never written
//! for it.
//!
//! - [`inbound`]: terminates mTLS with the workload's X.509-SVID, takes the caller's identity
//!   from its client certificate (chain checked against the bundle of the caller's own trust
//!   domain), decides (caller, method, path) with the local policy bundle, and forwards allowed
//!   requests to the upstream with `X-Tessera-Caller`; from a connection's second request on,
//!   on upstream connections that belong to it and are driven by its task (`upstream.rs`).
//! - [`outbound`]: the application speaks plain HTTP to a loopback port; the proxy originates
//!   mTLS to the target and accepts only a server presenting exactly `--target-id`.
//!
//! SVIDs and bundles come from the node agent ([`identity`]) and are swapped for new handshakes
//! as they rotate.

pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
mod upstream;

pub use identity::Identity;
pub use metrics::ProxyMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("node agent: {0}")]
    Agent(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Resolves once `stop` turns true. The guard `wait_for` returns is dropped here, so callers may
/// await other things after it (it is not `Send`).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The rustls provider every proxy connection uses (one provider in the whole project).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A response with a short plain-text body: what callers see of a refusal.
fn plain(status: http::StatusCode, text: impl Into<bytes::Bytes>) -> http::Response<Body> {
    let mut r = http::Response::new(full(text.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends: streamed from a peer, or a short one of its own.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The request's path and query, addressed to `to` over plain HTTP (the hop after the proxy).
fn retarget(uri: &http::Uri, to: std::net::SocketAddr) -> Option<http::Uri> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{to}{path}").parse().ok()
}

/// A response from the next hop, passed back: hop-by-hop headers removed, body boxed.
fn relay(resp: http::Response<hyper::body::Incoming>) -> http::Response<Body> {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    http::Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed())
}

fn full(b: bytes::Bytes) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1); never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "upgrade",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
    if headers
        .get(http::header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(http::header::TE);
    }
}
