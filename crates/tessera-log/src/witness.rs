//! The C2SP `tlog-witness` protocol, both ends: the `add-checkpoint` request a log sends, and
//! what a witness does with it — check the log's signature, check the new checkpoint is
//! consistent with the last one it cosigned for that log, remember it, cosign it. HTTP is the
//! caller's; each refusal names its status code.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::checkpoint::SignedCheckpoint;
use crate::hash::{empty_root, hash_from_b64, hash_to_b64, Hash};
use crate::note::{Note, NoteSigner, NoteVerifier};
use crate::tree::verify_consistency;

/// The media type of a 409's body: the size the witness has.
pub const SIZE_MEDIA_TYPE: &str = "text/x.tlog.size";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("unknown log `{0}`")]
    UnknownLog(String),
    #[error("the checkpoint is not signed by the log's key: {0}")]
    Signature(String),
    #[error("the witness has size {size} for this log, not the request's old size")]
    Conflict { size: u64 },
    #[error("the checkpoint is not consistent with the one last cosigned: {0}")]
    Inconsistent(String),
}

impl WitnessError {
    /// The status code `tlog-witness` gives each refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::Signature(_) => 403,
            Self::UnknownLog(_) => 404,
            Self::Conflict { .. } => 409,
            Self::Inconsistent(_) => 422,
        }
    }
}

/// `POST /add-checkpoint`: the size the log believes the witness has, a consistency proof from
/// it, and the new checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: String,
}

impl AddCheckpoint {
    pub fn render(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&hash_to_b64(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    pub fn parse(body: &str) -> Result<Self, WitnessError> {
        let bad = |why: &str| WitnessError::Malformed(why.to_owned());
        let (head, checkpoint) = body
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("the first line must be `old <size>`"))?;
        let proof = lines
            .map(|l| hash_from_b64(l).ok_or_else(|| bad("a proof line is not a base64 hash")))
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > 63 {
            return Err(bad("the proof is too long"));
        }
        Ok(Self {
            old_size,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }
}

/// What a witness remembers: the last checkpoint it cosigned for each log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    /// origin -> (size, base64 root)
    pub logs: BTreeMap<String, (u64, String)>,
}

/// A witness: its cosigning key and the logs it witnesses.
#[derive(Debug)]
pub struct Witness {
    signer: NoteSigner,
    logs: HashMap<String, NoteVerifier>,
}

impl Witness {
    pub fn new(signer: NoteSigner, logs: Vec<NoteVerifier>) -> Self {
        Self {
            signer,
            logs: logs.into_iter().map(|v| (v.name().to_owned(), v)).collect(),
        }
    }

    pub fn signer(&self) -> &NoteSigner {
        &self.signer
    }

    /// Checks `req` against `state`; on success records the new checkpoint in `state` and
    /// returns the cosignature line.
    pub fn add(
        &self,
        state: &mut WitnessState,
        req: &AddCheckpoint,
        now: u64,
    ) -> Result<String, WitnessError> {
        let note =
            Note::parse(&req.checkpoint).map_err(|e| WitnessError::Malformed(e.to_string()))?;
        let origin = note.text.split('\n').next().unwrap_or_default().to_owned();
        let log = self
            .logs
            .get(&origin)
            .ok_or_else(|| WitnessError::UnknownLog(origin.clone()))?;
        let signed = SignedCheckpoint::open(&req.checkpoint, log)
            .map_err(|e| WitnessError::Signature(e.to_string()))?;
        let cp = &signed.checkpoint;
        if req.old_size > cp.size {
            return Err(WitnessError::Malformed(format!(
                "old size {} is larger than the checkpoint's size {}",
                req.old_size, cp.size
            )));
        }
        let (size, root) = match state.logs.get(&origin) {
            Some((size, root)) => (
                *size,
                hash_from_b64(root).ok_or_else(|| {
                    WitnessError::Inconsistent("the stored root is unreadable".into())
                })?,
            ),
            None => (0, empty_root()),
        };
        if req.old_size != size {
            return Err(WitnessError::Conflict { size });
        }
        verify_consistency(size, cp.size, &root, &cp.root, &req.proof)
            .map_err(|e| WitnessError::Inconsistent(e.to_string()))?;
        state.logs.insert(origin, (cp.size, hash_to_b64(&cp.root)));
        let sig = self
            .signer
            .cosign(&signed.note.text, now)
            .map_err(|e| WitnessError::Malformed(e.to_string()))?;
        Ok(sig.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::hash::leaf_hash;
    use crate::note::KeyType;
    use crate::tiles::TileSet;
    use crate::tree::{consistency_proof, root, Frontier, NodeSource, TreeError};

    struct Leaves(Vec<Hash>);
    impl NodeSource for Leaves {
        fn node(&self, level: u32, index: u64) -> Result<Hash, TreeError> {
            let n = 1usize << level;
            let start = index as usize * n;
            let mut f = Frontier::default();
            self.0[start..start + n].iter().for_each(|h| f.push(*h));
            Ok(f.root())
        }
    }

    fn signed(log: &NoteSigner, leaves: &Leaves, size: u64) -> String {
        let cp = Checkpoint {
            origin: log.name().into(),
            size,
            root: root(leaves, size).unwrap(),
            extensions: vec![],
        };
        let text = cp.text();
        Note {
            signatures: vec![log.sign_text(&text).unwrap()],
            text,
        }
        .render()
    }

    #[test]
    fn a_witness_cosigns_consistent_checkpoints_and_refuses_a_fork() {
        let _ = TileSet::default();
        let log = NoteSigner::from_seed("log.example/audit", KeyType::Ed25519, &[1; 32]).unwrap();
        let w = Witness::new(
            NoteSigner::from_seed("witness.example", KeyType::Cosignature, &[2; 32]).unwrap(),
            vec![log.verifier()],
        );
        let leaves = Leaves((0..20u64).map(|i| leaf_hash(&i.to_be_bytes())).collect());
        let mut state = WitnessState::default();

        let req = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: signed(&log, &leaves, 10),
        };
        let line = w
            .add(
                &mut state,
                &AddCheckpoint::parse(&req.render()).unwrap(),
                100,
            )
            .unwrap();
        let mut note = Note::parse(&req.checkpoint).unwrap();
        note.add_signature(crate::note::Signature::parse_line(line.trim_end()).unwrap());
        assert_eq!(
            w.signer().verifier().verify_cosignature(&note).unwrap(),
            100
        );

        // Stale old size: 409 with the witness's size.
        let stale = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: signed(&log, &leaves, 15),
        };
        assert_eq!(
            w.add(&mut state, &stale, 101),
            Err(WitnessError::Conflict { size: 10 })
        );

        // A fork: size 15 over other leaves, with a proof from the forked tree.
        let mut forked = leaves.0.clone();
        forked[3] = leaf_hash(b"rewritten");
        let forked = Leaves(forked);
        let fork = AddCheckpoint {
            old_size: 10,
            proof: consistency_proof(&forked, 10, 15).unwrap(),
            checkpoint: signed(&log, &forked, 15),
        };
        let e = w.add(&mut state, &fork, 102).unwrap_err();
        assert_eq!(e.status(), 422);

        let good = AddCheckpoint {
            old_size: 10,
            proof: consistency_proof(&leaves, 10, 15).unwrap(),
            checkpoint: signed(&log, &leaves, 15),
        };
        w.add(&mut state, &good, 103).unwrap();
        assert_eq!(state.logs["log.example/audit"].0, 15);

        // Another key for the same origin: 403; an unknown origin: 404.
        let impostor =
            NoteSigner::from_seed("log.example/audit", KeyType::Ed25519, &[9; 32]).unwrap();
        let forged = AddCheckpoint {
            old_size: 15,
            proof: vec![],
            checkpoint: signed(&impostor, &leaves, 15),
        };
        assert_eq!(w.add(&mut state, &forged, 104).unwrap_err().status(), 403);
        let unknown = NoteSigner::from_seed("elsewhere", KeyType::Ed25519, &[9; 32]).unwrap();
        let req = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: signed(&unknown, &leaves, 1),
        };
        assert_eq!(w.add(&mut state, &req, 105).unwrap_err().status(), 404);
        for bad in ["", "old x\n\n", "old 1\nnot-a-hash\n\nx", "new 1\n\nx"] {
            assert!(AddCheckpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
