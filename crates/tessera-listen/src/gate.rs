//! Admission of connections: a cap in total and per source, and eviction of the oldest
//! connection that has no request in flight when a new one needs the room.
//!
//! Why evict rather than refuse: a peer that opens connections and sends half a request head
//! holds them for free, and a listener that refuses at the cap is then closed to everyone. A
//! held-open connection with no request in flight is the cheapest thing to give up; a request
//! in progress (a long poll, a stream) is never cut for a newcomer.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::limits::Limits;

/// Who a connection comes from, for the per-source cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(IpAddr),
    /// A unix socket's peer user.
    Uid(u32),
    Unknown,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection of this source has a request in flight.
    SourceBusy,
    /// Every connection has a request in flight.
    Full,
}

/// One connection's state, shared by its ticket and the gate.
#[derive(Debug)]
struct Conn {
    source: Source,
    /// Requests in flight (their responses not yet sent in full).
    busy: AtomicUsize,
    evicted: AtomicBool,
    evict: Notify,
    /// Milliseconds since the gate's epoch when bytes last moved.
    last_activity: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// By id, which grows: the first entries are the oldest connections.
    conns: BTreeMap<u64, Arc<Conn>>,
    per_source: HashMap<Source, usize>,
}

/// Counters a listener can export.
#[derive(Debug, Default)]
pub struct GateStats {
    pub evicted: AtomicU64,
    pub refused: AtomicU64,
}

/// The admission of one listener (cheap to clone).
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    epoch: Instant,
    state: Mutex<State>,
    stats: GateStats,
}

impl Gate {
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                epoch: Instant::now(),
                state: Mutex::new(State::default()),
                stats: GateStats::default(),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn stats(&self) -> &GateStats {
        &self.inner.stats
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.state().conns.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; a poisoned map is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a connection from `source`, closing the oldest idle connection (of the same
    /// source first, when that source is at its cap) to make room.
    pub fn admit(&self, source: Source) -> Result<Ticket, Refused> {
        let limits = self.inner.limits;
        let mut st = self.state();
        if st.per_source.get(&source).copied().unwrap_or(0) >= limits.max_per_source
            && !evict_oldest_idle(&mut st, Some(source), &self.inner.stats)
        {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::SourceBusy);
        }
        if st.conns.len() >= limits.max_connections
            && !evict_oldest_idle(&mut st, None, &self.inner.stats)
        {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1);
        let conn = Arc::new(Conn {
            source,
            busy: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            last_activity: AtomicU64::new(self.now_ms()),
        });
        st.conns.insert(id, conn.clone());
        *st.per_source.entry(source).or_insert(0) += 1;
        Ok(Ticket {
            gate: self.clone(),
            id,
            conn,
        })
    }

    fn release(&self, id: u64) {
        let mut st = self.state();
        if let Some(conn) = st.conns.remove(&id) {
            forget_source(&mut st, conn.source);
        }
    }
}

fn forget_source(st: &mut State, source: Source) {
    if let Some(n) = st.per_source.get_mut(&source) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.per_source.remove(&source);
        }
    }
}

/// Evicts the oldest connection with no request in flight (of `source`, if given): whether
/// there was one.
fn evict_oldest_idle(st: &mut State, source: Option<Source>, stats: &GateStats) -> bool {
    let victim = st
        .conns
        .iter()
        .find(|(_, c)| source.is_none_or(|s| c.source == s) && c.busy.load(Ordering::Acquire) == 0)
        .map(|(id, _)| *id);
    let Some(conn) = victim.and_then(|id| st.conns.remove(&id)) else {
        return false;
    };
    forget_source(st, conn.source);
    conn.evicted.store(true, Ordering::Release);
    // A stored permit: the connection's task sees it even if it is not waiting yet.
    conn.evict.notify_one();
    stats.evicted.fetch_add(1, Ordering::Relaxed);
    true
}

/// An admitted connection. Dropping it gives its place back.
#[derive(Debug)]
pub struct Ticket {
    gate: Gate,
    id: u64,
    conn: Arc<Conn>,
}

impl Ticket {
    /// Resolves when the gate closed this connection to make room for another.
    pub async fn evicted(&self) {
        if self.conn.evicted.load(Ordering::Acquire) {
            return;
        }
        self.conn.evict.notified().await;
    }

    pub fn is_evicted(&self) -> bool {
        self.conn.evicted.load(Ordering::Acquire)
    }

    /// Marks a request in flight until the guard drops.
    pub fn busy(&self) -> BusyGuard {
        self.requests().enter()
    }

    /// A handle that marks requests in flight, for a service to hold.
    pub fn requests(&self) -> Requests {
        Requests {
            conn: self.conn.clone(),
        }
    }

    pub fn limits(&self) -> &Limits {
        self.gate.limits()
    }

    pub fn is_idle(&self) -> bool {
        self.conn.busy.load(Ordering::Acquire) == 0
    }

    /// A cheap handle for the I/O wrapper to record activity with.
    pub(crate) fn activity(&self) -> Activity {
        Activity {
            gate: self.gate.clone(),
            conn: self.conn.clone(),
        }
    }

    /// How long since bytes last moved.
    pub fn quiet_for(&self) -> std::time::Duration {
        let last = self.conn.last_activity.load(Ordering::Relaxed);
        std::time::Duration::from_millis(self.gate.now_ms().saturating_sub(last))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.release(self.id);
    }
}

/// Records activity from inside an I/O wrapper.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    gate: Gate,
    conn: Arc<Conn>,
}

impl Activity {
    pub(crate) fn touch(&self) {
        self.conn
            .last_activity
            .store(self.gate.now_ms(), Ordering::Relaxed);
    }
}

/// Marks requests in flight on one connection.
#[derive(Debug, Clone)]
pub struct Requests {
    conn: Arc<Conn>,
}

impl Requests {
    pub fn enter(&self) -> BusyGuard {
        self.conn.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard {
            conn: self.conn.clone(),
        }
    }
}

/// A request in flight on a connection: while one lives, the connection is not evicted.
#[derive(Debug)]
pub struct BusyGuard {
    conn: Arc<Conn>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: usize, per_source: usize) -> Limits {
        Limits {
            max_connections: max,
            max_per_source: per_source,
            handshake_timeout: Duration::from_secs(1),
            head_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    const A: Source = Source::Uid(1);
    const B: Source = Source::Uid(2);

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let gate = Gate::new(limits(2, 2));
        let first = gate.admit(A).unwrap();
        let second = gate.admit(B).unwrap();
        let _busy = second.busy();
        let third = gate.admit(B).unwrap();
        assert!(first.is_evicted(), "the oldest idle one goes");
        assert!(!second.is_evicted(), "a request in flight is never cut");
        assert_eq!(gate.open(), 2);
        drop(first);
        assert_eq!(gate.open(), 2, "an evicted ticket is not released twice");
        drop(third);
        assert_eq!(gate.open(), 1);
    }

    #[test]
    fn nothing_idle_means_refused() {
        let gate = Gate::new(limits(1, 1));
        let only = gate.admit(A).unwrap();
        let _busy = only.busy();
        assert_eq!(gate.admit(B).unwrap_err(), Refused::Full);
        assert_eq!(gate.admit(A).unwrap_err(), Refused::SourceBusy);
        assert_eq!(gate.stats().refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_source_at_its_cap_gives_up_its_own_connections_first() {
        let gate = Gate::new(limits(10, 2));
        let other = gate.admit(B).unwrap();
        let a1 = gate.admit(A).unwrap();
        let a2 = gate.admit(A).unwrap();
        let a3 = gate.admit(A).unwrap();
        assert!(a1.is_evicted());
        assert!(!other.is_evicted(), "another source keeps its place");
        assert!(!a2.is_evicted() && !a3.is_evicted());
    }

    #[tokio::test]
    async fn eviction_wakes_the_connection() {
        let gate = Gate::new(limits(1, 1));
        let first = gate.admit(A).unwrap();
        let _second = gate.admit(A).unwrap();
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .unwrap();
    }
}
