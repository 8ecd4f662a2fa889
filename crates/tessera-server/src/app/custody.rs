//! Where each private key lives: sealed under the KEK in the database (software, the default),
//! or generated in a PKCS#11 token and never out of it (`[pkcs11]`, per key kind).
//!
//! A stored key reference is either base64 of the sealed PKCS#8 (software) or `pkcs11:<label>`
//! (the token holds the key; the database holds only the label and, beside it, the public half).
//! The two never mix up: `:` is not a base64 character.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_token::{Alg, Hsm, Kek, SigningKey};

use crate::config::{KeyKind, ServerConfig};
use crate::start_error::StartError;

/// A stored key or CA that does not load, or a new one that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("stored {what} `{id}`: {reason}")]
    Stored {
        what: &'static str,
        id: String,
        reason: String,
    },
    #[error("cannot make a new {what}: {reason}")]
    Make { what: &'static str, reason: String },
}

impl KeyError {
    pub(crate) fn stored(what: &'static str, id: &str, reason: impl std::fmt::Display) -> Self {
        Self::Stored {
            what,
            id: id.to_owned(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn make(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Make {
            what,
            reason: reason.to_string(),
        }
    }
}

const TOKEN_PREFIX: &str = "pkcs11:";

/// A stored key reference, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredKey {
    /// AES-GCM sealed PKCS#8 (or seed) under the KEK.
    Sealed(Vec<u8>),
    /// A key in the PKCS#11 token, by label.
    Token(String),
}

impl StoredKey {
    pub(crate) fn parse(text: &str) -> Result<Self, &'static str> {
        match text.strip_prefix(TOKEN_PREFIX) {
            Some(label) if !label.is_empty() => Ok(Self::Token(label.to_owned())),
            Some(_) => Err("its token label is empty"),
            None => STANDARD
                .decode(text)
                .map(Self::Sealed)
                .map_err(|_| "it is not base64"),
        }
    }

    pub(crate) fn to_text(&self) -> String {
        match self {
            Self::Sealed(b) => STANDARD.encode(b),
            Self::Token(label) => format!("{TOKEN_PREFIX}{label}"),
        }
    }
}

/// A key just made: the key, and what to store for it once its AAD is known.
pub(crate) enum NewKey {
    Software {
        key: Arc<SigningKey>,
        pkcs8: Vec<u8>,
    },
    Token {
        key: Arc<SigningKey>,
        label: String,
    },
}

impl NewKey {
    pub(crate) fn key(&self) -> &Arc<SigningKey> {
        match self {
            Self::Software { key, .. } | Self::Token { key, .. } => key,
        }
    }

    /// The reference to store: sealed under `aad` (software) or the token label.
    pub(crate) fn stored(&self, kek: &Kek, aad: &str) -> Result<StoredKey, KeyError> {
        match self {
            Self::Software { pkcs8, .. } => kek
                .seal(pkcs8, aad)
                .map(StoredKey::Sealed)
                .map_err(|e| KeyError::make("key", e)),
            Self::Token { label, .. } => Ok(StoredKey::Token(label.clone())),
        }
    }
}

/// An opened token and the kinds of key that live in it.
#[derive(Debug)]
pub(crate) struct Token {
    hsm: Arc<Hsm>,
    kinds: Vec<KeyKind>,
}

/// The label of the KEK in the token: one per token, found by every server that shares it.
pub(crate) const KEK_LABEL: &str = "tessera-kek";

impl Token {
    pub(crate) fn holds(&self, kind: KeyKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// The KEK in the token: found by its label, made on the first start.
    pub(crate) fn kek(&self) -> Result<Kek, StartError> {
        let found = match self.hsm.find_aes(KEK_LABEL) {
            Ok(k) => k,
            Err(tessera_token::HsmError::Missing { .. }) => self
                .hsm
                .generate_aes(KEK_LABEL)
                .map_err(|e| StartError::Kek(e.to_string()))?,
            Err(e) => return Err(StartError::Kek(e.to_string())),
        };
        Ok(Kek::in_token(found))
    }
}

/// The KEK, the token (if configured) and which kinds of key live in it.
pub struct Custody {
    kek: Kek,
    hsm: Option<Arc<Hsm>>,
    in_token: Vec<KeyKind>,
    /// Token keys already found, by label: a reload does not search the token again.
    found: Mutex<HashMap<String, Arc<SigningKey>>>,
}

impl std::fmt::Debug for Custody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custody")
            .field("hsm", &self.hsm)
            .field("in_token", &self.in_token)
            .finish_non_exhaustive()
    }
}

impl Custody {
    /// Opens the token of `[pkcs11]`, if configured: a module that is not PKCS#11, a token
    /// that is not there or a wrong PIN stops the start here, naming the token and slot, before
    /// anything is written.
    pub(crate) fn open_token(config: &ServerConfig) -> Result<Option<Token>, StartError> {
        let Some(p) = &config.pkcs11 else {
            return Ok(None);
        };
        let pin = std::env::var(&p.pin_env).map_err(|_| {
            StartError::Keys(format!(
                "[pkcs11] pin_env `{}` is not set: put the token's user PIN in it",
                p.pin_env
            ))
        })?;
        let pool = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hsm = Hsm::open(&p.module.to_string_lossy(), &p.token_label, &pin, pool)
            .map_err(|e| StartError::Keys(e.to_string()))?;
        Ok(Some(Token {
            hsm,
            kinds: p.keys.clone(),
        }))
    }

    /// Keys sealed under `kek`, and those of the kinds the token holds in it.
    pub(crate) fn new(kek: Kek, token: Option<Token>) -> Self {
        match token {
            Some(t) => Self {
                kek,
                hsm: Some(t.hsm),
                in_token: t.kinds,
                found: Mutex::default(),
            },
            None => Self::software(kek),
        }
    }

    /// Every key in software, sealed under `kek`.
    pub(crate) fn software(kek: Kek) -> Self {
        Self {
            kek,
            hsm: None,
            in_token: Vec::new(),
            found: Mutex::default(),
        }
    }

    pub(crate) fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The token, when one is configured.
    pub(crate) fn hsm(&self) -> Option<&Arc<Hsm>> {
        self.hsm.as_ref()
    }

    /// The token, when `kind` lives in it.
    fn token_for(&self, kind: KeyKind) -> Option<&Arc<Hsm>> {
        self.hsm.as_ref().filter(|_| self.in_token.contains(&kind))
    }

    pub(crate) fn in_token(&self, kind: KeyKind) -> bool {
        self.token_for(kind).is_some()
    }

    /// A new key of `kind`: generated in the token (label `tessera-<kind>-<scope>-<random>`)
    /// or in memory, to be sealed.
    pub(crate) fn generate(
        &self,
        kind: KeyKind,
        scope: &str,
        alg: Alg,
    ) -> Result<NewKey, KeyError> {
        let make = |e: &dyn std::fmt::Display| KeyError::make(kind.as_str(), e);
        match self.token_for(kind) {
            Some(hsm) => {
                let suffix: String = tessera_token::seal::random_bytes::<6>()
                    .map_err(|e| make(&e))?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let label = format!("tessera-{}-{scope}-{suffix}", kind.as_str());
                let key = hsm.generate(&label, alg).map_err(|e| make(&e))?;
                let key = Arc::new(SigningKey::in_token(key).map_err(|e| make(&e))?);
                self.remember(&label, &key);
                Ok(NewKey::Token { key, label })
            }
            None => {
                let (key, pkcs8) = SigningKey::generate(alg).map_err(|e| make(&e))?;
                Ok(NewKey::Software {
                    key: Arc::new(key),
                    pkcs8,
                })
            }
        }
    }

    fn remember(&self, label: &str, key: &Arc<SigningKey>) {
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_owned(), key.clone());
    }

    /// The same key under another AAD (a pending CA key becoming a CA's): resealed in
    /// software, unchanged in the token.
    pub(crate) fn reseal(
        &self,
        stored: &StoredKey,
        from_aad: &str,
        to_aad: &str,
    ) -> Result<StoredKey, String> {
        match stored {
            StoredKey::Sealed(sealed) => {
                let pkcs8 = self
                    .kek
                    .open(sealed, from_aad)
                    .map_err(|_| "it does not open with this key-encryption key".to_owned())?;
                self.kek
                    .seal(&pkcs8, to_aad)
                    .map(StoredKey::Sealed)
                    .map_err(|e| e.to_string())
            }
            StoredKey::Token(_) => Ok(stored.clone()),
        }
    }

    /// The key a stored reference names. A token key is found by label and checked (type,
    /// curve, non-extractable); it is never replaced by a software key, whatever the config.
    pub(crate) fn open_key(
        &self,
        stored: &StoredKey,
        alg: Alg,
        aad: &str,
    ) -> Result<Arc<SigningKey>, String> {
        match stored {
            StoredKey::Sealed(sealed) => {
                let pkcs8 = self
                    .kek
                    .open(sealed, aad)
                    .map_err(|_| "it does not open with this key-encryption key".to_owned())?;
                SigningKey::from_pkcs8(alg, &pkcs8)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            }
            StoredKey::Token(label) => {
                if let Some(k) = self
                    .found
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(label)
                {
                    return Ok(k.clone());
                }
                let hsm = self.hsm.as_ref().ok_or_else(|| {
                    format!(
                        "it is in a PKCS#11 token (label `{label}`) but no [pkcs11] is configured"
                    )
                })?;
                let key = hsm.find(label, alg).map_err(|e| e.to_string())?;
                let key = Arc::new(SigningKey::in_token(key).map_err(|e| e.to_string())?);
                self.remember(label, &key);
                Ok(key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_references_parse_one_way() {
        assert_eq!(
            StoredKey::parse("pkcs11:tessera-ca-x-01").unwrap(),
            StoredKey::Token("tessera-ca-x-01".into())
        );
        assert!(StoredKey::parse("pkcs11:").is_err());
        assert_eq!(
            StoredKey::parse("AAEC").unwrap(),
            StoredKey::Sealed(vec![0, 1, 2])
        );
        assert!(StoredKey::parse("not base64!").is_err());
        for k in [StoredKey::Token("a".into()), StoredKey::Sealed(vec![9; 40])] {
            assert_eq!(StoredKey::parse(&k.to_text()).unwrap(), k);
        }
    }

    #[test]
    fn a_token_key_without_a_token_is_refused_not_replaced() {
        let c = Custody::software(Kek::from_bytes(&[1; 32]).unwrap());
        let err = c
            .open_key(
                &StoredKey::Token("tessera-signing-x".into()),
                Alg::ES256,
                "",
            )
            .unwrap_err();
        assert!(err.contains("no [pkcs11] is configured"), "{err}");
    }
}
