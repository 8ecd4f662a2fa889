//! Signing keys and public keys. The algorithm belongs to the key: a verifier never takes it from a
//! token's header (RFC 8725 §3.1).

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tessera_core::Kid;

use crate::pkcs11::HsmKey;
use crate::strict::{b64_decode, b64_encode};
use crate::TokenError;

/// The JWS algorithms Tessera knows. Only asymmetric ones exist here at all. Tessera signs with
/// ES256 or EdDSA; RS256 is for verifying outside issuers' tokens (federation), and an RSA key is
/// only ever read from a key set that allows it (`JwkSet::parse_keys_with_rsa`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    ES256,
    EdDSA,
    RS256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }

    /// Whether Tessera signs with this algorithm (RS256 is verification only).
    pub fn can_sign(self) -> bool {
        !matches!(self, Self::RS256)
    }
}

/// A private signing key, held in memory only after it was unsealed.
pub struct SigningKey {
    kid: Kid,
    alg: Alg,
    inner: Inner,
    public: PublicKey,
    rng: SystemRandom,
}

enum Inner {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    /// In a PKCS#11 token: signing calls the module.
    Token(HsmKey),
}

/// Where a private key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// In this process's memory (sealed under the KEK at rest).
    Software,
    /// In a PKCS#11 token, by the token's label and the key's label.
    Pkcs11 {
        token: String,
        slot: u64,
        label: String,
    },
}

impl KeyLocation {
    /// The key labelled `label` in `hsm`'s token.
    pub fn in_token(hsm: &crate::pkcs11::Hsm, label: &str) -> Self {
        Self::Pkcs11 {
            token: hsm.token().to_owned(),
            slot: hsm.slot_id(),
            label: label.to_owned(),
        }
    }
}

impl std::fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Software => f.write_str("software (sealed)"),
            Self::Pkcs11 { token, slot, label } => {
                write!(f, "pkcs11 token `{token}` slot {slot} label `{label}`")
            }
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a key; returns it with its PKCS#8 encoding, which the caller seals and stores.
    pub fn generate(alg: Alg) -> Result<(Self, Vec<u8>), TokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Alg::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
            Alg::RS256 => return Err(TokenError::Crypto("RS256 keys verify only")),
        }
        .map_err(|_| TokenError::Crypto("key generation failed"))?;
        let bytes = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8(alg, &bytes)?, bytes))
    }

    pub fn from_pkcs8(alg: Alg, pkcs8: &[u8]) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let (inner, public) = match alg {
            Alg::ES256 => {
                let kp = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &rng,
                )
                .map_err(|_| TokenError::Crypto("not a P-256 PKCS#8 key"))?;
                let public = PublicKey::from_ec_point(kp.public_key().as_ref())?;
                (Inner::Es256(kp), public)
            }
            Alg::EdDSA => {
                let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|_| TokenError::Crypto("not an Ed25519 PKCS#8 key"))?;
                let public = PublicKey::ed25519(kp.public_key().as_ref())?;
                (Inner::EdDsa(kp), public)
            }
            Alg::RS256 => return Err(TokenError::Crypto("RS256 keys verify only")),
        };
        Ok(Self {
            kid: public.kid.clone(),
            alg,
            inner,
            public,
            rng,
        })
    }

    /// An Ed25519 key from its 32-byte seed (RFC 8032 §5.1.5), for keys kept as a seed (the
    /// audit log's key and a witness's key, which sign notes rather than JWS).
    pub fn ed25519_from_seed(seed: &[u8]) -> Result<Self, TokenError> {
        let kp = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| TokenError::Crypto("an Ed25519 seed is 32 bytes"))?;
        let public = PublicKey::ed25519(kp.public_key().as_ref())?;
        Ok(Self {
            kid: public.kid.clone(),
            alg: Alg::EdDSA,
            inner: Inner::EdDsa(kp),
            public,
            rng: SystemRandom::new(),
        })
    }

    /// A key held in a PKCS#11 token; its public half is the one the token reports.
    pub fn in_token(key: HsmKey) -> Result<Self, TokenError> {
        let public = match key.alg() {
            Alg::ES256 => PublicKey::from_ec_point(key.public_bytes())?,
            Alg::EdDSA => PublicKey::ed25519(key.public_bytes())?,
            Alg::RS256 => return Err(TokenError::Crypto("RS256 keys verify only")),
        };
        Ok(Self {
            kid: public.kid.clone(),
            alg: key.alg(),
            inner: Inner::Token(key),
            public,
            rng: SystemRandom::new(),
        })
    }

    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn location(&self) -> KeyLocation {
        match &self.inner {
            Inner::Token(k) => KeyLocation::in_token(k.hsm(), k.label()),
            Inner::Es256(_) | Inner::EdDsa(_) => KeyLocation::Software,
        }
    }

    /// The signature in JWS form: ES256 as `r || s`, EdDSA as RFC 8032's 64 bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        match &self.inner {
            Inner::Es256(kp) => kp
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| TokenError::Crypto("signing failed")),
            Inner::EdDsa(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            Inner::Token(k) => k.sign(message).map_err(TokenError::Hsm),
        }
    }

    /// The signature in X.509 and TLS form: ES256 as a DER `ECDSA-Sig-Value` (RFC 3279
    /// §2.2.3), EdDSA unchanged.
    pub fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let sig = self.sign(message)?;
        match self.alg {
            Alg::ES256 => ecdsa_fixed_to_der(&sig),
            Alg::EdDSA | Alg::RS256 => Ok(sig),
        }
    }
}

/// `r || s` (32 bytes each) as DER `SEQUENCE { INTEGER r, INTEGER s }`. Encoding only: the
/// signature itself comes from ring or the token.
fn ecdsa_fixed_to_der(sig: &[u8]) -> Result<Vec<u8>, TokenError> {
    if sig.len() != 64 {
        return Err(TokenError::Crypto("an ES256 signature is 64 bytes"));
    }
    let (r, s) = sig.split_at(32);
    let integer = |v: &[u8]| -> Vec<u8> {
        // The minimal encoding: no leading zero octets, but at least one octet.
        let start = v
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(v.len().saturating_sub(1));
        let v = v.get(start..).unwrap_or_default();
        let pad = v.first().is_some_and(|b| b & 0x80 != 0);
        let mut out = vec![0x02, u8::try_from(v.len() + usize::from(pad)).unwrap_or(0)];
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let (r, s) = (integer(r), integer(s));
    // INVARIANT: each INTEGER is at most 2 + 33 bytes, so the sequence's length fits one octet.
    let mut out = vec![0x30, u8::try_from(r.len() + s.len()).unwrap_or(0)];
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Ok(out)
}

/// A public verification key with the algorithm it is for and its RFC 7638 thumbprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kid: Kid,
    alg: Alg,
    /// ES256: the uncompressed point `04 || x || y`; EdDSA: the 32-byte key; RS256: the
    /// modulus `n` (big-endian).
    bytes: Vec<u8>,
    /// RS256: the public exponent `e`; empty otherwise.
    exponent: Vec<u8>,
}

impl PublicKey {
    fn from_ec_point(point: &[u8]) -> Result<Self, TokenError> {
        match point {
            [4, rest @ ..] if rest.len() == 64 => {
                let (x, y) = rest.split_at(32);
                Self::es256_from_xy(x, y, None)
            }
            _ => Err(TokenError::Crypto("not an uncompressed P-256 point")),
        }
    }

    fn es256_from_xy(x: &[u8], y: &[u8], kid: Option<Kid>) -> Result<Self, TokenError> {
        if x.len() != 32 || y.len() != 32 {
            return Err(TokenError::Jwk(
                "P-256 `x` and `y` must be 32 bytes each".into(),
            ));
        }
        let mut bytes = Vec::with_capacity(65);
        bytes.push(4);
        bytes.extend_from_slice(x);
        bytes.extend_from_slice(y);
        let thumb = thumbprint(&[
            ("crv", "P-256"),
            ("kty", "EC"),
            ("x", &b64_encode(x)),
            ("y", &b64_encode(y)),
        ]);
        Ok(Self {
            kid: kid.unwrap_or(thumb),
            alg: Alg::ES256,
            bytes,
            exponent: Vec::new(),
        })
    }

    /// An Ed25519 public key from its 32 bytes (RFC 8032).
    pub fn ed25519(x: &[u8]) -> Result<Self, TokenError> {
        Self::ed25519_with_kid(x, None)
    }

    /// The key as X.509 puts it in a SubjectPublicKeyInfo: the uncompressed point (ES256), the
    /// 32 bytes (EdDSA), the modulus (RS256).
    pub fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// The 32 bytes of an Ed25519 key; `None` for other algorithms.
    pub fn ed25519_bytes(&self) -> Option<&[u8]> {
        (self.alg == Alg::EdDSA).then_some(self.bytes.as_slice())
    }

    fn ed25519_with_kid(x: &[u8], kid: Option<Kid>) -> Result<Self, TokenError> {
        if x.len() != 32 {
            return Err(TokenError::Jwk("Ed25519 `x` must be 32 bytes".into()));
        }
        let thumb = thumbprint(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &b64_encode(x))]);
        Ok(Self {
            kid: kid.unwrap_or(thumb),
            alg: Alg::EdDSA,
            bytes: x.to_vec(),
            exponent: Vec::new(),
        })
    }

    /// An RSA key for RS256, 2048 to 8192 bits (ring's bounds, checked again at each verify).
    fn rs256_from_ne(n: &[u8], e: &[u8], kid: Option<Kid>) -> Result<Self, TokenError> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = n.len() * 8;
        if !(2048..=8192).contains(&bits) {
            return Err(TokenError::Jwk(format!(
                "an RSA modulus of {bits} bits is not accepted (2048 to 8192)"
            )));
        }
        if e.is_empty() || e.len() > 4 {
            return Err(TokenError::Jwk("the RSA exponent is not usable".into()));
        }
        let thumb = thumbprint(&[("e", &b64_encode(e)), ("kty", "RSA"), ("n", &b64_encode(n))]);
        Ok(Self {
            kid: kid.unwrap_or(thumb),
            alg: Alg::RS256,
            bytes: n.to_vec(),
            exponent: e.to_vec(),
        })
    }

    pub fn kid(&self) -> &Kid {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Checks a signature with this key's own algorithm.
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the one place that calls ring's verify, with the key's own algorithm"
    )]
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            // Fixed r||s encoding only: a DER signature is refused (RFC 7518 §3.4).
            Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::EdDSA => &signature::ED25519,
            Alg::RS256 => {
                return signature::RsaPublicKeyComponents {
                    n: &self.bytes,
                    e: &self.exponent,
                }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok()
            }
        };
        UnparsedPublicKey::new(alg, &self.bytes)
            .verify(message, sig)
            .is_ok()
    }

    /// The public JWK, as published in a JWKS.
    pub fn to_jwk(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self.alg {
            Alg::ES256 => {
                let x = self.bytes.get(1..33).unwrap_or_default();
                let y = self.bytes.get(33..65).unwrap_or_default();
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), "P-256".into());
                m.insert("x".into(), b64_encode(x).into());
                m.insert("y".into(), b64_encode(y).into());
            }
            Alg::EdDSA => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), b64_encode(&self.bytes).into());
            }
            Alg::RS256 => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64_encode(&self.bytes).into());
                m.insert("e".into(), b64_encode(&self.exponent).into());
            }
        }
        m.insert("kid".into(), self.kid.as_str().into());
        m.insert("alg".into(), self.alg.as_str().into());
        m.insert("use".into(), "sig".into());
        m
    }

    /// Reads a public JWK. Private members are refused: a JWKS is public, and a private key
    /// pasted into one is a leak we will not propagate.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<Self, TokenError> {
        let s = |name: &str| jwk.get(name).and_then(Value::as_str);
        if jwk.contains_key("d") {
            return Err(TokenError::Jwk("the JWK holds a private key (`d`)".into()));
        }
        if let Some(u) = jwk.get("use") {
            // `jwt-svid` is the SPIFFE bundle's name for a JWT signing key.
            if !matches!(u.as_str(), Some("sig" | "jwt-svid")) {
                return Err(TokenError::Jwk(
                    "the JWK's `use` is not `sig` (or `jwt-svid`)".into(),
                ));
            }
        }
        let kid = match jwk.get("kid") {
            Some(Value::String(k)) => {
                Some(Kid::parse(k).map_err(|e| TokenError::Jwk(e.to_string()))?)
            }
            Some(_) => return Err(TokenError::Jwk("`kid` is not a string".into())),
            None => None,
        };
        let field = |name: &str| -> Result<Vec<u8>, TokenError> {
            let v = s(name).ok_or_else(|| TokenError::Jwk(format!("missing `{name}`")))?;
            b64_decode(v).ok_or_else(|| TokenError::Jwk(format!("`{name}` is not base64url")))
        };
        let key = match (s("kty"), s("crv")) {
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (field("x")?, field("y")?);
                let key = Self::es256_from_xy(&x, &y, kid)?;
                // Reject points that are not on the curve now, not at first use.
                if !on_curve(&key.bytes) {
                    return Err(TokenError::Jwk("the point is not on P-256".into()));
                }
                key
            }
            (Some("OKP"), Some("Ed25519")) => Self::ed25519_with_kid(&field("x")?, kid)?,
            (Some("RSA"), _) => Self::rs256_from_ne(&field("n")?, &field("e")?, kid)?,
            (Some(kty), crv) => {
                return Err(TokenError::Jwk(format!(
                    "key type `{kty}`{} is not accepted (ES256 on P-256 and EdDSA on Ed25519 are)",
                    crv.map(|c| format!(" on `{c}`")).unwrap_or_default()
                )))
            }
            (None, _) => return Err(TokenError::Jwk("missing `kty`".into())),
        };
        if let Some(alg) = jwk.get("alg") {
            if alg.as_str() != Some(key.alg.as_str()) {
                return Err(TokenError::Jwk(format!(
                    "`alg` {alg} does not fit a {} key",
                    key.alg.as_str()
                )));
            }
        }
        Ok(key)
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

/// ring validates a point only when it verifies with it, so a bad key would fail every token
/// later. ring's ECDH parses and validates SEC1 P-256 points; an agreement with a throwaway key
/// performs exactly that check now, when the key set is loaded.
fn on_curve(point: &[u8]) -> bool {
    let rng = SystemRandom::new();
    let Ok(mine) =
        ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
    else {
        return false;
    };
    let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, point);
    ring::agreement::agree_ephemeral(mine, &peer, |_| ()).is_ok()
}

/// RFC 7638: SHA-256 over the required members in lexicographic order, no white space.
fn thumbprint(members: &[(&str, &str)]) -> Kid {
    let mut json = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("\"{k}\":\"{v}\""));
    }
    json.push('}');
    let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
    // INVARIANT: base64url of 32 bytes is 43 characters of the base64url alphabet, a valid Kid.
    match Kid::parse(&b64_encode(digest.as_ref())) {
        Ok(k) => k,
        Err(_) => unreachable_kid(),
    }
}

#[expect(
    clippy::panic,
    reason = "a base64url SHA-256 digest is always a valid key id"
)]
fn unreachable_kid() -> Kid {
    panic!("thumbprint produced an invalid kid")
}

/// A JSON Web Key Set, as served at `jwks_uri`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Map<String, Value>>,
}

impl JwkSet {
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> Self {
        Self {
            keys: keys.into_iter().map(PublicKey::to_jwk).collect(),
        }
    }

    /// Parses a JWKS document strictly. Keys of types we do not accept are skipped (a JWKS may
    /// carry RSA keys for other consumers); malformed keys of accepted types are errors.
    pub fn parse_keys(text: &[u8]) -> Result<Vec<PublicKey>, TokenError> {
        Self::parse(text, false)
    }

    /// [`JwkSet::parse_keys`], also reading RSA keys (for RS256): only for outside issuers'
    /// key sets, whose tokens a trust explicitly allows RS256 for.
    pub fn parse_keys_with_rsa(text: &[u8]) -> Result<Vec<PublicKey>, TokenError> {
        Self::parse(text, true)
    }

    fn parse(text: &[u8], rsa: bool) -> Result<Vec<PublicKey>, TokenError> {
        let doc = crate::strict::parse_object(text).map_err(TokenError::Jwk)?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| TokenError::Jwk("a JWKS needs a `keys` array".into()))?;
        let mut out = Vec::new();
        for k in keys {
            let Value::Object(m) = k else {
                return Err(TokenError::Jwk("a JWKS entry is not an object".into()));
            };
            let kty = m.get("kty").and_then(Value::as_str);
            let accepted = matches!(
                (kty, m.get("crv").and_then(Value::as_str)),
                (Some("EC"), Some("P-256")) | (Some("OKP"), Some("Ed25519"))
            ) || (rsa && kty == Some("RSA"));
            // A SPIFFE bundle also lists its X.509 authorities; they sign certificates, not JWTs.
            let x509_authority = m.get("use").and_then(Value::as_str) == Some("x509-svid");
            if !accepted || x509_authority {
                continue;
            }
            out.push(PublicKey::from_jwk(m)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ecdsa_signatures_become_minimal_der() {
        // r = 1 (31 leading zeros dropped), s with its top bit set (a zero octet added).
        let mut sig = [0u8; 64];
        sig[31] = 1;
        sig[32] = 0x80;
        let der = ecdsa_fixed_to_der(&sig).unwrap();
        let mut want = vec![0x30, 3 + 35, 0x02, 0x01, 0x01, 0x02, 0x21, 0x00, 0x80];
        want.extend_from_slice(&[0u8; 31]);
        assert_eq!(der, want);
        // r = 0 is one zero octet.
        let der = ecdsa_fixed_to_der(&[0u8; 64]).unwrap();
        assert_eq!(der, [0x30, 6, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]);
        assert!(ecdsa_fixed_to_der(&[1u8; 63]).is_err());
    }

    #[test]
    fn rfc7638_thumbprint_of_ec_key() {
        // RFC 7638 gives an RSA example only; this EC value is cross-checked with python joserfc
        // (`ECKey.import_key(jwk).thumbprint()`), an independent implementation.
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
        )
        .unwrap();
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.kid().as_str(),
            "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
        );
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        for alg in [Alg::ES256, Alg::EdDSA] {
            let (key, pkcs8) = SigningKey::generate(alg).unwrap();
            let sig = key.sign(b"msg").unwrap();
            assert!(key.public().verify(b"msg", &sig));
            assert!(!key.public().verify(b"msh", &sig));
            let again = SigningKey::from_pkcs8(alg, &pkcs8).unwrap();
            assert_eq!(again.kid(), key.kid());
            let jwk = key.public().to_jwk();
            let back = PublicKey::from_jwk(&jwk).unwrap();
            assert_eq!(&back, key.public());
        }
    }

    #[test]
    fn jwk_refusals() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let mut jwk = key.public().to_jwk();
        jwk.insert("d".into(), "AAAA".into());
        assert!(PublicKey::from_jwk(&jwk).is_err());
        let mut jwk = key.public().to_jwk();
        jwk.insert("alg".into(), "HS256".into());
        assert!(PublicKey::from_jwk(&jwk).is_err());
        let mut jwk = key.public().to_jwk();
        jwk.insert("y".into(), b64_encode([7u8; 32]).into());
        assert!(PublicKey::from_jwk(&jwk)
            .unwrap_err()
            .to_string()
            .contains("not on P-256"));
        let mut jwk = key.public().to_jwk();
        jwk.insert("kty".into(), "oct".into());
        assert!(PublicKey::from_jwk(&jwk).is_err());
    }

    #[test]
    fn jwks_skips_foreign_key_types() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let set = serde_json::json!({"keys": [
            {"kty":"RSA","n":"AQAB","e":"AQAB"},
            key.public().to_jwk(),
        ]});
        let keys = JwkSet::parse_keys(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(JwkSet::parse_keys(br#"{"keys":[],"keys":[]}"#).is_err());
    }

    #[test]
    fn rsa_keys_only_where_allowed() {
        // RFC 7517 Appendix A.1, the RSA public key ("2011-04-29"), 2048 bits.
        let jwks = br#"{"keys":[{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}]}"#;
        assert!(
            JwkSet::parse_keys(jwks).unwrap().is_empty(),
            "skipped unless allowed"
        );
        let keys = JwkSet::parse_keys_with_rsa(jwks).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg(), Alg::RS256);
        assert_eq!(keys[0].kid().as_str(), "2011-04-29");
        // RFC 7638 §3.1's thumbprint of this very key.
        let mut m = keys[0].to_jwk();
        m.remove("kid");
        let again = PublicKey::from_jwk(&m).unwrap();
        assert_eq!(
            again.kid().as_str(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(!keys[0].verify(b"message", &[0u8; 256]));
        // A 1024-bit modulus is refused.
        let short = format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{}","e":"AQAB"}}]}}"#,
            b64_encode([0xc5u8; 128])
        );
        assert!(JwkSet::parse_keys_with_rsa(short.as_bytes()).is_err());
        assert!(SigningKey::generate(Alg::RS256).is_err());
    }
}
