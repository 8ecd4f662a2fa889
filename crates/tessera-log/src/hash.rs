//! RFC 9162 §2.1.1 hashing: a leaf is `SHA-256(0x00 || data)`, an interior node
//! `SHA-256(0x01 || left || right)`. The prefixes keep a leaf from ever passing for a node.

use ring::digest::{Context, SHA256};

/// A SHA-256 output: a leaf, a node or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: the hash of the empty string.
pub fn empty_root() -> Hash {
    to_array(ring::digest::digest(&SHA256, b"").as_ref())
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0]);
    c.update(data);
    to_array(c.finish().as_ref())
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[1]);
    c.update(left);
    c.update(right);
    to_array(c.finish().as_ref())
}

/// The digest by which a log record names a credential without holding it: the unpadded
/// base64url SHA-256 of the token's compact form or the certificate's DER.
pub fn credential_digest(bytes: &[u8]) -> String {
    tessera_token::strict::b64_encode(ring::digest::digest(&SHA256, bytes))
}

fn to_array(bytes: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
    h
}

/// A hash from standard base64, as hashes appear in checkpoints and proofs.
pub fn hash_from_b64(text: &str) -> Option<Hash> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    <Hash>::try_from(bytes.as_slice()).ok()
}

pub fn hash_to_b64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}
