//! The sidecar's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub caller: String,
    pub target: String,
    pub decision: &'static str,
}

/// See [`ProxyMetrics::for_pair`].
#[derive(Clone, Debug)]
pub struct PairCounters {
    pub allow: Counter,
    pub deny: Counter,
    pub limited: Counter,
    pub too_large: Counter,
    pub bad_token: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `tessera_proxy_requests_total{caller,target,decision}`, `tessera_proxy_handshakes_total`,
/// `tessera_proxy_handshake_failures_total{reason}`, `tessera_proxy_svid_expiry_seconds`,
/// `tessera_proxy_decision_duration_seconds`. `caller` and `target` are SPIFFE IDs of
/// registered workloads: as many series as pairs that talk through this sidecar.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub svid_expiry_seconds: Gauge,
    /// Open connections closed because the identity they carried was withdrawn.
    pub closed_revoked: Counter,
    /// Seed 003's M3: from a request's arrival to its decision (token, path, policy).
    pub decision_seconds: Histogram,
    /// Handshakes completed with a verified client certificate (M2's successes at the inbound).
    pub handshakes: Counter,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            handshake_failures: Family::default(),
            svid_expiry_seconds: Gauge::default(),
            closed_revoked: Counter::default(),
            decision_seconds: Histogram::new(DECISION_BUCKETS),
            handshakes: Counter::default(),
        }
    }
}

/// From 5 µs to 50 ms: a decision is in memory, a token verification included.
const DECISION_BUCKETS: [f64; 10] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.05,
];

impl ProxyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tessera_proxy_requests",
            "Requests through the sidecar by caller, target and decision",
            m.requests.clone(),
        );
        registry.register(
            "tessera_proxy_handshake_failures",
            "Connections refused before any request, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "tessera_proxy_svid_expiry_seconds",
            "Seconds until the sidecar's X.509-SVID expires",
            m.svid_expiry_seconds.clone(),
        );
        registry.register(
            "tessera_proxy_decision_duration_seconds",
            "Time from a request's arrival at the inbound sidecar to its authorization decision",
            m.decision_seconds.clone(),
        );
        registry.register(
            "tessera_proxy_handshakes",
            "mTLS handshakes completed with a verified client certificate",
            m.handshakes.clone(),
        );
        registry.register(
            "tessera_proxy_connections_closed_revoked",
            "Open connections closed because the caller's identity was revoked",
            m.closed_revoked.clone(),
        );
        m
    }

    pub fn request(&self, caller: &str, target: &str, decision: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                caller: caller.to_owned(),
                target: target.to_owned(),
                decision,
            })
            .inc();
    }

    /// The request counters of one (caller, target) pair, looked up once per connection so that
    /// a request only increments (no label allocation on the hot path).
    pub fn for_pair(&self, caller: &str, target: &str) -> PairCounters {
        let c = |decision| {
            self.requests
                .get_or_create(&RequestLabels {
                    caller: caller.to_owned(),
                    target: target.to_owned(),
                    decision,
                })
                .clone()
        };
        PairCounters {
            allow: c("allow"),
            deny: c("deny"),
            limited: c("limited"),
            too_large: c("too_large"),
            bad_token: c("bad_token"),
        }
    }

    pub fn observe_decision(&self, took: std::time::Duration) {
        self.decision_seconds.observe(took.as_secs_f64());
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
