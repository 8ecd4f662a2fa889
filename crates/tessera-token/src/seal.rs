//! Sealing private keys at rest: AES-256-GCM under a key-encryption key (KEK). The associated
//! data binds each sealed blob to its purpose and name, so a blob cannot be moved to another row.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::pkcs11::HsmAesKey;
use crate::TokenError;

/// The key-encryption key: in memory (from the 0600 file or variable it came from), or an
/// AES-256 key in a PKCS#11 token that seals and opens inside it. Both write the same
/// `nonce || ciphertext || tag`.
pub struct Kek {
    key: KekKey,
    rng: SystemRandom,
}

enum KekKey {
    Memory(Box<LessSafeKey>),
    Token(HsmAesKey),
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

pub const KEK_LEN: usize = 32;

impl Kek {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| TokenError::Crypto("a key-encryption key is 32 bytes"))?;
        Ok(Self {
            key: KekKey::Memory(Box::new(LessSafeKey::new(unbound))),
            rng: SystemRandom::new(),
        })
    }

    /// A KEK that never leaves a PKCS#11 token.
    pub fn in_token(key: HsmAesKey) -> Self {
        Self {
            key: KekKey::Token(key),
            rng: SystemRandom::new(),
        }
    }

    /// Where it lives: `None` in memory, else the token's key.
    pub fn token_key(&self) -> Option<&HsmAesKey> {
        match &self.key {
            KekKey::Memory(_) => None,
            KekKey::Token(k) => Some(k),
        }
    }

    /// Fresh random key material for a new KEK.
    pub fn generate_bytes() -> Result<[u8; KEK_LEN], TokenError> {
        random_bytes::<KEK_LEN>()
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Vec<u8>, TokenError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| TokenError::Crypto("no randomness"))?;
        let buf = match &self.key {
            KekKey::Memory(key) => {
                let mut buf = plaintext.to_vec();
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad.as_bytes()),
                    &mut buf,
                )
                .map_err(|_| TokenError::Crypto("sealing failed"))?;
                buf
            }
            KekKey::Token(key) => key
                .encrypt(&nonce, aad.as_bytes(), plaintext)
                .map_err(TokenError::Hsm)?,
        };
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<Vec<u8>, TokenError> {
        if sealed.len() < NONCE_LEN {
            return Err(TokenError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        match &self.key {
            KekKey::Memory(key) => {
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| TokenError::Unseal)?;
                let mut buf = ct.to_vec();
                let plain = key
                    .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
                    .map_err(|_| TokenError::Unseal)?;
                Ok(plain.to_vec())
            }
            KekKey::Token(key) => {
                let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| TokenError::Unseal)?;
                key.decrypt(&nonce, aad.as_bytes(), ct)
                    .map_err(TokenError::Hsm)?
                    .ok_or(TokenError::Unseal)
            }
        }
    }
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| TokenError::Crypto("no randomness"))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_to_aad_and_key() {
        let kek = Kek::from_bytes(&Kek::generate_bytes().unwrap()).unwrap();
        let sealed = kek.seal(b"secret", "signing-key/abc").unwrap();
        assert_eq!(kek.open(&sealed, "signing-key/abc").unwrap(), b"secret");
        assert!(kek.open(&sealed, "signing-key/abd").is_err());
        let other = Kek::from_bytes(&Kek::generate_bytes().unwrap()).unwrap();
        assert!(other.open(&sealed, "signing-key/abc").is_err());
        assert!(kek.open(&sealed[..5], "signing-key/abc").is_err());
        assert!(Kek::from_bytes(&[0u8; 16]).is_err());
    }
}
