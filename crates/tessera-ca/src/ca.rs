//! One signing CA of a trust domain, and X.509-SVIDs issued from certificate signing requests.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use tessera_core::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

use crate::CaError;

/// Certificates start this long before "now", so a peer whose clock is a little behind accepts
/// them.
const BACKDATE_SECS: i64 = 30;

/// The longest X.509-SVID lifetime the CA issues, whatever a registration asks for.
pub const MAX_SVID_TTL_SECS: i64 = 24 * 3600;

/// A signing CA: its certificate and its private key (held in memory only; stored sealed).
pub struct CertificateAuthority {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: i64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// An X.509-SVID as issued: the leaf certificate, its serial (hex) and when it expires.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub cert: CertificateDer<'static>,
    pub serial: String,
    pub not_after: i64,
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

impl CertificateAuthority {
    /// A new self-signed CA for `td`, valid from `now` for `ttl_secs`, with a fresh P-256 key.
    /// Returns the CA and its key as PKCS#8, for sealed storage.
    ///
    /// Its Subject is unique (it carries the serial), so that two CAs of one trust domain, as
    /// during a rotation, are never confused by path building. It has no name constraints:
    /// rustls-webpki rejects URI name constraints.
    pub fn generate(td: &TrustDomain, now: i64, ttl_secs: i64) -> Result<(Self, Vec<u8>), CaError> {
        let (pkcs8, key) = new_p256()?;
        let (serial, hex) = random_serial()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tessera");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Tessera CA {td} {}", hex.get(..16).unwrap_or(&hex)),
        );
        params.serial_number = Some(serial);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            rcgen::string::Ia5String::try_from(format!("spiffe://{td}")).map_err(CaError::Rcgen)?,
        )];
        params.not_before = time_at(now - BACKDATE_SECS)?;
        params.not_after = time_at(now + ttl_secs)?;
        let cert = params.self_signed(&key).map_err(CaError::Rcgen)?;
        let ca = Self::load(cert.der().to_vec(), &pkcs8)?;
        Ok((ca, pkcs8))
    }

    /// A CA from its stored certificate and PKCS#8 key. Refuses a key that does not belong to
    /// the certificate.
    pub fn load(cert_der: Vec<u8>, pkcs8: &[u8]) -> Result<Self, CaError> {
        let key = KeyPair::try_from(pkcs8).map_err(CaError::Rcgen)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::BadCaCert(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::BadCaCert(
                "the key does not belong to the certificate".into(),
            ));
        }
        let not_after = parsed.validity().not_after.timestamp();
        let cert = CertificateDer::from(cert_der);
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(CaError::Rcgen)?;
        Ok(Self {
            cert,
            issuer,
            not_after,
        })
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
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
        let cert = leaf.signed_by(&self.issuer).map_err(CaError::Rcgen)?;
        Ok(IssuedSvid {
            cert: cert.der().clone(),
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
