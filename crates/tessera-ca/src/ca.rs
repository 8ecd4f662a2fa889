//! One signing CA of a trust domain, and X.509-SVIDs issued from certificate signing requests.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use tessera_core::{SpiffeId, TrustDomain};
use tessera_token::{Alg, SigningKey};
use time::OffsetDateTime;

use crate::custody::CertKey;
use crate::CaError;

/// Certificates start this long before "now", so a peer whose clock is a little behind accepts
/// them.
const BACKDATE_SECS: i64 = 30;

/// The longest X.509-SVID lifetime the CA issues, whatever a registration asks for.
pub const MAX_SVID_TTL_SECS: i64 = 24 * 3600;

/// A signing CA: its certificate, the chain an SVID it signs carries, and its key (in memory,
/// stored sealed; or in a PKCS#11 token).
pub struct CertificateAuthority {
    cert: CertificateDer<'static>,
    /// Sent after each SVID's leaf: empty when the CA is self-signed (it is the bundle's
    /// anchor), else this intermediate and any above it below the root.
    chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, CertKey>,
    signer: CertKey,
    not_after: i64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// An X.509-SVID as issued: the leaf certificate, the CA certificates that follow it, its
/// serial (hex) and when it expires.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub cert: CertificateDer<'static>,
    pub intermediates: Vec<CertificateDer<'static>>,
    pub serial: String,
    pub not_after: i64,
}

impl IssuedSvid {
    /// The leaf, then the intermediates: what the Workload API hands out.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.cert.clone())
            .chain(self.intermediates.iter().cloned())
            .collect()
    }
}

/// A fresh P-256 key from ring, as PKCS#8 and as an rcgen key pair.
fn new_p256() -> Result<(Vec<u8>, KeyPair), CaError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .map_err(|_| CaError::Random)?;
    let pkcs8 = pkcs8.as_ref().to_vec();
    let key = KeyPair::try_from(pkcs8.as_slice()).map_err(CaError::Rcgen)?;
    Ok((pkcs8, key))
}

fn time_at(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CaError::Time(unix))
}

fn random_serial() -> Result<(SerialNumber, String), CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| CaError::Random)?;
    // A positive INTEGER with no leading zero octet, so that the hex form is the DER content.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok((SerialNumber::from_slice(&bytes), hex))
}

fn cert_key(key: &Arc<SigningKey>) -> Result<CertKey, CaError> {
    CertKey::new(key.clone()).ok_or(CaError::KeyAlgorithm)
}

fn spiffe_san(td: &TrustDomain) -> Result<SanType, CaError> {
    Ok(SanType::URI(
        rcgen::string::Ia5String::try_from(format!("spiffe://{td}")).map_err(CaError::Rcgen)?,
    ))
}

/// A CA certificate's parameters. Its Subject is unique (it carries the serial), so that two
/// CAs of one trust domain, as during a rotation, are never confused by path building. No name
/// constraints: rustls-webpki rejects URI name constraints; the bundle per trust domain is what
/// confines a CA to its domain.
fn ca_params(
    title: &str,
    td: Option<&TrustDomain>,
    path_len: u8,
    now: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let (serial, hex) = random_serial()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Tessera");
    let name = match td {
        Some(td) => format!("{title} {td} {}", hex.get(..16).unwrap_or(&hex)),
        None => format!("{title} {}", hex.get(..16).unwrap_or(&hex)),
    };
    params.distinguished_name.push(DnType::CommonName, name);
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(td) = td {
        params.subject_alt_names = vec![spiffe_san(td)?];
    }
    params.not_before = time_at(now - BACKDATE_SECS)?;
    params.not_after = time_at(not_after)?;
    Ok(params)
}

/// Maps rcgen's "the key failed" to the key's own reason (a token that went away).
fn signing_error(signer: &CertKey, e: rcgen::Error) -> CaError {
    match e {
        rcgen::Error::RemoteKeyError => CaError::KeyUnavailable(signer.take_failure()),
        other => CaError::Rcgen(other),
    }
}

impl CertificateAuthority {
    /// A new self-signed CA for `td`, valid from `now` for `ttl_secs`, with a fresh P-256 key
    /// in memory. Returns the CA and its key as PKCS#8, for sealed storage.
    pub fn generate(td: &TrustDomain, now: i64, ttl_secs: i64) -> Result<(Self, Vec<u8>), CaError> {
        let (pkcs8, _) = new_p256()?;
        let key = SigningKey::from_pkcs8(Alg::ES256, &pkcs8).map_err(CaError::Key)?;
        let ca = Self::self_signed(td, Arc::new(key), now, ttl_secs)?;
        Ok((ca, pkcs8))
    }

    /// A new self-signed CA for `td` with `key` (wherever it lives).
    pub fn self_signed(
        td: &TrustDomain,
        key: Arc<SigningKey>,
        now: i64,
        ttl_secs: i64,
    ) -> Result<Self, CaError> {
        let signer = cert_key(&key)?;
        let params = ca_params("Tessera CA", Some(td), 0, now, now + ttl_secs)?;
        let cert = params
            .self_signed(&signer)
            .map_err(|e| signing_error(&signer, e))?;
        Self::load(cert.der().to_vec(), key)
    }

    /// A new root CA over the trust domains' CAs: path length 1, no SPIFFE ID (it names no
    /// trust domain, and is never in a bundle).
    pub fn root(key: Arc<SigningKey>, now: i64, ttl_secs: i64) -> Result<Self, CaError> {
        let signer = cert_key(&key)?;
        let params = ca_params("Tessera Root CA", None, 1, now, now + ttl_secs)?;
        let cert = params
            .self_signed(&signer)
            .map_err(|e| signing_error(&signer, e))?;
        Self::load(cert.der().to_vec(), key)
    }

    /// A new intermediate CA for `td` with `key`, signed by this (root) CA, within its
    /// validity.
    pub fn sign_intermediate(
        &self,
        td: &TrustDomain,
        key: Arc<SigningKey>,
        now: i64,
        ttl_secs: i64,
    ) -> Result<Self, CaError> {
        let not_after = (now + ttl_secs).min(self.not_after);
        if not_after <= now {
            return Err(CaError::CaExpired);
        }
        let subject = cert_key(&key)?;
        let mut params = ca_params("Tessera CA", Some(td), 0, now, not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&subject, &self.issuer)
            .map_err(|e| signing_error(&self.signer, e))?;
        Self::load(cert.der().to_vec(), key)
    }

    /// A CSR for `td`'s CA, for a root outside Tessera to sign (`tessera ca csr`).
    pub fn csr(td: &TrustDomain, key: &Arc<SigningKey>) -> Result<Vec<u8>, CaError> {
        let signer = cert_key(key)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tessera");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Tessera CA {td}"));
        params.subject_alt_names = vec![spiffe_san(td)?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let csr = params
            .serialize_request(&signer)
            .map_err(|e| signing_error(&signer, e))?;
        Ok(csr.der().to_vec())
    }

    /// A CA from its stored certificates (DER, concatenated: its own first, then any
    /// intermediates above it) and its key. Refuses a key that does not belong to the
    /// certificate, and a certificate that is not a CA.
    pub fn load(certs_der: Vec<u8>, key: Arc<SigningKey>) -> Result<Self, CaError> {
        let certs = crate::split_certificates(&certs_der)?;
        let mut certs = certs.into_iter();
        let cert = certs
            .next()
            .ok_or_else(|| CaError::BadCaCert("no certificate".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| CaError::BadCaCert(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public().raw() {
            return Err(CaError::BadCaCert(
                "the key does not belong to the certificate".into(),
            ));
        }
        if !parsed.is_ca() {
            return Err(CaError::BadCaCert(
                "it is not a CA certificate (basicConstraints cA is not set)".into(),
            ));
        }
        let self_signed = parsed.subject().as_raw() == parsed.issuer().as_raw();
        let not_after = parsed.validity().not_after.timestamp();
        let chain = if self_signed {
            Vec::new()
        } else {
            std::iter::once(cert.clone()).chain(certs).collect()
        };
        let signer = cert_key(&key)?;
        let issuer = Issuer::from_ca_cert_der(&cert, signer.clone()).map_err(CaError::Rcgen)?;
        Ok(Self {
            cert,
            chain,
            issuer,
            signer,
            not_after,
        })
    }

    /// Checks a certificate signed outside for `td`'s CA (`tessera ca install`): a CA, for
    /// this trust domain only (if it names one), valid now.
    pub fn check_installable(&self, td: &TrustDomain, now: i64) -> Result<(), CaError> {
        let (_, parsed) = x509_parser::parse_x509_certificate(&self.cert)
            .map_err(|e| CaError::BadCaCert(e.to_string()))?;
        let valid = parsed.validity();
        if now < valid.not_before.timestamp() || self.not_after <= now {
            return Err(CaError::BadCaCert("it is not valid now".into()));
        }
        let want = format!("spiffe://{td}");
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::URI(u) if *u == want => {}
                    x509_parser::extensions::GeneralName::URI(u) => {
                        return Err(CaError::BadCaCert(format!("it names `{u}`, not `{want}`")))
                    }
                    _ => {}
                }
            }
        }
        match parsed.key_usage() {
            Ok(Some(ku)) if ku.value.key_cert_sign() => Ok(()),
            _ => Err(CaError::BadCaCert(
                "its key usage does not allow signing certificates".into(),
            )),
        }
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// What is stored: its own certificate, then those above it (DER, concatenated).
    pub fn stored_der(&self) -> Vec<u8> {
        let mut out = self.cert.to_vec();
        for c in self.chain.iter().skip(1) {
            out.extend_from_slice(c);
        }
        out
    }

    /// Whether a root (inside or outside Tessera) signed this CA.
    pub fn is_intermediate(&self) -> bool {
        !self.chain.is_empty()
    }

    pub fn key(&self) -> &Arc<SigningKey> {
        self.signer.key()
    }

    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Issues an X.509-SVID for `id` from a CSR.
    ///
    /// The CSR contributes its public key and nothing else: names, usages, constraints and
    /// lifetime are the CA's (SPIFFE X.509-SVID §4, §5). A CSR that asks for any name but `id`
    /// is refused rather than silently narrowed, so a confused or hostile agent is noticed.
    /// The lifetime is cut to the CA's own expiry.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        now: i64,
        ttl_secs: i64,
    ) -> Result<IssuedSvid, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| match e {
                    rcgen::Error::InvalidCertificationRequestSignature => CaError::CsrSignature,
                    rcgen::Error::UnsupportedExtension => CaError::CsrExtension,
                    other => CaError::CsrParse(other.to_string()),
                })?;
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(u) if u.as_str() == id.as_str() => {}
                SanType::URI(u) => {
                    return Err(CaError::CsrForeignName(
                        u.as_str().chars().take(200).collect(),
                    ))
                }
                other => return Err(CaError::CsrForeignName(format!("{other:?}"))),
            }
        }
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(CaError::CsrExtension);
        }
        let (serial, hex) = random_serial()?;
        let not_after = (now + ttl_secs.clamp(10, MAX_SVID_TTL_SECS)).min(self.not_after);
        if not_after <= now {
            return Err(CaError::CaExpired);
        }
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tessera");
        params.serial_number = Some(serial);
        params.subject_alt_names = vec![SanType::URI(
            rcgen::string::Ia5String::try_from(id.as_str()).map_err(CaError::Rcgen)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time_at(now - BACKDATE_SECS)?;
        params.not_after = time_at(not_after)?;
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = leaf
            .signed_by(&self.issuer)
            .map_err(|e| signing_error(&self.signer, e))?;
        Ok(IssuedSvid {
            cert: cert.der().clone(),
            intermediates: self.chain.clone(),
            serial: hex,
            not_after,
        })
    }
}

/// A fresh P-256 key and a CSR for `id`, as an agent makes them. Returns (PKCS#8, CSR DER).
pub fn new_key_and_csr(id: &SpiffeId) -> Result<(Vec<u8>, Vec<u8>), CaError> {
    let (pkcs8, key) = new_p256()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        rcgen::string::Ia5String::try_from(id.as_str()).map_err(CaError::Rcgen)?,
    )];
    let csr = params.serialize_request(&key).map_err(CaError::Rcgen)?;
    Ok((pkcs8, csr.der().to_vec()))
}

/// A fresh P-256 key and a CSR that names nothing, for an agent that learns its SPIFFE ID from
/// the authority when it joins. Returns (PKCS#8, CSR DER).
pub fn new_key_and_bare_csr() -> Result<(Vec<u8>, Vec<u8>), CaError> {
    let (pkcs8, key) = new_p256()?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(CaError::Rcgen)?;
    Ok((pkcs8, csr.der().to_vec()))
}
