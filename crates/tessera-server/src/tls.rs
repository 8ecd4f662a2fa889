//! TLS for the API: a configured certificate, or one the server makes for itself on first start
//! under `DATA/tls/` (its CA in `DATA/tls/ca.pem` for clients to trust). Node agents present
//! their X.509-SVIDs as client certificates (optional for everyone else). A `--dev` server on
//! loopback accepts plain HTTP and TLS on the same port, told apart by the first byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::start_error::StartError;

pub(crate) struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_path: Option<PathBuf>,
    /// The bundle endpoint's X.509-SVIDs (`https_spiffe`), kept current by boot.
    pub svids: Arc<ServerSvids>,
}

/// For the `https_spiffe` bundle endpoint profile: an X.509-SVID
/// `spiffe://<td>/tessera/server` per served trust domain, presented to a client whose SNI
/// names that trust domain (one API serves several trust domains, each with its own CA, and an
/// SVID has one SPIFFE ID). Every other client gets the API's own certificate.
#[derive(Debug, Default)]
pub(crate) struct ServerSvids {
    by_td: arc_swap::ArcSwap<std::collections::HashMap<String, Arc<ServerSvid>>>,
}

/// One trust domain's endpoint SVID: the key rustls serves, the CA that signed it, and when to
/// make the next one.
#[derive(Debug)]
pub(crate) struct ServerSvid {
    pub key: Arc<rustls::sign::CertifiedKey>,
    pub ca_id: String,
    pub renew_at: i64,
}

impl ServerSvids {
    pub(crate) fn set(&self, td: &str, svid: ServerSvid) {
        let svid = Arc::new(svid);
        self.by_td.rcu(|m| {
            let mut m = (**m).clone();
            m.insert(td.to_owned(), svid.clone());
            m
        });
    }

    pub(crate) fn get(&self, td: &str) -> Option<Arc<ServerSvid>> {
        self.by_td.load().get(td).cloned()
    }
}

#[derive(Debug)]
struct ApiCerts {
    svids: Arc<ServerSvids>,
    api: Arc<dyn rustls::server::ResolvesServerCert>,
    /// The API certificate's own DNS names: a client asking for one of them gets that
    /// certificate, even when a trust domain has the same name (an authority reached at
    /// `https://example.org` serving `example.org`).
    api_names: Vec<String>,
}

impl rustls::server::ResolvesServerCert for ApiCerts {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let svid = hello
            .server_name()
            .filter(|n| !self.api_names.iter().any(|a| a.eq_ignore_ascii_case(n)))
            .and_then(|n| self.svids.get(n));
        match svid {
            Some(svid) => Some(svid.key.clone()),
            None => self.api.resolve(hello),
        }
    }
}

/// Puts the SVID resolver in front of the API's certificate (`leaf`).
fn with_svids(mut cfg: rustls::ServerConfig, leaf: Option<&CertificateDer<'_>>) -> Tls {
    let svids = Arc::new(ServerSvids::default());
    cfg.cert_resolver = Arc::new(ApiCerts {
        svids: svids.clone(),
        api: cfg.cert_resolver.clone(),
        api_names: leaf.map(|c| tessera_ca::dns_names(c)).unwrap_or_default(),
    });
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Tls {
        config: Arc::new(cfg),
        ca_path: None,
        svids,
    }
}

fn tls_err(e: impl std::fmt::Display) -> StartError {
    StartError::Tls(e.to_string())
}

/// The verified certificate chain a client presented (a node agent's SVID), per connection.
#[derive(Debug, Clone)]
pub(crate) struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

pub(crate) fn load_or_create(
    config: &ServerConfig,
    bundles: Arc<dyn tessera_ca::BundleSource>,
    token_key: Option<Arc<tessera_token::SigningKey>>,
) -> Result<Tls, StartError> {
    if let Some(key) = token_key {
        return in_token(config, bundles, key);
    }
    let (cert, key, ca_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), None),
        _ => {
            let dir = config.data_dir.join("tls");
            let (cert, key, ca) = (
                dir.join("server.pem"),
                dir.join("server.key"),
                dir.join("ca.pem"),
            );
            if !cert.exists() || !key.exists() {
                generate(&dir, &cert, &key, &ca, config)?;
            }
            (cert, key, Some(ca))
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| StartError::Tls(format!("`{}`: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("`{}`: {e}", cert.display())))?;
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| StartError::Tls(format!("`{}`: {e}", key.display())))?;
    let leaf = chain.first().cloned();
    let cfg = builder(bundles)?
        .with_single_cert(chain, key_der)
        .map_err(tls_err)?;
    Ok(Tls {
        ca_path,
        ..with_svids(cfg, leaf.as_ref())
    })
}

type Builder = rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>;

fn builder(bundles: Arc<dyn tessera_ca::BundleSource>) -> Result<Builder, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(tessera_ca::SpiffeClientVerifier::new(
            bundles, false,
        ))))
}

/// The API's key is in the PKCS#11 token: the certificate for it is made (or kept, while it
/// is for that key) under `DATA/tls/`, and rustls signs each handshake through the token. No
/// key file is written, and one left from before is removed.
fn in_token(
    config: &ServerConfig,
    bundles: Arc<dyn tessera_ca::BundleSource>,
    key: Arc<tessera_token::SigningKey>,
) -> Result<Tls, StartError> {
    let dir = config.data_dir.join("tls");
    let (cert, old_key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    let signer = tessera_ca::CertKey::new(key.clone())
        .ok_or_else(|| StartError::Tls("the TLS key is not ES256 or EdDSA".into()))?;
    let current = CertificateDer::pem_file_iter(&cert)
        .ok()
        .and_then(|mut it| it.next())
        .and_then(Result::ok)
        .filter(|c| {
            tessera_ca::p256_coordinates(c).is_some_and(|(x, y)| {
                let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
                point == key.public().raw()
            })
        });
    if current.is_none() {
        generate_for(&dir, &cert, &ca, config, &signer)?;
    }
    if old_key.exists() {
        std::fs::remove_file(&old_key).map_err(tls_err)?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| StartError::Tls(format!("`{}`: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("`{}`: {e}", cert.display())))?;
    let leaf = chain.first().cloned();
    let certified = rustls::sign::CertifiedKey::new(chain, Arc::new(tessera_ca::TlsKey::new(key)));
    let cfg = builder(bundles)?
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    Ok(Tls {
        ca_path: Some(ca),
        ..with_svids(cfg, leaf.as_ref())
    })
}

fn generate(
    dir: &Path,
    cert: &Path,
    key: &Path,
    ca: &Path,
    config: &ServerConfig,
) -> Result<(), StartError> {
    let leaf_key = rcgen::KeyPair::generate().map_err(tls_err)?;
    generate_for(dir, cert, ca, config, &leaf_key)?;
    tessera_core::private_file::write_private(key, leaf_key.serialize_pem().as_bytes())
        .map_err(tls_err)
}

/// A new API CA (its key dropped once it signed) and a certificate for `leaf_key`.
fn generate_for(
    dir: &Path,
    cert: &Path,
    ca: &Path,
    config: &ServerConfig,
    leaf_key: &impl rcgen::SigningKey,
) -> Result<(), StartError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    std::fs::create_dir_all(dir).map_err(tls_err)?;
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("Tessera API CA {}", tessera_core::now_unix()),
    );
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).map_err(tls_err)?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(config.listen.ip()));
    if !config.listen.ip().is_loopback() {
        leaf.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "tessera server");
    let leaf_cert = leaf.signed_by(leaf_key, &issuer).map_err(tls_err)?;
    std::fs::write(cert, leaf_cert.pem()).map_err(tls_err)?;
    std::fs::write(ca, ca_cert.pem()).map_err(tls_err)?;
    Ok(())
}

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `router` on `tcp` until `stop`: TLS (and plain HTTP first-byte sniffed, with
/// `allow_plain`), each connection on its own task, admitted by `gate` (which closes the
/// oldest idle connection when the cap is reached, so held-open connections cannot lock
/// legitimate clients out).
pub(crate) async fn serve(
    tcp: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    allow_plain: bool,
    router: Router,
    gate: tessera_listen::Gate,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut backoff = tessera_listen::Backoff::new("api");
    let handshake_timeout = gate.limits().handshake_timeout;
    {
        loop {
            let accepted = tokio::select! {
                r = tcp.accept() => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some((stream, peer)) = backoff.take(accepted).await else {
                continue;
            };
            // Refused (every connection has a request in flight): dropped, so closed.
            let Ok(ticket) = gate.admit(tessera_listen::Source::Ip(peer.ip())) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let source = SourceIp(peer.ip());
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                if allow_plain {
                    let mut first = [0u8; 1];
                    let peeked = tokio::select! {
                        r = tokio::time::timeout(handshake_timeout, stream.peek(&mut first)) => r,
                        () = ticket.evicted() => return,
                    };
                    match peeked {
                        Ok(Ok(1)) if first[0] != TLS_HANDSHAKE => {
                            serve_connection(stream, router, source, ticket).await;
                            return;
                        }
                        Ok(Ok(1)) => {}
                        _ => return,
                    }
                }
                let handshake = tokio::select! {
                    r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => r,
                    () = ticket.evicted() => return,
                };
                let Ok(Ok(tls)) = handshake else {
                    tracing::debug!("TLS handshake failed or timed out");
                    return;
                };
                let peer = tls.get_ref().1.peer_certificates().map(|c| {
                    PeerCertificates(Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()))
                });
                let router = match peer {
                    Some(p) => router.layer(axum::Extension(p)),
                    None => router,
                };
                serve_connection(tls, router, source, ticket).await;
            });
        }
    }
}

/// The address a connection came from, in every request's extensions (`context.source_ip`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceIp(pub std::net::IpAddr);

/// What the connection says about a request's sender: its address, and the verified client
/// certificate chain if it presented one (an X.509-SVID of an accepted trust domain).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    pub source_ip: Option<std::net::IpAddr>,
    pub peer: Option<PeerCertificates>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ConnInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            source_ip: parts.extensions.get::<SourceIp>().map(|s| s.0),
            peer: parts.extensions.get::<PeerCertificates>().cloned(),
        })
    }
}

async fn serve_connection<I>(
    io: I,
    router: Router,
    source: SourceIp,
    ticket: tessera_listen::Ticket,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = tower::Layer::layer(
        &tower::util::MapRequestLayer::new(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(source);
                req
            },
        ),
        router,
    );
    let service = TowerToHyperService::new(router);
    tessera_listen::serve_http(io, service, ticket, std::future::pending()).await;
}
