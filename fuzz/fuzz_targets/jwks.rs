//! JWKS parsing (ours, and outside issuers' with RSA): no panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_token::JwkSet::parse_keys(data);
    if let Ok(keys) = tessera_token::JwkSet::parse_keys_with_rsa(data) {
        for k in keys {
            // A parsed key round-trips to a JWK that parses to the same key id.
            let again = tessera_token::PublicKey::from_jwk(&k.to_jwk());
            if again.map(|a| a.kid().clone()).ok().as_ref() != Some(k.kid()) {
                std::process::abort();
            }
        }
    }
});
