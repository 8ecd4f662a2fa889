//! CSR handling and SVID leaf reading on arbitrary DER: no panic; a certificate is issued only
//! for a CSR whose signature verifies, and it names exactly the requested SPIFFE ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tessera_ca::CertificateAuthority;
use tessera_core::{SpiffeId, TrustDomain};

fn ca() -> &'static (CertificateAuthority, SpiffeId) {
    static CA: OnceLock<(CertificateAuthority, SpiffeId)> = OnceLock::new();
    CA.get_or_init(|| {
        let td = TrustDomain::parse("example.org").unwrap_or_else(|_| std::process::abort());
        let (ca, _) = CertificateAuthority::generate(&td, 1_900_000_000, 86_400)
            .unwrap_or_else(|_| std::process::abort());
        let id = SpiffeId::parse("spiffe://example.org/fuzz").unwrap_or_else(|_| std::process::abort());
        (ca, id)
    })
}

fuzz_target!(|data: &[u8]| {
    let (ca, id) = ca();
    if let Ok(svid) = ca.sign_csr(data, id, 1_900_000_000, 3600) {
        match tessera_ca::leaf_spiffe_id(&svid.cert) {
            Ok(got) if &got == id => {}
            _ => std::process::abort(),
        }
    }
    let _ = tessera_ca::leaf_spiffe_id(data);
    let _ = tessera_ca::validity(data);
});
