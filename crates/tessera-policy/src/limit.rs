//! Rate limits per (caller, target), as grants declare them (`token_rate`, `call_rate`).
//! Each pair gets its own GCRA limiter (the `governor` crate): bursts up to the rate's count,
//! refilled evenly over its period.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tessera_core::manifest::{Grant, Rate};
use tessera_core::SpiffeId;

/// Limiters for every pair whose grant declares a rate.
#[derive(Default)]
pub struct Limits {
    pairs: HashMap<(SpiffeId, SpiffeId), (Rate, DefaultDirectRateLimiter)>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

/// Refused by a rate limit: the limit and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub rate: Rate,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for a `Retry-After` header: at least 1, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

fn quota(rate: Rate) -> Option<Quota> {
    let count = NonZeroU32::new(rate.count)?;
    let interval = rate.per.checked_div(rate.count)?;
    Quota::with_period(interval).map(|q| q.allow_burst(count))
}

impl Limits {
    /// Limiters for the rate each grant declares through `pick` (e.g. `|g| g.token_rate`).
    pub fn from_grants<'a>(
        grants: impl IntoIterator<Item = &'a Grant>,
        pick: impl Fn(&Grant) -> Option<Rate>,
    ) -> Self {
        let mut pairs = HashMap::new();
        for g in grants {
            if let Some((rate, q)) = pick(g).and_then(|r| quota(r).map(|q| (r, q))) {
                pairs.insert(
                    (g.from.clone(), g.to.clone()),
                    (rate, RateLimiter::direct(q)),
                );
            }
        }
        Self { pairs }
    }

    /// Takes one event for the pair; pairs without a declared rate are never limited.
    pub fn check(&self, from: &SpiffeId, to: &SpiffeId) -> Result<(), Limited> {
        let Some((rate, limiter)) = self.pairs.get(&(from.clone(), to.clone())) else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| Limited {
            rate: *rate,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
