//! The internal certificate authority of each trust domain: it issues X.509-SVIDs from
//! certificate signing requests (rcgen), reads them (x509-parser) and validates their chains
//! (rustls-webpki), one trust domain's bundle at a time.

mod ca;
pub mod custody;
pub mod svid;
pub mod verifier;

pub use ca::{
    new_key_and_bare_csr, new_key_and_csr, CertificateAuthority, IssuedSvid, MAX_SVID_TTL_SECS,
};
pub use custody::{CertKey, TlsKey};
pub use svid::{
    check_federated_authority, dns_names, leaf_spiffe_id, p256_coordinates, pem,
    split_certificates, validity, verify_chain, BundleSource, StaticBundles, Usage,
};
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the system random source failed")]
    Random,
    #[error("time `{0}` is out of range")]
    Time(i64),
    #[error("certificate error: {0}")]
    Rcgen(rcgen::Error),
    #[error("the stored CA certificate is unusable: {0}")]
    BadCaCert(String),
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    CsrParse(String),
    #[error("the CSR's signature does not verify with its own key")]
    CsrSignature,
    #[error("the CSR asks for an extension an SVID does not carry (only a SAN naming the SPIFFE ID is accepted)")]
    CsrExtension,
    #[error("the CSR names `{0}`, which is not the SPIFFE ID being issued")]
    CsrForeignName(String),
    #[error("the CA has expired; it cannot issue")]
    CaExpired,
    #[error("a CA key is P-256 (ES256) or Ed25519")]
    KeyAlgorithm,
    #[error("the key: {0}")]
    Key(tessera_token::TokenError),
    /// The CA's key could not sign (its PKCS#11 token failed): nothing was issued.
    #[error("the CA key is unavailable: {0}")]
    KeyUnavailable(String),
    #[error("not a valid X.509-SVID: {0}")]
    BadSvid(String),
    #[error("trust domain `{0}` is not trusted here")]
    UntrustedDomain(String),
    /// The chain does not validate; webpki's reason is kept as data (expiry is told apart from
    /// an unknown issuer by callers, not by reading a message).
    #[error("the certificate chain does not validate: {0:?}")]
    Chain(webpki::Error),
}

impl CaError {
    /// How a TLS verifier refuses with this error: a certificate outside its validity period as
    /// rustls's own `Expired` / `NotValidYet` (so the TLS stack, and the sidecar's metrics, see
    /// what it is), every other refusal as a message.
    pub fn into_rustls(self) -> rustls::Error {
        match self {
            Self::Chain(webpki::Error::CertExpired { .. }) => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
            }
            Self::Chain(webpki::Error::CertNotValidYet { .. }) => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
            }
            other => rustls::Error::General(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
