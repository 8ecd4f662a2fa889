//! Verification results by reason, for the service's own Prometheus registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::{Verified, VerifyError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    result: &'static str,
    reason: &'static str,
}

/// `tessera_verifications_total{result, reason}`.
#[derive(Clone, Debug, Default)]
pub struct VerifyMetrics {
    results: Family<Labels, Counter>,
}

impl VerifyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tessera_verifications",
            "Token verifications by result and refusal reason",
            m.results.clone(),
        );
        m
    }

    pub(crate) fn record(&self, result: &Result<Verified, VerifyError>) {
        let labels = match result {
            Ok(_) => Labels {
                result: "valid",
                reason: "ok",
            },
            Err(e) => Labels {
                result: "refused",
                reason: e.reason(),
            },
        };
        self.results.get_or_create(&labels).inc();
    }

    /// The count for one label pair (for tests and health reports).
    pub fn count(&self, result: &'static str, reason: &'static str) -> u64 {
        self.results.get_or_create(&Labels { result, reason }).get()
    }
}
