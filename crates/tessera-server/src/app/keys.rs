//! The key-encryption key and the signing keys of each trust domain.
//!
//! Rotation publishes a new key `publish_ahead` before it signs (so every verifier's cached JWKS
//! has it first) and keeps the old key published until every token it signed has expired.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_core::manifest::MAX_JWT_TTL;
use tessera_core::{Kid, TrustDomain};
use tessera_store::{KeyRecord, Op};
use tessera_token::{Alg, Kek, PublicKey, SigningKey};

use crate::app::custody::{Custody, KeyError, StoredKey};
use crate::config::KeyKind;
use crate::start_error::StartError;

/// Where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KekSource {
    /// base64 of 32 bytes (env `TESSERA_KEK`).
    Value(String),
    /// A file holding base64 of 32 bytes (env `TESSERA_KEK_FILE`); must be mode 0600.
    File(PathBuf),
}

/// Reads the KEK, or creates `DATA/kek` (0600) on the first start.
pub(crate) fn load_kek(
    source: Option<&KekSource>,
    data_dir: &Path,
) -> Result<(Kek, bool), StartError> {
    let decode = |text: &str, from: &str| -> Result<Kek, StartError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| StartError::Kek(format!("{from} is not base64")))?;
        Kek::from_bytes(&bytes)
            .map_err(|_| StartError::Kek(format!("{from} must hold 32 bytes (base64)")))
    };
    match source {
        Some(KekSource::Value(v)) => Ok((decode(v, "TESSERA_KEK")?, false)),
        Some(KekSource::File(p)) => Ok((read_kek_file(p, &decode)?, false)),
        None => {
            let path = data_dir.join("kek");
            if path.exists() {
                return Ok((read_kek_file(&path, &decode)?, false));
            }
            let bytes = Kek::generate_bytes().map_err(|e| StartError::Kek(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StartError::Kek(format!("cannot create `{}`: {e}", path.display())))?;
            f.write_all(STANDARD.encode(bytes).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| StartError::Kek(format!("cannot write `{}`: {e}", path.display())))?;
            Ok((
                Kek::from_bytes(&bytes).map_err(|e| StartError::Kek(e.to_string()))?,
                true,
            ))
        }
    }
}

fn read_kek_file(
    path: &Path,
    decode: &dyn Fn(&str, &str) -> Result<Kek, StartError>,
) -> Result<Kek, StartError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| StartError::Kek(format!("cannot read `{}`: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(StartError::Kek(format!(
            "`{}` is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Kek(format!("cannot read `{}`: {e}", path.display())))?;
    decode(&text, &format!("`{}`", path.display()))
}

/// The AAD that binds a sealed private key to its row.
fn key_aad(td: &str, kid: &str) -> String {
    format!("tessera/signing-key/{td}/{kid}")
}

#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: Arc<SigningKey>,
    pub created_at: i64,
    pub activate_at: i64,
    pub retire_at: Option<i64>,
}

/// Every trust domain's keys, unsealed. Rebuilt from storage on each reload.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    by_td: HashMap<TrustDomain, Vec<KeyEntry>>,
}

impl KeyRing {
    pub fn load(records: &[KeyRecord], custody: &Custody) -> Result<Self, KeyError> {
        let mut by_td: HashMap<TrustDomain, Vec<KeyEntry>> = HashMap::new();
        for r in records {
            let bad = |reason: &dyn std::fmt::Display| KeyError::stored("key", &r.kid, reason);
            let td = TrustDomain::parse(&r.trust_domain).map_err(|e| bad(&e))?;
            let alg =
                Alg::parse(&r.alg).ok_or_else(|| bad(&format!("unknown algorithm `{}`", r.alg)))?;
            let stored = StoredKey::parse(&r.sealed).map_err(|e| bad(&e))?;
            let key = custody
                .open_key(&stored, alg, &key_aad(&r.trust_domain, &r.kid))
                .map_err(|e| bad(&e))?;
            if key.kid().as_str() != r.kid {
                return Err(bad(&"it does not match its stored id"));
            }
            by_td.entry(td).or_default().push(KeyEntry {
                key,
                created_at: r.created_at,
                activate_at: r.activate_at,
                retire_at: r.retire_at,
            });
        }
        for keys in by_td.values_mut() {
            keys.sort_by(|a, b| (a.activate_at, a.key.kid()).cmp(&(b.activate_at, b.key.kid())));
        }
        Ok(Self { by_td })
    }

    /// The key that signs now: the most recently activated one.
    pub fn signing(&self, td: &TrustDomain, now: i64) -> Option<&KeyEntry> {
        self.by_td
            .get(td)?
            .iter()
            .rev()
            .find(|k| k.activate_at <= now && k.retire_at.is_none_or(|r| now < r))
    }

    /// Keys in the JWKS now: active, next, and retired ones whose tokens may still be live.
    pub fn published(&self, td: &TrustDomain, now: i64) -> Vec<&PublicKey> {
        self.by_td
            .get(td)
            .map(|ks| {
                ks.iter()
                    .filter(|k| k.retire_at.is_none_or(|r| now < r))
                    .map(|k| k.key.public())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A published key of `td` by id, for introspection.
    pub fn find(&self, td: &TrustDomain, kid: &Kid, now: i64) -> Option<&PublicKey> {
        self.published(td, now).into_iter().find(|k| k.kid() == kid)
    }

    pub fn entries(&self, td: &TrustDomain) -> &[KeyEntry] {
        self.by_td.get(td).map(Vec::as_slice).unwrap_or_default()
    }
}

/// A freshly generated key: in the token, or sealed for storage.
pub(crate) fn new_key_record(
    td: &TrustDomain,
    alg: Alg,
    custody: &Custody,
    now: i64,
    activate_at: i64,
) -> Result<KeyRecord, KeyError> {
    let make = |e: &dyn std::fmt::Display| KeyError::make("signing key", e);
    let new = custody.generate(KeyKind::Signing, td.as_str(), alg)?;
    let key = new.key();
    let kid = key.kid().to_string();
    let stored = new.stored(custody.kek(), &key_aad(td.as_str(), &kid))?;
    let jwk = serde_json::to_string(&key.public().to_jwk()).map_err(|e| make(&e))?;
    Ok(KeyRecord {
        kid,
        trust_domain: td.to_string(),
        alg: alg.as_str().to_owned(),
        sealed: stored.to_text(),
        public_jwk: jwk,
        created_at: now,
        activate_at,
        retire_at: None,
    })
}

/// Rotation: a new key that signs from `now + publish_ahead`; the keys it replaces are retired
/// once every token they can still sign has expired.
pub(crate) fn rotation_ops(
    ring: &KeyRing,
    td: &TrustDomain,
    alg: Alg,
    custody: &Custody,
    now: i64,
    publish_ahead: i64,
) -> Result<(KeyRecord, Vec<Op>), KeyError> {
    let activate_at = now + publish_ahead;
    let record = new_key_record(td, alg, custody, now, activate_at)?;
    let last_token_expiry = activate_at + i64::try_from(MAX_JWT_TTL.as_secs()).unwrap_or(3600) + 60;
    let mut ops = vec![Op::InsertKey(record.clone())];
    for k in ring.entries(td) {
        if k.retire_at.is_none() {
            ops.push(Op::RetireKey {
                kid: k.key.kid().to_string(),
                retire_at: last_token_expiry.max(k.activate_at + 1),
            });
        }
    }
    Ok((record, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_publishes_before_signing_and_retires_after_expiry() {
        let kek = Custody::software(Kek::from_bytes(&[7u8; 32]).unwrap());
        let td = TrustDomain::parse("example.org").unwrap();
        let first = new_key_record(&td, Alg::ES256, &kek, 0, 0).unwrap();
        let ring = KeyRing::load(std::slice::from_ref(&first), &kek).unwrap();
        let (next, ops) = rotation_ops(&ring, &td, Alg::ES256, &kek, 100, 1000).unwrap();
        let retire = ops.iter().find_map(|o| match o {
            Op::RetireKey { retire_at, .. } => Some(*retire_at),
            _ => None,
        });
        let mut first_after = first.clone();
        first_after.retire_at = retire;
        let ring = KeyRing::load(&[first_after, next.clone()], &kek).unwrap();
        // Before activation: old key signs, both are published.
        assert_eq!(
            ring.signing(&td, 500).unwrap().key.kid().as_str(),
            first.kid
        );
        assert_eq!(ring.published(&td, 500).len(), 2);
        // After activation: new key signs; old one still published for its live tokens.
        assert_eq!(
            ring.signing(&td, 1100).unwrap().key.kid().as_str(),
            next.kid
        );
        assert_eq!(ring.published(&td, 1100 + 3600).len(), 2);
        // After the old key's last token expired, it is withdrawn.
        assert_eq!(ring.published(&td, 1100 + 3600 + 61).len(), 1);
    }

    #[test]
    fn wrong_kek_is_refused() {
        let kek = Custody::software(Kek::from_bytes(&[7u8; 32]).unwrap());
        let td = TrustDomain::parse("example.org").unwrap();
        let rec = new_key_record(&td, Alg::EdDSA, &kek, 0, 0).unwrap();
        let other = Custody::software(Kek::from_bytes(&[8u8; 32]).unwrap());
        assert!(KeyRing::load(&[rec], &other)
            .unwrap_err()
            .to_string()
            .contains("does not open"));
    }

    #[test]
    fn kek_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let (_, created) = load_kek(None, dir.path()).unwrap();
        assert!(created);
        let (_, created) = load_kek(None, dir.path()).unwrap();
        assert!(!created);
        std::fs::set_permissions(
            dir.path().join("kek"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = load_kek(None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        assert!(load_kek(Some(&KekSource::Value("short".into())), dir.path()).is_err());
    }
}
