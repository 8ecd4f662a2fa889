//! C2SP `tlog-checkpoint`: the note text `<origin>\n<size>\n<base64 root>\n[extensions]`, signed
//! by the log's key, whose name is the origin.

use crate::hash::{hash_from_b64, hash_to_b64, Hash};
use crate::note::{Note, NoteError, NoteVerifier};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("the checkpoint is for log `{got}`, not `{want}`")]
    WrongOrigin { got: String, want: String },
}

/// A tree head: which log, how many records, and the root over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            hash_to_b64(&self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a note's text as a checkpoint.
    pub fn parse_text(text: &str) -> Result<Self, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Malformed("the text must end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError::Malformed("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s.len() == 1 || !s.starts_with('0'))
            })
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(CheckpointError::Malformed(
                "the size is not a decimal number",
            ))?;
        let root = lines
            .next()
            .and_then(hash_from_b64)
            .ok_or(CheckpointError::Malformed(
                "the root is not a base64 SHA-256 hash",
            ))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(CheckpointError::Malformed("an empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

/// A checkpoint whose log signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: Note,
}

impl SignedCheckpoint {
    /// Parses a signed checkpoint and checks it is signed by `log` for `log`'s origin.
    pub fn open(input: &str, log: &NoteVerifier) -> Result<Self, CheckpointError> {
        let note = Note::parse(input)?;
        let checkpoint = Checkpoint::parse_text(&note.text)?;
        if checkpoint.origin != log.name() {
            return Err(CheckpointError::WrongOrigin {
                got: checkpoint.origin,
                want: log.name().to_owned(),
            });
        }
        log.verify(&note)?;
        Ok(Self { checkpoint, note })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{KeyType, NoteSigner};

    #[test]
    fn checkpoints_are_checked_for_origin_signature_and_form() {
        let log =
            NoteSigner::from_seed("tessera.example/audit", KeyType::Ed25519, &[5; 32]).unwrap();
        let cp = Checkpoint {
            origin: "tessera.example/audit".into(),
            size: 12,
            root: [9; 32],
            extensions: vec![],
        };
        let text = cp.text();
        let note = Note {
            signatures: vec![log.sign_text(&text).unwrap()],
            text,
        };
        let opened = SignedCheckpoint::open(&note.render(), &log.verifier()).unwrap();
        assert_eq!(opened.checkpoint, cp);

        let other = NoteSigner::from_seed("other/audit", KeyType::Ed25519, &[5; 32]).unwrap();
        assert!(matches!(
            SignedCheckpoint::open(&note.render(), &other.verifier()),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        for bad in [
            "o\n012\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n",
            "o\n1\nAAAA\n",
            "\n1\nx\n",
            "o\n1\n",
        ] {
            assert!(Checkpoint::parse_text(bad).is_err(), "{bad:?}");
        }
    }
}
