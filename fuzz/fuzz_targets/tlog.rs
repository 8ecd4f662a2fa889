//! What the transparency log reads from others: signed notes and checkpoints (a witness, a
//! monitor, `audit verify --checkpoint`), `add-checkpoint` requests (a witness), verifier keys,
//! and proofs. Oracles: no panic; a parsed note renders back to the same bytes; a checkpoint
//! text that parses renders back to itself; a proof made of fuzz bytes never verifies against a
//! root it was not built for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_log::tree::{verify_consistency, verify_inclusion};
use tessera_log::{AddCheckpoint, Checkpoint, Note, NoteVerifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(note) = Note::parse(text) {
        assert_eq!(note.render(), text, "a note renders back to what was parsed");
        if let Ok(cp) = Checkpoint::parse_text(&note.text) {
            assert_eq!(cp.text(), note.text);
        }
    }
    let _ = NoteVerifier::parse(text);
    if let Ok(req) = AddCheckpoint::parse(text) {
        let _ = Note::parse(&req.checkpoint);
    }
    if data.len() >= 24 {
        let (nums, rest) = data.split_at(24);
        let n = |i: usize| u64::from_le_bytes(nums[i..i + 8].try_into().unwrap_or([0; 8]));
        let hashes: Vec<[u8; 32]> = rest
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        let root = [0xAB; 32];
        let leaf = [0xCD; 32];
        // Verifying would take a SHA-256 preimage of `root`: it never does.
        assert!(verify_inclusion(&leaf, n(0), n(1), &hashes, &root).is_err());
        let _ = verify_consistency(n(0), n(1).max(n(2)), &leaf, &root, &hashes);
    }
});
