//! The sidecar's own identity, from the node agent's Workload API: its X.509-SVID (for both
//! directions of mTLS), the trust bundles peers are checked against, and JWT-SVIDs. A rotation
//! from the agent swaps the certificate for new handshakes; open connections finish on theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tessera_agent::proto::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use tessera_agent::workload::{connect, request};
use tessera_core::{SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::ProxyError;

/// What the agent last sent: the chosen SVID, ready for rustls, and every trust bundle.
#[derive(Debug)]
pub struct Current {
    pub spiffe_id: SpiffeId,
    pub certified: Arc<CertifiedKey>,
    /// Unix seconds the leaf expires at.
    pub not_after: i64,
    pub bundles: HashMap<TrustDomain, Vec<CertificateDer<'static>>>,
}

/// The SVID and bundles in force, kept current from the agent.
#[derive(Debug)]
pub struct Identity {
    socket: PathBuf,
    /// Which of the process's SVIDs to use; the first one when `None`.
    want: Option<SpiffeId>,
    current: RwLock<Option<Arc<Current>>>,
    updates: watch::Sender<u64>,
}

impl Identity {
    /// Connects to the agent at `socket` and waits for the first SVID; then follows rotations in
    /// the background (reconnecting with backoff; what it holds stays in force until it expires).
    pub async fn start(socket: &Path, want: Option<SpiffeId>) -> Result<Arc<Self>, ProxyError> {
        let this = Arc::new(Self {
            socket: socket.to_path_buf(),
            want,
            current: RwLock::new(None),
            updates: watch::channel(0).0,
        });
        let first = this.clone().next_stream().await?;
        let follower = this.clone();
        tokio::spawn(async move { follower.follow(first).await });
        Ok(this)
    }

    async fn next_stream(
        self: Arc<Self>,
    ) -> Result<tonic::Streaming<X509svidResponse>, ProxyError> {
        let mut client = connect(&self.socket)
            .await
            .map_err(|e| ProxyError::Agent(e.to_string()))?;
        let mut stream = client
            .fetch_x509svid(request(X509svidRequest {}))
            .await
            .map_err(|s| ProxyError::Agent(s.message().to_owned()))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| ProxyError::Agent(s.message().to_owned()))?
            .ok_or_else(|| ProxyError::Agent("the Workload API closed the stream".into()))?;
        self.install(&first)?;
        Ok(stream)
    }

    async fn follow(self: Arc<Self>, mut stream: tonic::Streaming<X509svidResponse>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if let Err(e) = self.install(&resp) {
                        tracing::error!(error = %e, "an SVID update was refused; keeping the current one");
                    }
                    continue;
                }
                Ok(None) => tracing::warn!("the Workload API stream ended; reconnecting"),
                Err(s) => {
                    tracing::warn!(error = %s.message(), "the Workload API stream failed; reconnecting")
                }
            }
            loop {
                tokio::time::sleep(backoff).await;
                match self.clone().next_stream().await {
                    Ok(s) => {
                        stream = s;
                        backoff = Duration::from_millis(200);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the agent is unreachable; serving the SVID held");
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    }

    fn install(&self, resp: &X509svidResponse) -> Result<(), ProxyError> {
        let svid = match &self.want {
            Some(want) => resp
                .svids
                .iter()
                .find(|s| s.spiffe_id == want.as_str())
                .ok_or_else(|| {
                    ProxyError::Agent(format!(
                        "the agent holds no SVID for `{want}` for this process"
                    ))
                })?,
            None => resp.svids.first().ok_or_else(|| {
                ProxyError::Agent("the agent holds no SVID for this process".into())
            })?,
        };
        let spiffe_id = SpiffeId::parse(&svid.spiffe_id)
            .map_err(|e| ProxyError::Agent(format!("the agent sent a bad SPIFFE ID: {e}")))?;
        let chain = tessera_ca::split_certificates(&svid.x509_svid)
            .map_err(|e| ProxyError::Agent(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| ProxyError::Agent("an SVID without a certificate".into()))?;
        let (_, not_after) = tessera_ca::validity(leaf)
            .ok_or_else(|| ProxyError::Agent("an SVID whose validity cannot be read".into()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| ProxyError::Agent(format!("the SVID's key is not usable: {e}")))?;
        let mut bundles = HashMap::new();
        let own = TrustDomain::parse(spiffe_id.trust_domain_str())
            .map_err(|e| ProxyError::Agent(e.to_string()))?;
        bundles.insert(
            own,
            tessera_ca::split_certificates(&svid.bundle)
                .map_err(|e| ProxyError::Agent(e.to_string()))?,
        );
        for (td, der) in &resp.federated_bundles {
            let td = td.strip_prefix("spiffe://").unwrap_or(td);
            if let (Ok(td), Ok(certs)) =
                (TrustDomain::parse(td), tessera_ca::split_certificates(der))
            {
                bundles.entry(td).or_insert(certs);
            }
        }
        let current = Arc::new(Current {
            spiffe_id,
            certified: Arc::new(CertifiedKey::new(chain, signer)),
            not_after,
            bundles,
        });
        if let Ok(mut c) = self.current.write() {
            *c = Some(current);
        }
        self.updates.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The SVID and bundles in force.
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// Notified on every SVID or bundle update.
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.updates.subscribe()
    }

    /// This workload's SPIFFE ID.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.current().map(|c| c.spiffe_id.clone())
    }

    /// A JWT-SVID for `audience`, for the authority's workload APIs.
    pub async fn jwt_svid(&self, audience: &str) -> Result<String, ProxyError> {
        let mut client = connect(&self.socket)
            .await
            .map_err(|e| ProxyError::Agent(e.to_string()))?;
        let resp = client
            .fetch_jwtsvid(request(JwtsvidRequest {
                audience: vec![audience.to_owned()],
                spiffe_id: self.spiffe_id().map(|s| s.to_string()).unwrap_or_default(),
            }))
            .await
            .map_err(|s| ProxyError::Agent(s.message().to_owned()))?
            .into_inner();
        resp.svids
            .into_iter()
            .next()
            .map(|s| s.svid)
            .ok_or_else(|| ProxyError::Agent("the agent returned no JWT-SVID".into()))
    }
}

impl tessera_ca::BundleSource for Identity {
    fn x509_authorities(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        self.current().and_then(|c| c.bundles.get(td).cloned())
    }
}

/// Serves the SVID in force on each new handshake.
impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.certified.clone())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}
