//! The change stream's memory: each reload that withdraws or alters trust becomes a versioned
//! [`ChangeBatch`], diffed from the previous snapshot, encoded once, kept in a ring for
//! subscribers that resume, and broadcast to those connected. Several servers on one database
//! diff their own snapshots of the same state versions, so a subscriber may resume on any of
//! them.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tessera_core::change_api::{
    Change, ChangeBatch, Dependents, RevocationState, RevokedAgent, RevokedToken, RevokedWorkload,
};
use tessera_core::{SpiffeId, TrustDomain};
use tokio::sync::broadcast;

use crate::app::snapshot::Snapshot;

/// Batches kept for resuming subscribers; one older than these gets a snapshot instead.
const RING: usize = 4096;
/// Batches a connected subscriber may fall behind before it is sent a snapshot instead.
const LAG: usize = 1024;

/// A batch as it goes on the wire: encoded once for every subscriber.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub from: i64,
    pub version: i64,
    pub committed_at_ms: i64,
    pub json: String,
    /// Whether a batch withdraws anything (for the propagation metric).
    pub withdraws: bool,
}

#[derive(Debug)]
pub(crate) struct ChangeLog {
    ring: Mutex<VecDeque<Arc<Encoded>>>,
    live: broadcast::Sender<Arc<Encoded>>,
}

impl Default for ChangeLog {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            live: broadcast::channel(LAG).0,
        }
    }
}

/// What a resuming subscriber is sent first.
#[derive(Debug)]
pub(crate) enum Resume {
    /// The batches after its version, in order (none when it is current).
    Batches(Vec<Arc<Encoded>>),
    /// Its version is older than the ring (or unknown): a whole snapshot.
    Snapshot,
}

impl ChangeLog {
    /// Records and broadcasts a batch; `None` when nothing changed.
    pub(crate) fn publish(&self, batch: &ChangeBatch) -> Option<Arc<Encoded>> {
        if batch.changes.is_empty() && batch.version == batch.from {
            return None;
        }
        let json = serde_json::to_string(batch).ok()?;
        let e = Arc::new(Encoded {
            from: batch.from,
            version: batch.version,
            committed_at_ms: batch.committed_at_ms,
            json,
            withdraws: batch.changes.iter().any(|c| {
                matches!(
                    c,
                    Change::TokenRevoked(_)
                        | Change::WorkloadRevoked { .. }
                        | Change::AgentRevoked(_)
                        | Change::GrantsChanged { .. }
                )
            }),
        });
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(e.clone());
        }
        // No receiver is not an error: nobody is subscribed.
        let _ = self.live.send(e.clone());
        Some(e)
    }

    /// Live batches from now on; subscribe before reading the ring so that nothing falls between.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Encoded>> {
        self.live.subscribe()
    }

    /// What a subscriber at `since` needs to be current.
    pub(crate) fn resume(&self, since: i64, current: i64) -> Resume {
        if since >= current {
            return Resume::Batches(Vec::new());
        }
        let Ok(ring) = self.ring.lock() else {
            return Resume::Snapshot;
        };
        // The ring must reach back to `since`: its oldest batch starts at or before it.
        match ring.front() {
            Some(first) if first.from <= since => {
                Resume::Batches(ring.iter().filter(|b| b.version > since).cloned().collect())
            }
            _ => Resume::Snapshot,
        }
    }
}

/// Everything withdrawn in `snap`, as a subscriber's starting point.
pub(crate) fn revocation_state(snap: &Snapshot, now: i64) -> RevocationState {
    let mut tokens: Vec<RevokedToken> = snap
        .revoked_jtis
        .iter()
        .filter(|(_, exp)| **exp >= now)
        .map(|(jti, exp)| RevokedToken {
            jti: jti.clone(),
            exp: *exp,
        })
        .collect();
    tokens.sort_by(|a, b| a.jti.cmp(&b.jti));
    let mut workloads: Vec<RevokedWorkload> = snap
        .workloads
        .values()
        .filter_map(|w| {
            w.revoked_at.map(|at| RevokedWorkload {
                sub: w.spec.id.to_string(),
                at,
            })
        })
        .collect();
    workloads.sort_by(|a, b| a.sub.cmp(&b.sub));
    let mut agents: Vec<RevokedAgent> = snap
        .agents
        .values()
        .filter_map(|a| {
            a.revoked_at.map(|at| RevokedAgent {
                agent: a.id.clone(),
                at,
            })
        })
        .collect();
    agents.sort_by(|a, b| a.agent.cmp(&b.agent));
    RevocationState {
        version: snap.version,
        tokens,
        workloads,
        agents,
        policy_version: snap.policy_version,
    }
}

/// Who depended on `id` in `snap`: granted callers and granted targets.
pub(crate) fn dependents(snap: &Snapshot, id: &SpiffeId) -> Dependents {
    let ids = |pick: fn(&tessera_core::manifest::Grant) -> (&SpiffeId, &SpiffeId)| {
        snap.grants
            .iter()
            .map(pick)
            .filter(|(this, _)| *this == id)
            .map(|(_, other)| other.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    Dependents {
        callers: ids(|g| (&g.to, &g.from)),
        targets: ids(|g| (&g.from, &g.to)),
    }
}

/// The changes from `old` to `new`, in a fixed order: withdrawals first.
pub(crate) fn diff(old: &Snapshot, new: &Snapshot, served: &[TrustDomain]) -> Vec<Change> {
    let mut out = Vec::new();
    let mut tokens: Vec<_> = new
        .revoked_jtis
        .iter()
        .filter(|(jti, _)| !old.revoked_jtis.contains_key(*jti))
        .map(|(jti, exp)| RevokedToken {
            jti: jti.clone(),
            exp: *exp,
        })
        .collect();
    tokens.sort_by(|a, b| a.jti.cmp(&b.jti));
    out.extend(tokens.into_iter().map(Change::TokenRevoked));
    let mut workloads: Vec<_> = new.workloads.values().collect();
    workloads.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
    for w in workloads {
        let before = old.workloads.get(&w.spec.id).and_then(|o| o.revoked_at);
        match (before, w.revoked_at) {
            (None, Some(at)) => out.push(Change::WorkloadRevoked {
                workload: RevokedWorkload {
                    sub: w.spec.id.to_string(),
                    at,
                },
                // Who depended on it before: the grants may be withdrawn in the same change.
                dependents: dependents(old, &w.spec.id),
            }),
            (Some(_), None) if old.workloads.contains_key(&w.spec.id) => {
                out.push(Change::WorkloadRestored {
                    sub: w.spec.id.to_string(),
                })
            }
            _ => {}
        }
    }
    let mut agents: Vec<_> = new
        .agents
        .values()
        .filter_map(|a| {
            let was = old.agents.get(&a.id).and_then(|o| o.revoked_at);
            match (was, a.revoked_at) {
                (None, Some(at)) => Some(RevokedAgent {
                    agent: a.id.clone(),
                    at,
                }),
                _ => None,
            }
        })
        .collect();
    agents.sort_by(|a, b| a.agent.cmp(&b.agent));
    out.extend(agents.into_iter().map(Change::AgentRevoked));
    if old.grants != new.grants
        || old.policies != new.policies
        || old.policy_version != new.policy_version
    {
        out.push(Change::GrantsChanged {
            policy_version: new.policy_version,
        });
    }
    for td in served {
        if trust_material(old, td) != trust_material(new, td) {
            out.push(Change::TrustBundleChanged {
                trust_domain: td.to_string(),
            });
        }
    }
    out
}

/// A trust domain's keys and CAs with their schedules: a change of any is a bundle change.
fn trust_material(snap: &Snapshot, td: &TrustDomain) -> Vec<(String, i64, Option<i64>)> {
    let keys = snap
        .keys
        .entries(td)
        .iter()
        .map(|k| (k.key.kid().to_string(), k.activate_at, k.retire_at));
    let cas = snap
        .cas
        .entries(td)
        .iter()
        .map(|c| (c.id.clone(), c.activate_at, c.retire_at));
    keys.chain(cas).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(from: i64, version: i64) -> ChangeBatch {
        ChangeBatch {
            from,
            version,
            committed_at_ms: 0,
            changes: vec![Change::GrantsChanged {
                policy_version: version,
            }],
        }
    }

    fn versions(r: Resume) -> Option<Vec<i64>> {
        match r {
            Resume::Batches(b) => Some(b.iter().map(|b| b.version).collect()),
            Resume::Snapshot => None,
        }
    }

    #[test]
    fn a_subscriber_resumes_with_what_follows_or_gets_a_snapshot() {
        let log = ChangeLog::default();
        for v in 11..=13 {
            assert!(log.publish(&batch(v - 1, v)).is_some());
        }
        // Nothing changed: nothing published.
        assert!(log
            .publish(&ChangeBatch {
                from: 13,
                version: 13,
                committed_at_ms: 0,
                changes: vec![]
            })
            .is_none());
        assert_eq!(versions(log.resume(13, 13)), Some(vec![]));
        assert_eq!(versions(log.resume(11, 13)), Some(vec![12, 13]));
        assert_eq!(versions(log.resume(10, 13)), Some(vec![11, 12, 13]));
        assert_eq!(versions(log.resume(9, 13)), None, "older than the ring");
        assert_eq!(
            versions(log.resume(20, 13)),
            Some(vec![]),
            "ahead of this server"
        );
    }

    #[test]
    fn the_ring_forgets_the_oldest_batches() {
        let log = ChangeLog::default();
        let n = i64::try_from(RING).unwrap_or(i64::MAX) + 1;
        for v in 1..=n {
            log.publish(&batch(v - 1, v));
        }
        assert_eq!(versions(log.resume(0, n)), None);
        assert_eq!(versions(log.resume(1, n)).map(|v| v.len()), Some(RING));
    }
}
