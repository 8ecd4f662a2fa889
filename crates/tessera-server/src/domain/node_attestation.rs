//! Node attestation without a join token: a Kubernetes projected service-account token (audience:
//! this authority) verified against the cluster's service-account issuer — its OIDC discovery and
//! JWKS, or a `jwks_file` — as trusts verify outside tokens. The token must be bound to a pod and
//! name its node (Kubernetes 1.30+ puts `kubernetes.io.node` in such tokens); the agent's ID and
//! its node selectors are derived from the cluster's name, the node and the service account.

use serde_json::{Map, Value};
use tessera_core::manifest::{Cluster, Selector, Trust};
use tessera_core::{AgentId, Audience, TrustDomain};
use tessera_token::claims::{audience_contains, check_times, numeric_date, TimeRules};
use tessera_token::Unverified;

use crate::app::{App, Snapshot};
use crate::domain::federation::{DEFAULT_ALGORITHMS, LEEWAY};

/// Why a node's token was refused. The text goes to the agent and the audit trail; it never
/// holds the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeAttestError {
    #[error("the token is not an acceptable JWT: {0}")]
    Malformed(String),
    #[error("no `[[cluster]]` has the token's issuer `{0}`")]
    UnknownIssuer(String),
    #[error("cluster `{cluster}` does not accept algorithm `{alg}`")]
    Algorithm { cluster: String, alg: String },
    #[error("cluster `{cluster}`: {reason}")]
    Key { cluster: String, reason: String },
    #[error("the token's signature does not verify with cluster `{0}`'s keys")]
    Signature(String),
    #[error("the token is not valid now: {0}")]
    Time(String),
    #[error("the token is not for this authority ({0})")]
    Audience(String),
    #[error("the token is not a pod-bound service-account token: {0}")]
    Claims(String),
    #[error("service account `{namespace}:{name}` may not attest agents in cluster `{cluster}`")]
    ServiceAccount {
        cluster: String,
        namespace: String,
        name: String,
    },
    #[error("cluster `{cluster}`: {reason}")]
    Unusable { cluster: String, reason: String },
    #[error("cluster `{cluster}`'s API server did not confirm the token (TokenReview): {reason}")]
    Review { cluster: String, reason: String },
}

/// An agent attested by its node.
#[derive(Debug)]
pub(crate) struct AttestedNode {
    pub cluster: String,
    pub td: TrustDomain,
    pub agent_id: AgentId,
    pub selectors: Vec<Selector>,
    pub node: String,
    pub pod: String,
    pub exp: i64,
}

/// A cluster's issuer as the trust-key machinery knows issuers.
fn as_trust(c: &Cluster, audience: &str) -> Result<Trust, String> {
    Ok(Trust {
        name: c.name.clone(),
        issuer: c.issuer.clone(),
        jwks: c.jwks.clone(),
        audience: Audience::parse(audience).map_err(|e| e.to_string())?,
        algorithms: vec![],
        max_age: None,
        single_use: false,
        private_network: c.private_network,
        map: vec![],
        source: c.source.clone(),
    })
}

/// `kubernetes.io.<path>` as a string.
fn k8s_claim<'a>(claims: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let mut v = claims.get("kubernetes.io")?;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

/// The agent's name: `k8s_<cluster>_<node>`, or, past the 64 characters an agent ID may have,
/// the node's name cut short and a digest of the whole so two nodes never share one.
pub(crate) fn agent_id(cluster: &str, node: &str) -> Result<AgentId, String> {
    let full = format!("k8s_{cluster}_{node}");
    if full.len() <= 64 {
        return AgentId::parse(&full).map_err(|e| e.to_string());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, full.as_bytes());
    let hex: String = d
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = 64 - hex.len() - 1;
    AgentId::parse(&format!("{}_{hex}", full.get(..keep).unwrap_or(&full)))
        .map_err(|e| e.to_string())
}

/// Verifies a projected service-account token and derives the agent it attests.
pub(crate) async fn k8s_psat(
    app: &App,
    snap: &Snapshot,
    token: &str,
) -> Result<AttestedNode, NodeAttestError> {
    let parsed = Unverified::parse(token).map_err(|e| NodeAttestError::Malformed(e.to_string()))?;
    let iss = parsed
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| NodeAttestError::Malformed("it has no `iss`".into()))?;
    let cluster = snap
        .clusters
        .iter()
        .find(|c| c.issuer == iss)
        .ok_or_else(|| NodeAttestError::UnknownIssuer(iss.chars().take(200).collect()))?;
    let name = cluster.name.to_string();
    let unusable = |reason: String| NodeAttestError::Unusable {
        cluster: name.clone(),
        reason,
    };
    let td = app
        .serves(cluster.trust_domain.as_str())
        .ok_or_else(|| {
            unusable(format!(
                "trust domain `{}` is not served here",
                cluster.trust_domain
            ))
        })?
        .clone();
    if !DEFAULT_ALGORITHMS.contains(&parsed.alg.as_str()) {
        return Err(NodeAttestError::Algorithm {
            cluster: name,
            alg: parsed.alg.as_str().to_owned(),
        });
    }
    let audiences = app.issuer_urls(&td);
    let trust =
        as_trust(cluster, audiences.first().map_or("", String::as_str)).map_err(unusable)?;
    let key = app
        .cluster_keys
        .key(&trust, parsed.kid.as_ref(), parsed.alg)
        .await
        .map_err(|e| NodeAttestError::Key {
            cluster: name.clone(),
            reason: e.to_string(),
        })?;
    parsed
        .verify_with(&key)
        .map_err(|_| NodeAttestError::Signature(name.clone()))?;
    let claims = &parsed.claims;
    let now = tessera_core::now_unix();
    check_times(
        claims,
        &TimeRules {
            now,
            leeway: LEEWAY,
            max_ahead: None,
        },
    )
    .map_err(|e| NodeAttestError::Time(e.to_string()))?;
    let exp = match numeric_date(claims, "exp") {
        Ok(Some(e)) => e,
        _ => return Err(NodeAttestError::Time("it has no `exp`".into())),
    };
    let wanted: Vec<&str> = audiences.iter().map(String::as_str).collect();
    audience_contains(claims, &wanted).map_err(|e| {
        NodeAttestError::Audience(format!(
            "{e}; the projected token's audience must be `{}`",
            wanted.join("` or `")
        ))
    })?;
    let claim = |path: &[&str]| {
        k8s_claim(claims, path)
            .filter(|v| !v.is_empty() && v.len() <= 253)
            .ok_or_else(|| {
                NodeAttestError::Claims(format!("no `kubernetes.io.{}`", path.join(".")))
            })
    };
    let namespace = claim(&["namespace"])?;
    let sa = claim(&["serviceaccount", "name"])?;
    let pod = claim(&["pod", "name"])?;
    let node = claim(&["node", "name"]).map_err(|_| {
        NodeAttestError::Claims(
            "no `kubernetes.io.node.name` (the node is named in tokens from Kubernetes 1.30 on)"
                .into(),
        )
    })?;
    let sub = claims.get("sub").and_then(Value::as_str);
    if sub != Some(format!("system:serviceaccount:{namespace}:{sa}").as_str()) {
        return Err(NodeAttestError::Claims(
            "`sub` does not name the token's service account".into(),
        ));
    }
    if !cluster
        .service_accounts
        .iter()
        .any(|a| a.namespace == namespace && a.name == sa)
    {
        return Err(NodeAttestError::ServiceAccount {
            cluster: name,
            namespace: namespace.chars().take(64).collect(),
            name: sa.chars().take(64).collect(),
        });
    }
    if let Some(review) = &cluster.token_review {
        token_review(review, token, &wanted, sub.unwrap_or_default(), node)
            .await
            .map_err(|reason| NodeAttestError::Review {
                cluster: name.clone(),
                reason,
            })?;
    }
    let selector = |kind: &str, v: &str| {
        Selector::parse(&format!("k8s:{kind}:{v}"))
            .map_err(|e| NodeAttestError::Claims(e.to_string()))
    };
    let selectors = vec![
        selector("cluster", &name)?,
        selector("agent_ns", namespace)?,
        selector("agent_sa", sa)?,
        selector("node_name", node)?,
    ];
    let agent_id = agent_id(&name, node).map_err(NodeAttestError::Claims)?;
    Ok(AttestedNode {
        cluster: name,
        td,
        agent_id,
        selectors,
        node: node.to_owned(),
        pod: pod.chars().take(253).collect(),
        exp,
    })
}

/// The most a TokenReview may take.
const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks the cluster's API server whether `token` is valid now (its pod and service account
/// still exist) for one of `audiences`, and for the same user and node the token names.
async fn token_review(
    review: &tessera_core::manifest::TokenReview,
    token: &str,
    audiences: &[&str],
    sub: &str,
    node: &str,
) -> Result<(), String> {
    let credential = std::fs::read_to_string(&review.token_file)
        .map_err(|e| format!("cannot read `{}`: {e}", review.token_file))?;
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REVIEW_TIMEOUT);
    if let Some(pem) = &review.ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("its `ca_file` is not PEM: {e}"))?;
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    let client = b.build().map_err(|e| e.to_string())?;
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/tokenreviews",
        review.url.trim_end_matches('/')
    );
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    });
    let resp = client
        .post(&url)
        .bearer_auth(credential.trim())
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("it answered {}", status.as_u16()));
    }
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("its answer is not a TokenReview: {e}"))?;
    let at = |path: &str| v.pointer(path);
    if at("/status/authenticated") != Some(&Value::Bool(true)) {
        let why = at("/status/error")
            .and_then(Value::as_str)
            .unwrap_or("not authenticated");
        return Err(why.chars().take(200).collect());
    }
    if at("/status/user/username").and_then(Value::as_str) != Some(sub) {
        return Err("it names another user".into());
    }
    if let Some(aud) = at("/status/audiences").and_then(Value::as_array) {
        if !aud
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.contains(&a)))
        {
            return Err("it confirms the token for another audience".into());
        }
    }
    // JSON pointer escapes `/` as `~1`.
    if let Some(n) =
        at("/status/user/extra/authentication.kubernetes.io~1node-name").and_then(Value::as_array)
    {
        if n.first().and_then(Value::as_str) != Some(node) {
            return Err("it names another node".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_valid_and_distinct_however_long_the_node_name() {
        assert_eq!(
            agent_id("prod", "node-a").unwrap().as_str(),
            "k8s_prod_node-a"
        );
        let long_a = format!("{}.a.compute.internal", "n".repeat(60));
        let long_b = format!("{}.b.compute.internal", "n".repeat(60));
        let a = agent_id("prod", &long_a).unwrap();
        let b = agent_id("prod", &long_b).unwrap();
        assert!(a.as_str().len() <= 64 && b.as_str().len() <= 64);
        assert_ne!(a, b);
        assert_eq!(
            a,
            agent_id("prod", &long_a).unwrap(),
            "the same node, the same agent"
        );
    }
}
