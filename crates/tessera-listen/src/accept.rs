//! Back-off after a failed `accept`: out of descriptors, the kernel keeps the connection in the
//! backlog and `accept` fails again at once, so a loop that only logs spins a core and writes
//! the same line millions of times.

use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// One log line per this interval at most, with the count of failures since the last one.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The back-off state of one accept loop.
#[derive(Debug)]
pub struct Backoff {
    listener: &'static str,
    pause: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            pause: FIRST_PAUSE,
            last_log: None,
            unlogged: 0,
        }
    }

    /// What `accept` gave: the connection (and the pause reset), or `None` after the failure
    /// was logged and waited out, so the loop goes round again.
    pub async fn take<T>(&mut self, accepted: std::io::Result<T>) -> Option<T> {
        match accepted {
            Ok(conn) => {
                self.accepted();
                Some(conn)
            }
            Err(e) => {
                self.failed(&e).await;
                None
            }
        }
    }

    /// A connection was accepted: the next failure starts from a short pause again.
    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// `accept` failed: log (rate-limited) and wait before the next try. Errors that concern
    /// only the one connection (the peer reset it before it was accepted) do not wait.
    pub async fn failed(&mut self, error: &std::io::Error) {
        use std::io::ErrorKind;
        if matches!(
            error.kind(),
            ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
        ) {
            return;
        }
        self.unlogged = self.unlogged.saturating_add(1);
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
            tracing::warn!(
                listener = self.listener,
                error = %error,
                failures = self.unlogged,
                "accept failed; backing off"
            );
            self.last_log = Some(Instant::now());
            self.unlogged = 0;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_and_reset() {
        let mut b = Backoff::new("test");
        let emfile = std::io::Error::from_raw_os_error(24);
        let t = tokio::time::Instant::now();
        for _ in 0..20 {
            b.failed(&emfile).await;
        }
        // 5, 10, ..., capped at 1 s: about 16 s for twenty tries, not a spin.
        assert!(t.elapsed() >= Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(b.pause, LONGEST_PAUSE);
        b.accepted();
        assert_eq!(b.pause, FIRST_PAUSE);
        let t = tokio::time::Instant::now();
        b.failed(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted))
            .await;
        assert_eq!(
            t.elapsed(),
            Duration::ZERO,
            "a reset connection does not wait"
        );
    }
}
