//! rustls verifiers that accept SPIFFE peers: a certificate chain that validates against the
//! bundle of the trust domain named in its leaf's SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tessera_core::SpiffeId;

use crate::svid::{verify_chain, BundleSource, Usage};
use crate::CaError;

/// Verifies client X.509-SVIDs. With `mandatory` false a client may connect without a
/// certificate (to join, say); handlers then see no peer identity and refuse what needs one.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<dyn BundleSource>,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    pub fn new(bundles: Arc<dyn BundleSource>, mandatory: bool) -> Self {
        Self {
            bundles,
            mandatory,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        verify_chain(&chain, self.bundles.as_ref(), now, Usage::Client)
            .map(|_| ClientCertVerified::assertion())
            .map_err(CaError::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Verifies a server's X.509-SVID for a client that must reach exactly `expected`: the chain
/// validates against the bundle of the leaf's own trust domain, then the leaf's one SPIFFE ID must
/// equal `expected`. DNS names play no part (SPIFFE authenticates by ID).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: Arc<dyn BundleSource>,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(bundles: Arc<dyn BundleSource>, expected: SpiffeId) -> Self {
        Self {
            bundles,
            expected,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let id = verify_chain(&chain, self.bundles.as_ref(), now, Usage::Server)
            .map_err(CaError::into_rustls)?;
        if id != self.expected {
            return Err(rustls::Error::General(format!(
                "the server is `{id}`, not `{}`",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
