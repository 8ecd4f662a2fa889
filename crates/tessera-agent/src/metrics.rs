//! The agent's Prometheus metrics, for `--admin-listen`: what it holds and how fresh it is
//! (seed 003's M5 for workload SVIDs and the bundle, and the agent's link to the authority).
//! Every series is per agent; none is labelled by workload.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Agent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithinLabels {
    within: &'static str,
}

/// The marks seed 004 asks expiry alerts at.
const MARKS: [(&str, i64); 3] = [("6h", 6 * 3600), ("24h", 24 * 3600), ("72h", 72 * 3600)];

#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    registrations: Gauge,
    svids: Gauge,
    svid_expiry: Gauge,
    svids_expiring: Family<WithinLabels, Gauge>,
    bundle_expiry: Gauge,
    sync_age: Gauge,
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tessera_agent_registrations",
            "Registrations the agent serves",
            m.registrations.clone(),
        );
        registry.register(
            "tessera_agent_svids",
            "Workload X.509-SVIDs the agent holds",
            m.svids.clone(),
        );
        registry.register(
            "tessera_agent_svid_expiry_seconds",
            "Seconds until the first of the held workload X.509-SVIDs expires",
            m.svid_expiry.clone(),
        );
        registry.register(
            "tessera_agent_svids_expiring",
            "Held workload X.509-SVIDs that expire within 6h, 24h or 72h",
            m.svids_expiring.clone(),
        );
        registry.register(
            "tessera_agent_bundle_expiry_seconds",
            "Seconds until the first CA certificate of the agent's trust bundle expires",
            m.bundle_expiry.clone(),
        );
        registry.register(
            "tessera_agent_sync_age_seconds",
            "Seconds since the agent last synced with the authority (it long-polls: at most 30 s when healthy)",
            m.sync_age.clone(),
        );
        m
    }

    /// Reads the agent's state as of `now` (unix seconds).
    pub fn refresh(&self, agent: &Agent, now: i64) {
        let state = agent.state();
        self.registrations
            .set(i64::try_from(state.registrations.len()).unwrap_or(i64::MAX));
        self.svids
            .set(i64::try_from(state.svids.len()).unwrap_or(i64::MAX));
        let left: Vec<i64> = state.svids.values().map(|s| s.not_after - now).collect();
        self.svid_expiry
            .set(left.iter().copied().min().unwrap_or(0));
        for (within, secs) in MARKS {
            let n = left.iter().filter(|l| **l <= secs).count();
            self.svids_expiring
                .get_or_create(&WithinLabels { within })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let bundle = state
            .bundle
            .iter()
            .filter_map(|der| tessera_ca::validity(der))
            .map(|(_, not_after)| not_after - now)
            .min();
        self.bundle_expiry.set(bundle.unwrap_or(0));
        let last = agent.last_sync();
        self.sync_age
            .set(if last == 0 { now } else { now - last }.max(0));
    }

    /// Refreshes every few seconds, for as long as the agent runs.
    pub async fn keep_current(self, agent: Arc<Agent>) {
        loop {
            self.refresh(&agent, tessera_core::now_unix());
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}
