//! What a leaf of the audit log is: one audit record, encoded as the JSON array
//! `[seq, at, kind, actor, subject, outcome, detail]` (detail as its stored JSON text). An array
//! cannot let one field bleed into the next, and any JSON parser reads it back, so an outside
//! verifier checks what a leaf says as well as that it is in the log.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRecord {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub outcome: String,
    pub detail: String,
}

impl LeafRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing strings and integers cannot fail.
        serde_json::to_vec(&(
            self.seq,
            self.at,
            &self.kind,
            &self.actor,
            &self.subject,
            &self.outcome,
            &self.detail,
        ))
        .unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (seq, at, kind, actor, subject, outcome, detail) =
            serde_json::from_slice(bytes).ok()?;
        Some(Self {
            seq,
            at,
            kind,
            actor,
            subject,
            outcome,
            detail,
        })
    }

    /// The record's detail as JSON (`Null` when it does not parse).
    pub fn detail_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.detail).unwrap_or_default()
    }

    /// The leaf's position in the tree: records are numbered from 1, leaves from 0.
    pub fn index(&self) -> Option<u64> {
        u64::try_from(self.seq).ok()?.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_round_trip() {
        let r = LeafRecord {
            seq: 7,
            at: 1,
            kind: "token.issued".into(),
            actor: "c\"x".into(),
            subject: "spiffe://a/b".into(),
            outcome: "ok".into(),
            detail: "{\"jti\":\"j\"}".into(),
        };
        assert_eq!(LeafRecord::from_bytes(&r.to_bytes()), Some(r.clone()));
        assert_eq!(r.index(), Some(6));
        assert!(LeafRecord::from_bytes(b"[1,2]").is_none());
    }
}
