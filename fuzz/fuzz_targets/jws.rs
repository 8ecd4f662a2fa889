//! The strict JWS parser and signature check on arbitrary input. Oracle: no panic, and nothing
//! but a token genuinely signed by the key verifies (the key here signs nothing the fuzzer sees).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tessera_token::{Alg, SigningKey, Unverified};

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(Alg::ES256).map(|(k, _)| k).unwrap_or_else(|_| std::process::abort()))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = Unverified::parse(text) {
        if parsed.verify_with(key().public()).is_ok() {
            // The fuzzer cannot produce an ES256 signature of this fresh key.
            std::process::abort();
        }
        let _ = tessera_token::claims::check_times(
            &parsed.claims,
            &tessera_token::TimeRules { now: 1_900_000_000, leeway: 30, max_ahead: Some(300) },
        );
    }
});
