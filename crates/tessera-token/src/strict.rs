//! Strict decoding of untrusted JOSE input: canonical base64url without padding, and JSON with
//! no duplicate member names at any depth (RFC 7515 §5.2 and RFC 8725 §3.10 leave the choice to
//! us; two parsers picking different duplicates is a known confusion attack, so we refuse).

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// base64url, no padding, and trailing bits must be zero, so every value has one encoding.
pub const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

pub fn b64_encode(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

pub fn b64_decode(input: &str) -> Option<Vec<u8>> {
    B64.decode(input).ok()
}

/// Parses JSON, refusing duplicate member names anywhere in the document.
pub fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Parses a JSON object (a JOSE header or a claim set).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match parse_json(bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err("it is not a JSON object".into()),
    }
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate member `{key}`")));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_refused_at_any_depth() {
        assert!(parse_json(br#"{"a":1,"a":2}"#)
            .unwrap_err()
            .contains("duplicate member `a`"));
        assert!(parse_json(br#"{"x":{"b":1,"b":1}}"#).is_err());
        assert!(parse_json(br#"[{"c":1,"c":1}]"#).is_err());
        assert!(parse_json(br#"{"a":1,"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn trailing_data_refused() {
        assert!(parse_json(br#"{"a":1} x"#).is_err());
        assert!(parse_object(b"[1]").is_err());
    }

    #[test]
    fn base64url_is_canonical() {
        assert_eq!(b64_decode("YQ").unwrap(), b"a");
        assert!(b64_decode("YR").is_none(), "non-zero trailing bits");
        assert!(b64_decode("YQ==").is_none(), "padding");
        assert!(b64_decode("Y+").is_none(), "standard alphabet");
        assert!(b64_decode("Y Q").is_none());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn json_parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_json(s.as_bytes());
        }

        /// Whatever decodes re-encodes to the same text: one encoding per value.
        #[test]
        fn base64url_is_canonical(s in "[A-Za-z0-9_=+/-]{0,40}") {
            if let Some(bytes) = b64_decode(&s) {
                prop_assert_eq!(b64_encode(bytes), s);
            }
        }
    }
}
