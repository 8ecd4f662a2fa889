//! Signing an access token against the raw cost of one ES256 signature (ring), same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: a failure should stop it loudly"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use tessera_token::{sign, AccessTokenClaims, Alg, SigningKey, Unverified};

fn claims() -> AccessTokenClaims {
    AccessTokenClaims {
        iss: "https://tessera.example.org/example.org".into(),
        sub: "spiffe://example.org/prod/order-processor".into(),
        aud: "spiffe://example.org/prod/inventory-api".into(),
        client_id: "order-processor".into(),
        scope: "inventory:read inventory:reserve".into(),
        iat: 1_800_000_000,
        exp: 1_800_000_300,
        jti: "NOJioDII4sKBx3qPweOHwg".into(),
        environment: Some("prod".into()),
        act: None,
        cnf: None,
        status: None,
    }
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let raw =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let msg = [7u8; 300];
    let sig = raw.sign(&rng, &msg).unwrap();
    let public = raw.public_key().as_ref().to_vec();
    let mut g = c.benchmark_group("es256");
    g.bench_function("ring_sign_raw", |b| {
        b.iter(|| raw.sign(&rng, black_box(&msg)).unwrap())
    });
    #[expect(clippy::disallowed_methods, reason = "the raw peer measurement")]
    g.bench_function("ring_verify_raw", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
                .verify(black_box(&msg), sig.as_ref())
                .unwrap()
        })
    });
    let key = SigningKey::from_pkcs8(Alg::ES256, pkcs8.as_ref()).unwrap();
    let c0 = claims();
    g.bench_function("tessera_sign_access_token", |b| {
        b.iter(|| sign(&key, "at+jwt", black_box(&c0)).unwrap())
    });
    let token = sign(&key, "at+jwt", &c0).unwrap();
    g.bench_function("tessera_parse_and_check_signature", |b| {
        b.iter(|| {
            Unverified::parse(black_box(&token))
                .unwrap()
                .verify_with(key.public())
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
