//! The transparency log's standing state in this process: the log key (the same on every server
//! of a database: a seed sealed under the KEK), its origin, where checkpoints go, and what each
//! witness last cosigned.

use std::collections::HashMap;
use std::sync::Mutex;

use tessera_log::{NoteSigner, NoteVerifier};

use crate::config::{CheckpointSink, WitnessConfig};

#[derive(Debug)]
pub(crate) struct TransparencyLog {
    pub(crate) signer: NoteSigner,
    pub(crate) sinks: Vec<CheckpointSink>,
    pub(crate) witnesses: Vec<WitnessConfig>,
    /// The size each witness (by URL) is known to hold.
    pub(crate) witnessed: Mutex<HashMap<String, u64>>,
    /// Wakes the checkpointer at once (a proof asked for a record not yet covered).
    pub(crate) wake: tokio::sync::Notify,
    /// One checkpoint at a time in this process.
    pub(crate) making: tokio::sync::Mutex<()>,
    /// For HTTP sinks and witnesses: no redirects, short timeouts.
    pub(crate) client: reqwest::Client,
}

impl TransparencyLog {
    /// Fails rather than fall back to a client that follows redirects.
    pub(crate) fn new(
        signer: NoteSigner,
        sinks: Vec<CheckpointSink>,
        witnesses: Vec<WitnessConfig>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            signer,
            sinks,
            witnesses,
            witnessed: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            making: tokio::sync::Mutex::new(()),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    /// The verifier key: `<origin>+<key ID>+<key>`.
    pub(crate) fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }
}
