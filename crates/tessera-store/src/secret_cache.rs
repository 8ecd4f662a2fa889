//! Secrets' metadata and sealed versions kept in memory for the vault's read path, so that a
//! read costs no round trip to the database.
//!
//! Correctness rests on invalidation, never on time:
//! - every commit that changes a secret, by this process, clears the cache after it commits;
//! - on PostgreSQL every such commit also notifies `tessera_secrets`, and each server's
//!   [`ChangeListener`](crate::ChangeListener) clears its cache when the notice arrives;
//! - on PostgreSQL the cache serves only while a listener is connected: before the first one,
//!   and from the moment one loses its connection (notices sent meanwhile are lost), every read
//!   goes to the database and nothing is kept (fail closed).
//!
//! A read that raced a change cannot put what it read before the change into the cache: each
//! fill carries the generation it started under, and a clear moves the generation on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::records::{SecretRecord, SecretVersionRecord};

/// Entries kept at most; past it the cache starts again empty (reads stay correct, and a
/// flood of names that do not exist cannot grow memory).
const CAPACITY: usize = 10_000;

/// What a read found: the secret's metadata and the version asked for, or nothing.
pub(crate) type Found = Option<(SecretRecord, Option<SecretVersionRecord>)>;

type Key = (String, Option<i64>);

#[derive(Debug)]
pub(crate) struct SecretCache {
    /// Moved on by every clear.
    generation: AtomicU64,
    /// Connected listeners, on PostgreSQL; SQLite needs none (this process is the only writer).
    listeners: AtomicUsize,
    needs_listener: bool,
    entries: Mutex<HashMap<Key, Arc<Found>>>,
}

impl SecretCache {
    pub(crate) fn new(needs_listener: bool) -> Self {
        Self {
            generation: AtomicU64::new(0),
            listeners: AtomicUsize::new(0),
            needs_listener,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn serving(&self) -> bool {
        !self.needs_listener || self.listeners.load(Ordering::Acquire) > 0
    }

    /// What is kept for (`name`, `version`), when the cache may serve.
    pub(crate) fn get(&self, name: &str, version: Option<i64>) -> Option<Arc<Found>> {
        if !self.serving() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        entries.get(&(name.to_owned(), version)).cloned()
    }

    /// The generation a fill starts under (read it before going to the database).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps what a read found, unless the cache was cleared since `generation`.
    pub(crate) fn fill(&self, generation: u64, name: &str, version: Option<i64>, found: &Found) {
        if !self.serving() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        // Checked under the lock that `clear` takes, so a clear is never undone.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert((name.to_owned(), version), Arc::new(found.clone()));
    }

    /// Forgets everything: a secret changed here or on another server.
    pub(crate) fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.clear();
        } else {
            // A poisoned lock: no fill can succeed either, but move the generation on anyway.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A listener connected: notices reach this cache from now on.
    pub(crate) fn listener_connected(&self) {
        self.clear();
        self.listeners.fetch_add(1, Ordering::AcqRel);
    }

    /// A listener is gone or lost its connection: notices may have been missed.
    pub(crate) fn listener_lost(&self) {
        // INVARIANT: called once per `listener_connected`, by the listener's drop or its first
        // error, never both (`ChangeListener::lost` records which).
        let _ = self
            .listeners
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(version: i64) -> Found {
        Some((
            SecretRecord {
                name: "db/password".into(),
                owner: "team".into(),
                purpose: String::new(),
                content_type: "text/plain".into(),
                environment: "prod".into(),
                tags: std::collections::BTreeMap::new(),
                rotation_period: None,
                current_version: version,
                created_at: 0,
                updated_at: 0,
                deleted_at: None,
                purge_after: None,
            },
            None,
        ))
    }

    #[test]
    fn a_fill_that_raced_a_clear_is_not_kept() {
        let c = SecretCache::new(false);
        let g = c.generation();
        c.clear();
        c.fill(g, "db/password", None, &found(1));
        assert!(c.get("db/password", None).is_none());
        let g = c.generation();
        c.fill(g, "db/password", None, &found(2));
        let kept = c.get("db/password", None).unwrap();
        assert_eq!(kept.as_ref().as_ref().unwrap().0.current_version, 2);
        assert!(
            c.get("db/password", Some(2)).is_none(),
            "another version is another entry"
        );
        c.clear();
        assert!(c.get("db/password", None).is_none());
    }

    #[test]
    fn without_a_listener_a_shared_database_is_never_served_from_memory() {
        let c = SecretCache::new(true);
        c.fill(c.generation(), "a", None, &found(1));
        assert!(c.get("a", None).is_none());
        c.listener_connected();
        c.fill(c.generation(), "a", None, &found(1));
        assert!(c.get("a", None).is_some());
        c.listener_lost();
        assert!(c.get("a", None).is_none());
        c.listener_connected();
        assert!(
            c.get("a", None).is_none(),
            "what was kept before the loss is gone"
        );
        c.listener_lost();
        c.listener_lost();
        c.fill(c.generation(), "a", None, &found(1));
        assert!(
            c.get("a", None).is_none(),
            "a second loss does not wrap the count"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let c = SecretCache::new(false);
        for i in 0..(CAPACITY + 5) {
            c.fill(c.generation(), &format!("s{i}"), None, &None);
        }
        assert!(c.entries.lock().unwrap().len() <= CAPACITY);
        assert!(c.get(&format!("s{}", CAPACITY + 4), None).is_some());
    }
}
