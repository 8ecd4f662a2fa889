//! The log's wire messages (JSON), for the server that makes them and every client that checks
//! them: `tessera audit prove`, `tessera verify --require-logged`, the verifier library and the
//! monitor.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::hash::{hash_from_b64, leaf_hash, Hash};
use crate::leaf::LeafRecord;
use crate::note::NoteVerifier;
use crate::tree::{verify_consistency, verify_inclusion, ProofError};

/// Why a proof from the log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProofError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the proof is for a tree of size {proof}, the checkpoint has size {checkpoint}")]
    SizeMismatch { proof: u64, checkpoint: u64 },
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    #[error("record {seq} is not in the log: {source}")]
    NotIncluded { seq: i64, source: ProofError },
    #[error("the checkpoints are not consistent: {0}")]
    Inconsistent(ProofError),
}

/// `GET /log/proof`: a record, its leaf, and the audit path to a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// The leaf's data (standard base64): the record as [`LeafRecord`] encodes it.
    pub leaf: String,
    /// The audit path, leaf upward (standard base64 hashes).
    pub proof: Vec<String>,
    /// The signed checkpoint the path leads to.
    pub checkpoint: String,
}

fn hashes(list: &[String]) -> Result<Vec<Hash>, LogProofError> {
    list.iter()
        .map(|h| hash_from_b64(h).ok_or(LogProofError::Malformed("a hash is not base64 SHA-256")))
        .collect()
}

impl InclusionProof {
    /// Checks the checkpoint's signature, that the leaf is the record at `leaf_index`, and the
    /// path; returns the record and the checkpoint.
    pub fn verify(
        &self,
        log: &NoteVerifier,
    ) -> Result<(LeafRecord, SignedCheckpoint), LogProofError> {
        let cp = SignedCheckpoint::open(&self.checkpoint, log)?;
        if cp.checkpoint.size != self.tree_size {
            return Err(LogProofError::SizeMismatch {
                proof: self.tree_size,
                checkpoint: cp.checkpoint.size,
            });
        }
        let data = STANDARD
            .decode(&self.leaf)
            .map_err(|_| LogProofError::Malformed("the leaf is not base64"))?;
        let record = LeafRecord::from_bytes(&data)
            .ok_or(LogProofError::Malformed("the leaf is not an audit record"))?;
        if record.index() != Some(self.leaf_index) {
            return Err(LogProofError::Malformed(
                "the leaf's record is not at its index",
            ));
        }
        verify_inclusion(
            &leaf_hash(&data),
            self.leaf_index,
            self.tree_size,
            &hashes(&self.proof)?,
            &cp.checkpoint.root,
        )
        .map_err(|source| LogProofError::NotIncluded {
            seq: record.seq,
            source,
        })?;
        Ok((record, cp))
    }
}

/// `GET /log/consistency`: how the tree of `old` leaves is a prefix of the tree of `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub old: u64,
    pub new: u64,
    pub proof: Vec<String>,
}

impl ConsistencyProof {
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), LogProofError> {
        verify_consistency(
            self.old,
            self.new,
            old_root,
            new_root,
            &hashes(&self.proof)?,
        )
        .map_err(LogProofError::Inconsistent)
    }
}

/// `GET /log/entries`: the leaves from `start` on, as stored (standard base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    pub start: u64,
    pub leaves: Vec<String>,
}

/// The admin API's answer for the latest checkpoint: its size, the signed note, and the log's
/// verifier key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointResponse {
    pub size: u64,
    pub checkpoint: String,
    pub log_key: String,
}
