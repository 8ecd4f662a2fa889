//! In-process verification with a warm key set, beside one raw ES256 verification (ring).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark: a failure should stop it loudly"
)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde_json::json;
use tessera_token::{sign, Alg, JwkSet, SigningKey};
use tessera_verify::{KeySet, Verifier, VerifierConfig};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
    let now = tessera_core::now_unix();
    let token = sign(
        &key,
        "at+jwt",
        &json!({"iss": "https://tessera.example.org", "sub": "spiffe://example.org/a", "aud": "spiffe://example.org/b",
                "client_id": "a", "scope": "b:read", "iat": now, "exp": now + 86_400, "jti": "j"}),
    )
    .unwrap();
    let jwks = serde_json::to_vec(&JwkSet::from_keys([key.public()])).unwrap();
    let verifier = Verifier::new(
        VerifierConfig::access_token("https://tessera.example.org", "spiffe://example.org/b")
            .unwrap(),
        KeySet::from_jwks(&jwks).unwrap(),
    );
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = tessera_token::strict::b64_decode(sig).unwrap();
    let point = {
        let jwk = key.public().to_jwk();
        let x = tessera_token::strict::b64_decode(jwk["x"].as_str().unwrap()).unwrap();
        let y = tessera_token::strict::b64_decode(jwk["y"].as_str().unwrap()).unwrap();
        [vec![4u8], x, y].concat()
    };
    let mut g = c.benchmark_group("verify");
    #[expect(clippy::disallowed_methods, reason = "the raw peer measurement")]
    g.bench_function("ring_es256_verify_raw", |b| {
        b.iter(|| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .verify(black_box(input.as_bytes()), &sig)
                .unwrap()
        })
    });
    g.bench_function("tessera_verifier_warm", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&token))).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
