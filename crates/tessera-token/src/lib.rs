//! JOSE for Tessera, on `ring`: signing keys and JWKs, compact JWS with RFC 8725's rules applied
//! while parsing, claim checks, and sealing of private keys at rest. No cryptography is written
//! here; `ring` does all of it, or a PKCS#11 token
//! (`pkcs11`) for keys that never leave it.

pub mod claims;
pub mod jws;
pub mod key;
pub mod pkcs11;
pub mod seal;
pub mod strict;

pub use claims::{x5t_s256, AccessTokenClaims, TimeRules, TYP_ACCESS_TOKEN};
pub use jws::{sign, Unverified, MAX_TOKEN_BYTES};
pub use key::{Alg, JwkSet, KeyLocation, PublicKey, SigningKey};
pub use pkcs11::{Hsm, HsmAesKey, HsmError, HsmKey};
pub use seal::Kek;

/// Why a token or key was refused. Each message is one a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("refused header: {0}")]
    Header(String),
    #[error("refused claims: {0}")]
    Claims(String),
    #[error("the signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token is not for this audience")]
    Audience,
    #[error("invalid key: {0}")]
    Jwk(String),
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
    #[error("a sealed key does not open with this key-encryption key")]
    Unseal,
    /// The key is in a PKCS#11 token and the token failed or refused.
    #[error("{0}")]
    Hsm(HsmError),
}
