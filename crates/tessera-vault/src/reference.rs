//! Secret references, `tessera://secret/NAME[?version=N]`: what a program's configuration holds
//! instead of a secret (`tessera exec --env DB_PASSWORD=tessera://secret/orders/db-password`).

use std::fmt;

use tessera_core::SecretName;

/// A parsed reference: a secret, and a version or the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: SecretName,
    pub version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a secret reference: {reason} (expected tessera://secret/NAME[?version=N])"
)]
pub struct RefError {
    input: String,
    reason: String,
}

const PREFIX: &str = "tessera://secret/";

impl SecretRef {
    pub fn parse(input: &str) -> Result<Self, RefError> {
        let err = |reason: String| RefError {
            input: input.chars().take(200).collect(),
            reason,
        };
        let rest = input
            .strip_prefix(PREFIX)
            .ok_or_else(|| err("it must start with `tessera://secret/`".into()))?;
        let (name, query) = match rest.split_once('?') {
            Some((n, q)) => (n, Some(q)),
            None => (rest, None),
        };
        let name = SecretName::parse(name).map_err(|e| err(e.to_string()))?;
        let version = match query {
            None => None,
            Some(q) => {
                let v = q
                    .strip_prefix("version=")
                    .ok_or_else(|| err("the only query is `version=N`".into()))?;
                let n: i64 = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| err(format!("version `{v}` is not a number from 1")))?;
                Some(n)
            }
        };
        Ok(Self { name, version })
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.name)?;
        if let Some(v) = self.version {
            write!(f, "?version={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = SecretRef::parse("tessera://secret/orders/db-password").unwrap();
        assert_eq!(r.name.as_str(), "orders/db-password");
        assert_eq!(r.version, None);
        let r = SecretRef::parse("tessera://secret/a?version=3").unwrap();
        assert_eq!(r.version, Some(3));
        assert_eq!(r.to_string(), "tessera://secret/a?version=3");
        for bad in [
            "secret/a",
            "tessera://secret/",
            "tessera://secret/../etc/passwd",
            "tessera://secret/a?version=0",
            "tessera://secret/a?version=x",
            "tessera://secret/a?v=1",
            "tessera://secret/A",
            "https://secret/a",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,80}") {
            if let Ok(r) = SecretRef::parse(&s) {
                proptest::prop_assert_eq!(SecretRef::parse(&r.to_string()).unwrap(), r);
            }
        }
    }
}
