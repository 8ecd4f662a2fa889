//! How the tree is stored: in tiles, as C2SP tlog-tiles lays them out. A tile of tile-level `L`
//! holds up to 256 consecutive node hashes of tree level `8L`; every other node is recomputed
//! from at most 128 of them. Storage is one row per 256 hashes of a level (about 32 bytes per
//! record in all), a tile is written once full and overwritten only while partial, and any node
//! costs at most 255 hashes to recompute.

use std::collections::HashMap;

use crate::hash::{node_hash, Hash};
use crate::tree::{NodeSource, TreeError};

pub const TILE_HEIGHT: u32 = 8;
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// A tile: its tile-level and its index along that level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub level: u32,
    pub index: u64,
}

/// How many node hashes tile `id` holds in a tree of `size` leaves (0 when it has none yet).
pub fn tile_width(id: TileId, size: u64) -> u64 {
    let shift = id.level.saturating_mul(TILE_HEIGHT);
    let at_level = size.checked_shr(shift).unwrap_or(0);
    at_level
        .saturating_sub(id.index.saturating_mul(TILE_WIDTH))
        .min(TILE_WIDTH)
}

/// The tile holding the hashes node (`level`, `index`) is made from, and their offset and count.
fn locate(level: u32, index: u64) -> (TileId, u64, u64) {
    let tile_level = level / TILE_HEIGHT;
    let rise = level % TILE_HEIGHT;
    let first = index << rise;
    (
        TileId {
            level: tile_level,
            index: first >> TILE_HEIGHT,
        },
        first % TILE_WIDTH,
        1 << rise,
    )
}

/// The tiles that must be read to compute the nodes `nodes` (as found by
/// [`crate::tree::NodesRead`]).
pub fn tiles_for(nodes: &[(u32, u64)]) -> Vec<TileId> {
    let mut v: Vec<TileId> = nodes.iter().map(|&(l, i)| locate(l, i).0).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The partial tiles on the right edge of a tree of `size` leaves, with their widths: what
/// [`extend`] needs to continue it.
pub fn right_edge(size: u64) -> Vec<(TileId, u64)> {
    let mut out = Vec::new();
    let mut level = 0;
    loop {
        let at_level = size.checked_shr(level * TILE_HEIGHT).unwrap_or(0);
        if at_level == 0 {
            break;
        }
        let width = at_level % TILE_WIDTH;
        if width > 0 {
            out.push((
                TileId {
                    level,
                    index: at_level / TILE_WIDTH,
                },
                width,
            ));
        }
        level += 1;
    }
    out
}

/// Folds a full tile's 256 hashes into the one node above it (8 levels up).
fn tile_root(hashes: &[Hash]) -> Hash {
    let mut row = hashes.to_vec();
    while row.len() > 1 {
        row = row
            .chunks(2)
            .map(|p| match p {
                [l, r] => node_hash(l, r),
                [one] => *one,
                _ => [0; 32],
            })
            .collect();
    }
    row.first().copied().unwrap_or([0; 32])
}

/// Grows a tree of `size` leaves by `leaves`: returns every tile that changed, in full. `edge`
/// holds the current contents of the right-edge partial tiles ([`right_edge`]); a missing or
/// short one is an error, never guessed.
pub fn extend(
    size: u64,
    edge: &HashMap<TileId, Vec<Hash>>,
    leaves: &[Hash],
) -> Result<Vec<(TileId, Vec<Hash>)>, TreeError> {
    let mut changed = Vec::new();
    let mut new_hashes: Vec<Hash> = leaves.to_vec();
    let mut level = 0u32;
    while !new_hashes.is_empty() {
        let at_level = size.checked_shr(level * TILE_HEIGHT).unwrap_or(0);
        let width = at_level % TILE_WIDTH;
        let first = at_level / TILE_WIDTH;
        let mut row: Vec<Hash> = if width == 0 {
            Vec::new()
        } else {
            let id = TileId {
                level,
                index: first,
            };
            let have =
                edge.get(&id)
                    .filter(|t| t.len() as u64 == width)
                    .ok_or(TreeError::Missing {
                        level: level * TILE_HEIGHT,
                        index: first * TILE_WIDTH,
                    })?;
            have.clone()
        };
        row.append(&mut new_hashes);
        let mut up = Vec::new();
        for (index, chunk) in (first..).zip(row.chunks(TILE_WIDTH as usize)) {
            if chunk.len() as u64 == TILE_WIDTH {
                up.push(tile_root(chunk));
            }
            changed.push((TileId { level, index }, chunk.to_vec()));
        }
        new_hashes = up;
        level += 1;
    }
    Ok(changed)
}

/// Tiles in memory, as a [`NodeSource`] for a tree of a given size.
#[derive(Debug, Default)]
pub struct TileSet {
    pub tiles: HashMap<TileId, Vec<Hash>>,
}

impl NodeSource for TileSet {
    fn node(&self, level: u32, index: u64) -> Result<Hash, TreeError> {
        let (id, offset, count) = locate(level, index);
        let missing = TreeError::Missing { level, index };
        let tile = self.tiles.get(&id).ok_or(missing.clone())?;
        let hashes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset + count).ok())
            .and_then(|(a, b)| tile.get(a..b))
            .ok_or(missing)?;
        Ok(tile_root(hashes))
    }
}

/// Tiles as stored: their hashes concatenated.
pub fn tile_bytes(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

/// A stored tile back into hashes; `None` when its length is not a whole number of hashes.
pub fn tile_from_bytes(bytes: &[u8]) -> Option<Vec<Hash>> {
    if !bytes.len().is_multiple_of(32) || bytes.len() as u64 > TILE_WIDTH * 32 {
        return None;
    }
    bytes
        .chunks_exact(32)
        .map(|c| <Hash>::try_from(c).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use crate::tree::{
        consistency_proof, inclusion_proof, root, verify_consistency, verify_inclusion, Frontier,
    };

    fn grow(set: &mut TileSet, size: u64, leaves: &[Hash]) {
        let edge = right_edge(size)
            .into_iter()
            .map(|(id, _)| (id, set.tiles.get(&id).cloned().unwrap_or_default()))
            .collect();
        for (id, t) in extend(size, &edge, leaves).unwrap() {
            set.tiles.insert(id, t);
        }
    }

    #[test]
    fn tiles_grown_in_uneven_steps_give_the_same_tree() {
        let leaves: Vec<Hash> = (0..70_000u64)
            .map(|i| leaf_hash(&i.to_le_bytes()))
            .collect();
        let mut set = TileSet::default();
        let mut f = Frontier::default();
        let mut size = 0u64;
        for step in [1usize, 255, 1, 300, 65_000, 7, 4_436] {
            let batch = &leaves[size as usize..size as usize + step];
            grow(&mut set, size, batch);
            batch.iter().for_each(|l| f.push(*l));
            size += step as u64;
            assert_eq!(root(&set, size).unwrap(), f.root(), "size {size}");
        }
        assert_eq!(size, 70_000);
        // Level-16 nodes exist (65,536 leaves): a proof crosses three tile levels.
        let r = root(&set, size).unwrap();
        for index in [0u64, 255, 256, 65_535, 65_536, 69_999] {
            let p = inclusion_proof(&set, index, size).unwrap();
            verify_inclusion(&leaves[index as usize], index, size, &p, &r).unwrap();
        }
        let mut old = Frontier::default();
        leaves[..1000].iter().for_each(|l| old.push(*l));
        let c = consistency_proof(&set, 1000, size).unwrap();
        verify_consistency(1000, size, &old.root(), &r, &c).unwrap();
    }

    #[test]
    fn a_missing_edge_tile_is_an_error() {
        let leaves: Vec<Hash> = (0..10u64).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        assert!(extend(5, &HashMap::new(), &leaves).is_err());
    }

    #[test]
    fn tile_bytes_round_trip_and_refuse_ragged_input() {
        let hs = vec![[1u8; 32], [2u8; 32]];
        assert_eq!(tile_from_bytes(&tile_bytes(&hs)).unwrap(), hs);
        assert!(tile_from_bytes(&[0u8; 33]).is_none());
    }
}
