//! JWS compact serialization (RFC 7515) with RFC 8725's rules applied at parse time.

use serde::Serialize;
use serde_json::{Map, Value};
use tessera_core::Kid;

use crate::key::{Alg, PublicKey, SigningKey};
use crate::strict::{b64_decode, b64_encode, parse_object};
use crate::TokenError;

/// Tokens larger than this are refused before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Header members that would let the token choose its own key or change processing rules.
const REFUSED_HEADER_MEMBERS: &[(&str, &str)] = &[
    ("crit", "`crit` extensions are not understood"),
    ("jku", "`jku` (key set URL in the token) is refused"),
    ("x5u", "`x5u` (certificate URL in the token) is refused"),
    ("jwk", "an embedded `jwk` is refused"),
    ("x5c", "an embedded `x5c` chain is refused"),
    ("b64", "unencoded payloads (`b64`) are refused"),
    ("zip", "compressed payloads (`zip`) are refused"),
    ("enc", "encrypted tokens (JWE) are not accepted"),
];

/// A token split and decoded, but not yet checked against any key.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Alg,
    pub kid: Option<Kid>,
    pub typ: Option<String>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    /// Parses a compact JWS. Refuses everything RFC 8725 warns about that a header can say.
    pub fn parse(token: &'a str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("the token is larger than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(if token.split('.').count() == 5 {
                TokenError::Malformed("encrypted tokens (JWE) are not accepted")
            } else {
                TokenError::Malformed("a JWS has exactly three dot-separated parts")
            });
        };
        let header_bytes = b64_decode(h).ok_or(TokenError::Malformed(
            "the header is not canonical base64url",
        ))?;
        let header = parse_object(&header_bytes)
            .map_err(|e| TokenError::Header(format!("the header is not valid JSON: {e}")))?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => Alg::parse(a).ok_or_else(|| {
                TokenError::Header(format!(
                    "algorithm `{}` is not accepted (ES256 and EdDSA are; RS256 from trusted outside issuers)",
                    a.chars().take(20).collect::<String>()
                ))
            })?,
            Some(_) => return Err(TokenError::Header("`alg` is not a string".into())),
            None => return Err(TokenError::Header("`alg` is missing".into())),
        };
        for (name, why) in REFUSED_HEADER_MEMBERS {
            if header.contains_key(*name) {
                return Err(TokenError::Header((*why).into()));
            }
        }
        let kid = match header.get("kid") {
            Some(Value::String(k)) => Some(
                Kid::parse(k)
                    .map_err(|_| TokenError::Header("`kid` is not a valid key id".into()))?,
            ),
            Some(_) => return Err(TokenError::Header("`kid` is not a string".into())),
            None => None,
        };
        let typ = match header.get("typ") {
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err(TokenError::Header("`typ` is not a string".into())),
            None => None,
        };
        let payload = b64_decode(p).ok_or(TokenError::Malformed(
            "the payload is not canonical base64url",
        ))?;
        let claims = parse_object(&payload)
            .map_err(|e| TokenError::Claims(format!("the payload is not a JSON object: {e}")))?;
        let signature = b64_decode(s).ok_or(TokenError::Malformed(
            "the signature is not canonical base64url",
        ))?;
        let signing_input = token
            .get(..h.len() + 1 + p.len())
            .ok_or(TokenError::Malformed(
                "a JWS has exactly three dot-separated parts",
            ))?;
        Ok(Self {
            alg,
            kid,
            typ,
            header,
            claims,
            signing_input,
            signature,
        })
    }

    /// Checks the signature with `key`, whose algorithm must be the one the header names.
    pub fn verify_with(&self, key: &PublicKey) -> Result<(), TokenError> {
        if key.alg() != self.alg {
            return Err(TokenError::Signature);
        }
        if key.verify(self.signing_input.as_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(TokenError::Signature)
        }
    }

    pub fn into_claims(self) -> Map<String, Value> {
        self.claims
    }
}

/// Signs `claims` as a compact JWS with `typ` and the key's `kid` in the header.
pub fn sign<C: Serialize>(key: &SigningKey, typ: &str, claims: &C) -> Result<String, TokenError> {
    #[derive(Serialize)]
    struct Header<'a> {
        alg: &'static str,
        kid: &'a str,
        typ: &'a str,
    }
    let header = serde_json::to_vec(&Header {
        alg: key.alg().as_str(),
        kid: key.kid().as_str(),
        typ,
    })
    .map_err(|_| TokenError::Crypto("header serialization failed"))?;
    let payload =
        serde_json::to_vec(claims).map_err(|_| TokenError::Crypto("claim serialization failed"))?;
    let mut out = String::with_capacity(64 + (header.len() + payload.len()) * 4 / 3 + 100);
    out.push_str(&b64_encode(header));
    out.push('.');
    out.push_str(&b64_encode(payload));
    let sig = key.sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&b64_encode(sig));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn forge(header: Value, claims: Value, key: &SigningKey) -> String {
        let input = format!(
            "{}.{}",
            b64_encode(header.to_string()),
            b64_encode(claims.to_string())
        );
        let sig = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64_encode(sig))
    }

    #[test]
    fn roundtrip() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let t = sign(&key, "at+jwt", &json!({"sub":"x"})).unwrap();
        let u = Unverified::parse(&t).unwrap();
        assert_eq!(u.typ.as_deref(), Some("at+jwt"));
        assert_eq!(u.kid.as_ref(), Some(key.kid()));
        u.verify_with(key.public()).unwrap();
    }

    #[test]
    fn header_attacks_refused() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let claims = json!({"sub":"x"});
        for (header, why) in [
            (json!({"alg":"none"}), "not accepted"),
            (json!({"alg":"NONE"}), "not accepted"),
            (json!({"alg":"HS256"}), "not accepted"),
            (json!({"alg":"RS512"}), "not accepted"),
            (json!({"alg":"PS256"}), "not accepted"),
            (json!({"alg":"ES256","crit":["exp"]}), "crit"),
            (json!({"alg":"ES256","jku":"https://evil"}), "jku"),
            (json!({"alg":"ES256","x5u":"https://evil"}), "x5u"),
            (json!({"alg":"ES256","jwk":key.public().to_jwk()}), "jwk"),
            (json!({"alg":"ES256","kid":"../../etc/passwd"}), "kid"),
            (json!({"alg":"ES256","kid":5}), "kid"),
            (json!({"kid":"x"}), "missing"),
        ] {
            let t = forge(header.clone(), claims.clone(), &key);
            let e = Unverified::parse(&t).unwrap_err().to_string();
            assert!(e.contains(why), "{header}: {e}");
        }
    }

    #[test]
    fn shape_attacks_refused() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let good = sign(&key, "at+jwt", &json!({"sub":"x"})).unwrap();
        assert!(Unverified::parse("a.b").is_err());
        assert!(Unverified::parse("a.b.c.d.e")
            .unwrap_err()
            .to_string()
            .contains("JWE"));
        assert!(Unverified::parse(&format!("{good}.")).is_err());
        assert!(Unverified::parse(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        // Padding appended to the signature makes it non-canonical.
        assert!(Unverified::parse(&format!("{good}=")).is_err());
        // Duplicate claim names.
        let dup = format!(
            "{}.{}.{}",
            b64_encode(br#"{"alg":"ES256"}"#),
            b64_encode(br#"{"sub":"a","sub":"b"}"#),
            "AA"
        );
        assert!(Unverified::parse(&dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }

    #[test]
    fn algorithm_comes_from_the_key() {
        let (es, _) = SigningKey::generate(Alg::ES256).unwrap();
        let (ed, _) = SigningKey::generate(Alg::EdDSA).unwrap();
        // Signed by the Ed25519 key but labelled ES256: checked against an ES256 key, it fails;
        // and an EdDSA-labelled token is never checked with an ES256 key.
        let t = forge(json!({"alg":"ES256"}), json!({}), &ed);
        assert!(Unverified::parse(&t)
            .unwrap()
            .verify_with(es.public())
            .is_err());
        assert!(Unverified::parse(&t)
            .unwrap()
            .verify_with(ed.public())
            .is_err());
        let t = forge(json!({"alg":"EdDSA"}), json!({}), &ed);
        assert!(Unverified::parse(&t)
            .unwrap()
            .verify_with(ed.public())
            .is_ok());
        // RS256 parses (outside issuers use it) but never verifies with a non-RSA key.
        let t = forge(json!({"alg":"RS256"}), json!({}), &es);
        assert!(Unverified::parse(&t)
            .unwrap()
            .verify_with(es.public())
            .is_err());
    }

    #[test]
    fn der_and_zero_signatures_refused() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let good = sign(&key, "at+jwt", &json!({"sub":"x"})).unwrap();
        let (input, _) = good.rsplit_once('.').unwrap();
        let zero = format!("{input}.{}", b64_encode([0u8; 64]));
        assert!(Unverified::parse(&zero)
            .unwrap()
            .verify_with(key.public())
            .is_err());
        // A DER-encoded (r=1, s=1) signature of plausible length.
        let der = format!("{input}.{}", b64_encode([0x30, 6, 2, 1, 1, 2, 1, 1]));
        assert!(Unverified::parse(&der)
            .unwrap()
            .verify_with(key.public())
            .is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Arbitrary input never panics the parser.
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = Unverified::parse(&s);
        }

        /// Three base64url-looking parts: still no panic, and nothing verifies without the key.
        #[test]
        fn random_parts_never_verify(h in "[A-Za-z0-9_-]{0,80}", p in "[A-Za-z0-9_-]{0,80}", s in "[A-Za-z0-9_-]{0,90}") {
            let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
            if let Ok(u) = Unverified::parse(&format!("{h}.{p}.{s}")) {
                prop_assert!(u.verify_with(key.public()).is_err());
            }
        }

        /// Any change to a signed token's bytes breaks it: refused at parse or at the signature.
        #[test]
        fn tampering_is_detected(pos in 0usize..200, byte in 0u8..128) {
            let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
            let token = sign(&key, "at+jwt", &json!({"sub": "spiffe://example.org/a", "exp": 1})).unwrap();
            let mut bytes = token.into_bytes();
            let i = pos % bytes.len();
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let Ok(tampered) = String::from_utf8(bytes) else { return Ok(()) };
            let ok = Unverified::parse(&tampered).is_ok_and(|u| u.verify_with(key.public()).is_ok());
            prop_assert!(!ok, "a tampered token verified");
        }
    }
}
