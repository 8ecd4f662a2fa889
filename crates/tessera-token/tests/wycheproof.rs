//! Wycheproof vectors (C2SP/wycheproof, a subset copied unchanged into `tests/wycheproof/`, Apache
//! 2.0) through key parsing and signature verification: nothing that is not a valid signature
//! for an accepted algorithm may verify, and every valid ES256, EdDSA or RS256 case must.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{Map, Value};
use tessera_token::{Alg, PublicKey, Unverified};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/wycheproof/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The keys a group offers: one JWK, or a JWKS.
fn keys_of(group: &Value) -> Vec<Result<PublicKey, String>> {
    let Some(public) = group.get("public").and_then(Value::as_object) else {
        return Vec::new();
    };
    let jwks: Vec<Map<String, Value>> = match public.get("keys").and_then(Value::as_array) {
        Some(keys) => keys.iter().filter_map(|k| k.as_object().cloned()).collect(),
        None => vec![public.clone()],
    };
    jwks.iter()
        .map(|k| PublicKey::from_jwk(k).map_err(|e| e.to_string()))
        .collect()
}

/// Runs a JWS-shaped file; returns (cases, accepted valid cases).
fn jws_file(name: &str) -> (usize, usize) {
    let doc = load(name);
    let (mut cases, mut accepted_valid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        let keys: Vec<PublicKey> = keys_of(group).into_iter().filter_map(Result::ok).collect();
        for t in group["tests"].as_array().unwrap() {
            cases += 1;
            let jws = t["jws"].as_str().unwrap_or_default();
            let result = t["result"].as_str().unwrap();
            let accepted = Unverified::parse(jws)
                .map(|p| keys.iter().any(|k| p.verify_with(k).is_ok()))
                .unwrap_or(false);
            if accepted {
                assert_eq!(
                    result, "valid",
                    "{name} tcId {} ({}) was accepted",
                    t["tcId"], t["comment"]
                );
            }
            // The signature alone, for compact cases of an accepted algorithm: every valid one
            // must verify with the group's key of that algorithm. (Tessera's JWT parser refuses
            // the vectors' non-JSON payloads, so the full path above cannot accept them.)
            let parts: Vec<&str> = jws.split('.').collect();
            let alg = parts
                .first()
                .and_then(|h| tessera_token::strict::b64_decode(h))
                .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
                .and_then(|h| h["alg"].as_str().and_then(Alg::parse));
            if let ([h, p, sig], Some(alg), "valid") = (parts.as_slice(), alg, result) {
                let sig = tessera_token::strict::b64_decode(sig).unwrap_or_default();
                let input = format!("{h}.{p}");
                let mine: Vec<&PublicKey> = keys.iter().filter(|k| k.alg() == alg).collect();
                if !mine.is_empty() {
                    assert!(
                        mine.iter().any(|k| k.verify(input.as_bytes(), &sig)),
                        "{name} tcId {} ({}): a valid {} signature did not verify",
                        t["tcId"],
                        t["comment"],
                        alg.as_str()
                    );
                    accepted_valid += 1;
                }
            }
        }
    }
    (cases, accepted_valid)
}

#[test]
fn json_web_signature_vectors() {
    let (cases, ok) = jws_file("json_web_signature_test.json");
    assert!(cases > 300, "{cases}");
    assert!(ok >= 5, "valid ES256/RS256/EdDSA signatures verified: {ok}");
}

#[test]
fn json_web_key_vectors() {
    let (cases, _) = jws_file("json_web_key_test.json");
    assert!(cases >= 20, "{cases}");
}

/// A JWK for a group's raw key (`uncompressed` P-256 point, or Ed25519 `pk`).
fn raw_jwk(k: &Value) -> Option<Map<String, Value>> {
    let b64 = |b: &[u8]| tessera_token::strict::b64_encode(b);
    let mut m = Map::new();
    if let Some(u) = k["uncompressed"].as_str() {
        let p = hex(u);
        if p.len() != 65 {
            return None;
        }
        m.insert("kty".into(), "EC".into());
        m.insert("crv".into(), "P-256".into());
        m.insert("x".into(), b64(&p[1..33]).into());
        m.insert("y".into(), b64(&p[33..]).into());
    } else if let Some(pk) = k["pk"].as_str() {
        m.insert("kty".into(), "OKP".into());
        m.insert("crv".into(), "Ed25519".into());
        m.insert("x".into(), b64(&hex(pk)).into());
    } else {
        return None;
    }
    Some(m)
}

fn signature_file(name: &str) -> (usize, usize) {
    let doc = load(name);
    let (mut cases, mut valid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        // Every group has the raw key; not every group has a JWK form of it.
        let key = group["publicKeyJwk"]
            .as_object()
            .cloned()
            .or_else(|| raw_jwk(&group["publicKey"]))
            .and_then(|jwk| PublicKey::from_jwk(&jwk).ok());
        for t in group["tests"].as_array().unwrap() {
            cases += 1;
            let ok = key.as_ref().is_some_and(|k| {
                k.verify(
                    &hex(t["msg"].as_str().unwrap()),
                    &hex(t["sig"].as_str().unwrap()),
                )
            });
            match t["result"].as_str().unwrap() {
                "valid" => {
                    assert!(ok, "{name} tcId {} ({}) refused", t["tcId"], t["comment"]);
                    valid += 1;
                }
                "invalid" => assert!(!ok, "{name} tcId {} ({}) accepted", t["tcId"], t["comment"]),
                _ => {}
            }
        }
    }
    (cases, valid)
}

#[test]
fn ecdsa_p256_raw_signature_vectors() {
    let (cases, valid) = signature_file("ecdsa_secp256r1_sha256_p1363_test.json");
    assert!(cases > 200 && valid > 50, "{cases} {valid}");
}

#[test]
fn ed25519_vectors() {
    let (cases, valid) = signature_file("ed25519_test.json");
    assert!(cases > 100 && valid > 50, "{cases} {valid}");
}
