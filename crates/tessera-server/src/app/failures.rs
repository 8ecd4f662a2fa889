//! Refusals of unauthenticated callers (failed client authentication, refused outside tokens,
//! refused agent joins) as the audit trail keeps them: the first of each kind, actor and
//! subject in a window is recorded at once; repeats inside the window are counted and written
//! as one summary record when it closes. Anyone may send failures, about 2,800 a second from
//! one client: one durable record each would let them fill the trail and drown the records
//! that matter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tessera_store::AuditEvent;

/// One record per kind, actor and subject per window, plus the count of what it stood for.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Distinct (kind, actor, subject) tracked at once; past it, new ones share one entry.
const MAX_KEYS: usize = 10_000;

type Key = (String, String, String);

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Failures after the first in this window, not written yet.
    repeats: u64,
    /// The last repeat, to write as the summary.
    last: Option<AuditEvent>,
}

#[derive(Debug, Default)]
pub(crate) struct FailureLog {
    windows: Mutex<HashMap<Key, Window>>,
}

fn key(e: &AuditEvent) -> Key {
    (
        e.kind.as_str().to_owned(),
        e.actor.clone(),
        e.subject.clone(),
    )
}

/// A window's repeats as one record: the last repeat, with how many it stands for.
fn summary(mut last: AuditEvent, repeats: u64) -> AuditEvent {
    if let Some(d) = last.detail.as_object_mut() {
        d.insert("repeats".into(), repeats.into());
        d.insert("window_seconds".into(), WINDOW.as_secs().into());
    }
    last
}

impl FailureLog {
    /// What to write now for `event`: itself when it opens a window (with the summary of the
    /// window before, if that one had repeats), nothing when it is a repeat.
    pub(crate) fn admit(&self, event: AuditEvent) -> Vec<AuditEvent> {
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let mut k = key(&event);
        if windows.len() >= MAX_KEYS && !windows.contains_key(&k) {
            k = (k.0, "(many)".into(), "(many)".into());
        }
        let now = Instant::now();
        match windows.get_mut(&k) {
            Some(w) if now.duration_since(w.opened) < WINDOW => {
                w.repeats += 1;
                w.last = Some(event);
                Vec::new()
            }
            Some(w) => {
                let mut out = Vec::new();
                if let Some(last) = w.last.take() {
                    out.push(summary(last, w.repeats));
                }
                w.opened = now;
                w.repeats = 0;
                out.push(event);
                out
            }
            None => {
                windows.insert(
                    k,
                    Window {
                        opened: now,
                        repeats: 0,
                        last: None,
                    },
                );
                vec![event]
            }
        }
    }

    /// The summaries of windows that have closed, which are forgotten.
    pub(crate) fn drain_closed(&self) -> Vec<AuditEvent> {
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let mut out = Vec::new();
        windows.retain(|_, w| {
            if now.duration_since(w.opened) < WINDOW {
                return true;
            }
            if let Some(last) = w.last.take() {
                out.push(summary(last, w.repeats));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_store::{AuditKind, Outcome};

    fn refusal(actor: &str) -> AuditEvent {
        AuditEvent {
            kind: AuditKind::ClientAuthFailed,
            actor: actor.into(),
            subject: actor.into(),
            outcome: Outcome::Denied,
            detail: serde_json::json!({"reason": "wrong secret"}),
        }
    }

    #[test]
    fn repeats_in_a_window_are_one_record() {
        let log = FailureLog::default();
        assert_eq!(log.admit(refusal("a")).len(), 1, "the first is written");
        for _ in 0..1000 {
            assert!(log.admit(refusal("a")).is_empty());
        }
        assert_eq!(
            log.admit(refusal("b")).len(),
            1,
            "another client has its own window"
        );
        assert!(log.drain_closed().is_empty(), "the window is still open");
        // Close the windows by moving their start back.
        for w in log.windows.lock().unwrap().values_mut() {
            w.opened -= WINDOW;
        }
        let closed = log.drain_closed();
        assert_eq!(
            closed.len(),
            1,
            "only a window with repeats writes a summary"
        );
        assert_eq!(closed[0].detail["repeats"], 1000);
        assert!(log.windows.lock().unwrap().is_empty());
    }
}

/// A count per key per window, for quotas such as decision records per reporting service.
#[derive(Debug, Default)]
pub(crate) struct Quota {
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quota {
    /// Takes `n` from `key`'s allowance of `limit` per `window`: `Err(seconds until it renews)`
    /// when that would pass the limit (nothing is taken then).
    pub(crate) fn take(&self, key: &str, n: u64, limit: u64, window: Duration) -> Result<(), u64> {
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        if windows.len() >= MAX_KEYS {
            windows.retain(|_, (opened, _)| now.duration_since(*opened) < window);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1.saturating_add(n) > limit {
            let left = window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += n;
        Ok(())
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    #[test]
    fn a_quota_refuses_past_its_limit_and_takes_nothing_then() {
        let q = Quota::default();
        let w = Duration::from_secs(60);
        assert!(q.take("a", 600, 1000, w).is_ok());
        assert!(q.take("a", 500, 1000, w).is_err());
        assert!(
            q.take("a", 400, 1000, w).is_ok(),
            "the refused 500 were not taken"
        );
        assert!(q.take("b", 1000, 1000, w).is_ok(), "per key");
    }
}
