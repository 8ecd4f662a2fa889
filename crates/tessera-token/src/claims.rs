//! Claim sets Tessera issues, and the time and audience checks every consumer applies.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::TokenError;

/// The `typ` of RFC 9068 access tokens. `application/at+jwt` is the same type, spelled in full.
pub const TYP_ACCESS_TOKEN: &str = "at+jwt";

/// RFC 9068 access token claims, kept small: no role lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// RFC 8693 §4.1: the acting party of a delegated token, nesting earlier actors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    /// RFC 8705 §3.1: `{"x5t#S256": …}` when the token is bound to the client certificate it
    /// was requested with; a resource then accepts it only over that certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Value>,
    /// draft-ietf-oauth-status-list: `{"status_list": {"idx": …, "uri": …}}`, where the token's
    /// revocation can be checked by verifiers written by others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// The RFC 8705 §3.1 confirmation value of a certificate: base64url (no padding) of the SHA-256
/// of its DER encoding.
pub fn x5t_s256(certificate_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate_der);
    crate::strict::b64_encode(digest.as_ref())
}

/// Time and audience rules. Leeway is explicit and small.
#[derive(Debug, Clone)]
pub struct TimeRules {
    pub now: i64,
    pub leeway: i64,
    /// Refuse tokens whose `exp` is further ahead than this (client assertions: 5 minutes).
    pub max_ahead: Option<i64>,
}

/// A time claim, which must be a JSON number if present (strings are a known confusion).
pub fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| TokenError::Claims(format!("`{name}` is not a valid NumericDate"))),
        Some(_) => Err(TokenError::Claims(format!("`{name}` must be a number"))),
    }
}

/// A string claim that must be present.
pub fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, TokenError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TokenError::Claims(format!("`{name}` must be a string"))),
        None => Err(TokenError::Claims(format!("`{name}` is missing"))),
    }
}

/// Checks `exp` (required), `nbf` and `iat` against `rules`.
pub fn check_times(claims: &Map<String, Value>, rules: &TimeRules) -> Result<i64, TokenError> {
    let exp = numeric_date(claims, "exp")?
        .ok_or_else(|| TokenError::Claims("`exp` is missing".into()))?;
    if exp <= rules.now - rules.leeway {
        return Err(TokenError::Expired);
    }
    if let Some(max) = rules.max_ahead {
        if exp > rules.now + max + rules.leeway {
            return Err(TokenError::Claims(format!(
                "`exp` is more than {max} seconds ahead"
            )));
        }
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > rules.now + rules.leeway {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if iat > rules.now + rules.leeway {
            return Err(TokenError::Claims("`iat` is in the future".into()));
        }
    }
    Ok(exp)
}

/// `aud` may be a string or an array of strings; it must contain `expected`.
/// `aud` is one of `expected` and nothing else (a string, or an array of that one string). For
/// credentials presented to the authority itself: a JWT-SVID minted for a service *and* the
/// authority could be replayed to the authority by that service.
pub fn audience_exactly(claims: &Map<String, Value>, expected: &[&str]) -> Result<(), TokenError> {
    if let Some(Value::Array(list)) = claims.get("aud") {
        if list.len() != 1 {
            return Err(TokenError::Claims(format!(
                "`aud` must name only this authority, not {} audiences",
                list.len()
            )));
        }
    }
    audience_contains(claims, expected)
}

pub fn audience_contains(claims: &Map<String, Value>, expected: &[&str]) -> Result<(), TokenError> {
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => expected.contains(&a.as_str()),
        Some(Value::Array(list)) => {
            if list.iter().any(|v| !v.is_string()) {
                return Err(TokenError::Claims(
                    "`aud` holds a value that is not a string".into(),
                ));
            }
            list.iter()
                .filter_map(Value::as_str)
                .any(|a| expected.contains(&a))
        }
        Some(_) => {
            return Err(TokenError::Claims(
                "`aud` must be a string or an array of strings".into(),
            ))
        }
        None => return Err(TokenError::Claims("`aud` is missing".into())),
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::Audience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn an_authority_credential_names_only_the_authority() {
        let a = "https://auth.example/td";
        assert!(audience_exactly(&obj(json!({"aud": a})), &[a]).is_ok());
        assert!(audience_exactly(&obj(json!({"aud": [a]})), &[a]).is_ok());
        assert!(audience_exactly(&obj(json!({"aud": [a, "svc"]})), &[a]).is_err());
        assert!(audience_exactly(&obj(json!({"aud": ["svc"]})), &[a]).is_err());
        assert!(audience_exactly(&obj(json!({"aud": []})), &[a]).is_err());
        assert!(audience_contains(&obj(json!({"aud": [a, "svc"]})), &[a]).is_ok());
    }

    const RULES: TimeRules = TimeRules {
        now: 1_000_000,
        leeway: 30,
        max_ahead: None,
    };

    #[test]
    fn times() {
        assert!(check_times(&obj(json!({"exp": 1_000_100})), &RULES).is_ok());
        assert!(
            check_times(&obj(json!({"exp": 1_000_000 - 29})), &RULES).is_ok(),
            "inside leeway"
        );
        assert!(matches!(
            check_times(&obj(json!({"exp": 1_000_000 - 30})), &RULES),
            Err(TokenError::Expired)
        ));
        assert!(check_times(&obj(json!({})), &RULES).is_err());
        assert!(check_times(&obj(json!({"exp": "1000100"})), &RULES)
            .unwrap_err()
            .to_string()
            .contains("must be a number"));
        assert!(matches!(
            check_times(&obj(json!({"exp": 1_000_100, "nbf": 1_000_031})), &RULES),
            Err(TokenError::NotYetValid)
        ));
        assert!(check_times(&obj(json!({"exp": 1_000_100, "iat": 1_000_031})), &RULES).is_err());
        let strict = TimeRules {
            max_ahead: Some(300),
            ..RULES
        };
        assert!(check_times(&obj(json!({"exp": 1_000_000 + 331})), &strict).is_err());
        assert!(check_times(&obj(json!({"exp": 1_000_000 + 300})), &strict).is_ok());
    }

    #[test]
    fn audiences() {
        assert!(audience_contains(&obj(json!({"aud": "a"})), &["a"]).is_ok());
        assert!(audience_contains(&obj(json!({"aud": ["b", "a"]})), &["a"]).is_ok());
        assert!(matches!(
            audience_contains(&obj(json!({"aud": ["b"]})), &["a"]),
            Err(TokenError::Audience)
        ));
        assert!(audience_contains(&obj(json!({"aud": ["a", 1]})), &["a"]).is_err());
        assert!(audience_contains(&obj(json!({"aud": "a/"})), &["a"]).is_err());
        assert!(audience_contains(&obj(json!({})), &["a"]).is_err());
    }

    proptest::proptest! {
        // Cheap cases; many of them, so the boundaries are hit every run.
        #![proptest_config(proptest::test_runner::Config::with_cases(8192))]
        /// Whatever the claims say, an accepted token is inside its window: not expired beyond
        /// the leeway, not before `nbf` or `iat` beyond it, not further ahead than allowed; and a
        /// time claim of any type but a number is never accepted.
        #[test]
        fn accepted_times_are_inside_the_window(
            now in 0i64..4_000_000_000,
            leeway in 0i64..300,
            exp in proptest::option::of((0u8..4, -3i64..=3, -1_000i64..1_000)),
            nbf in proptest::option::of((0u8..4, -3i64..=3, -1_000i64..1_000)),
            iat in proptest::option::of((0u8..4, -3i64..=3, -1_000i64..1_000)),
            max_ahead in proptest::option::of(0i64..600),
            as_string in 0usize..4,
        ) {
            // Offsets from `now`: anywhere, or within 3 s of a boundary (the leeway either way,
            // or the furthest `exp` allowed), where an off-by-one would hide.
            let offset = |(kind, near, anywhere): (u8, i64, i64)| match kind {
                0 => anywhere,
                1 => leeway + near,
                2 => -leeway + near,
                _ => max_ahead.unwrap_or(0) + leeway + near,
            };
            let (exp, nbf, iat) = (exp.map(offset), nbf.map(offset), iat.map(offset));
            let mut m = Map::new();
            for (name, v) in [("exp", exp), ("nbf", nbf), ("iat", iat)] {
                if let Some(d) = v {
                    m.insert(name.into(), json!(now + d));
                }
            }
            // One of them, sometimes, as a string holding the same number.
            let stringly = ["exp", "nbf", "iat"].get(as_string).copied();
            if let Some(name) = stringly {
                if let Some(v) = m.get(name).cloned() {
                    m.insert(name.into(), json!(v.to_string()));
                }
            }
            let rules = TimeRules { now, leeway, max_ahead };
            if let Ok(e) = check_times(&m, &rules) {
                proptest::prop_assert!(stringly.is_none_or(|n| !m.get(n).is_some_and(Value::is_string)));
                proptest::prop_assert_eq!(Some(e - now), exp);
                proptest::prop_assert!(e > now - leeway);
                proptest::prop_assert!(max_ahead.is_none_or(|a| e <= now + a + leeway));
                proptest::prop_assert!(nbf.is_none_or(|d| now + d <= now + leeway));
                proptest::prop_assert!(iat.is_none_or(|d| now + d <= now + leeway));
                // The same claims are refused once the clock passes exp + leeway.
                let later = TimeRules { now: e + leeway, ..rules };
                proptest::prop_assert!(matches!(check_times(&m, &later), Err(TokenError::Expired)));
            } else {
                // Refused: some rule is broken (missing or mistyped exp included).
                let broken = exp.is_none()
                    || stringly.is_some_and(|n| m.get(n).is_some_and(Value::is_string))
                    || exp.is_some_and(|d| now + d <= now - leeway)
                    || exp.zip(max_ahead).is_some_and(|(d, a)| d > a + leeway)
                    || nbf.is_some_and(|d| d > leeway)
                    || iat.is_some_and(|d| d > leeway);
                proptest::prop_assert!(broken, "refused a token inside its window: {m:?}");
            }
        }
    }
}
