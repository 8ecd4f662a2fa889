//! Withdrawn trust, pushed: a subscriber to the authority's change stream (`GET /v1/changes`,
//! server-sent events, `tessera_core::change_api`) keeps a [`RevocationState`] that every
//! [`crate::Verifier`] sharing it consults, and tells sidecars which identities to cut off.
//!
//! Rules a subscriber holds to: a snapshot older than the version held is ignored; a batch at or
//! below it is a replay and ignored; a batch that starts past it (a gap) drops the connection and
//! resumes from the version held; an event that does not parse, or grows past
//! [`MAX_EVENT_BYTES`], drops the connection; a connection that ends mid-event loses only that
//! event. In each case the state held stays in force, and the subscriber reconnects with
//! back-off and jitter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tessera_core::change_api::{
    Change, ChangeBatch, Heartbeat, RevocationState as Snapshot, HEARTBEAT_SECS, MAX_EVENT_BYTES,
    PROPAGATION_BUCKETS,
};
use tokio::sync::broadcast;

use crate::authorize::BundleSource;

/// Why a stream was dropped. The state held stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    #[error("the change stream could not be reached: {0}")]
    Connect(String),
    #[error("the authority refused the subscription: {0}")]
    Refused(String),
    #[error("an event larger than {0} bytes")]
    Oversized(usize),
    #[error("an event is not UTF-8")]
    NotText,
    #[error("a `{event}` event does not parse: {reason}")]
    Malformed { event: String, reason: String },
    #[error("a batch from version {from} while holding {held}: resuming")]
    Gap { from: i64, held: i64 },
    #[error("no event for {0} s")]
    Silent(u64),
    #[error("the stream ended")]
    Ended,
}

impl FeedError {
    fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Refused(_) => "refused",
            Self::Oversized(_) => "oversized",
            Self::NotText | Self::Malformed { .. } => "malformed",
            Self::Gap { .. } => "gap",
            Self::Silent(_) => "silent",
            Self::Ended => "ended",
        }
    }
}

/// An identity withdrawn while connections may carry it: sidecars close them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawn {
    /// A workload's SPIFFE ID, revoked at this time.
    Workload { id: String, at: i64 },
}

/// How current a subscriber's state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No snapshot yet (or no feed at all).
    Unknown,
    /// Heard from the authority within the staleness bound.
    Fresh,
    /// Silent for longer than the bound: enforcing what it knew.
    Stale,
}

#[derive(Debug, Default)]
struct Held {
    /// Revoked token IDs to their expiry.
    jtis: HashMap<String, i64>,
    /// Revoked workloads to the time of revocation.
    workloads: HashMap<String, i64>,
}

#[derive(Debug)]
struct Inner {
    held: RwLock<Held>,
    /// The state version held; -1 before the first snapshot.
    version: AtomicI64,
    policy_version: AtomicI64,
    heard: RwLock<Option<Instant>>,
    /// Refuse every token while no snapshot is held or the state is stale.
    fail_closed: Option<Duration>,
    withdrawn: broadcast::Sender<Withdrawn>,
    /// Trust domains whose keys changed, for key caches to refresh.
    bundles: broadcast::Sender<String>,
    metrics: Option<FeedMetrics>,
}

/// What has been withdrawn, shared by every verifier and sidecar of a process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RevocationState {
    inner: Arc<Inner>,
}

impl Default for RevocationState {
    fn default() -> Self {
        Self::build(None, None)
    }
}

/// Staleness allowed before a subscriber counts as stale: three missed heartbeats.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * HEARTBEAT_SECS);

impl RevocationState {
    fn build(fail_closed: Option<Duration>, metrics: Option<FeedMetrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                held: RwLock::default(),
                version: AtomicI64::new(-1),
                policy_version: AtomicI64::new(0),
                heard: RwLock::new(None),
                fail_closed,
                withdrawn: broadcast::channel(1024).0,
                bundles: broadcast::channel(64).0,
                metrics,
            }),
        }
    }

    /// Enforces what it knows, and accepts tokens while the feed is down (fail open on
    /// staleness; a revocation heard is never forgotten).
    pub fn new(metrics: Option<FeedMetrics>) -> Self {
        Self::build(None, metrics)
    }

    /// Refuses every token until a whole snapshot is held, and while the feed has been silent
    /// for longer than `max_staleness` (fail closed).
    pub fn fail_closed(max_staleness: Duration, metrics: Option<FeedMetrics>) -> Self {
        Self::build(Some(max_staleness), metrics)
    }

    /// The state version held (`None` before the first snapshot).
    pub fn version(&self) -> Option<i64> {
        let v = self.inner.version.load(Ordering::Acquire);
        (v >= 0).then_some(v)
    }

    /// The policy version the authority last announced.
    pub fn policy_version(&self) -> i64 {
        self.inner.policy_version.load(Ordering::Acquire)
    }

    pub fn freshness(&self) -> Freshness {
        let bound = self.inner.fail_closed.unwrap_or(STALE_AFTER);
        match self.heard_ago() {
            _ if self.version().is_none() => Freshness::Unknown,
            Some(ago) if ago <= bound => Freshness::Fresh,
            _ => Freshness::Stale,
        }
    }

    fn heard_ago(&self) -> Option<Duration> {
        self.inner
            .heard
            .read()
            .ok()
            .and_then(|h| h.map(|at| at.elapsed()))
    }

    /// Whether a fail-closed state refuses every token now.
    pub fn refuses_all(&self) -> bool {
        self.inner.fail_closed.is_some() && self.freshness() != Freshness::Fresh
    }

    /// Whether the token `jti` (if any), issued at `iat` to `sub`, has been withdrawn.
    pub fn token_revoked(&self, jti: Option<&str>, sub: &str, iat: i64) -> bool {
        self.inner.held.read().is_ok_and(|h| {
            jti.is_some_and(|j| h.jtis.contains_key(j))
                || h.workloads.get(sub).is_some_and(|at| iat <= *at)
        })
    }

    /// Whether `id` is a revoked workload: its X.509-SVIDs are all from before (it gets no new
    /// ones), so a connection proving it is refused.
    pub fn workload_revoked(&self, id: &str) -> bool {
        self.inner
            .held
            .read()
            .is_ok_and(|h| h.workloads.contains_key(id))
    }

    /// Identities withdrawn from now on.
    pub fn withdrawals(&self) -> broadcast::Receiver<Withdrawn> {
        self.inner.withdrawn.subscribe()
    }

    /// Trust domains whose signing keys or CAs changed, from now on.
    pub fn bundle_changes(&self) -> broadcast::Receiver<String> {
        self.inner.bundles.subscribe()
    }

    /// Replaces the whole state (a poll of `GET /revocations`, or a test).
    pub fn replace(&self, jtis: HashMap<String, i64>, workloads: HashMap<String, i64>) {
        let added = self.set_held(jtis, workloads);
        self.announce(added);
    }

    fn set_held(
        &self,
        jtis: HashMap<String, i64>,
        workloads: HashMap<String, i64>,
    ) -> Vec<Withdrawn> {
        let Ok(mut h) = self.inner.held.write() else {
            return Vec::new();
        };
        let added = workloads
            .iter()
            .filter(|(id, _)| !h.workloads.contains_key(*id))
            .map(|(id, at)| Withdrawn::Workload {
                id: id.clone(),
                at: *at,
            })
            .collect();
        *h = Held { jtis, workloads };
        added
    }

    fn announce(&self, withdrawn: Vec<Withdrawn>) {
        for w in withdrawn {
            // Nobody listening is fine: there is no open connection to close.
            let _ = self.inner.withdrawn.send(w);
        }
    }

    fn heard(&self) {
        if let Ok(mut h) = self.inner.heard.write() {
            *h = Some(Instant::now());
        }
    }

    /// Applies a snapshot: replaces the state unless it is older than the one held.
    fn apply_snapshot(&self, s: Snapshot) -> bool {
        let held = self.inner.version.load(Ordering::Acquire);
        if s.version < held {
            return false;
        }
        let added = self.set_held(
            s.tokens.into_iter().map(|t| (t.jti, t.exp)).collect(),
            s.workloads.into_iter().map(|w| (w.sub, w.at)).collect(),
        );
        self.inner.version.store(s.version, Ordering::Release);
        self.inner
            .policy_version
            .store(s.policy_version, Ordering::Release);
        self.announce(added);
        true
    }

    /// Applies a batch that follows the version held.
    fn apply_batch(&self, b: ChangeBatch) -> Result<bool, FeedError> {
        let held = self.inner.version.load(Ordering::Acquire);
        if b.version <= held {
            return Ok(false);
        }
        if held < 0 || b.from > held {
            return Err(FeedError::Gap { from: b.from, held });
        }
        let mut withdrawn = Vec::new();
        let mut bundles = Vec::new();
        if let Ok(mut h) = self.inner.held.write() {
            for c in b.changes {
                match c {
                    Change::TokenRevoked(t) => {
                        h.jtis.insert(t.jti, t.exp);
                    }
                    Change::WorkloadRevoked { workload, .. } => {
                        h.workloads.insert(workload.sub.clone(), workload.at);
                        withdrawn.push(Withdrawn::Workload {
                            id: workload.sub,
                            at: workload.at,
                        });
                    }
                    Change::WorkloadRestored { sub } => {
                        h.workloads.remove(&sub);
                    }
                    // Agents are refused at the authority's own API; nothing to hold here.
                    Change::AgentRevoked(_) => {}
                    Change::GrantsChanged { policy_version } => self
                        .inner
                        .policy_version
                        .store(policy_version, Ordering::Release),
                    Change::TrustBundleChanged { trust_domain } => bundles.push(trust_domain),
                }
            }
            // Expired revocations need no memory: the tokens are refused for their `exp`.
            if h.jtis.len() > 1024 {
                let now = tessera_core::now_unix();
                h.jtis.retain(|_, exp| *exp >= now);
            }
        }
        self.inner.version.store(b.version, Ordering::Release);
        self.announce(withdrawn);
        for td in bundles {
            let _ = self.inner.bundles.send(td);
        }
        if let Some(m) = &self.inner.metrics {
            let ms = tessera_core::now_unix_ms().saturating_sub(b.committed_at_ms);
            #[expect(
                clippy::cast_precision_loss,
                reason = "a propagation time in milliseconds is far below 2^52"
            )]
            m.propagation.observe(ms.max(0) as f64 / 1000.0);
        }
        Ok(true)
    }

    /// Applies one event of the stream.
    fn apply(&self, event: &SseEvent) -> Result<(), FeedError> {
        let bad = |reason: String| FeedError::Malformed {
            event: event.event.chars().take(40).collect(),
            reason,
        };
        match event.event.as_str() {
            "snapshot" => {
                let s: Snapshot =
                    serde_json::from_str(&event.data).map_err(|e| bad(e.to_string()))?;
                if !self.apply_snapshot(s) {
                    tracing::warn!(
                        "the authority sent an older snapshot than the one held; kept the one held"
                    );
                }
            }
            "change" => {
                let b: ChangeBatch =
                    serde_json::from_str(&event.data).map_err(|e| bad(e.to_string()))?;
                self.apply_batch(b)?;
            }
            "heartbeat" => {
                let _: Heartbeat =
                    serde_json::from_str(&event.data).map_err(|e| bad(e.to_string()))?;
            }
            // Later kinds of event: ignored, as an `EventSource` would.
            _ => {}
        }
        self.heard();
        Ok(())
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a `text/event-stream` into events (the WHATWG HTML "event stream" rules), with a cap
/// on the size of one event. Written here rather than taken from a crate because a subscriber
/// must bound what an authority (or whoever answers in its place) makes it buffer.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    max: usize,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            current: SseEvent::default(),
            has_data: false,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, FeedError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A CR LF pair is one line end; a CR at the very end may be the first half of one.
            let skip = match (self.buf.get(end), self.buf.get(end + 1)) {
                (Some(b'\r'), Some(b'\n')) => 2,
                (Some(b'\r'), None) => break,
                _ => 1,
            };
            let line: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            let line = String::from_utf8(line).map_err(|_| FeedError::NotText)?;
            if let Some(e) = self.line(&line)? {
                out.push(e);
            }
        }
        // A line, and an event's data, are each capped: where the chunks were cut never matters.
        if self.buf.len() > self.max {
            return Err(FeedError::Oversized(self.max));
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Result<Option<SseEvent>, FeedError> {
        if line.len() > self.max {
            return Err(FeedError::Oversized(self.max));
        }
        if line.is_empty() {
            let e = std::mem::take(&mut self.current);
            let had = std::mem::replace(&mut self.has_data, false);
            return Ok(had.then_some(e));
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
                if self.current.data.len() > self.max {
                    return Err(FeedError::Oversized(self.max));
                }
            }
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            _ => {}
        }
        Ok(None)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// A subscriber's metrics, for the service's own registry.
#[derive(Clone, Debug)]
pub struct FeedMetrics {
    /// Seed 003's "revocation propagation time", the subscriber's half: from the commit at the
    /// authority to the change applied here.
    propagation: Histogram,
    staleness: Gauge,
    fresh: Gauge,
    drops: Family<ReasonLabels, Counter>,
}

impl FeedMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            propagation: Histogram::new(PROPAGATION_BUCKETS),
            staleness: Gauge::default(),
            fresh: Gauge::default(),
            drops: Family::default(),
        };
        registry.register(
            "tessera_revocation_propagation_seconds",
            "Time from a change being committed at the authority to its being applied here",
            m.propagation.clone(),
        );
        registry.register(
            "tessera_change_feed_staleness_seconds",
            "Seconds since the change stream was last heard from (-1: never)",
            m.staleness.clone(),
        );
        registry.register(
            "tessera_change_feed_fresh",
            "1 while the change stream is current, 0 while it is stale or before its first snapshot",
            m.fresh.clone(),
        );
        registry.register(
            "tessera_change_feed_drops",
            "Change stream connections dropped, by reason",
            m.drops.clone(),
        );
        m
    }

    /// The number of drops for `reason` (for tests and health reports).
    pub fn drops(&self, reason: &'static str) -> u64 {
        self.drops.get_or_create(&ReasonLabels { reason }).get()
    }
}

/// Keeps `state` current from the authority's change stream until the task is aborted:
/// reconnects with exponential back-off (100 ms to 30 s) and full jitter, resuming from the
/// version held. The subscriber authenticates with `source`'s token (its own identity).
pub fn spawn_feed(source: BundleSource, state: RevocationState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let run = follow(&source, &state);
            tokio::pin!(run);
            let err = loop {
                tokio::select! {
                    e = &mut run => break e,
                    _ = tick.tick() => report(&state),
                }
            };
            if let Some(m) = &state.inner.metrics {
                m.drops
                    .get_or_create(&ReasonLabels {
                        reason: err.label(),
                    })
                    .inc();
            }
            // A stream that was current for a while starts the back-off over.
            if state.freshness() == Freshness::Fresh {
                backoff = Duration::from_millis(100);
            }
            tracing::warn!(error = %err, version = ?state.version(), "change stream lost; enforcing what is known, reconnecting");
            let wait = jitter(backoff);
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    _ = tick.tick() => report(&state),
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

fn report(state: &RevocationState) {
    if let Some(m) = &state.inner.metrics {
        let ago = state
            .heard_ago()
            .map_or(-1, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        m.staleness.set(ago);
        m.fresh
            .set(i64::from(state.freshness() == Freshness::Fresh));
    }
}

/// A uniformly random wait in `[0, max]` (full jitter), so that subscribers of a restarted
/// server do not come back at once. Not cryptographic: a `RandomState` is seeded afresh each
/// time, and that seed is the randomness.
fn jitter(max: Duration) -> Duration {
    use std::hash::BuildHasher;
    let frac = std::collections::hash_map::RandomState::new().hash_one(0u8) % 10_000;
    max * u32::try_from(frac).unwrap_or(0) / 10_000
}

/// One connection: subscribes and applies events until the stream fails.
async fn follow(source: &BundleSource, state: &RevocationState) -> FeedError {
    let resp = match source.subscribe_changes(state.version()).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    report(state);
    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut resp = resp;
    loop {
        let chunk = match tokio::time::timeout(STALE_AFTER, resp.chunk()).await {
            Err(_) => return FeedError::Silent(STALE_AFTER.as_secs()),
            Ok(Err(e)) => return FeedError::Connect(e.without_url().to_string()),
            Ok(Ok(None)) => return FeedError::Ended,
            Ok(Ok(Some(c))) => c,
        };
        let events = match parser.push(&chunk) {
            Ok(e) => e,
            Err(e) => return e,
        };
        for e in &events {
            if let Err(err) = state.apply(e) {
                return err;
            }
        }
        if !events.is_empty() {
            report(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::change_api::{RevokedToken, RevokedWorkload};

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            id: None,
            data: data.into(),
        }
    }

    #[test]
    fn parser_splits_events_across_chunks_and_line_ends() {
        let mut p = SseParser::new(1024);
        assert!(p.push(b"event: change\r").unwrap().is_empty());
        assert!(p.push(b"\nid: 7\ndata: {\"a\":").unwrap().is_empty());
        let out = p
            .push(b"1}\n\n: comment\n\nevent:heartbeat\rdata:x\r\r\n")
            .unwrap();
        assert_eq!(
            out,
            vec![
                SseEvent {
                    event: "change".into(),
                    id: Some("7".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "heartbeat".into(),
                    id: None,
                    data: "x".into()
                }
            ]
        );
    }

    #[test]
    fn parser_refuses_an_oversized_event_and_non_text() {
        let mut p = SseParser::new(64);
        let big = format!("data: {}\n", "x".repeat(100));
        assert_eq!(p.push(big.as_bytes()), Err(FeedError::Oversized(64)));
        // No line end at all: the buffer is what grows.
        let mut p = SseParser::new(64);
        assert_eq!(p.push(&[b'a'; 100]), Err(FeedError::Oversized(64)));
        let mut p = SseParser::new(64);
        assert_eq!(p.push(b"data: \xff\xfe\n"), Err(FeedError::NotText));
    }

    fn parse_in(chunks: &[&[u8]], cap: usize) -> Result<Vec<SseEvent>, FeedError> {
        let mut p = SseParser::new(cap);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c)?);
        }
        Ok(out)
    }

    proptest::proptest! {
        /// Where the network cuts the stream never changes what is read.
        #[test]
        fn events_do_not_depend_on_chunking(
            body in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b':', b' ', b'\n', b'\r', b'd', b'e', b'v', b't']),
                0..300,
            ),
            cut in 0usize..300,
        ) {
            let cut = cut.min(body.len());
            let (a, b) = body.split_at(cut);
            proptest::prop_assert_eq!(parse_in(&[&body], 64), parse_in(&[a, b], 64));
        }
    }

    #[test]
    fn a_truncated_event_is_never_applied() {
        let mut p = SseParser::new(1024);
        let out = p.push(b"event: snapshot\ndata: {\"version\":3").unwrap();
        assert!(out.is_empty(), "no blank line, no event");
    }

    fn snapshot(version: i64, sub: &str) -> String {
        serde_json::to_string(&Snapshot {
            version,
            tokens: vec![RevokedToken {
                jti: "j1".into(),
                exp: i64::MAX,
            }],
            workloads: vec![RevokedWorkload {
                sub: sub.into(),
                at: 100,
            }],
            agents: vec![],
            policy_version: 1,
        })
        .unwrap()
    }

    fn batch(from: i64, version: i64, changes: Vec<Change>) -> String {
        serde_json::to_string(&ChangeBatch {
            from,
            version,
            committed_at_ms: 0,
            changes,
        })
        .unwrap()
    }

    #[test]
    fn replays_old_snapshots_and_gaps_keep_the_state_held() {
        let s = RevocationState::default();
        let mut w = s.withdrawals();
        s.apply(&ev("snapshot", &snapshot(5, "spiffe://td/a")))
            .unwrap();
        assert_eq!(s.version(), Some(5));
        assert!(s.token_revoked(Some("j1"), "spiffe://td/x", 0));
        assert!(s.token_revoked(None, "spiffe://td/a", 100));
        assert!(!s.token_revoked(None, "spiffe://td/a", 101), "issued after");
        assert_eq!(
            w.try_recv().unwrap(),
            Withdrawn::Workload {
                id: "spiffe://td/a".into(),
                at: 100
            }
        );
        // An older snapshot is ignored.
        s.apply(&ev("snapshot", &snapshot(4, "spiffe://td/b")))
            .unwrap();
        assert_eq!(s.version(), Some(5));
        assert!(!s.workload_revoked("spiffe://td/b"));
        // A replayed batch is ignored; a batch past a gap is refused.
        let revoke_c = vec![Change::WorkloadRevoked {
            workload: RevokedWorkload {
                sub: "spiffe://td/c".into(),
                at: 1,
            },
            dependents: Default::default(),
        }];
        s.apply(&ev("change", &batch(3, 5, revoke_c.clone())))
            .unwrap();
        assert!(!s.workload_revoked("spiffe://td/c"));
        assert_eq!(
            s.apply(&ev("change", &batch(6, 7, revoke_c.clone()))),
            Err(FeedError::Gap { from: 6, held: 5 })
        );
        assert!(!s.workload_revoked("spiffe://td/c"));
        s.apply(&ev("change", &batch(5, 6, revoke_c))).unwrap();
        assert!(s.workload_revoked("spiffe://td/c"));
        assert_eq!(s.version(), Some(6));
        // Garbage in a known event drops the stream and keeps the state.
        assert!(matches!(
            s.apply(&ev("change", "{\"from\":")),
            Err(FeedError::Malformed { .. })
        ));
        assert!(s.workload_revoked("spiffe://td/c"));
        // A restored workload is accepted again.
        s.apply(&ev(
            "change",
            &batch(
                6,
                7,
                vec![Change::WorkloadRestored {
                    sub: "spiffe://td/c".into(),
                }],
            ),
        ))
        .unwrap();
        assert!(!s.workload_revoked("spiffe://td/c"));
    }

    /// A subscriber to `url` (with a token the fake authorities ignore), followed until `done`
    /// says the authority saw what the test needs (20 s at most), then stopped.
    async fn subscribe_until(
        url: reqwest::Url,
        done: impl Fn() -> bool,
    ) -> (RevocationState, FeedMetrics) {
        let mut registry = Registry::default();
        let metrics = FeedMetrics::register(&mut registry);
        let state = RevocationState::new(Some(metrics.clone()));
        let source = BundleSource::new(url, reqwest::Client::new(), || {
            Box::pin(async { Ok("token".to_owned()) })
        });
        let task = spawn_feed(source, state.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "the subscriber stopped coming back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        (state, metrics)
    }

    /// A fake authority on a real socket answers each subscription differently: a good
    /// snapshot, then an older one and a replayed batch, then garbage, then an event past the
    /// cap, then the end of the stream mid-event. The subscriber keeps the good state through
    /// all of it, counts each drop, and keeps coming back.
    #[tokio::test]
    async fn a_bad_stream_is_dropped_and_the_state_held_stays() {
        use std::sync::atomic::AtomicUsize;
        let n = Arc::new(AtomicUsize::new(0));
        let seen_ids = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
        let (n2, ids2) = (n.clone(), seen_ids.clone());
        let app = axum::Router::new().route(
            "/v1/changes",
            axum::routing::get(move |headers: http::HeaderMap| {
                let (n, ids) = (n2.clone(), ids2.clone());
                async move {
                    ids.lock().unwrap().push(
                        headers
                            .get("last-event-id")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    );
                    let body = match n.fetch_add(1, Ordering::SeqCst) {
                        0 => format!(
                            "event: snapshot\nid: 5\ndata: {}\n\n",
                            snapshot(5, "spiffe://td/a")
                        ),
                        1 => format!(
                            "event: snapshot\ndata: {}\n\nevent: change\ndata: {}\n\n",
                            snapshot(3, "spiffe://td/b"),
                            batch(
                                4,
                                5,
                                vec![Change::WorkloadRestored {
                                    sub: "spiffe://td/a".into()
                                }]
                            )
                        ),
                        2 => "event: change\ndata: {not json\n\n".to_owned(),
                        3 => "a".repeat(MAX_EVENT_BYTES + 10),
                        _ => "event: change\ndata: {\"from\":5,".to_owned(),
                    };
                    ([(http::header::CONTENT_TYPE, "text/event-stream")], body)
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: reqwest::Url = format!("http://{}/", l.local_addr().unwrap())
            .parse()
            .unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let (state, metrics) = subscribe_until(url, || n.load(Ordering::SeqCst) >= 6).await;
        assert_eq!(state.version(), Some(5));
        assert!(
            state.workload_revoked("spiffe://td/a"),
            "a replay undid a revocation"
        );
        assert!(
            !state.workload_revoked("spiffe://td/b"),
            "an older snapshot was applied"
        );
        assert_eq!(metrics.drops("malformed"), 1, "the garbage");
        assert!(
            metrics.drops("ended") >= 3,
            "a stream cut mid-event is only an end"
        );
        assert_eq!(metrics.drops("oversized"), 1);
        // Every reconnection after the first resumed from the version held.
        let ids = seen_ids.lock().unwrap().clone();
        assert_eq!(ids[0], None);
        assert!(
            ids[1..].iter().all(|i| i.as_deref() == Some("5")),
            "{ids:?}"
        );
    }

    /// A server whose certificate the subscriber's roots do not vouch for is never believed:
    /// every attempt fails at the handshake, is counted, and is tried again later.
    #[tokio::test]
    async fn a_server_outside_the_trust_roots_is_refused() {
        use std::sync::atomic::AtomicUsize;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key.into())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: reqwest::Url = format!("https://{}/", l.local_addr().unwrap())
            .parse()
            .unwrap();
        let (attempts, served) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a2, s2) = (attempts.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                a2.fetch_add(1, Ordering::SeqCst);
                if acceptor.accept(tcp).await.is_ok() {
                    s2.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let (state, metrics) = subscribe_until(url, || attempts.load(Ordering::SeqCst) >= 3).await;
        assert_eq!(served.load(Ordering::SeqCst), 0, "a handshake completed");
        assert_eq!(state.version(), None);
        assert!(metrics.drops("connect") >= 2);
    }

    #[test]
    fn fail_closed_refuses_until_a_snapshot_and_fail_open_does_not() {
        let closed = RevocationState::fail_closed(Duration::from_secs(10), None);
        assert!(closed.refuses_all());
        closed
            .apply(&ev("snapshot", &snapshot(1, "spiffe://td/a")))
            .unwrap();
        assert!(!closed.refuses_all());
        assert_eq!(closed.freshness(), Freshness::Fresh);
        let open = RevocationState::default();
        assert!(!open.refuses_all());
        assert_eq!(open.freshness(), Freshness::Unknown);
    }
}
