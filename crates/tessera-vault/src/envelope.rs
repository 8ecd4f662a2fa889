//! Envelope encryption: each version gets a fresh 256-bit data key; the value is sealed with it
//! (AES-256-GCM, ring), and the data key is sealed with the key-encryption key. Both seals bind the
//! secret's name and version as associated data, so neither a ciphertext nor a wrapped key can be
//! moved to another secret or version without failing to open.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_core::SecretName;
use tessera_token::seal::{random_bytes, KEK_LEN};
use tessera_token::Kek;

use crate::{VaultError, MAX_VALUE_BYTES};

/// What is stored for one version: the value under its data key, the data key under the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// base64 of `nonce || ciphertext || tag`.
    pub ciphertext: String,
    /// base64 of the sealed data key.
    pub wrapped_key: String,
}

/// Seals and opens secret values under a key-encryption key.
#[derive(Debug)]
pub struct Envelope<'k> {
    kek: &'k Kek,
}

fn aad(purpose: &str, name: &SecretName, version: i64) -> String {
    // INVARIANT: secret names hold no NUL (their parser allows `[a-z0-9._/-]` only), so this
    // encoding is unambiguous.
    format!("tessera/{purpose}\0{name}\0{version}")
}

impl<'k> Envelope<'k> {
    pub fn new(kek: &'k Kek) -> Self {
        Self { kek }
    }

    pub fn seal(
        &self,
        name: &SecretName,
        version: i64,
        value: &[u8],
    ) -> Result<Sealed, VaultError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(VaultError::TooLarge(value.len()));
        }
        let dek = random_bytes::<KEK_LEN>().map_err(|e| VaultError::Crypto(e.to_string()))?;
        let data_key = Kek::from_bytes(&dek).map_err(|e| VaultError::Crypto(e.to_string()))?;
        let ciphertext = data_key
            .seal(value, &aad("secret-value", name, version))
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        let wrapped = self
            .kek
            .seal(&dek, &aad("secret-data-key", name, version))
            .map_err(|e| VaultError::Crypto(e.to_string()))?;
        Ok(Sealed {
            ciphertext: STANDARD.encode(ciphertext),
            wrapped_key: STANDARD.encode(wrapped),
        })
    }

    pub fn open(
        &self,
        name: &SecretName,
        version: i64,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, VaultError> {
        let wrapped = STANDARD
            .decode(&sealed.wrapped_key)
            .map_err(|_| VaultError::Unseal)?;
        let dek = self
            .kek
            .open(&wrapped, &aad("secret-data-key", name, version))
            .map_err(|_| VaultError::Unseal)?;
        let data_key = Kek::from_bytes(&dek).map_err(|_| VaultError::Unseal)?;
        let ct = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| VaultError::Unseal)?;
        data_key
            .open(&ct, &aad("secret-value", name, version))
            .map_err(|_| VaultError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_bytes(&Kek::generate_bytes().unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_binding() {
        let k = kek();
        let e = Envelope::new(&k);
        let a = SecretName::parse("payments/stripe-key").unwrap();
        let b = SecretName::parse("payments/other").unwrap();
        let s = e.seal(&a, 1, b"sk_live_123").unwrap();
        assert_eq!(e.open(&a, 1, &s).unwrap(), b"sk_live_123");
        assert!(!s.ciphertext.contains("sk_live"));
        // Moved to another name or version: refused.
        assert_eq!(e.open(&b, 1, &s), Err(VaultError::Unseal));
        assert_eq!(e.open(&a, 2, &s), Err(VaultError::Unseal));
        // Another version's wrapped key with this ciphertext: refused.
        let s2 = e.seal(&a, 2, b"sk_live_456").unwrap();
        let swapped = Sealed {
            ciphertext: s.ciphertext.clone(),
            wrapped_key: s2.wrapped_key,
        };
        assert_eq!(e.open(&a, 1, &swapped), Err(VaultError::Unseal));
        // Another KEK: refused.
        let other = kek();
        assert_eq!(
            Envelope::new(&other).open(&a, 1, &s),
            Err(VaultError::Unseal)
        );
        // Two seals of one value differ (fresh data key, fresh nonce).
        assert_ne!(e.seal(&a, 1, b"x").unwrap(), e.seal(&a, 1, b"x").unwrap());
    }

    #[test]
    fn size_limit() {
        let k = kek();
        let e = Envelope::new(&k);
        let a = SecretName::parse("big").unwrap();
        assert!(e.seal(&a, 1, &vec![0u8; MAX_VALUE_BYTES]).is_ok());
        assert_eq!(
            e.seal(&a, 1, &vec![0u8; MAX_VALUE_BYTES + 1]),
            Err(VaultError::TooLarge(MAX_VALUE_BYTES + 1))
        );
    }
}
