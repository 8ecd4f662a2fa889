//! The transparency log, server side: grow the tree and sign a checkpoint (at least every second
//! while records arrive, and on demand), hand it to the sinks and witnesses, make inclusion and
//! consistency proofs, and check the stored log against checkpoints.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_log::tree::{consistency_proof, inclusion_proof, root};
use tessera_log::{
    AddCheckpoint, Checkpoint, ConsistencyProof, Entries, InclusionProof, Note, NoteError,
    SignedCheckpoint,
};
use tessera_store::{AuditRecord, ChainError, StoreError, VerifyAuditError};

use crate::app::App;
use crate::config::CheckpointSink;

/// How many records one extension of the tree takes at most (read whole into memory: about
/// 10 MB); four passes a tick catch up 80,000 records a second after an upgrade.
const EXTEND_BATCH: i64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign the checkpoint: {0}")]
    Sign(#[from] NoteError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
}

/// Adds every record not yet in the tree and signs a checkpoint over them; returns the latest
/// checkpoint (size, signed note), which another server may have made.
pub(crate) async fn make_checkpoint(app: &App) -> Result<Option<(u64, String)>, LogError> {
    let _one = app.log.making.lock().await;
    let mut size = app.store.log_size().await?;
    // A few passes catch up after a pause; under steady load the next tick takes the rest, so
    // a checkpoint is never held back by records that keep arriving.
    for _ in 0..4 {
        let grown = app.store.extend_log(EXTEND_BATCH).await?;
        if grown == size {
            break;
        }
        size = grown;
    }
    let latest = app.store.latest_checkpoint().await?;
    if latest.as_ref().is_some_and(|(s, _)| *s >= size) || size == 0 {
        return Ok(latest);
    }
    let root = app.store.with_tree(|src| root(src, size)).await?;
    let text = Checkpoint {
        origin: app.log.signer.name().to_owned(),
        size,
        root,
        extensions: vec![],
    }
    .text();
    let note = Note {
        signatures: vec![app.log.signer.sign_text(&text)?],
        text,
    }
    .render();
    app.store.store_checkpoint(size, &note).await?;
    Ok(Some((size, note)))
}

/// Writes the checkpoint to every sink and asks every witness to cosign it; a cosignature is
/// checked and stored with the checkpoint. Failures are logged: the database holds the
/// checkpoint whatever a sink does, and the next one is sent again.
pub(crate) async fn publish(app: &App, size: u64, note: &str) {
    for sink in &app.log.sinks {
        if let Err(e) = write_sink(app, sink, size, note).await {
            tracing::warn!(sink = ?sink, error = %e, "checkpoint sink failed");
        }
    }
    let mut signed = match Note::parse(note) {
        Ok(n) => n,
        Err(_) => return,
    };
    let mut added = false;
    for w in &app.log.witnesses {
        match cosign(app, w, size, &signed.text, note).await {
            Ok(sig) => {
                signed.add_signature(sig);
                added = true;
            }
            Err(e) => tracing::warn!(witness = %w.url, error = %e, "witness did not cosign"),
        }
    }
    if added {
        if let Err(e) = app.store.store_checkpoint(size, &signed.render()).await {
            tracing::warn!(error = %e, "cannot store the cosigned checkpoint");
        }
    }
}

async fn write_sink(app: &App, sink: &CheckpointSink, size: u64, note: &str) -> Result<(), String> {
    match sink {
        CheckpointSink::File(path) => {
            tessera_core::private_file::write_private(path, note.as_bytes())
                .map_err(|e| e.to_string())
        }
        CheckpointSink::Dir(dir) => tessera_core::private_file::write_private(
            &dir.join(format!("checkpoint.{size}")),
            note.as_bytes(),
        )
        .map_err(|e| e.to_string()),
        CheckpointSink::Syslog => {
            // RFC 3164 over the local socket; facility log audit (13), severity info.
            let line = format!(
                "<110>tessera: audit checkpoint size={size} note={}",
                STANDARD.encode(note)
            );
            let sock = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
            sock.send_to(line.as_bytes(), "/dev/log")
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        CheckpointSink::Http(url) => {
            let resp = app
                .log
                .client
                .post(url.clone())
                .header("content-type", "text/plain; charset=utf-8")
                .body(note.to_owned())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", resp.status()))
            }
        }
    }
}

/// One `add-checkpoint` exchange, retried once from the size a 409 names.
async fn cosign(
    app: &App,
    w: &crate::config::WitnessConfig,
    size: u64,
    text: &str,
    note: &str,
) -> Result<tessera_log::note::Signature, String> {
    let url = w.url.join("add-checkpoint").map_err(|e| e.to_string())?;
    let mut old = app
        .log
        .witnessed
        .lock()
        .map(|m| m.get(w.url.as_str()).copied().unwrap_or(0))
        .unwrap_or(0);
    for _ in 0..2 {
        let proof = app
            .store
            .with_tree(|src| consistency_proof(src, old.min(size), size))
            .await
            .map_err(|e| e.to_string())?;
        let body = AddCheckpoint {
            old_size: old,
            proof,
            checkpoint: note.to_owned(),
        }
        .render();
        let resp = app
            .log
            .client
            .post(url.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text_body = resp.text().await.map_err(|e| e.to_string())?;
        if status == reqwest::StatusCode::CONFLICT {
            old = text_body
                .trim()
                .parse()
                .map_err(|_| format!("409 without a size: `{}`", text_body.trim()))?;
            if old > size {
                return Err(format!(
                    "the witness holds size {old}, beyond this log's {size}"
                ));
            }
            continue;
        }
        if !status.is_success() {
            return Err(format!("answered {status}: {}", text_body.trim()));
        }
        let line = text_body
            .lines()
            .find(|l| l.starts_with('\u{2014}'))
            .ok_or("no cosignature in the answer")?;
        let sig = tessera_log::note::Signature::parse_line(line).map_err(|e| e.to_string())?;
        let check = Note {
            text: text.to_owned(),
            signatures: vec![sig.clone()],
        };
        w.key
            .verify_cosignature(&check)
            .map_err(|e| e.to_string())?;
        if let Ok(mut m) = app.log.witnessed.lock() {
            m.insert(w.url.to_string(), size);
        }
        return Ok(sig);
    }
    Err("the witness kept answering 409".into())
}

/// What a proof is asked for: a record number, or a credential (`jti` or serial).
#[derive(Debug, Clone)]
pub(crate) enum ProofOf {
    Seq(i64),
    Credential(String),
}

impl ProofOf {
    /// All digits: a record number; anything else: a credential.
    pub(crate) fn parse(s: &str) -> Self {
        match s.parse::<i64>() {
            Ok(n) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Self::Seq(n),
            _ => Self::Credential(s.to_owned()),
        }
    }
}

/// An inclusion proof of a record against the latest checkpoint, made now if none covers it.
pub(crate) async fn prove(app: &App, of: &ProofOf) -> Result<InclusionProof, LogError> {
    let record: AuditRecord = match of {
        ProofOf::Seq(seq) => app.store.audit_record(*seq).await?,
        ProofOf::Credential(c) => app.store.record_of_credential(c).await?,
    }
    .ok_or_else(|| {
        LogError::NotFound(match of {
            ProofOf::Seq(s) => format!("there is no record {s}"),
            ProofOf::Credential(c) => format!("no credential `{c}` was issued by this authority"),
        })
    })?;
    let index =
        u64::try_from(record.seq - 1).map_err(|_| LogError::NotFound("no such record".into()))?;
    let mut latest = app.store.latest_checkpoint().await?;
    if latest.as_ref().is_none_or(|(s, _)| *s <= index) {
        latest = make_checkpoint(app).await?;
    }
    let (size, note) = latest.filter(|(s, _)| *s > index).ok_or_else(|| {
        LogError::NotFound(format!("record {} is not in the log yet", record.seq))
    })?;
    let proof = app
        .store
        .with_tree(|src| inclusion_proof(src, index, size))
        .await?;
    Ok(InclusionProof {
        leaf_index: index,
        tree_size: size,
        leaf: STANDARD.encode(record.leaf().to_bytes()),
        proof: proof.iter().map(tessera_log::hash::hash_to_b64).collect(),
        checkpoint: note,
    })
}

/// A consistency proof between two sizes the tree covers.
pub(crate) async fn consistency(
    app: &App,
    old: u64,
    new: u64,
) -> Result<ConsistencyProof, LogError> {
    let size = app.store.log_size().await?;
    if old > new || new > size {
        return Err(LogError::BadRequest(format!(
            "no consistency proof from {old} to {new}: the log has {size} records in its tree"
        )));
    }
    let proof = app
        .store
        .with_tree(|src| consistency_proof(src, old, new))
        .await?;
    Ok(ConsistencyProof {
        old,
        new,
        proof: proof.iter().map(tessera_log::hash::hash_to_b64).collect(),
    })
}

/// Leaves from `start` (0-based), at most `limit`, as the tree holds them.
pub(crate) async fn entries(app: &App, start: u64, limit: i64) -> Result<Entries, LogError> {
    let after =
        i64::try_from(start).map_err(|_| LogError::BadRequest("start is too large".into()))?;
    let size = app.store.log_size().await?;
    let records = app.store.audit_after(after, limit.clamp(1, 1000)).await?;
    Ok(Entries {
        start,
        leaves: records
            .iter()
            .filter(|r| u64::try_from(r.seq).is_ok_and(|s| s <= size))
            .map(|r| STANDARD.encode(r.leaf().to_bytes()))
            .collect(),
    })
}

/// Checks the stored log: the chain, the tree, every stored checkpoint (each must carry the
/// log's signature), and the checkpoints kept outside (`outside`): the largest must be covered
/// whole, the others narrow down where a rewrite is. One walk of the records for all of them.
/// `Ok(Err(..))` names what is wrong.
pub(crate) async fn verify(
    app: &App,
    outside: &[String],
) -> Result<Result<i64, ChainError>, LogError> {
    let log = app.log.verifier();
    let mut opened = Vec::with_capacity(outside.len());
    for (i, text) in outside.iter().enumerate() {
        let cp = SignedCheckpoint::open(text, &log).map_err(|e| {
            LogError::BadRequest(match outside.len() {
                1 => format!("checkpoint: {e}"),
                n => format!("checkpoint {} of {n} (in file-name order): {e}", i + 1),
            })
        })?;
        opened.push(cp.checkpoint);
    }
    opened.sort_by_key(|c| c.size);
    let external = opened.pop();
    let mut stored: Vec<_> = opened.iter().map(|c| (c.size, c.root)).collect();
    for (size, note) in app.store.checkpoints().await? {
        match SignedCheckpoint::open(&note, &log) {
            Ok(cp) if cp.checkpoint.size == size => stored.push((size, cp.checkpoint.root)),
            _ => return Ok(Err(ChainError::ForgedCheckpoint { size })),
        }
    }
    match app.store.verify_log(external.as_ref(), &stored).await {
        Ok(n) => Ok(Ok(n)),
        Err(VerifyAuditError::Chain(e)) => Ok(Err(e)),
        Err(VerifyAuditError::Store(e)) => Err(e.into()),
    }
}
