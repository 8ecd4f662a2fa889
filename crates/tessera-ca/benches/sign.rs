//! X.509-SVID signing from a CSR (parse, CSR signature check, issue), and chain validation.
#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure should stop it loudly"
)]

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::UnixTime;
use tessera_ca::{new_key_and_csr, verify_chain, CertificateAuthority, StaticBundles, Usage};
use tessera_core::{SpiffeId, TrustDomain};

fn bench(c: &mut Criterion) {
    let td = TrustDomain::parse("example.org").unwrap();
    let id = SpiffeId::parse("spiffe://example.org/api").unwrap();
    let now = tessera_core::now_unix();
    let (ca, _) = CertificateAuthority::generate(&td, now, 86400).unwrap();
    let (_, csr) = new_key_and_csr(&id).unwrap();
    c.bench_function("sign_csr", |b| {
        b.iter(|| ca.sign_csr(&csr, &id, now, 3600).unwrap())
    });
    let svid = ca.sign_csr(&csr, &id, now, 3600).unwrap();
    let bundles = StaticBundles::new([(td, ca.cert().clone())]);
    let t = UnixTime::now();
    c.bench_function("verify_chain", |b| {
        b.iter(|| {
            verify_chain(std::slice::from_ref(&svid.cert), &bundles, t, Usage::Client).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
