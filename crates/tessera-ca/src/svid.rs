//! Reading and validating X.509-SVIDs (SPIFFE X.509-SVID §5): the one SPIFFE ID of a leaf, and
//! its chain to the bundle of *that ID's* trust domain, never to another's.

use rustls::pki_types::{CertificateDer, UnixTime};
use tessera_core::{SpiffeId, TrustDomain};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::CaError;

/// The X.509 authorities of trust domains, as a peer verifier needs them.
pub trait BundleSource: Send + Sync + std::fmt::Debug {
    /// The CA certificates that sign SVIDs of `td`, or `None` when `td` is not trusted here.
    fn x509_authorities(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>>;
}

/// Bundles fixed when made: for tools, tests and benchmarks (servers, agents and sidecars
/// follow theirs as CAs rotate).
#[derive(Debug, Clone, Default)]
pub struct StaticBundles(Vec<(TrustDomain, CertificateDer<'static>)>);

impl StaticBundles {
    pub fn new(cas: impl IntoIterator<Item = (TrustDomain, CertificateDer<'static>)>) -> Self {
        Self(cas.into_iter().collect())
    }
}

impl BundleSource for StaticBundles {
    fn x509_authorities(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        let v: Vec<_> = self
            .0
            .iter()
            .filter(|(t, _)| t == td)
            .map(|(_, c)| c.clone())
            .collect();
        (!v.is_empty()).then_some(v)
    }
}

/// DER as PEM under `label` (`CERTIFICATE`, `CERTIFICATE REQUEST`, `PRIVATE KEY`): base64 in
/// lines of 64 (RFC 7468).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Splits the concatenated DER certificates of the Workload API (`x509_svid`, `bundle`), with
/// x509-parser reading each one's extent: a trailing fragment or garbage is an error.
pub fn split_certificates(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes)
            .map_err(|e| CaError::BadSvid(format!("not a certificate: {e}")))?;
        let used = bytes.len() - rest.len();
        let (cert, tail) = bytes.split_at(used);
        out.push(CertificateDer::from(cert.to_vec()));
        bytes = tail;
    }
    Ok(out)
}

/// Checks a certificate a federated trust domain's bundle lists as an X.509 authority: a CA
/// certificate usable as a trust anchor, naming no SPIFFE ID outside `td` (a bundle endpoint
/// serving another trust domain's bundle is found out here).
pub fn check_federated_authority(cert: &[u8], td: &TrustDomain) -> Result<(), CaError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| CaError::BadCaCert(format!("not a certificate: {e}")))?;
    let mut is_ca = false;
    for ext in parsed.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    let GeneralName::URI(u) = name else { continue };
                    let Some(rest) = u.strip_prefix("spiffe://") else {
                        continue;
                    };
                    let named = rest.split('/').next().unwrap_or_default();
                    if named != td.as_str() {
                        return Err(CaError::BadCaCert(format!(
                            "it names trust domain `{}`, not `{td}`",
                            named.chars().take(100).collect::<String>()
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    if !is_ca {
        return Err(CaError::BadCaCert("it is not a CA certificate".into()));
    }
    let der = CertificateDer::from(cert);
    webpki::anchor_from_trusted_cert(&der)
        .map_err(|e| CaError::BadCaCert(format!("not usable as a trust anchor: {e:?}")))?;
    Ok(())
}

/// The SPIFFE ID of an X.509-SVID leaf, with the leaf rules that precede chain validation:
/// exactly one URI SAN, which is a SPIFFE ID; not a CA; no `keyCertSign` or `cRLSign`.
pub fn leaf_spiffe_id(cert: &[u8]) -> Result<SpiffeId, CaError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| CaError::BadSvid(format!("not a certificate: {e}")))?;
    let mut uris = Vec::new();
    for ext in parsed.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push(*u);
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(CaError::BadSvid("the leaf is a CA certificate".into()));
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                return Err(CaError::BadSvid(
                    "the leaf may sign certificates (keyCertSign or cRLSign)".into(),
                ));
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [one] => SpiffeId::parse(one)
            .map_err(|e| CaError::BadSvid(format!("its URI SAN is not a SPIFFE ID: {e}"))),
        [] => Err(CaError::BadSvid("it has no URI SAN".into())),
        _ => Err(CaError::BadSvid(format!(
            "it has {} URI SANs; an SVID has exactly one",
            uris.len()
        ))),
    }
}

/// Which way the SVID is being used, for its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
}

/// Validates an X.509-SVID chain (leaf first) and returns its SPIFFE ID. The trust anchors are
/// those of the leaf's own trust domain only.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundles: &dyn BundleSource,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, CaError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| CaError::BadSvid("no certificate was presented".into()))?;
    if chain.len() > 5 {
        return Err(CaError::BadSvid("the chain is too long".into()));
    }
    let id = leaf_spiffe_id(leaf)?;
    let td = id.trust_domain();
    let roots = bundles
        .x509_authorities(&td)
        .ok_or_else(|| CaError::UntrustedDomain(td.to_string()))?;
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| CaError::BadSvid(format!("not a certificate: {e}")))?;
    let usage = match usage {
        Usage::Client => webpki::KeyUsage::client_auth(),
        Usage::Server => webpki::KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(CaError::Chain)?;
    Ok(id)
}

/// The X and Y coordinates of a certificate's P-256 public key, for a JWK; `None` for any other
/// kind of key.
pub fn p256_coordinates(cert: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let point = parsed.public_key().subject_public_key.data.as_ref();
    // An uncompressed point: 0x04 || X || Y.
    let (tag, xy) = point.split_first()?;
    if *tag != 4 || xy.len() != 64 {
        return None;
    }
    let (x, y) = xy.split_at(32);
    Some((x.to_vec(), y.to_vec()))
}

/// A certificate's validity period as Unix times (not before, not after).
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let v = parsed.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The DNS names a certificate's subjectAltName lists (none when it cannot be read).
pub fn dns_names(cert: &[u8]) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ext in parsed.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::DNSName(d) = name {
                    out.push(d.to_ascii_lowercase());
                }
            }
        }
    }
    out
}
