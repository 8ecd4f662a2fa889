//! SPIFFE bundle federation, the authority's side: fetching a federated trust domain's bundle
//! from its endpoint by the relationship's profile, checking it, and storing it when it changed
//! (the last good bundle stays in force when a fetch fails or is refused). The refresher task
//! that calls [`refresh`] on schedule is in `boot.rs`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tessera_core::bundle::{SpiffeBundle, MAX_BUNDLE_BYTES};
use tessera_core::manifest::{BundleProfile, Federation};
use tessera_core::TrustDomain;
use tessera_store::{AuditEvent, AuditKind, FederatedBundleRecord, Op, Outcome};

use crate::app::federated::FederatedDomain;
use crate::app::{App, Snapshot};
use crate::metrics::TdLabels;

/// How long one fetch may take, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on the refresh hint a bundle asks for: an endpoint may not make us poll it more often
/// than this, nor leave a rotation unseen for longer than an hour.
pub(crate) const MIN_REFRESH_SECS: u64 = 1;
pub(crate) const MAX_REFRESH_SECS: u64 = 3600;

/// After a failure, the next try comes after at most this long (sooner if the hint is shorter).
pub(crate) const RETRY_SECS: u64 = 30;

/// Why a federated bundle was not taken. The last good bundle stays in force either way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BundleRefusal {
    #[error("the bundle endpoint `{url}` is not usable: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("fetching `{url}` failed: {reason}")]
    Fetch { url: String, reason: String },
    #[error("the bundle is malformed: {0}")]
    Malformed(#[from] tessera_core::bundle::BundleError),
    #[error("X.509 authority {index} of the bundle: {reason}")]
    Authority { index: usize, reason: String },
    #[error("the bundle's JWT keys are not usable: {0}")]
    JwtKeys(String),
    #[error("the bundle's `spiffe_sequence` {got} is older than the one in force ({have})")]
    OlderSequence { got: u64, have: u64 },
    #[error("`https_spiffe` needs the bundle of `{0}` to authenticate the endpoint, and none is trusted here")]
    NoAnchor(String),
}

/// Checks the URL of a bundle endpoint as apply does: `https`, or with `dev` plain `http` to a
/// loopback host.
pub(crate) fn endpoint_url(f: &Federation, dev: bool) -> Result<url::Url, BundleRefusal> {
    let bad = |reason: &str| BundleRefusal::Endpoint {
        url: f.bundle_endpoint.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(&f.bundle_endpoint).map_err(|e| bad(&e.to_string()))?;
    let host = url.host_str().ok_or_else(|| bad("it names no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it carries credentials"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if dev && tessera_core::is_loopback_host(host) => Ok(url),
        "http" => Err(bad(
            "plain http is accepted only by a --dev server, on loopback",
        )),
        _ => Err(bad("it is not an https URL")),
    }
}

/// Checks a fetched bundle against the relationship and the bundle in force.
pub(crate) fn check(
    td: &TrustDomain,
    current: Option<&SpiffeBundle>,
    new: &SpiffeBundle,
) -> Result<(), BundleRefusal> {
    for (index, der) in new.x509_authorities.iter().enumerate() {
        tessera_ca::check_federated_authority(der, td).map_err(|e| BundleRefusal::Authority {
            index,
            reason: e.to_string(),
        })?;
    }
    if !new.jwt_authorities.is_empty() {
        tessera_verify::KeySet::from_jwks_with_rsa(new.jwks().to_string().as_bytes())
            .map_err(|e| BundleRefusal::JwtKeys(e.to_string()))?;
    }
    if let (Some(have), Some(got)) = (current.and_then(|b| b.sequence), new.sequence) {
        if got < have {
            return Err(BundleRefusal::OlderSequence { got, have });
        }
    }
    Ok(())
}

/// The anchors that authenticate an `https_spiffe` endpoint: the bundle of the endpoint ID's own
/// trust domain (usually the federated one; it may be one served here or another federated one).
fn endpoint_anchors(
    snap: &Snapshot,
    domain: &FederatedDomain,
    now: i64,
) -> Result<(tessera_core::SpiffeId, Vec<CertificateDer<'static>>), BundleRefusal> {
    let id = domain
        .spec
        .endpoint_spiffe_id
        .clone()
        .ok_or_else(|| BundleRefusal::NoAnchor(domain.spec.trust_domain.to_string()))?;
    let td = id.trust_domain();
    let anchors = if td == domain.spec.trust_domain {
        domain.x509_authorities()
    } else if let Some(other) = snap.federations.get(&td) {
        other.x509_authorities()
    } else {
        snap.cas.published(&td, now)
    };
    if anchors.is_empty() {
        return Err(BundleRefusal::NoAnchor(td.to_string()));
    }
    Ok((id, anchors))
}

/// Reads at most [`MAX_BUNDLE_BYTES`] of a response body.
async fn body_capped(body: hyper::body::Incoming, url: &str) -> Result<Vec<u8>, BundleRefusal> {
    match Limited::new(body, MAX_BUNDLE_BYTES).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(tessera_core::bundle::BundleError::TooLarge.into())
        }
        Err(e) => Err(BundleRefusal::Fetch {
            url: url.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// `https_spiffe`: TLS to the endpoint, whose certificate must be an X.509-SVID of
/// `endpoint_spiffe_id` under that ID's trust domain's bundle (DNS names play no part). The
/// client names the endpoint's trust domain in SNI, which is how a Tessera endpoint serving
/// several trust domains picks the SVID to present.
async fn fetch_spiffe(
    url: &url::Url,
    id: tessera_core::SpiffeId,
    anchors: Vec<CertificateDer<'static>>,
) -> Result<Vec<u8>, BundleRefusal> {
    let fail = |reason: String| BundleRefusal::Fetch {
        url: url.to_string(),
        reason,
    };
    let td = id.trust_domain();
    let bundles = tessera_ca::StaticBundles::new(anchors.into_iter().map(|c| (td.clone(), c)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tessera_ca::SpiffeServerVerifier::new(
            Arc::new(bundles),
            id,
        )))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let sni = ServerName::try_from(td.to_string()).map_err(|e| fail(format!("SNI: {e}")))?;
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(sni, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
    let req = http::Request::get(path)
        .header(http::header::HOST, host_header)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let url_text = url.to_string();
    let request = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("status {}", resp.status())));
        }
        body_capped(resp.into_body(), &url_text).await
    };
    // The connection is driven here, beside the request (no task of its own): once it has
    // ended, what it received is already queued for the request.
    let mut conn = std::pin::pin!(conn);
    let mut request = std::pin::pin!(request);
    tokio::select! {
        r = &mut request => r,
        c = &mut conn => match c {
            Ok(()) => request.await,
            Err(e) => Err(fail(e.to_string())),
        },
    }
}

/// `https_web` (and plain http on loopback for `--dev`): the endpoint's certificate chains to
/// the Web PKI roots, or to `ca_file`'s certificates only when given.
async fn fetch_web(url: &url::Url, f: &Federation) -> Result<Vec<u8>, BundleRefusal> {
    let fail = |reason: String| BundleRefusal::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(url.scheme() == "https");
    if let Some(pem) = &f.ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| fail(format!("`ca_file`: {e}")))?;
        builder = builder.tls_built_in_root_certs(false);
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder.build().map_err(|e| fail(e.to_string()))?;
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("status {}", resp.status())));
    }
    tessera_verify::read_capped(resp, MAX_BUNDLE_BYTES)
        .await
        .map_err(|e| {
            if e.contains("larger") {
                BundleRefusal::Malformed(tessera_core::bundle::BundleError::TooLarge)
            } else {
                fail(e)
            }
        })
}

/// Fetches and checks the bundle of `domain` (no storing).
pub(crate) async fn fetch(
    app: &App,
    snap: &Snapshot,
    domain: &FederatedDomain,
) -> Result<SpiffeBundle, BundleRefusal> {
    let url = endpoint_url(&domain.spec, app.config.dev)?;
    let body = match (domain.spec.profile, url.scheme()) {
        (BundleProfile::HttpsSpiffe, "https") => {
            let (id, anchors) = endpoint_anchors(snap, domain, tessera_core::now_unix())?;
            tokio::time::timeout(FETCH_TIMEOUT, fetch_spiffe(&url, id, anchors))
                .await
                .map_err(|_| BundleRefusal::Fetch {
                    url: url.to_string(),
                    reason: "timed out".into(),
                })??
        }
        _ => fetch_web(&url, &domain.spec).await?,
    };
    let bundle = SpiffeBundle::parse(&body)?;
    check(&domain.spec.trust_domain, domain.bundle.as_deref(), &bundle)?;
    Ok(bundle)
}

/// One refresh of `td`: fetch, check, and store when the bundle changed. Returns the refresh
/// hint to wait before the next one (seconds, bounded), or why it failed. Refusals are logged,
/// counted and audited; the last good bundle stays in force.
pub(crate) async fn refresh(app: &App, td: &TrustDomain) -> Result<u64, BundleRefusal> {
    let snap = app.snapshot();
    let Some(domain) = snap.federations.get(td) else {
        return Ok(MAX_REFRESH_SECS);
    };
    let now = tessera_core::now_unix();
    app.bundle_refreshes.update(td, |s| {
        s.last_attempt = Some(now);
        s.first_attempt.get_or_insert(now);
    });
    match fetch(app, &snap, domain).await {
        Ok(bundle) => {
            let hint = bundle
                .refresh_hint
                .unwrap_or(300)
                .clamp(MIN_REFRESH_SECS, MAX_REFRESH_SECS);
            let changed = domain.fetched_at.is_none()
                || domain.bundle.as_deref().is_none_or(|b| {
                    b.x509_authorities != bundle.x509_authorities
                        || b.jwt_authorities != bundle.jwt_authorities
                        || b.sequence != bundle.sequence
                });
            if changed {
                let record = FederatedBundleRecord {
                    trust_domain: td.to_string(),
                    bundle: bundle.to_document().to_string(),
                    sequence: bundle.sequence.and_then(|s| i64::try_from(s).ok()),
                    fetched_at: now,
                };
                let event = AuditEvent {
                    kind: AuditKind::BundleUpdated,
                    actor: "server".into(),
                    subject: td.to_string(),
                    outcome: Outcome::Ok,
                    detail: json!({
                        "endpoint": domain.spec.bundle_endpoint,
                        "spiffe_sequence": bundle.sequence,
                        "x509_authorities": bundle.x509_authorities.len(),
                        "jwt_authorities": bundle.jwt_authorities.len(),
                    }),
                };
                app.change(&[Op::StoreFederatedBundle(record)], event)
                    .await
                    .map_err(|e| BundleRefusal::Fetch {
                        url: domain.spec.bundle_endpoint.clone(),
                        reason: format!("storing it failed: {e}"),
                    })?;
                tracing::info!(trust_domain = %td, sequence = ?bundle.sequence, "federated bundle updated");
            }
            app.bundle_refreshes.update(td, |s| {
                s.last_success = Some(now);
                s.last_error = None;
            });
            Ok(hint)
        }
        Err(e) => {
            tracing::warn!(trust_domain = %td, error = %e, "federated bundle refused; the last good one stays in force");
            app.metrics
                .bundle_refresh_failures
                .get_or_create(&TdLabels {
                    trust_domain: td.to_string(),
                })
                .inc();
            let message = e.to_string();
            let repeated = app.bundle_refreshes.get(td).last_error.as_deref() == Some(&message);
            app.bundle_refreshes
                .update(td, |s| s.last_error = Some(message.clone()));
            // One record per distinct refusal, not one per retry of an endpoint that is down.
            if !repeated {
                app.audit_refusal(AuditEvent {
                    kind: AuditKind::BundleRefused,
                    actor: "server".into(),
                    subject: td.to_string(),
                    outcome: Outcome::Denied,
                    detail: json!({"endpoint": domain.spec.bundle_endpoint, "reason": message}),
                })
                .await;
            }
            Err(e)
        }
    }
}

/// The lifetime of the bundle endpoint's SVIDs; each is replaced at half-life, or at once when
/// another CA starts signing.
const SERVER_SVID_TTL: i64 = 3600;

/// Keeps an X.509-SVID `spiffe://<td>/tessera/server` per served trust domain for the
/// `https_spiffe` profile (the TLS layer presents it to a client whose SNI names the trust
/// domain). Its key is made in memory and never stored: it is cheap to make again.
pub(crate) fn renew_server_svids(app: &App, now: i64) {
    let snap = app.snapshot();
    for td in app.trust_domain_names() {
        let Some(ca) = snap.cas.signing(&td, now) else {
            continue;
        };
        let current = app.server_svids.get(td.as_str());
        if current.is_some_and(|c| c.ca_id == ca.id && now < c.renew_at) {
            continue;
        }
        let made = (|| -> Result<crate::tls::ServerSvid, String> {
            let id = tessera_core::SpiffeId::parse(&format!("spiffe://{td}/tessera/server"))
                .map_err(|e| e.to_string())?;
            let (pkcs8, csr) = tessera_ca::new_key_and_csr(&id).map_err(|e| e.to_string())?;
            let issued = ca
                .ca
                .sign_csr(&csr, &id, now, SERVER_SVID_TTL)
                .map_err(|e| e.to_string())?;
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.into());
            let signer =
                rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
            Ok(crate::tls::ServerSvid {
                key: Arc::new(rustls::sign::CertifiedKey::new(issued.chain(), signer)),
                ca_id: ca.id.clone(),
                renew_at: now + (issued.not_after - now) / 2,
            })
        })();
        match made {
            Ok(svid) => app.server_svids.set(td.as_str(), svid),
            Err(e) => {
                tracing::warn!(trust_domain = %td, error = %e, "the bundle endpoint's SVID could not be made")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn federation(url: &str) -> Federation {
        Federation {
            trust_domain: TrustDomain::parse("partner.example").unwrap(),
            bundle_endpoint: url.into(),
            profile: BundleProfile::HttpsWeb,
            endpoint_spiffe_id: None,
            initial_bundle: None,
            ca: None,
            token_issuer: None,
            source: "t.toml:1".into(),
        }
    }

    #[test]
    fn endpoints_are_https_or_dev_loopback_http() {
        assert!(endpoint_url(&federation("https://partner:8443/bundle/p"), false).is_ok());
        assert!(endpoint_url(&federation("http://127.0.0.1:1/bundle/p"), true).is_ok());
        for (url, dev) in [
            ("http://127.0.0.1:1/bundle/p", false),
            ("http://partner.example/bundle/p", true),
            ("ftp://partner/bundle", true),
            ("https://user:pw@partner/bundle", false),
            ("not a url", true),
        ] {
            assert!(endpoint_url(&federation(url), dev).is_err(), "{url}");
        }
    }

    fn ca_der(td: &str) -> Vec<u8> {
        let td = TrustDomain::parse(td).unwrap();
        let (ca, _) =
            tessera_ca::CertificateAuthority::generate(&td, 1_700_000_000, 86_400).unwrap();
        ca.cert().to_vec()
    }

    fn bundle(ders: &[Vec<u8>], sequence: Option<u64>) -> SpiffeBundle {
        use base64::Engine;
        let keys: Vec<_> = ders
            .iter()
            .map(|d| json!({"use": "x509-svid", "kty": "EC", "x5c": [base64::engine::general_purpose::STANDARD.encode(d)]}))
            .collect();
        SpiffeBundle::parse(
            json!({"keys": keys, "spiffe_sequence": sequence})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn another_domains_authority_and_older_sequences_are_refused() {
        let td = TrustDomain::parse("partner.example").unwrap();
        let ours = bundle(&[ca_der("partner.example")], Some(5));
        assert!(check(&td, None, &ours).is_ok());
        let theirs = bundle(&[ca_der("other.example")], Some(6));
        let e = check(&td, Some(&ours), &theirs).unwrap_err();
        assert!(
            e.to_string().contains("names trust domain `other.example`"),
            "{e}"
        );
        let older = bundle(&[ca_der("partner.example")], Some(4));
        assert!(matches!(
            check(&td, Some(&ours), &older),
            Err(BundleRefusal::OlderSequence { got: 4, have: 5 })
        ));
        // The same sequence again (a refresh with nothing new) is fine.
        assert!(check(&td, Some(&ours), &ours).is_ok());
        // A leaf is no authority.
        let id = tessera_core::SpiffeId::parse("spiffe://partner.example/w").unwrap();
        let (ca, _) =
            tessera_ca::CertificateAuthority::generate(&td, 1_700_000_000, 86_400).unwrap();
        let (_, csr) = tessera_ca::new_key_and_csr(&id).unwrap();
        let leaf = ca.sign_csr(&csr, &id, 1_700_000_000, 600).unwrap();
        let e = check(&td, None, &bundle(&[leaf.cert.to_vec()], None)).unwrap_err();
        assert!(e.to_string().contains("not a CA certificate"), "{e}");
    }
}
