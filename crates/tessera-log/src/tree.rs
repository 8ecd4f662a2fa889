//! RFC 9162 §2.1 over any store of complete subtrees: the tree head, inclusion proofs (§2.1.3)
//! and consistency proofs (§2.1.4), made and checked. Indices and sizes come from outside when
//! checking, so every step is checked arithmetic: a hostile proof is refused, never a panic.

use std::cell::RefCell;

use crate::hash::{empty_root, node_hash, Hash};

/// Why a tree could not be read or a proof made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("the log has no node at level {level} index {index} (the stored tree is incomplete)")]
    Missing { level: u32, index: u64 },
    #[error("index {index} is not in a tree of size {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("no consistency proof from size {old} to size {new}")]
    BadSizes { old: u64, new: u64 },
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("the proof has {got} hashes where {want} are needed")]
    WrongLength { got: usize, want: usize },
    #[error("the proof does not lead to the root hash")]
    RootMismatch,
    #[error("the old tree (size {old}) is larger than the new one (size {new})")]
    Shrunk { old: u64, new: u64 },
    #[error("trees of the same size {size} have different root hashes")]
    Forked { size: u64 },
    #[error("the proof does not lead to the old root hash")]
    OldRootMismatch,
}

/// Complete subtrees by level (0 = leaves) and index: the node over leaves
/// `[index * 2^level, (index + 1) * 2^level)`.
pub trait NodeSource {
    fn node(&self, level: u32, index: u64) -> Result<Hash, TreeError>;
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]), end > start.
pub fn subtree<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, TreeError> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return src.node(level, start >> level);
    }
    let k = split(n);
    Ok(node_hash(
        &subtree(src, start, start + k)?,
        &subtree(src, start + k, end)?,
    ))
}

/// The root hash of the first `size` leaves.
pub fn root<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, TreeError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree(src, 0, size)
}

/// The audit path of leaf `index` in the tree of `size` leaves (PATH, §2.1.3.1).
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TreeError> {
    if index >= size {
        return Err(TreeError::OutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, start, start + k, out)?;
        out.push(subtree(src, start + k, end)?);
    } else {
        path(src, m - k, start + k, end, out)?;
        out.push(subtree(src, start, start + k)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `old` leaves to the tree of `new` (PROOF, §2.1.4.1);
/// empty when the sizes are equal.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, TreeError> {
    if old > new {
        return Err(TreeError::BadSizes { old, new });
    }
    let mut out = Vec::new();
    if old == 0 || old == new {
        return Ok(out);
    }
    subproof(src, old, 0, new, true, &mut out)?;
    Ok(out)
}

fn subproof<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree(src, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, start + k, whole, out)?;
        out.push(subtree(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree(src, start, start + k)?);
    }
    Ok(())
}

/// Checks an inclusion proof (§2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 || &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// How many hashes the audit path of `index` in a tree of `size` has.
fn inclusion_len(index: u64, size: u64) -> usize {
    let mut len = 0;
    let (mut start, mut end, mut m) = (0u64, size, index);
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            end = start + k;
        } else {
            start += k;
            m -= k;
        }
        len += 1;
    }
    len
}

/// Checks a consistency proof between two tree heads (§2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Shrunk { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Forked { size: new })
        };
    }
    if old == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            })
        };
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::WrongLength { got: 0, want: 1 });
    };
    // When the old tree is a complete subtree its root is the proof's implicit first element.
    let (seed, rest) = if old.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::RootMismatch);
    }
    if &fr != old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The complete subtrees a computation reads, found by running it against this source first:
/// a caller that loads nodes from storage loads exactly these, in one go.
#[derive(Debug, Default)]
pub struct NodesRead(RefCell<Vec<(u32, u64)>>);

impl NodesRead {
    pub fn into_inner(self) -> Vec<(u32, u64)> {
        let mut v = self.0.into_inner();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl NodeSource for NodesRead {
    fn node(&self, level: u32, index: u64) -> Result<Hash, TreeError> {
        self.0.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

/// The right edge of a tree grown one leaf at a time: the roots of its complete subtrees,
/// largest first. Enough for the root hash at every size, in O(log n) memory.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    edge: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (0u32, leaf);
        while let Some(&(level, left)) = self.edge.last() {
            if level != cur.0 {
                break;
            }
            self.edge.pop();
            cur = (level + 1, node_hash(&left, &cur.1));
        }
        self.edge.push(cur);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use proptest::prelude::*;

    /// Every node of a tree built in memory.
    struct Mem(Vec<Vec<Hash>>);

    impl Mem {
        fn new(n: u64) -> Self {
            let mut levels = vec![(0..n)
                .map(|i| leaf_hash(&i.to_be_bytes()))
                .collect::<Vec<_>>()];
            while levels.last().unwrap().len() > 1 {
                let next = levels
                    .last()
                    .unwrap()
                    .chunks_exact(2)
                    .map(|p| node_hash(&p[0], &p[1]))
                    .collect();
                levels.push(next);
            }
            Self(levels)
        }
    }

    impl NodeSource for Mem {
        fn node(&self, level: u32, index: u64) -> Result<Hash, TreeError> {
            self.0
                .get(level as usize)
                .and_then(|l| l.get(index as usize))
                .copied()
                .ok_or(TreeError::Missing { level, index })
        }
    }

    /// MTH straight from RFC 9162's definition, over the leaf hashes.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn rfc_6962_reference_roots() {
        // The eight-leaf test vectors of RFC 6962's reference implementation (certificate-
        // transparency-go merkletree tests), the same hashing as RFC 9162.
        let leaves: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut f = Frontier::default();
        for (leaf, want) in leaves.iter().zip(roots) {
            f.push(leaf_hash(leaf));
            let got: String = f.root().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, want, "root at size {}", f.size());
        }
    }

    proptest! {
        #[test]
        fn proofs_made_here_verify_and_altered_ones_do_not(n in 1u64..300, a in 0u64..300, b in 0u64..300, flip in 0usize..64) {
            let mem = Mem::new(n);
            let leaves = &mem.0[0];
            let index = a % n;
            let r = root(&mem, n).unwrap();
            prop_assert_eq!(r, mth(leaves));
            let mut f = Frontier::default();
            leaves.iter().for_each(|l| f.push(*l));
            prop_assert_eq!(f.root(), r);

            let p = inclusion_proof(&mem, index, n).unwrap();
            prop_assert!(verify_inclusion(&leaves[index as usize], index, n, &p, &r).is_ok());
            if !p.is_empty() {
                let mut bad = p.clone();
                let i = flip % bad.len();
                bad[i][flip % 32] ^= 1;
                prop_assert!(verify_inclusion(&leaves[index as usize], index, n, &bad, &r).is_err());
                prop_assert!(verify_inclusion(&leaves[index as usize], index, n, &p[1..], &r).is_err());
            }
            if n > 1 {
                let other = (index + 1) % n;
                prop_assert!(verify_inclusion(&leaves[other as usize], index, n, &p, &r).is_err());
            }

            let m = b % n + 1;
            let old = mth(&leaves[..m as usize]);
            let c = consistency_proof(&mem, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &old, &r, &c).is_ok());
            if !c.is_empty() {
                let mut bad = c.clone();
                let i = flip % bad.len();
                bad[i][flip % 32] ^= 1;
                prop_assert!(verify_consistency(m, n, &old, &r, &bad).is_err());
            }
            let mut forged = old;
            forged[0] ^= 1;
            prop_assert!(verify_consistency(m, n, &forged, &r, &c).is_err());
        }

        #[test]
        fn hostile_proofs_are_refused_without_panic(index in any::<u64>(), size in any::<u64>(), old in any::<u64>(), len in 0usize..70) {
            let proof = vec![[7u8; 32]; len];
            let h = [1u8; 32];
            let _ = verify_inclusion(&h, index, size, &proof, &h);
            let _ = verify_consistency(old, size, &h, &h, &proof);
        }
    }
}
