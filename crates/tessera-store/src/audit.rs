//! The audit trail: hash-chained records, and a group-commit writer for the hot path.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{AssertionClaim, BatchItem, BatchResult, Result, Store, StoreError};

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Every kind of audit record: the one list. Stored (and hashed) as its dotted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    AgentJoinRefused,
    AgentJoined,
    AgentRenewed,
    AgentTokenCreated,
    Apply,
    BundleRefused,
    BundleUpdated,
    CaCreated,
    CaRotated,
    CallAllowed,
    CallDenied,
    ClientAuthFailed,
    ClientSecretIssued,
    ConsoleSignIn,
    ConsoleSignInRefused,
    ConsoleSignOut,
    DbConnection,
    DbRole,
    FederationRefused,
    GrantReviewed,
    KeysCreated,
    KeysRotated,
    LeaseCreated,
    LeaseEnded,
    LeaseRenewed,
    LeaseRevokeFailed,
    LeaseRevoked,
    PolicyDiscarded,
    PolicyPromoted,
    PolicyRolledBack,
    PolicyShadow,
    RevokeAgent,
    RevokeToken,
    RevokeWorkload,
    SecretDeleted,
    SecretDenied,
    SecretDisabled,
    SecretEnabled,
    SecretOverdue,
    SecretPurged,
    SecretRead,
    SecretRestored,
    SecretRotated,
    SecretWritten,
    SvidDenied,
    SvidIssued,
    TokenDenied,
    TokenFailed,
    TokenIssued,
    TokenLimited,
}

impl AuditKind {
    /// Every kind, for documentation and tests.
    pub const ALL: &'static [Self] = &[
        Self::AgentJoinRefused,
        Self::AgentJoined,
        Self::AgentRenewed,
        Self::AgentTokenCreated,
        Self::Apply,
        Self::BundleRefused,
        Self::BundleUpdated,
        Self::CaCreated,
        Self::CaRotated,
        Self::CallAllowed,
        Self::CallDenied,
        Self::ClientAuthFailed,
        Self::ClientSecretIssued,
        Self::ConsoleSignIn,
        Self::ConsoleSignInRefused,
        Self::ConsoleSignOut,
        Self::DbConnection,
        Self::DbRole,
        Self::FederationRefused,
        Self::GrantReviewed,
        Self::KeysCreated,
        Self::KeysRotated,
        Self::LeaseCreated,
        Self::LeaseEnded,
        Self::LeaseRenewed,
        Self::LeaseRevokeFailed,
        Self::LeaseRevoked,
        Self::PolicyDiscarded,
        Self::PolicyPromoted,
        Self::PolicyRolledBack,
        Self::PolicyShadow,
        Self::RevokeAgent,
        Self::RevokeToken,
        Self::RevokeWorkload,
        Self::SecretDeleted,
        Self::SecretDenied,
        Self::SecretDisabled,
        Self::SecretEnabled,
        Self::SecretOverdue,
        Self::SecretPurged,
        Self::SecretRead,
        Self::SecretRestored,
        Self::SecretRotated,
        Self::SecretWritten,
        Self::SvidDenied,
        Self::SvidIssued,
        Self::TokenDenied,
        Self::TokenFailed,
        Self::TokenIssued,
        Self::TokenLimited,
    ];

    /// The stored name, such as `token.issued`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgentJoinRefused => "agent.join_refused",
            Self::AgentJoined => "agent.joined",
            Self::AgentRenewed => "agent.renewed",
            Self::AgentTokenCreated => "agent.token_created",
            Self::Apply => "apply",
            Self::BundleRefused => "bundle.refused",
            Self::BundleUpdated => "bundle.updated",
            Self::CaCreated => "ca.created",
            Self::CaRotated => "ca.rotated",
            Self::CallAllowed => "call.allowed",
            Self::CallDenied => "call.denied",
            Self::ClientAuthFailed => "client.auth_failed",
            Self::ClientSecretIssued => "client.secret_issued",
            Self::ConsoleSignIn => "console.signin",
            Self::ConsoleSignInRefused => "console.signin_refused",
            Self::ConsoleSignOut => "console.signout",
            Self::DbConnection => "db.connection",
            Self::DbRole => "db.role",
            Self::FederationRefused => "federation.refused",
            Self::GrantReviewed => "grant.reviewed",
            Self::KeysCreated => "keys.created",
            Self::KeysRotated => "keys.rotated",
            Self::LeaseCreated => "lease.created",
            Self::LeaseEnded => "lease.ended",
            Self::LeaseRenewed => "lease.renewed",
            Self::LeaseRevokeFailed => "lease.revoke_failed",
            Self::LeaseRevoked => "lease.revoked",
            Self::PolicyDiscarded => "policy.discarded",
            Self::PolicyPromoted => "policy.promoted",
            Self::PolicyRolledBack => "policy.rolled_back",
            Self::PolicyShadow => "policy.shadow",
            Self::RevokeAgent => "revoke.agent",
            Self::RevokeToken => "revoke.token",
            Self::RevokeWorkload => "revoke.workload",
            Self::SecretDeleted => "secret.deleted",
            Self::SecretDenied => "secret.denied",
            Self::SecretDisabled => "secret.disabled",
            Self::SecretEnabled => "secret.enabled",
            Self::SecretOverdue => "secret.overdue",
            Self::SecretPurged => "secret.purged",
            Self::SecretRead => "secret.read",
            Self::SecretRestored => "secret.restored",
            Self::SecretRotated => "secret.rotated",
            Self::SecretWritten => "secret.written",
            Self::SvidDenied => "svid.denied",
            Self::SvidIssued => "svid.issued",
            Self::TokenDenied => "token.denied",
            Self::TokenFailed => "token.failed",
            Self::TokenIssued => "token.issued",
            Self::TokenLimited => "token.limited",
        }
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AuditKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not an audit record kind"))
    }
}

impl<'de> Deserialize<'de> for AuditKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for AuditKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    Error,
    /// Nothing was refused, but someone should look (a secret overdue for rotation).
    Warning,
}

impl Outcome {
    /// The stored word: `ok`, `denied`, `error` or `warning`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// What happened. Never a secret or a whole token: a token is named by its `jti`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub kind: AuditKind,
    /// Who acted: a client ID, a SPIFFE ID, or `admin:uid=1000`.
    pub actor: String,
    /// What it was about: usually a SPIFFE ID.
    pub subject: String,
    pub outcome: Outcome,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub outcome: String,
    /// The detail as stored JSON text; the hash covers exactly this text.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    /// The credential an issuance record is about (a token's `jti`, a certificate's serial),
    /// indexed so that a proof for it is found without a scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl AuditRecord {
    /// The record as a leaf of the transparency log.
    pub fn leaf(&self) -> tessera_log::LeafRecord {
        tessera_log::LeafRecord {
            seq: self.seq,
            at: self.at,
            kind: self.kind.clone(),
            actor: self.actor.clone(),
            subject: self.subject.clone(),
            outcome: self.outcome.clone(),
            detail: self.detail.clone(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The prefix of a keyed record hash (HMAC-SHA256 under the audit key). Records without it were
/// written before the chain was keyed.
pub(crate) const KEYED: &str = "k1:";

/// The key behind the chain: random, kept in the database sealed under the KEK, which is not
/// in the database. Whoever can write the database but does not hold the KEK cannot compute a
/// record's hash, so cannot remove, change or re-chain records unnoticed.
#[derive(Clone)]
pub struct AuditKey(ring::hmac::Key);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    pub fn new(bytes: &[u8]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, data: &[u8]) -> String {
        format!("{KEYED}{}", hex(ring::hmac::sign(&self.0, data).as_ref()))
    }

    /// The marker that records up to `seq` were written unkeyed (before the upgrade).
    fn legacy_marker(&self, seq: i64) -> String {
        format!(
            "{seq} {}",
            self.tag(format!("audit-legacy-until:{seq}").as_bytes())
        )
    }

    /// The last unkeyed record a marker vouches for (0 when it does not verify).
    fn legacy_until(&self, marker: Option<&str>) -> i64 {
        marker
            .and_then(|m| m.split_once(' '))
            .and_then(|(seq, _)| seq.parse::<i64>().ok())
            .filter(|seq| marker.is_some_and(|m| m == self.legacy_marker(*seq)))
            .unwrap_or(0)
    }
}

fn record_hash(r: &AuditRecord, key: Option<&AuditKey>) -> Result<String> {
    // A JSON array of the fields is an unambiguous encoding: no field can bleed into the next.
    let canonical = serde_json::to_vec(&(
        r.seq,
        r.at,
        &r.kind,
        &r.actor,
        &r.subject,
        &r.outcome,
        &r.detail,
        &r.prev_hash,
    ))
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(match key {
        Some(k) => k.tag(&canonical),
        None => hex(ring::digest::digest(&ring::digest::SHA256, &canonical).as_ref()),
    })
}

impl AuditRecord {
    pub(crate) fn chain(
        seq: i64,
        at: i64,
        e: &AuditEvent,
        prev: &str,
        key: Option<&AuditKey>,
    ) -> Result<Self> {
        let mut r = Self {
            seq,
            at,
            kind: e.kind.as_str().to_owned(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            outcome: e.outcome.as_str().to_owned(),
            detail: serde_json::to_string(&e.detail)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            prev_hash: prev.to_owned(),
            hash: String::new(),
            credential: matches!(e.kind, AuditKind::TokenIssued | AuditKind::SvidIssued)
                .then(|| e.detail.get("jti").or_else(|| e.detail.get("serial")))
                .flatten()
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        };
        r.hash = record_hash(&r, key)?;
        Ok(r)
    }
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {seq}: its content does not match its hash (the record was changed)")]
    Altered { seq: i64 },
    #[error("record {seq}: it does not follow record {prev} (a record was removed or reordered)")]
    Broken { seq: i64, prev: i64 },
    #[error("record {expected} is missing (found {found} in its place)")]
    Gap { expected: i64, found: i64 },
    #[error("the log ends at record {found} but its recorded head is {head} (records were cut from the end)")]
    Truncated { found: i64, head: i64 },
    #[error("the recorded head does not match record {seq}")]
    HeadMismatch { seq: i64 },
    #[error("record {seq}: it is not keyed, and the chain is keyed from before it (the record was rewritten by someone without the key)")]
    Unkeyed { seq: i64 },
    #[error("record {seq}: it is keyed, and this process does not hold the audit key")]
    NoKey { seq: i64 },
    #[error("record {seq}: it does not match its leaf in the log's tree (the record or the tree was changed)")]
    LeafMismatch { seq: i64 },
    #[error("the log ends at record {found} but checkpoint {size} covers {size} records (records {next} to {size} were removed)", next = found + 1)]
    ShorterThanCheckpoint { found: i64, size: u64 },
    #[error("records {from} to {to} do not hash to the root of checkpoint {to}: one of them was changed, removed or reordered, and the chain and tree recomputed to hide it")]
    Rewritten { from: u64, to: u64 },
    #[error("stored checkpoint {size} is not signed by this log's key")]
    ForgedCheckpoint { size: u64 },
}

/// Checks a run of records that continues from (`prev_seq`, `prev_hash`): keyed records under
/// `key`, unkeyed ones only up to `legacy_until`. Returns the last one.
pub fn verify_chain(
    records: &[AuditRecord],
    mut prev_seq: i64,
    mut prev_hash: String,
    key: Option<&AuditKey>,
    legacy_until: i64,
) -> std::result::Result<(i64, String), ChainError> {
    for r in records {
        if r.seq != prev_seq + 1 {
            return Err(ChainError::Gap {
                expected: prev_seq + 1,
                found: r.seq,
            });
        }
        let keyed = r.hash.starts_with(KEYED);
        let with = match (keyed, key) {
            (true, None) => return Err(ChainError::NoKey { seq: r.seq }),
            (true, Some(k)) => Some(k),
            (false, _) if r.seq > legacy_until => return Err(ChainError::Unkeyed { seq: r.seq }),
            (false, _) => None,
        };
        let recomputed = record_hash(r, with).map_err(|_| ChainError::Altered { seq: r.seq })?;
        if recomputed != r.hash {
            return Err(ChainError::Altered { seq: r.seq });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::Broken {
                seq: r.seq,
                prev: prev_seq,
            });
        }
        prev_seq = r.seq;
        prev_hash = r.hash.clone();
    }
    Ok((prev_seq, prev_hash))
}

impl Store {
    /// Keys the chain from now on (the server, after opening the KEK). A chain with no keyed
    /// record yet (a store written before keying) gets a keyed marker vouching for its unkeyed
    /// records; a chain that has keyed records never gets one, so unkeyed records written
    /// after them are refused by [`Store::verify_audit`].
    pub async fn key_audit_chain(&self, key: AuditKey) -> Result<()> {
        let _ = self.audit_key.set(key.clone());
        if self.meta("audit_legacy_until").await?.is_some() {
            return Ok(());
        }
        let (keyed, last) = self.audit_keyed_and_last().await?;
        if keyed == 0 {
            self.commit(
                &[crate::op::Op::InitMeta {
                    key: "audit_legacy_until".into(),
                    value: key.legacy_marker(last),
                }],
                &[],
            )
            .await?;
        }
        Ok(())
    }

    pub(crate) fn audit_key(&self) -> Option<&AuditKey> {
        self.audit_key.get()
    }

    /// Walks the whole chain and the log (as [`Store::verify_log`] with no checkpoint) and
    /// compares the chain's end with the recorded head.
    pub async fn verify_audit(&self) -> std::result::Result<i64, VerifyAuditError> {
        self.verify_log(None, &[]).await
    }

    /// Walks every record once: the keyed chain (names a record changed, removed or reordered
    /// by anyone without the KEK), each record against its leaf in the stored tree, the root at
    /// every stored checkpoint in `stored` (size and root, signatures already checked by the
    /// caller), and at `external`'s size (a checkpoint kept outside the database, which no
    /// writer of the database can change). Returns the number of records.
    pub async fn verify_log(
        &self,
        external: Option<&tessera_log::Checkpoint>,
        stored: &[(u64, tessera_log::Hash)],
    ) -> std::result::Result<i64, VerifyAuditError> {
        let (mut seq, mut hash) = (0, GENESIS.to_owned());
        let key = self.audit_key.get();
        // Without the key (a store opened by a tool, or tests), unkeyed records are all there is.
        let legacy_until = match key {
            Some(k) => k.legacy_until(self.meta("audit_legacy_until").await?.as_deref()),
            None => i64::MAX,
        };
        let log_size = self.log_size().await?;
        let mut walk = crate::log::LogWalk::new(stored, external.map(|c| c.size));
        loop {
            let batch = self.audit_after(seq, 5000).await?;
            if batch.is_empty() {
                break;
            }
            (seq, hash) = verify_chain(&batch, seq, hash, key, legacy_until)?;
            for r in &batch {
                let stored_leaf = if u64::try_from(r.seq).is_ok_and(|s| s <= log_size) {
                    Some(self.stored_leaf(r.seq, &mut walk.tile).await?)
                } else {
                    None
                };
                walk.push(r, stored_leaf)?;
            }
        }
        walk.finish(seq, log_size, external)?;
        if let Some(head) = self.meta("audit_head").await? {
            let (head_seq, head_hash) = head.split_once(' ').unwrap_or(("", ""));
            let head_seq: i64 = head_seq.parse().unwrap_or(-1);
            if head_seq != seq {
                return Err(ChainError::Truncated {
                    found: seq,
                    head: head_seq,
                }
                .into());
            }
            if head_hash != hash {
                return Err(ChainError::HeadMismatch { seq }.into());
            }
        }
        Ok(seq)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyAuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

type Pending = (BatchItem, oneshot::Sender<Result<BatchResult>>);

/// The hot-path writer. Concurrent requests hand their records (and client-assertion `jti`
/// claims) to one task, which makes everything that queued up durable in one transaction (group
/// commit) and only then answers each caller: a caller that got `Ok` holds a durable record, and
/// one that got `Err` must not act (fail closed).
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
}

/// How the group commit behaves: commit duration and batch size.
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    pub batch_size: prometheus_client::metrics::histogram::Histogram,
}

impl AuditMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        let m = Self {
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        };
        registry.register(
            "tessera_audit_commit_duration_seconds",
            "Duration of one group commit of the audit log",
            m.commit_seconds.clone(),
        );
        registry.register(
            "tessera_audit_commit_batch_size",
            "Records and claims made durable by one group commit",
            m.batch_size.clone(),
        );
        m
    }
}

/// How many items one commit takes at most.
const MAX_BATCH: usize = 1024;

impl AuditLog {
    pub fn spawn(store: Store, metrics: Option<AuditMetrics>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(8192);
        tokio::spawn(async move {
            let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (items, replies): (Vec<BatchItem>, Vec<_>) = batch.drain(..).unzip();
                let started = std::time::Instant::now();
                let result = store.commit_batch(&[], &items).await;
                if let Some(m) = &metrics {
                    m.commit_seconds.observe(started.elapsed().as_secs_f64());
                    m.batch_size.observe(items.len() as f64);
                }
                match result {
                    Ok(results) if results.len() == replies.len() => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    result => {
                        let msg = match result {
                            Err(e) => e.to_string(),
                            Ok(_) => "short write".to_owned(),
                        };
                        tracing::error!(error = %msg, items = replies.len(), "audit commit failed; refusing the requests that needed it");
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::AuditUnavailable(msg.clone())));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    async fn submit(&self, item: BatchItem) -> Result<BatchResult> {
        let stopped = || StoreError::AuditUnavailable("the audit writer has stopped".into());
        let (reply, wait) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// Appends one record and waits until it is durable.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditRecord> {
        self.submit(BatchItem {
            claim: None,
            event: Some(event),
        })
        .await?
        .record
        .ok_or_else(|| StoreError::AuditUnavailable("the record was not written".into()))
    }

    /// Records a client assertion's `jti` with the next group commit; false for a replay.
    pub async fn claim(&self, claim: AssertionClaim) -> Result<bool> {
        Ok(self
            .submit(BatchItem {
                claim: Some(claim),
                event: None,
            })
            .await?
            .fresh)
    }

    /// Claims a `jti` and appends `event` in the same commit; `None` (and no record) for a replay.
    pub async fn append_claimed(
        &self,
        claim: AssertionClaim,
        event: AuditEvent,
    ) -> Result<Option<AuditRecord>> {
        let r = self
            .submit(BatchItem {
                claim: Some(claim),
                event: Some(event),
            })
            .await?;
        if r.fresh {
            r.record
                .map(Some)
                .ok_or_else(|| StoreError::AuditUnavailable("the record was not written".into()))
        } else {
            Ok(None)
        }
    }
}
