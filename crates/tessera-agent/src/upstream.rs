//! The agent's connection to the authority: HTTPS with the server authenticated by its TLS CA
//! (`--trust-bundle`, or fetched over plain HTTP from a `--dev` server on loopback) and the agent
//! authenticated by its own X.509-SVID as client certificate.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_core::agent_api::{
    AgentSvid, JoinRequest, JwtSvidRequest, JwtSvidResponse, RenewRequest, SignRequest,
    SignResponse, SyncResponse, TokenRequest, TokenResponse,
};

use crate::AgentError;

/// The agent's own identity: its key (PKCS#8) and SVID.
#[derive(Clone)]
pub struct Identity {
    pub key: Vec<u8>,
    pub svid: AgentSvid,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.svid.spiffe_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Upstream {
    /// `https://host:port`, no trailing slash.
    base: String,
    roots: Vec<CertificateDer<'static>>,
    client: RwLock<reqwest::Client>,
}

/// Where the server is and how it is authenticated.
pub async fn resolve_server(
    url: &str,
    trust_bundle: Option<&std::path::Path>,
) -> Result<(String, Vec<CertificateDer<'static>>), AgentError> {
    let url = url.trim_end_matches('/');
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| AgentError::Config(format!("--server `{url}` is not a URL: {e}")))?;
    let pem = match (parsed.scheme(), trust_bundle) {
        (_, Some(path)) => std::fs::read(path).map_err(|e| {
            AgentError::Config(format!(
                "cannot read --trust-bundle `{}`: {e}",
                path.display()
            ))
        })?,
        ("http", None) => {
            if !parsed
                .host_str()
                .is_some_and(tessera_core::is_loopback_host)
            {
                return Err(AgentError::Config(
                    "plain HTTP to the server is allowed only on loopback against a --dev server; give --trust-bundle".into(),
                ));
            }
            let resp = reqwest::get(format!("{url}/agent/v1/server-ca"))
                .await
                .map_err(|e| AgentError::Unreachable(e.to_string()))?;
            if !resp.status().is_success() {
                return Err(AgentError::Config(format!(
                    "the server at `{url}` is not a --dev server (it does not hand out its TLS CA); give --trust-bundle"
                )));
            }
            resp.bytes()
                .await
                .map_err(|e| AgentError::Unreachable(e.to_string()))?
                .to_vec()
        }
        (_, None) => {
            return Err(AgentError::Config(
                "--trust-bundle FILE is needed to authenticate an https:// server".into(),
            ))
        }
    };
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| AgentError::Config(format!("the server's trust bundle is not PEM: {e}")))?;
    if roots.is_empty() {
        return Err(AgentError::Config(
            "the server's trust bundle holds no certificate".into(),
        ));
    }
    let mut https = parsed;
    https
        .set_scheme("https")
        .map_err(|()| AgentError::Config("cannot make an https URL of --server".into()))?;
    Ok((https.as_str().trim_end_matches('/').to_owned(), roots))
}

fn build_client(
    roots: &[CertificateDer<'static>],
    identity: Option<&Identity>,
) -> Result<reqwest::Client, AgentError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| AgentError::Config(format!("bad server CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Config(e.to_string()))?
        .with_root_certificates(store);
    let config = match identity {
        Some(id) => {
            let chain = id
                .svid
                .chain
                .iter()
                .map(|c| STANDARD.decode(c).map(CertificateDer::from))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| AgentError::Protocol("the agent SVID is not base64".into()))?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone()));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| AgentError::Config(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(50))
        .build()
        .map_err(|e| AgentError::Config(e.to_string()))
}

impl Upstream {
    pub fn new(base: String, roots: Vec<CertificateDer<'static>>) -> Result<Self, AgentError> {
        let client = build_client(&roots, None)?;
        Ok(Self {
            base,
            roots,
            client: RwLock::new(client),
        })
    }

    /// From now on, requests present `identity` as the client certificate.
    pub fn set_identity(&self, identity: &Identity) -> Result<(), AgentError> {
        let c = build_client(&self.roots, Some(identity))?;
        match self.client.write() {
            Ok(mut g) => *g = c,
            Err(p) => *p.into_inner() = c,
        }
        Ok(())
    }

    fn client(&self) -> reqwest::Client {
        match self.client.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R, AgentError> {
        let url = format!("{}/agent/v1/{path}", self.base);
        let req = match body {
            Some(b) => self.client().post(url).json(b),
            None => self.client().get(url),
        };
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| AgentError::Unreachable(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let why = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("error_description")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or(text);
            return Err(if status.is_server_error() {
                AgentError::Unreachable(format!("{status}: {why}"))
            } else {
                AgentError::Refused(why)
            });
        }
        resp.json()
            .await
            .map_err(|e| AgentError::Protocol(e.to_string()))
    }

    pub async fn join(&self, token: &str, csr: &[u8]) -> Result<AgentSvid, AgentError> {
        let req = JoinRequest {
            join_token: token.to_owned(),
            csr: STANDARD.encode(csr),
        };
        self.call("join", Some(&req), Duration::from_secs(10)).await
    }

    /// Joins by the node's Kubernetes projected service-account token.
    pub async fn attest_k8s_psat(&self, token: &str, csr: &[u8]) -> Result<AgentSvid, AgentError> {
        let req = tessera_core::agent_api::K8sPsatRequest {
            token: token.to_owned(),
            csr: STANDARD.encode(csr),
        };
        self.call("attest/k8s_psat", Some(&req), Duration::from_secs(10))
            .await
    }

    pub async fn renew(&self, csr: &[u8]) -> Result<AgentSvid, AgentError> {
        let req = RenewRequest {
            csr: STANDARD.encode(csr),
        };
        self.call("renew", Some(&req), Duration::from_secs(10))
            .await
    }

    pub async fn sync(&self, since: i64, wait: u64) -> Result<SyncResponse, AgentError> {
        self.call::<(), _>(
            &format!("sync?since={since}&wait={wait}"),
            None,
            Duration::from_secs(wait + 10),
        )
        .await
    }

    /// The authority's transparency-log key (`GET /log/key`), over the authenticated connection.
    pub async fn log_key(&self) -> Result<tessera_log::NoteVerifier, AgentError> {
        tessera_verify::logged::fetch_log_key(&self.client(), &self.base)
            .await
            .map_err(|e| AgentError::Unreachable(format!("the log key: {e}")))
    }

    /// Checks that the log proves the issuance of the certificate `der` with `serial`.
    pub async fn check_logged(
        &self,
        log: &tessera_log::NoteVerifier,
        serial: &str,
        der: &[u8],
    ) -> Result<(), tessera_verify::logged::LoggedError> {
        tessera_verify::logged::check_logged(
            &self.client(),
            &self.base,
            log,
            tessera_verify::logged::Credential::Certificate { serial, der },
        )
        .await
        .map(|_| ())
    }

    pub async fn sign(&self, req: &SignRequest) -> Result<SignResponse, AgentError> {
        self.call("sign", Some(req), Duration::from_secs(30)).await
    }

    pub async fn jwt_svid(&self, req: &JwtSvidRequest) -> Result<JwtSvidResponse, AgentError> {
        self.call("jwt-svid", Some(req), Duration::from_secs(10))
            .await
    }

    pub async fn token(&self, req: &TokenRequest) -> Result<TokenResponse, AgentError> {
        self.call("token", Some(req), Duration::from_secs(10)).await
    }
}
