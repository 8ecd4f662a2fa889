//! A signing key wherever it lives (in memory, or in a PKCS#11 token through
//! `tessera_token::Hsm`), seen by rcgen as a certificate signer and by rustls as a TLS key.
//! Both call `tessera_token::SigningKey::sign_der`, so no private key is ever copied out.

use std::sync::{Arc, Mutex};

use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::{SignatureAlgorithm, SignatureScheme};
use tessera_token::{Alg, SigningKey};

/// A key as rcgen's signer of certificates and CSRs.
#[derive(Debug, Clone)]
pub struct CertKey {
    key: Arc<SigningKey>,
    /// Why the last signature failed: rcgen carries only that it did.
    failure: Arc<Mutex<Option<String>>>,
}

impl CertKey {
    /// Only ES256 (P-256) and EdDSA keys sign certificates.
    pub fn new(key: Arc<SigningKey>) -> Option<Self> {
        key.alg().can_sign().then(|| Self {
            key,
            failure: Arc::default(),
        })
    }

    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }

    /// The reason of the last failed signature, taken.
    pub(crate) fn take_failure(&self) -> String {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| "the key could not sign".into())
    }
}

impl rcgen::PublicKeyData for CertKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.public().raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.key.alg() {
            Alg::EdDSA => &rcgen::PKCS_ED25519,
            Alg::ES256 | Alg::RS256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl rcgen::SigningKey for CertKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign_der(msg).map_err(|e| {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A key as rustls's TLS signing key (the API's own certificate when its key is in the token).
#[derive(Debug, Clone)]
pub struct TlsKey(Arc<SigningKey>);

impl TlsKey {
    pub fn new(key: Arc<SigningKey>) -> Self {
        Self(key)
    }

    fn scheme(&self) -> Option<SignatureScheme> {
        match self.0.alg() {
            Alg::ES256 => Some(SignatureScheme::ECDSA_NISTP256_SHA256),
            Alg::EdDSA => Some(SignatureScheme::ED25519),
            Alg::RS256 => None,
        }
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let scheme = self.scheme()?;
        offered.contains(&scheme).then(|| {
            Box::new(TlsSigner {
                key: self.0.clone(),
                scheme,
            }) as Box<dyn rustls::sign::Signer>
        })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        let key = CertKey::new(self.0.clone())?;
        Some(SubjectPublicKeyInfoDer::from(
            rcgen::PublicKeyData::subject_public_key_info(&key),
        ))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.0.alg() {
            Alg::EdDSA => SignatureAlgorithm::ED25519,
            Alg::ES256 | Alg::RS256 => SignatureAlgorithm::ECDSA,
        }
    }
}

#[derive(Debug)]
struct TlsSigner {
    key: Arc<SigningKey>,
    scheme: SignatureScheme,
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign_der(message)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
