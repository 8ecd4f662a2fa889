//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle §4): a JWKS whose keys carry `use`
//! `x509-svid` (an authority certificate in `x5c`) or `jwt-svid` (a JWT-SVID signing key), with
//! `spiffe_sequence` and `spiffe_refresh_hint`. One parser for every bundle that comes from
//! outside: a federated authority's endpoint, an `initial_bundle` file, a bundle pasted by hand.
//! It reads the structure only; certificates are checked by `tessera-ca` and keys by
//! `tessera-token` where they are used.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

/// The largest bundle accepted (SPIRE's own bundles are a few KB; a CA rotation doubles them).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;

/// The most keys a bundle may hold.
pub const MAX_BUNDLE_KEYS: usize = 256;

/// JWK members that only a private key has: a bundle carrying one is refused, not trimmed.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("the bundle is not a JSON object: {0}")]
    Json(String),
    #[error("the bundle has no `keys` array")]
    NoKeys,
    #[error("the bundle holds more than {MAX_BUNDLE_KEYS} keys")]
    TooManyKeys,
    #[error("key {index}: {reason}")]
    Key { index: usize, reason: String },
    #[error("`{member}` is not a non-negative integer")]
    Member { member: &'static str },
    #[error("the bundle holds no X.509 authority and no JWT key")]
    Empty,
}

/// A parsed SPIFFE bundle. Built only by [`SpiffeBundle::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpiffeBundle {
    /// The authorities' certificates (DER), in the bundle's order.
    pub x509_authorities: Vec<Vec<u8>>,
    /// The JWT-SVID keys as JWKs (public members only), each with a `kid`.
    pub jwt_authorities: Vec<Map<String, Value>>,
    pub sequence: Option<u64>,
    /// Seconds, as the bundle suggests.
    pub refresh_hint: Option<u64>,
    /// Every key of a known use as it came, for writing the bundle out again.
    keys: Vec<Map<String, Value>>,
}

impl SpiffeBundle {
    /// Parses a bundle document. Keys of a `use` this format does not define are ignored (as
    /// the specification asks); a malformed key of a known use refuses the whole bundle.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge);
        }
        let doc: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(BundleError::NoKeys)?;
        if keys.len() > MAX_BUNDLE_KEYS {
            return Err(BundleError::TooManyKeys);
        }
        let number = |member: &'static str| match doc.get(member) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(BundleError::Member { member }),
        };
        let sequence = number("spiffe_sequence")?;
        let refresh_hint = number("spiffe_refresh_hint")?;
        let mut bundle = Self {
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence,
            refresh_hint,
            keys: Vec::new(),
        };
        for (index, key) in keys.iter().enumerate() {
            let bad = |reason: &str| BundleError::Key {
                index,
                reason: reason.to_owned(),
            };
            let key = key.as_object().ok_or_else(|| bad("not an object"))?;
            if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
                return Err(bad(&format!("carries the private member `{m}`")));
            }
            if !key.get("kty").is_some_and(Value::is_string) {
                return Err(bad("has no `kty`"));
            }
            match key.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    let x5c = key
                        .get("x5c")
                        .and_then(Value::as_array)
                        .ok_or_else(|| bad("an `x509-svid` key without `x5c`"))?;
                    let [cert] = x5c.as_slice() else {
                        return Err(bad("`x5c` must hold exactly one certificate"));
                    };
                    let der = cert
                        .as_str()
                        .and_then(|c| STANDARD.decode(c).ok())
                        .filter(|d| !d.is_empty())
                        .ok_or_else(|| bad("`x5c` is not base64 DER"))?;
                    bundle.x509_authorities.push(der);
                    bundle.keys.push(key.clone());
                }
                Some("jwt-svid") => {
                    if key
                        .get("kid")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(bad("a `jwt-svid` key without `kid`"));
                    }
                    bundle.jwt_authorities.push(key.clone());
                    bundle.keys.push(key.clone());
                }
                _ => {}
            }
        }
        if bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(bundle)
    }

    /// The JWT keys as a JWKS document, for the verifiers that read one.
    pub fn jwks(&self) -> Value {
        serde_json::json!({ "keys": self.jwt_authorities })
    }

    /// The bundle in the SPIFFE format again (what the Workload API and `describe` show).
    pub fn to_document(&self) -> Value {
        let keys = self.keys.iter().cloned().map(Value::Object).collect();
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        if let Some(s) = self.sequence {
            doc.insert("spiffe_sequence".into(), s.into());
        }
        if let Some(h) = self.refresh_hint {
            doc.insert("spiffe_refresh_hint".into(), h.into());
        }
        Value::Object(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_uses_and_ignores_unknown_ones() {
        let doc = json!({
            "keys": [
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b", "x5c": ["MIIB"]},
                {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"},
                {"use": "something-else", "kty": "EC"},
            ],
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 60,
        });
        let b = SpiffeBundle::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(b.x509_authorities, vec![STANDARD.decode("MIIB").unwrap()]);
        assert_eq!(b.jwt_authorities.len(), 1);
        assert_eq!((b.sequence, b.refresh_hint), (Some(7), Some(60)));
    }

    #[test]
    fn refuses_malformed_and_private_keys() {
        let cases = [
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "k", "d": "secret"}]}),
                "private member `d`",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC"}]}),
                "without `x5c`",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["MIIB", "MIIB"]}]}),
                "exactly one",
            ),
            (
                json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["***"]}]}),
                "not base64",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kty": "EC"}]}),
                "without `kid`",
            ),
            (
                json!({"keys": [{"use": "jwt-svid", "kid": "k"}]}),
                "no `kty`",
            ),
            (
                json!({"keys": [], "spiffe_sequence": -1}),
                "spiffe_sequence",
            ),
            (json!({"keys": []}), "no X.509 authority"),
            (json!({"nokeys": []}), "no `keys`"),
            (json!([1]), "not a JSON object"),
        ];
        for (doc, want) in cases {
            let e = SpiffeBundle::parse(doc.to_string().as_bytes()).unwrap_err();
            assert!(e.to_string().contains(want), "{doc}: {e}");
        }
        let big = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert_eq!(SpiffeBundle::parse(&big), Err(BundleError::TooLarge));
    }

    #[test]
    fn a_document_reads_back_the_same() {
        let doc = json!({
            "keys": [
                {"use": "x509-svid", "kty": "EC", "x5c": ["MIIBAA=="]},
                {"use": "jwt-svid", "kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "abc"},
            ],
            "spiffe_sequence": 3,
        });
        let b = SpiffeBundle::parse(doc.to_string().as_bytes()).unwrap();
        let again = SpiffeBundle::parse(b.to_document().to_string().as_bytes()).unwrap();
        assert_eq!(b, again);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = SpiffeBundle::parse(&bytes);
        }

        #[test]
        fn never_panics_on_json_shapes(kid in "[a-z]{0,4}", useval in "(x509-svid|jwt-svid|[a-z]{0,3})", seq in proptest::prelude::any::<i64>()) {
            let doc = json!({"keys": [{"use": useval, "kty": "EC", "kid": kid, "x5c": [kid]}], "spiffe_sequence": seq});
            let _ = SpiffeBundle::parse(doc.to_string().as_bytes());
        }
    }
}
