//! Token Status List (draft-ietf-oauth-status-list-12 and later, JSON/JWT form): each access
//! token carries `status.status_list = {idx, uri}`, and `<issuer>/statuslists/<list>` serves the
//! list signed as a `statuslist+jwt`, one bit per token (1: revoked).
//!
//! A token's place is written into its `jti` (`<list>.<idx>.<random>`), so any server of the
//! database renders any list from the revoked token IDs alone: nothing per token is stored.
//! Lists are per server process (`<8 hex>-<generation>`) so that servers never hand out the
//! same place. What the list shows is what a revoked `jti` says: a workload's revocation is
//! refused by introspection and the change stream, and is not spread over the bits of every
//! token it holds (documented in SECURITY.md).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Places in one list: 2^20 bits, 128 KiB before compression (tens of bytes while sparse).
pub(crate) const LIST_SIZE: u32 = 1 << 20;

/// Hands out places in this process's lists: one counter, split into (generation, index).
#[derive(Debug)]
pub(crate) struct StatusIndex {
    instance: String,
    next: AtomicU64,
}

/// Why the lists could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("status lists: {0}")]
pub(crate) struct StatusError(String);

impl StatusIndex {
    pub(crate) fn new() -> Result<Self, StatusError> {
        let b = tessera_token::seal::random_bytes::<4>().map_err(|e| StatusError(e.to_string()))?;
        Ok(Self {
            instance: b.iter().map(|x| format!("{x:02x}")).collect(),
            next: AtomicU64::new(0),
        })
    }

    /// The next place: (list ID, index). Lock-free: it is on every issuance.
    pub(crate) fn allocate(&self) -> (String, u32) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let size = u64::from(LIST_SIZE);
        // INVARIANT: `n % size` < 2^20 fits a u32; the generation saturates only after 2^52
        // tokens from one process.
        let idx = u32::try_from(n % size).unwrap_or(0);
        let generation = u32::try_from(n / size).unwrap_or(u32::MAX);
        (format!("{}-{generation}", self.instance), idx)
    }
}

/// A list ID as this authority makes them: 8 lowercase hex digits, a dash, a generation.
pub(crate) fn valid_list_id(list: &str) -> bool {
    let Some((instance, generation)) = list.split_once('-') else {
        return false;
    };
    instance.len() == 8
        && instance
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !generation.is_empty()
        && generation.len() <= 10
        && generation.bytes().all(|b| b.is_ascii_digit())
        && generation.parse::<u32>().is_ok()
}

/// The list and index a `jti` of ours names.
pub(crate) fn place_of(jti: &str) -> Option<(&str, u32)> {
    let mut parts = jti.splitn(3, '.');
    let list = parts.next()?;
    let idx = parts.next()?.parse::<u32>().ok()?;
    parts.next()?;
    (valid_list_id(list) && idx < LIST_SIZE).then_some((list, idx))
}

/// The `lst` of `list`: one bit per place (least significant first), set for each revoked
/// `jti` in it, ZLIB-compressed (RFC 1950).
pub(crate) fn compressed_bits<'a>(
    list: &str,
    revoked: impl Iterator<Item = &'a String>,
) -> Result<Vec<u8>, std::io::Error> {
    let places: Vec<u32> = revoked
        .filter_map(|jti| place_of(jti))
        .filter(|(l, _)| *l == list)
        .map(|(_, idx)| idx)
        .collect();
    // Most lists (and any list ID a stranger makes up) have nothing revoked: compressed once.
    if places.is_empty() {
        static EMPTY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        if let Some(z) = EMPTY.get() {
            return Ok(z.clone());
        }
        let z = compress(&vec![0u8; (LIST_SIZE / 8) as usize])?;
        return Ok(EMPTY.get_or_init(|| z).clone());
    }
    let mut bits = vec![0u8; (LIST_SIZE / 8) as usize];
    for idx in places {
        if let Some(byte) = bits.get_mut((idx / 8) as usize) {
            *byte |= 1 << (idx % 8);
        }
    }
    compress(&bits)
}

fn compress(bits: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(bits)?;
    z.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_unique_and_parse_back() {
        let s = StatusIndex::new().unwrap();
        let (l1, i1) = s.allocate();
        let (l2, i2) = s.allocate();
        assert_eq!(l1, l2);
        assert_eq!(i2, i1 + 1);
        let jti = format!("{l1}.{i2}.abc");
        assert_eq!(place_of(&jti), Some((l1.as_str(), i2)));
        for bad in [
            "abc",
            "0011aabb-0.x.y",
            "0011aabb-0.1",
            "0011AABB-0.1.x",
            "0011aabb-.1.x",
            "0011aabb-0.1048576.x",
            "0011aabb-99999999999.1.x",
        ] {
            assert_eq!(place_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn bits_are_set_least_significant_first() {
        use std::io::Read;
        let revoked = [
            "0011aabb-0.0.x".to_owned(),
            "0011aabb-0.9.y".to_owned(),
            "0011aabb-1.3.z".to_owned(),
        ];
        let z = compressed_bits("0011aabb-0", revoked.iter()).unwrap();
        let mut bits = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..])
            .read_to_end(&mut bits)
            .unwrap();
        assert_eq!(bits.len(), (LIST_SIZE / 8) as usize);
        assert_eq!(bits[0], 0b0000_0001);
        assert_eq!(bits[1], 0b0000_0010);
        assert!(
            bits[2..].iter().all(|b| *b == 0),
            "the other list's bit is not here"
        );
    }
}
