//! The authority's Prometheus metrics: the SLIs of issuance, client authentication, review debt
//! and key age.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IssueLabels {
    pub grant_type: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TdLabels {
    pub trust_domain: String,
}

/// A configured trust's name: as many series as trusts in the identity files.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TrustLabels {
    pub trust: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub point: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PointLabels {
    pub point: &'static str,
}

/// Policy decisions made by the authority, by result (`error` is a policy that failed to
/// evaluate, which denied), and requests refused by a rate limit.
#[derive(Clone, Debug, Default)]
pub struct PolicyCounters {
    pub decisions: Family<DecisionLabels, Counter>,
    pub rate_limited: Family<PointLabels, Counter>,
}

impl PolicyCounters {
    pub fn decision(&self, point: &'static str, d: &tessera_policy::Decision) {
        let result = if !d.errors.is_empty() {
            "error"
        } else if d.allowed {
            "allow"
        } else {
            "deny"
        };
        self.decisions
            .get_or_create(&DecisionLabels { point, result })
            .inc();
    }

    pub fn limited(&self, point: &'static str) {
        self.rate_limited
            .get_or_create(&PointLabels { point })
            .inc();
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    pub policy: PolicyCounters,
    pub tokens: Family<IssueLabels, Counter>,
    pub issue_seconds: Histogram,
    pub client_auth_failures: Family<MethodLabels, Counter>,
    pub grants_overdue: Gauge,
    pub key_age_seconds: Family<TdLabels, Gauge>,
    pub audit_failures: Counter,
    /// PKCS#11 calls that failed because the token or its session went away (each failed a
    /// request closed, or a reconnection attempt).
    pub key_custody_failures: Counter,
    /// Reconnections to the PKCS#11 token after it failed.
    pub key_custody_reconnects: Counter,
    /// Refusals counted into a window's summary instead of a record of their own.
    pub refusals_aggregated: Counter,
    pub svids_issued: Counter,
    /// An outside issuer's keys could not be discovered or fetched (federation issuer outage).
    pub trust_key_failures: Family<TrustLabels, Counter>,
    /// X.509-SVID requests refused (not registered to the agent, a bad CSR): M1 for SVIDs.
    pub svids_refused: Counter,
    /// One agent's sign request, from arrival to the durable record (M6 for SVIDs).
    pub svid_sign_seconds: Histogram,
    pub ca_expiry_seconds: Family<TdLabels, Gauge>,
    pub secret_reads: Family<ResultLabels, Counter>,
    pub secrets_overdue: Family<ReasonLabels, Gauge>,
    /// Seed 003's "revocation propagation time", the authority's half: from the commit (on any
    /// server of the database) to the change going out on this server's stream.
    pub revocation_propagation: Histogram,
    pub change_subscribers: Gauge,
    /// Subscribers that fell too far behind the live stream and were sent a snapshot instead.
    pub change_lagged: Counter,
    /// A federated trust domain's bundle could not be fetched, or was refused (the last good one
    /// stays in force).
    pub bundle_refresh_failures: Family<TdLabels, Counter>,
    /// Seconds since a federated trust domain's bundle was last confirmed (fetched and good).
    pub bundle_age_seconds: Family<TdLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            policy: PolicyCounters::default(),
            tokens: Family::default(),
            issue_seconds: Histogram::new([
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
            client_auth_failures: Family::default(),
            grants_overdue: Gauge::default(),
            key_age_seconds: Family::default(),
            audit_failures: Counter::default(),
            key_custody_failures: Counter::default(),
            key_custody_reconnects: Counter::default(),
            refusals_aggregated: Counter::default(),
            svids_issued: Counter::default(),
            svids_refused: Counter::default(),
            trust_key_failures: Family::default(),
            svid_sign_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
            ]),
            ca_expiry_seconds: Family::default(),
            secret_reads: Family::default(),
            secrets_overdue: Family::default(),
            revocation_propagation: Histogram::new(tessera_core::change_api::PROPAGATION_BUCKETS),
            change_subscribers: Gauge::default(),
            change_lagged: Counter::default(),
            bundle_refresh_failures: Family::default(),
            bundle_age_seconds: Family::default(),
        };
        registry.register(
            "tessera_federated_bundle_refresh_failures",
            "Refreshes of a federated trust domain's bundle that failed or were refused",
            m.bundle_refresh_failures.clone(),
        );
        registry.register(
            "tessera_federated_bundle_age_seconds",
            "Seconds since a federated trust domain's bundle was last fetched and accepted",
            m.bundle_age_seconds.clone(),
        );
        registry.register(
            "tessera_tokens",
            "Token requests by grant type and result",
            m.tokens.clone(),
        );
        registry.register(
            "tessera_token_issue_duration_seconds",
            "Time from request to response for token requests",
            m.issue_seconds.clone(),
        );
        registry.register(
            "tessera_client_auth_failures",
            "Failed client authentications by method",
            m.client_auth_failures.clone(),
        );
        registry.register(
            "tessera_refusals_aggregated",
            "Refusals of unauthenticated callers counted into a per-minute summary record instead of one record each",
            m.refusals_aggregated.clone(),
        );
        registry.register(
            "tessera_grants_overdue_review",
            "Grants whose review_by date has passed",
            m.grants_overdue.clone(),
        );
        registry.register(
            "tessera_signing_key_age_seconds",
            "Age of the key that signs now, per trust domain",
            m.key_age_seconds.clone(),
        );
        registry.register(
            "tessera_audit_write_failures",
            "Audit writes that failed (each one refused its request)",
            m.audit_failures.clone(),
        );
        registry.register(
            "tessera_key_custody_failures",
            "PKCS#11 calls that failed because the token or its session went away",
            m.key_custody_failures.clone(),
        );
        registry.register(
            "tessera_key_custody_reconnects",
            "Reconnections to the PKCS#11 token after it failed",
            m.key_custody_reconnects.clone(),
        );
        registry.register(
            "tessera_x509_svids_issued",
            "X.509-SVIDs signed for workloads",
            m.svids_issued.clone(),
        );
        registry.register(
            "tessera_x509_svids_refused",
            "X.509-SVID requests refused (not registered to the agent, a CSR that asks for more)",
            m.svids_refused.clone(),
        );
        registry.register(
            "tessera_trust_key_failures",
            "Federated exchanges refused because the outside issuer's keys could not be discovered or fetched, by trust",
            m.trust_key_failures.clone(),
        );
        registry.register(
            "tessera_svid_sign_duration_seconds",
            "Time from an agent's sign request to its durable record",
            m.svid_sign_seconds.clone(),
        );
        registry.register(
            "tessera_policy_decisions",
            "Policy decisions by point (issue) and result (allow, deny, error: a policy failed to evaluate, which denied)",
            m.policy.decisions.clone(),
        );
        registry.register(
            "tessera_rate_limited",
            "Requests refused by a rate limit, by point",
            m.policy.rate_limited.clone(),
        );
        registry.register(
            "tessera_ca_expiry_seconds",
            "Seconds until the signing CA of each trust domain expires",
            m.ca_expiry_seconds.clone(),
        );
        registry.register(
            "tessera_secret_reads",
            "Secret value reads by workloads, by result (ok, denied)",
            m.secret_reads.clone(),
        );
        registry.register(
            "tessera_secrets_overdue",
            "Secrets overdue for rotation or whose current version has expired, by reason",
            m.secrets_overdue.clone(),
        );
        registry.register(
            "tessera_revocation_propagation_seconds",
            "Time from a change that withdraws trust being committed (on any server of the database) to its publication on this server's change stream",
            m.revocation_propagation.clone(),
        );
        registry.register(
            "tessera_change_subscribers",
            "Subscribers connected to this server's change stream",
            m.change_subscribers.clone(),
        );
        registry.register(
            "tessera_change_subscribers_lagged",
            "Subscribers that fell behind the live change stream and were sent a snapshot",
            m.change_lagged.clone(),
        );
        m
    }
}
