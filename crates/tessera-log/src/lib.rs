//! The transparency log's vocabulary, with no I/O: RFC 9162 Merkle hashing, tree heads and
//! proofs (made over any [`tree::NodeSource`], checked with checked arithmetic), the tile layout
//! the store keeps the tree in, C2SP signed notes and checkpoints, `tlog-cosignature` and the
//! `tlog-witness` protocol, the leaf encoding of an audit record, and the wire messages.
//!
//! Files, lowest first: `hash`, `tree`, `tiles`, `note`, `checkpoint`, `leaf`, `witness`, `api`.

pub mod api;
pub mod checkpoint;
pub mod hash;
pub mod leaf;
pub mod note;
pub mod tiles;
pub mod tree;
pub mod witness;

pub use api::{ConsistencyProof, Entries, InclusionProof, LogProofError};
pub use checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
pub use hash::{credential_digest, leaf_hash, Hash};
pub use leaf::LeafRecord;
pub use note::{KeyType, Note, NoteError, NoteSigner, NoteVerifier};
pub use tree::{Frontier, NodeSource, ProofError, TreeError};
pub use witness::{AddCheckpoint, Witness, WitnessError, WitnessState};
