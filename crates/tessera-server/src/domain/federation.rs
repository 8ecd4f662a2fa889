//! Workload identity federation, the authority's side: an outside token (a CI job's, a
//! cluster's, another cloud's) is verified against a trust's keys and rules and mapped to exactly
//! one workload. The token endpoint's grants (`api/oauth/federated.rs`) and `federation test`
//! use it.

use serde_json::{Map, Value};
use tessera_core::manifest::Trust;
use tessera_core::SpiffeId;
use tessera_token::claims::{audience_contains, check_times, numeric_date, TimeRules};
use tessera_token::Unverified;

use crate::app::trust_keys::TrustKeyError;
use crate::app::{App, Snapshot};

/// A trust's mapping rules break the documented rules (checked at apply time).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuleError {
    #[error("trust `{trust}` rule {rule}: {reason}")]
    Rule {
        trust: String,
        rule: usize,
        reason: String,
    },
    #[error("trust `{trust}`: algorithm `{alg}` is not accepted (RS256, ES256, EdDSA)")]
    Algorithm { trust: String, alg: String },
}

/// Claims whose mapping values may be globs (`*` matches any run of characters). Everywhere
/// else a value is matched exactly; `apply` refuses a `*` in another claim.
pub(crate) const GLOB_CLAIMS: &[&str] = &[
    "sub",
    "ref",
    "head_ref",
    "base_ref",
    "environment",
    "job_workflow_ref",
    "workflow_ref",
];

/// Without `max_age`, an outside token older than this (by `iat`) is refused.
pub(crate) const DEFAULT_MAX_AGE: i64 = 3600;

/// Without `algorithms`, a trust accepts these (GitHub and Kubernetes sign RS256 by default).
pub(crate) const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256"];

pub(crate) const LEEWAY: i64 = 30;

/// Whether `claims` satisfy one rule's `claims` table (nested tables match nested objects).
fn rule_matches(
    rule: &std::collections::BTreeMap<String, toml::Value>,
    claims: &Map<String, Value>,
    top: bool,
) -> bool {
    rule.iter().all(|(name, want)| {
        let Some(have) = claims.get(name) else {
            return false;
        };
        match (want, have) {
            (toml::Value::String(w), Value::String(h)) => {
                if top && GLOB_CLAIMS.contains(&name.as_str()) && w.contains('*') {
                    tessera_core::glob::matches_segments(w, h, tessera_core::glob::CLAIM_SEPARATORS)
                } else {
                    w == h
                }
            }
            (toml::Value::Integer(w), Value::Number(h)) => h.as_i64() == Some(*w),
            // GitHub sends numeric ids as strings; a rule may write them as numbers.
            (toml::Value::Integer(w), Value::String(h)) => h.parse::<i64>().ok() == Some(*w),
            (toml::Value::Boolean(w), Value::Bool(h)) => w == h,
            (toml::Value::Table(w), Value::Object(h)) => {
                let w: std::collections::BTreeMap<String, toml::Value> =
                    w.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                rule_matches(&w, h, false)
            }
            _ => false,
        }
    })
}

/// A verified outside token, mapped to a workload.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub trust: Trust,
    pub rule: usize,
    pub workload: SpiffeId,
    pub subject: String,
    pub exp: i64,
    /// The token's `jti`, or a digest of it where it has none (for single use).
    pub replay_key: String,
    pub claims: Map<String, Value>,
}

/// Why an outside token was refused, and which trust (if any) judged it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub reason: String,
    pub trust: Option<String>,
    pub issuer: Option<String>,
}

impl Refusal {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            trust: None,
            issuer: None,
        }
    }
}

/// Verifies an outside token against the trusts for its issuer and maps it to a workload.
/// `only` restricts to one trust (for `federation test`).
pub(crate) async fn verify_outside(
    app: &App,
    snap: &Snapshot,
    token: &str,
    only: Option<&str>,
) -> Result<Mapped, Refusal> {
    let parsed = Unverified::parse(token)
        .map_err(|e| Refusal::new(format!("the subject token is not an acceptable JWT: {e}")))?;
    let iss = parsed
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new("the subject token has no `iss`"))?
        .to_owned();
    let candidates: Vec<&Trust> = snap
        .trusts
        .iter()
        .filter(|t| t.issuer == iss && only.is_none_or(|n| t.name.as_str() == n))
        .collect();
    if candidates.is_empty() {
        return Err(Refusal {
            reason: format!(
                "no trust for issuer `{}`",
                iss.chars().take(200).collect::<String>()
            ),
            trust: only.map(str::to_owned),
            issuer: Some(iss),
        });
    }
    let now = tessera_core::now_unix();
    let mut last = None;
    for t in candidates {
        let refuse = |reason: String| Refusal {
            reason,
            trust: Some(t.name.to_string()),
            issuer: Some(iss.clone()),
        };
        let allowed: Vec<&str> = if t.algorithms.is_empty() {
            DEFAULT_ALGORITHMS.to_vec()
        } else {
            t.algorithms.iter().map(String::as_str).collect()
        };
        if !allowed.contains(&parsed.alg.as_str()) {
            last = Some(refuse(format!(
                "trust `{}` does not accept algorithm `{}`",
                t.name,
                parsed.alg.as_str()
            )));
            continue;
        }
        let key = match app.trust_keys.key(t, parsed.kid.as_ref(), parsed.alg).await {
            Ok(k) => k,
            Err(e) => {
                if matches!(e, TrustKeyError::Discovery(_) | TrustKeyError::Fetch(_)) {
                    app.metrics
                        .trust_key_failures
                        .get_or_create(&crate::metrics::TrustLabels {
                            trust: t.name.to_string(),
                        })
                        .inc();
                }
                last = Some(refuse(format!("trust `{}`: {e}", t.name)));
                continue;
            }
        };
        if parsed.verify_with(&key).is_err() {
            last = Some(refuse(format!(
                "the subject token's signature does not verify with trust `{}`'s key",
                t.name
            )));
            continue;
        }
        let claims = &parsed.claims;
        if let Err(e) = check_times(
            claims,
            &TimeRules {
                now,
                leeway: LEEWAY,
                max_ahead: None,
            },
        ) {
            last = Some(refuse(format!("subject token: {e}")));
            continue;
        }
        let exp = match numeric_date(claims, "exp") {
            Ok(Some(e)) => e,
            _ => {
                last = Some(refuse("the subject token has no `exp`".into()));
                continue;
            }
        };
        let max_age = t.max_age.map_or(DEFAULT_MAX_AGE, |m| {
            i64::try_from(m.as_secs()).unwrap_or(i64::MAX)
        });
        match numeric_date(claims, "iat") {
            Ok(Some(iat)) if now - iat <= max_age => {}
            Ok(Some(_)) => {
                last = Some(refuse(format!(
                    "the subject token is older than trust `{}` allows ({max_age} s)",
                    t.name
                )));
                continue;
            }
            _ => {
                last = Some(refuse("the subject token has no `iat`".into()));
                continue;
            }
        }
        if let Err(e) = audience_contains(claims, &[t.audience.as_str()]) {
            last = Some(refuse(format!(
                "the subject token is not for this authority ({e}; trust `{}` wants `{}`)",
                t.name, t.audience
            )));
            continue;
        }
        let Some((rule, map)) = t
            .map
            .iter()
            .enumerate()
            .find(|(_, m)| rule_matches(&m.claims, claims, true))
        else {
            last = Some(refuse(format!(
                "no mapping rule of trust `{}` matches this token",
                t.name
            )));
            continue;
        };
        let replay_key = match claims.get("jti").and_then(Value::as_str) {
            Some(j) if !j.is_empty() && j.len() <= 256 => format!("jti:{j}"),
            _ => {
                let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                format!("sha256:{}", tessera_token::strict::b64_encode(d.as_ref()))
            }
        };
        return Ok(Mapped {
            trust: t.clone(),
            rule,
            workload: map.workload.clone(),
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(256)
                .collect(),
            exp,
            replay_key,
            claims: claims.clone(),
        });
    }
    Err(last.unwrap_or_else(|| Refusal::new("the subject token was refused")))
}

/// Checks a trust's mapping rules at apply time: globs only where documented.
pub(crate) fn check_rules(t: &Trust) -> Result<(), RuleError> {
    let rule = |i: usize, reason: String| RuleError::Rule {
        trust: t.name.to_string(),
        rule: i + 1,
        reason,
    };
    for (i, m) in t.map.iter().enumerate() {
        for (name, v) in &m.claims {
            if let toml::Value::String(s) = v {
                if s.contains('*') && !GLOB_CLAIMS.contains(&name.as_str()) {
                    return Err(rule(
                        i,
                        format!(
                            "claim `{name}` is matched exactly; `*` is allowed only in {}",
                            GLOB_CLAIMS.join(", ")
                        ),
                    ));
                }
            }
        }
        if m.claims.is_empty() {
            return Err(rule(i, "a rule must match at least one claim".into()));
        }
    }
    for a in &t.algorithms {
        if !matches!(a.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err(RuleError::Algorithm {
                trust: t.name.to_string(),
                alg: a.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_match_nested_claims_and_numbers_as_strings() {
        let rule: std::collections::BTreeMap<String, toml::Value> = toml::from_str(
            r#"
repository_id = 123
"kubernetes.io" = { namespace = "prod", serviceaccount = { name = "orders" } }
ref = "refs/heads/*"
"#,
        )
        .unwrap();
        let claims: Map<String, Value> = serde_json::from_value(json!({
            "repository_id": "123", "ref": "refs/heads/main",
            "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "orders", "uid": "u"}}
        }))
        .unwrap();
        assert!(rule_matches(&rule, &claims, true));
        let mut other = claims.clone();
        other["kubernetes.io"]["namespace"] = "dev".into();
        assert!(!rule_matches(&rule, &other, true));
        let mut other = claims;
        other.remove("repository_id");
        assert!(!rule_matches(&rule, &other, true));
        // A `*` in a claim not documented for globs matches only a literal `*`.
        let literal: std::collections::BTreeMap<String, toml::Value> =
            toml::from_str(r#"repository = "acme/*""#).unwrap();
        let c: Map<String, Value> =
            serde_json::from_value(json!({"repository": "acme/orders"})).unwrap();
        assert!(!rule_matches(&literal, &c, true));
    }
}
