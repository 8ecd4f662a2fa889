//! Security-relevant names. Each type here is built only by its parser, so holding one means
//! the string was checked: a `SpiffeId` is always a valid SPIFFE ID, a `Scope` always an RFC 6749
//! scope token.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused. Messages are lowercase, with the offending input in backticks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is not a SPIFFE ID: it must start with `spiffe://`")]
    MissingScheme(String),
    #[error("`{0}` is not a SPIFFE ID: the trust domain is empty")]
    EmptyTrustDomain(String),
    #[error("`{input}` is not a valid trust domain: {reason}")]
    TrustDomain { input: String, reason: &'static str },
    #[error("`{input}` is not a SPIFFE ID: {reason}")]
    Path { input: String, reason: &'static str },
    #[error("`{0}` is too long for a SPIFFE ID (at most 2048 bytes)")]
    TooLong(String),
    #[error("`{input}` is not a valid {what}: {reason}")]
    Name {
        input: String,
        what: &'static str,
        reason: &'static str,
    },
}

const MAX_SPIFFE_ID: usize = 2048;
const MAX_TRUST_DOMAIN: usize = 255;

/// Shortens user input quoted in error messages so a huge value cannot flood a log line.
fn quoted(input: &str) -> String {
    const MAX: usize = 120;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", input.get(..end).unwrap_or_default())
}

/// A SPIFFE trust domain name, e.g. `example.org` (SPIFFE-ID §2.1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = |reason| IdError::TrustDomain {
            input: quoted(input),
            reason,
        };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.len() > MAX_TRUST_DOMAIN {
            return Err(err("it is longer than 255 bytes"));
        }
        if !input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(err(
                "only lowercase letters, digits, `.`, `-` and `_` are allowed",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://<td>`), used as a bundle's subject.
    pub fn id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

/// A SPIFFE ID with a non-empty path, e.g. `spiffe://example.org/prod/api` (SPIFFE-ID §2).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    // INVARIANT: `td_len` is the byte length of the trust domain, which starts at byte 9.
    td_len: usize,
}

impl SpiffeId {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.len() > MAX_SPIFFE_ID {
            return Err(IdError::TooLong(quoted(input)));
        }
        let rest = input
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdError::MissingScheme(quoted(input)))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(IdError::EmptyTrustDomain(quoted(input)));
        }
        let path_err = |reason| IdError::Path {
            input: quoted(input),
            reason,
        };
        if td.contains([':', '@']) {
            return Err(path_err("a port or user info is not allowed"));
        }
        TrustDomain::parse(td)?;
        if path.is_empty() {
            return Err(path_err(
                "it names only a trust domain; a workload needs a path",
            ));
        }
        // `path` starts with '/', so the first segment is the empty string before it.
        for segment in path.split('/').skip(1) {
            if segment.is_empty() {
                return Err(path_err("a path segment is empty (`//` or a trailing `/`)"));
            }
            if segment == "." || segment == ".." {
                return Err(path_err("`.` and `..` segments are not allowed"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(path_err(
                    "path segments may hold only letters, digits, `.`, `-` and `_`",
                ));
            }
        }
        Ok(Self {
            full: input.to_owned(),
            td_len: td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    pub fn trust_domain_str(&self) -> &str {
        self.full.get(9..9 + self.td_len).unwrap_or_default()
    }

    pub fn path(&self) -> &str {
        self.full.get(9 + self.td_len..).unwrap_or_default()
    }
}

/// An RFC 6749 §3.3 scope token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = |reason| IdError::Name {
            input: quoted(input),
            what: "scope",
            reason,
        };
        if input.is_empty() || input.len() > 128 {
            return Err(err("it must be 1 to 128 characters"));
        }
        if !input
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(err(
                "it holds a space, a quote, a backslash or a non-ASCII character",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    /// Splits a space-delimited `scope` parameter; duplicates collapse.
    pub fn parse_list(input: &str) -> Result<Vec<Self>, IdError> {
        let mut out: Vec<Self> = Vec::new();
        for part in input.split(' ').filter(|p| !p.is_empty()) {
            let scope = Self::parse(part)?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        Ok(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn join(scopes: &[Self]) -> String {
        let mut s = String::new();
        for (i, scope) in scopes.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&scope.0);
        }
        s
    }
}

/// A name for a token's target: a SPIFFE ID, a URL or a short alias.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Audience(String);

impl Audience {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = |reason| IdError::Name {
            input: quoted(input),
            what: "audience",
            reason,
        };
        if input.is_empty() || input.len() > MAX_SPIFFE_ID {
            return Err(err("it must be 1 to 2048 characters"));
        }
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(err("it holds white space or a control character"));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&SpiffeId> for Audience {
    fn from(id: &SpiffeId) -> Self {
        // INVARIANT: a SPIFFE ID has no white space or control characters and is at most 2048 bytes.
        Self(id.full.clone())
    }
}

/// A JWK key ID: the RFC 7638 thumbprint (base64url, no padding) for keys Tessera makes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid(String);

impl Kid {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        name_token(input, "key id", 128).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An OAuth 2.0 client identifier.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        name_token(input, "client id", 128).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short machine name: letters, digits and `-._:`; used for client IDs, key IDs, owners, trusts.
fn name_token(input: &str, what: &'static str, max: usize) -> Result<String, IdError> {
    let err = |reason| IdError::Name {
        input: quoted(input),
        what,
        reason,
    };
    if input.is_empty() || input.len() > max {
        return Err(err("it must be 1 to 128 characters"));
    }
    if !input
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return Err(err(
            "only letters, digits, `-`, `_`, `.` and `:` are allowed",
        ));
    }
    Ok(input.to_owned())
}

/// A short label such as an environment, owner or trust name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(String);

impl Label {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        name_token(input, "name", 128).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A node agent's name, the last segment of its SPIFFE ID `spiffe://<td>/tessera/agent/<id>`:
/// SPIFFE path-segment characters only, so the ID it makes is always valid.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

impl AgentId {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = |reason| IdError::Name {
            input: quoted(input),
            what: "agent id",
            reason,
        };
        if input.is_empty() || input.len() > 64 {
            return Err(err("it must be 1 to 64 characters"));
        }
        if !input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(err("only letters, digits, `-`, `_` and `.` are allowed"));
        }
        if input == "." || input == ".." {
            return Err(err("`.` and `..` are not names"));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The agent's own SPIFFE ID in `td`.
    pub fn spiffe_id(&self, td: &TrustDomain) -> Result<SpiffeId, IdError> {
        SpiffeId::parse(&format!("spiffe://{td}/tessera/agent/{}", self.0))
    }

    /// The agent named by an agent SPIFFE ID, if `id` is one.
    pub fn from_spiffe_id(id: &SpiffeId) -> Option<Self> {
        Self::parse(id.path().strip_prefix("/tessera/agent/")?).ok()
    }
}

/// A vault secret's name: `/`-separated segments of `[a-z0-9._-]`, none empty, `.` or `..`;
/// 1 to 128 bytes. Path tricks cannot be spelled, so a name is also a safe key everywhere.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let err = |reason| IdError::Name {
            input: quoted(input),
            what: "secret name",
            reason,
        };
        if input.is_empty() || input.len() > 128 {
            return Err(err("it must be 1 to 128 characters"));
        }
        for seg in input.split('/') {
            if seg.is_empty() {
                return Err(err("no empty segment: no leading, trailing or double `/`"));
            }
            if seg == "." || seg == ".." {
                return Err(err("`.` and `..` are not names"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            {
                return Err(err(
                    "only lowercase letters, digits, `-`, `_`, `.` and `/` are allowed",
                ));
            }
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which secrets a grant names: one exact name, or every name under a prefix, written
/// explicitly as `prefix/*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPattern(String);

impl SecretPattern {
    pub fn parse(input: &str) -> Result<Self, IdError> {
        match input.strip_suffix("/*") {
            Some(prefix) => SecretName::parse(prefix).map(|_| Self(input.to_owned())),
            None => SecretName::parse(input).map(|n| Self(n.0)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix (with its trailing `/`) of a `prefix/*` pattern.
    pub fn prefix(&self) -> Option<&str> {
        self.0.strip_suffix('*')
    }

    pub fn matches(&self, name: &SecretName) -> bool {
        match self.prefix() {
            Some(p) => name.as_str().starts_with(p),
            None => self.0 == name.0,
        }
    }
}

macro_rules! string_newtype {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

string_newtype!(
    TrustDomain,
    SpiffeId,
    Scope,
    Audience,
    Kid,
    ClientId,
    Label,
    AgentId,
    SecretName,
    SecretPattern
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spiffe_ids_accepted() {
        let id = SpiffeId::parse("spiffe://example.org/prod/order-processor").unwrap();
        assert_eq!(id.trust_domain_str(), "example.org");
        assert_eq!(id.path(), "/prod/order-processor");
        assert_eq!(id.trust_domain().as_str(), "example.org");
    }

    #[test]
    fn secret_names_and_patterns() {
        for ok in ["a", "payments/stripe-key", "db/orders.v2/admin_password"] {
            assert_eq!(SecretName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/../b",
            "a/./b",
            "A",
            "a b",
            "a\\b",
            "a%2fb",
            "a\0",
            "tessera://secret/a",
        ] {
            assert!(SecretName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SecretName::parse(&"a".repeat(129)).is_err());
        let p = SecretPattern::parse("payments/*").unwrap();
        assert!(p.matches(&SecretName::parse("payments/stripe").unwrap()));
        assert!(p.matches(&SecretName::parse("payments/a/b").unwrap()));
        assert!(!p.matches(&SecretName::parse("payments").unwrap()));
        assert!(!p.matches(&SecretName::parse("paymentsx/a").unwrap()));
        let exact = SecretPattern::parse("payments/stripe").unwrap();
        assert!(exact.matches(&SecretName::parse("payments/stripe").unwrap()));
        assert!(!exact.matches(&SecretName::parse("payments/stripe2").unwrap()));
        for bad in ["*", "payments*", "/*", "a/*/b", "a/**"] {
            assert!(SecretPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spiffe_ids_refused() {
        for bad in [
            "",
            "http://example.org/a",
            "spiffe://",
            "spiffe:///a",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/./a",
            "spiffe://example.org/a/..",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://example.org/a%20b",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "SPIFFE://example.org/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "accepted {bad:?}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert!(matches!(SpiffeId::parse(&long), Err(IdError::TooLong(_))));
    }

    #[test]
    fn error_messages_quote_input() {
        let e = SpiffeId::parse("spiffe://example.org/a/").unwrap_err();
        assert!(e.to_string().contains("`spiffe://example.org/a/`"), "{e}");
    }

    #[test]
    fn scopes() {
        let list = Scope::parse_list("a:read  b:write a:read").unwrap();
        assert_eq!(Scope::join(&list), "a:read b:write");
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("a\\b").is_err());
        assert!(Scope::parse("é").is_err());
    }

    proptest! {
        #[test]
        fn spiffe_id_roundtrips(td in "[a-z0-9][a-z0-9.-]{0,30}", segs in proptest::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,12}", 1..5)) {
            let segs: Vec<String> = segs.into_iter().filter(|s| s != "." && s != "..").collect();
            prop_assume!(!segs.is_empty());
            let s = format!("spiffe://{td}/{}", segs.join("/"));
            let id = SpiffeId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(id.trust_domain_str(), td.as_str());
        }

        #[test]
        fn spiffe_id_parser_never_panics(s in "\\PC{0,80}") {
            let _ = SpiffeId::parse(&s);
            let _ = SpiffeId::parse(&format!("spiffe://{s}"));
        }
    }
}
