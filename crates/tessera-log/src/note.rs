//! C2SP signed notes (`signed-note`): a text, a blank line, then one line per signature,
//! `— <key name> <base64(key ID || signature)>`. Ed25519 note signatures (type 0x01) and
//! timestamped cosignatures (`tlog-cosignature`, type 0x04); verifier keys in the
//! `<name>+<hex key ID>+<base64(type || public key)>` form. The primitives are `ring`'s, through
//! `tessera_token`.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::digest::{Context, SHA256};
use tessera_token::{PublicKey, SigningKey};

/// A note larger than this is refused before it is parsed.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// More signature lines than this are refused (a witness network is a handful of keys).
const MAX_SIGNATURES: usize = 100;
const DASH: &str = "\u{2014} ";

/// Why a note or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the note is larger than {MAX_NOTE_BYTES} bytes")]
    TooLarge,
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("malformed verifier key `{0}`")]
    BadKey(String),
    #[error("no signature by `{0}` (the key this note must be signed with)")]
    Unsigned(String),
    #[error("the signature by `{0}` does not verify")]
    BadSignature(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// What a key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// The note's text, as the log signs its checkpoints.
    Ed25519 = 0x01,
    /// `cosignature/v1`: a witness's timestamped statement about a checkpoint.
    Cosignature = 0x04,
}

/// A valid key name: non-empty, no whitespace, no `+`.
fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::Malformed(format!("`{name}` is not a key name")));
    }
    Ok(())
}

fn key_id(name: &str, ty: KeyType, public: &[u8]) -> [u8; 4] {
    let mut c = Context::new(&SHA256);
    c.update(name.as_bytes());
    c.update(b"\n");
    c.update(&[ty as u8]);
    c.update(public);
    let d = c.finish();
    let mut id = [0u8; 4];
    id.iter_mut().zip(d.as_ref()).for_each(|(a, b)| *a = *b);
    id
}

/// A key that signs notes: the log's key, or a witness's cosigning key.
#[derive(Debug)]
pub struct NoteSigner {
    name: String,
    ty: KeyType,
    id: [u8; 4],
    key: Arc<SigningKey>,
}

impl NoteSigner {
    /// From a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, ty: KeyType, seed: &[u8]) -> Result<Self, NoteError> {
        let key =
            SigningKey::ed25519_from_seed(seed).map_err(|e| NoteError::Sign(e.to_string()))?;
        Self::from_key(name, ty, Arc::new(key))
    }

    /// From an Ed25519 signing key wherever it lives (a PKCS#11 token, say).
    pub fn from_key(name: &str, ty: KeyType, key: Arc<SigningKey>) -> Result<Self, NoteError> {
        check_name(name)?;
        let public = key
            .public()
            .ed25519_bytes()
            .ok_or_else(|| NoteError::Sign("not an Ed25519 key".into()))?;
        Ok(Self {
            name: name.to_owned(),
            ty,
            id: key_id(name, ty, public),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key that signs (for where it lives).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The verifier key that checks this signer's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            ty: self.ty,
            id: self.id,
            key: self.key.public().clone(),
        }
    }

    /// Signs `text` (which must end in a newline) as a note.
    pub fn sign_text(&self, text: &str) -> Result<Signature, NoteError> {
        if self.ty != KeyType::Ed25519 {
            return Err(NoteError::Sign(
                "a cosigning key signs cosignatures only".into(),
            ));
        }
        let sig = self
            .key
            .sign(text.as_bytes())
            .map_err(|e| NoteError::Sign(e.to_string()))?;
        Ok(Signature {
            name: self.name.clone(),
            id: self.id,
            payload: sig,
        })
    }

    /// A `cosignature/v1` over the checkpoint text `text` at `time` (seconds since the epoch).
    pub fn cosign(&self, text: &str, time: u64) -> Result<Signature, NoteError> {
        if self.ty != KeyType::Cosignature {
            return Err(NoteError::Sign("a note key does not cosign".into()));
        }
        let sig = self
            .key
            .sign(cosigned_message(text, time).as_bytes())
            .map_err(|e| NoteError::Sign(e.to_string()))?;
        let mut payload = time.to_be_bytes().to_vec();
        payload.extend_from_slice(&sig);
        Ok(Signature {
            name: self.name.clone(),
            id: self.id,
            payload,
        })
    }
}

fn cosigned_message(text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A public key that checks note signatures, named as in the note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    ty: KeyType,
    id: [u8; 4],
    key: PublicKey,
}

impl NoteVerifier {
    /// Parses `<name>+<hex key ID>+<base64(type || key)>`; the key ID must match the key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let bad = || NoteError::BadKey(vkey.chars().take(200).collect());
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        check_name(name).map_err(|_| bad())?;
        let raw = STANDARD.decode(key_b64).map_err(|_| bad())?;
        let (ty, public) = match raw.split_first() {
            Some((0x01, k)) => (KeyType::Ed25519, k),
            Some((0x04, k)) => (KeyType::Cosignature, k),
            _ => return Err(bad()),
        };
        let key = PublicKey::ed25519(public).map_err(|_| bad())?;
        let id = key_id(name, ty, public);
        if id_hex.len() != 8 || hex(&id) != id_hex {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_owned(),
            ty,
            id,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_type(&self) -> KeyType {
        self.ty
    }

    /// The `<name>+<hex key ID>+<base64>` form.
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![self.ty as u8];
        raw.extend_from_slice(self.key.ed25519_bytes().unwrap_or_default());
        format!("{}+{}+{}", self.name, hex(&self.id), STANDARD.encode(raw))
    }

    fn is_for(&self, s: &Signature) -> bool {
        s.name == self.name && s.id == self.id
    }

    /// Checks that `note` carries a valid signature by this (note) key.
    pub fn verify(&self, note: &Note) -> Result<(), NoteError> {
        let sig = note
            .signatures
            .iter()
            .find(|s| self.is_for(s))
            .ok_or_else(|| NoteError::Unsigned(self.name.clone()))?;
        if self.ty == KeyType::Ed25519 && self.key.verify(note.text.as_bytes(), &sig.payload) {
            Ok(())
        } else {
            Err(NoteError::BadSignature(self.name.clone()))
        }
    }

    /// Checks this witness's cosignature on `note`; returns its time.
    pub fn verify_cosignature(&self, note: &Note) -> Result<u64, NoteError> {
        let sig = note
            .signatures
            .iter()
            .find(|s| self.is_for(s))
            .ok_or_else(|| NoteError::Unsigned(self.name.clone()))?;
        let bad = || NoteError::BadSignature(self.name.clone());
        if self.ty != KeyType::Cosignature {
            return Err(bad());
        }
        let (time, sig_bytes) = sig.payload.split_at_checked(8).ok_or_else(bad)?;
        let time = u64::from_be_bytes(<[u8; 8]>::try_from(time).map_err(|_| bad())?);
        if self
            .key
            .verify(cosigned_message(&note.text, time).as_bytes(), sig_bytes)
        {
            Ok(time)
        } else {
            Err(bad())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    id: [u8; 4],
    /// The signature (for a cosignature: the 8-byte time, then the signature).
    payload: Vec<u8>,
}

impl Signature {
    /// The line, with its newline.
    pub fn line(&self) -> String {
        let mut raw = self.id.to_vec();
        raw.extend_from_slice(&self.payload);
        format!("{DASH}{} {}\n", self.name, STANDARD.encode(raw))
    }

    /// Parses one line (without its newline).
    pub fn parse_line(line: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Malformed(format!("signature line: {why}"));
        let rest = line
            .strip_prefix(DASH)
            .ok_or_else(|| bad("it does not start with `— `"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("no space after the key name"))?;
        check_name(name)?;
        let raw = STANDARD.decode(b64).map_err(|_| bad("not base64"))?;
        let (id, payload) = raw.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        if payload.is_empty() {
            return Err(bad("too short"));
        }
        Ok(Self {
            name: name.to_owned(),
            id: <[u8; 4]>::try_from(id).map_err(|_| bad("too short"))?,
            payload: payload.to_vec(),
        })
    }
}

/// A signed note: its text (ending in a newline) and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<Signature>,
}

impl Note {
    /// Parses a signed note. The text may not contain a blank line or control characters other
    /// than newlines; at least one signature is required.
    pub fn parse(input: &str) -> Result<Self, NoteError> {
        if input.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge);
        }
        if input.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("control characters".into()));
        }
        let split = input
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let (text, sigs) = input.split_at(split + 1);
        let sigs = sigs
            .strip_prefix('\n')
            .and_then(|s| s.strip_suffix('\n'))
            .ok_or_else(|| NoteError::Malformed("the signatures must end in a newline".into()))?;
        if text.contains("\n\n") {
            return Err(NoteError::Malformed("a blank line inside the text".into()));
        }
        let signatures = sigs
            .split('\n')
            .map(Signature::parse_line)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures".into()));
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as text: the text, a blank line, the signature lines.
    pub fn render(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }

    /// Adds `sig`, replacing any earlier signature by the same key.
    pub fn add_signature(&mut self, sig: Signature) {
        self.signatures
            .retain(|s| !(s.name == sig.name && s.id == sig.id));
        self.signatures.push(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, ty: KeyType, b: u8) -> NoteSigner {
        NoteSigner::from_seed(name, ty, &[b; 32]).unwrap()
    }

    #[test]
    fn a_signed_note_round_trips_and_verifies() {
        let s = signer("example.com/log", KeyType::Ed25519, 1);
        let text = "example.com/log\n3\nAAAA\n";
        let note = Note {
            text: text.into(),
            signatures: vec![s.sign_text(text).unwrap()],
        };
        let parsed = Note::parse(&note.render()).unwrap();
        assert_eq!(parsed, note);
        let v = NoteVerifier::parse(&s.verifier().to_vkey()).unwrap();
        v.verify(&parsed).unwrap();

        let mut edited = parsed.clone();
        edited.text = "example.com/log\n4\nAAAA\n".into();
        assert_eq!(
            v.verify(&edited),
            Err(NoteError::BadSignature("example.com/log".into()))
        );
        let other = signer("example.com/log", KeyType::Ed25519, 2).verifier();
        assert_eq!(
            other.verify(&parsed),
            Err(NoteError::Unsigned("example.com/log".into()))
        );
    }

    #[test]
    fn cosignatures_bind_the_time_and_the_text() {
        let w = signer("witness.example", KeyType::Cosignature, 3);
        let text = "example.com/log\n3\nAAAA\n";
        let mut note = Note {
            text: text.into(),
            signatures: vec![],
        };
        note.add_signature(w.cosign(text, 1_700_000_000).unwrap());
        let v = NoteVerifier::parse(&w.verifier().to_vkey()).unwrap();
        assert_eq!(v.verify_cosignature(&note).unwrap(), 1_700_000_000);
        note.text = "example.com/log\n3\nAAAB\n".into();
        assert!(v.verify_cosignature(&note).is_err());
        assert!(w.sign_text(text).is_err());
    }

    #[test]
    fn malformed_notes_and_keys_are_refused() {
        for bad in [
            "no signatures\n",
            "text\n\n",
            "text\n\n\u{2014} name AAAA\n",
            "text\n\n- name AAAAAAAAAAA=\n",
            "a\n\nb\n\n\u{2014} n AAAAAAAAAAA=\n",
            "text\r\n\n\u{2014} n AAAAAAAAAAA=\n",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
        let good = signer("log", KeyType::Ed25519, 1).verifier().to_vkey();
        assert!(NoteVerifier::parse(&good).is_ok());
        let mut tampered = good.clone();
        tampered.replace_range(4..5, if &good[4..5] == "0" { "1" } else { "0" });
        assert!(NoteVerifier::parse(&tampered).is_err());
        assert!(NoteVerifier::parse("log+00000000").is_err());
        assert!(NoteVerifier::parse("").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panic(s in ".{0,300}") {
            let _ = Note::parse(&s);
            let _ = NoteVerifier::parse(&s);
        }
    }
}
