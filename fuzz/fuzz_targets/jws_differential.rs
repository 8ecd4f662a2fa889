//! Differential: our JWS verifier against a second, independent implementation
//! (`jsonwebtoken` on RustCrypto's `p256`: another base64, JSON and ECDSA code base).
//!
//! The input is a header, a payload and an optional edit. The target signs the header and
//! payload genuinely with its ES256 key (so, unlike `jws`, the fuzzer reaches the accepting
//! side), applies the edit to the compact token, then asks both. Oracles:
//! - anything we accept, the second library accepts too, with the same claims (we may be
//!   stricter, never looser);
//! - a token whose signature bytes were edited is never accepted by us.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use tessera_token::{Alg, SigningKey, Unverified};

struct Keys {
    ours: SigningKey,
    theirs: DecodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let Ok((ours, _)) = SigningKey::generate(Alg::ES256) else {
            std::process::abort()
        };
        let jwk = ours.public().to_jwk();
        let (Some(x), Some(y)) = (jwk.get("x").and_then(|v| v.as_str()), jwk.get("y").and_then(|v| v.as_str()))
        else {
            std::process::abort()
        };
        let Ok(theirs) = DecodingKey::from_ec_components(x, y) else {
            std::process::abort()
        };
        Keys { ours, theirs }
    })
}

/// Splits the input at the first two 0xFF bytes: header, payload, edit (position, byte).
fn split(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let i = data.iter().position(|&b| b == 0xFF)?;
    let (header, rest) = (data.get(..i)?, data.get(i + 1..)?);
    let j = rest.iter().position(|&b| b == 0xFF).unwrap_or(rest.len());
    Some((header, rest.get(..j)?, rest.get(j + 1..).unwrap_or(&[])))
}

/// `sub` and `iss` strings, `aud` a string or strings, `exp`/`nbf`/`iat` non-negative integers.
fn registered_claims_typed(claims: &serde_json::Map<String, serde_json::Value>) -> bool {
    use serde_json::Value;
    claims.iter().all(|(k, v)| match k.as_str() {
        "sub" | "iss" => v.is_string(),
        "aud" => v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        "exp" | "nbf" | "iat" => v.is_u64(),
        _ => true,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((header, payload, edit)) = split(data) else {
        return;
    };
    let k = keys();
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let Ok(sig) = k.ours.sign(input.as_bytes()) else {
        std::process::abort()
    };
    let mut token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)).into_bytes();
    let mut signature_edited = false;
    if let [hi, lo, byte, ..] = edit {
        let at = (usize::from(*hi) << 8 | usize::from(*lo)) % token.len();
        let sig_start = input.len() + 1;
        if let Some(b) = token.get_mut(at) {
            if *b != *byte {
                *b = *byte;
                signature_edited = at >= sig_start;
            }
        }
    }
    let Ok(token) = String::from_utf8(token) else {
        return;
    };

    let ours = Unverified::parse(&token).and_then(|u| u.verify_with(k.ours.public()).map(|()| u.into_claims()));
    let Ok(claims) = ours else {
        return;
    };
    if signature_edited {
        // The signature bytes changed and still verified: a forgery (or a malleable encoding).
        std::process::abort();
    }
    // `jsonwebtoken` reads unregistered header members as strings only (RFC 7515 allows any
    // JSON value there, and so do we): for other headers it is no judge.
    let header_is_comparable = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(header)
        .is_ok_and(|h| h.iter().all(|(k, v)| v.is_string() || matches!(k.as_str(), "jwk" | "x5c")));
    // Nor for claims whose registered members break RFC 7519's types (it refuses those even
    // with every check off; at our JWS layer claims are data, and the verifier above it checks
    // the ones it uses).
    if !header_is_comparable || !registered_claims_typed(&claims) {
        return;
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(&token, &k.theirs, &v) {
        Ok(theirs) if theirs.claims == claims => {}
        // We accepted what an independent implementation refuses, or read other claims.
        _ => std::process::abort(),
    }
});
