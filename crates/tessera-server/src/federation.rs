//! Workload identity federation: an outside token (a CI job's, a cluster's, another cloud's) is
//! verified against a trust's keys and rules, mapped to exactly one workload, and exchanged for a
//! Tessera access token (RFC 8693 token exchange, RFC 7523 `jwt-bearer`). Also RFC 8693
//! delegation: a service trades a token it received for one to a downstream service on the
//! original caller's behalf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};
use tessera_core::manifest::Trust;
use tessera_core::{Kid, SpiffeId};
use tessera_store::{AssertionClaim, AuditEvent};
use tessera_token::claims::{audience_contains, check_times, numeric_date, TimeRules};
use tessera_token::{Alg, PublicKey, Unverified};
use tessera_verify::{JwksCache, KeySet};

use crate::error::{ApiError, OAuthCode};
use crate::oauth::{mint, Form, Issuer, MintOptions};
use crate::state::Snapshot;
use crate::App;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TT_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const TT_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Claims whose mapping values may be globs (`*` matches any run of characters). Everywhere
/// else a value is matched exactly; `apply` refuses a `*` in another claim.
pub const GLOB_CLAIMS: &[&str] = &[
    "sub",
    "ref",
    "head_ref",
    "base_ref",
    "environment",
    "job_workflow_ref",
    "workflow_ref",
];
/// Without `max_age`, an outside token older than this (by `iat`) is refused.
pub const DEFAULT_MAX_AGE: i64 = 3600;
/// Without `algorithms`, a trust accepts these (GitHub and Kubernetes sign RS256 by default).
pub const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256"];
const LEEWAY: i64 = 30;
/// After a failed discovery, callers are refused at once for this long before it is retried.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// Where a trust's keys come from: its `jwks_file`, or the issuer's discovery document.
#[derive(Debug)]
enum KeySource {
    Static(Arc<KeySet>),
    Discovered {
        cache: tokio::sync::OnceCell<Arc<JwksCache>>,
        failed: Mutex<Option<(Instant, String)>>,
    },
}

/// Key sources by trust, rebuilt when a trust's issuer or key file changes.
#[derive(Debug, Default)]
pub struct TrustKeys {
    by_name: Mutex<HashMap<String, (String, Arc<KeySource>)>>,
    client: reqwest::Client,
}

fn fingerprint(t: &Trust) -> String {
    format!("{}\n{}", t.issuer, t.jwks.as_deref().unwrap_or(""))
}

impl TrustKeys {
    fn source(&self, t: &Trust) -> Result<Arc<KeySource>, String> {
        let fp = fingerprint(t);
        let mut map = match self.by_name.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some((f, s)) = map.get(t.name.as_str()) {
            if *f == fp {
                return Ok(s.clone());
            }
        }
        let source = Arc::new(match &t.jwks {
            Some(text) => KeySource::Static(Arc::new(
                KeySet::from_jwks_with_rsa(text.as_bytes()).map_err(|e| e.to_string())?,
            )),
            None => KeySource::Discovered {
                cache: tokio::sync::OnceCell::new(),
                failed: Mutex::new(None),
            },
        });
        map.insert(t.name.to_string(), (fp, source.clone()));
        Ok(source)
    }

    /// The issuer's JWKS cache, discovering `jwks_uri` from its OpenID/OAuth metadata once.
    async fn discovered(
        &self,
        t: &Trust,
        cache: &tokio::sync::OnceCell<Arc<JwksCache>>,
        failed: &Mutex<Option<(Instant, String)>>,
    ) -> Result<Arc<JwksCache>, String> {
        if let Some(c) = cache.get() {
            return Ok(c.clone());
        }
        if let Ok(f) = failed.lock() {
            if let Some((at, why)) = f.as_ref() {
                if at.elapsed() < DISCOVERY_RETRY {
                    return Err(why.clone());
                }
            }
        }
        let result = cache
            .get_or_try_init(|| async {
                let jwks_uri = discover(&self.client, &t.issuer).await?;
                let mut c = JwksCache::with_client(jwks_uri, self.client.clone());
                c.allow_rsa = true;
                Ok::<_, String>(Arc::new(c))
            })
            .await
            .cloned();
        if let Err(why) = &result {
            if let Ok(mut f) = failed.lock() {
                *f = Some((Instant::now(), why.clone()));
            }
        }
        result
    }

    /// The key `kid` (or the only key, when the token names none) of trust `t`.
    async fn key(&self, t: &Trust, kid: Option<&Kid>, alg: Alg) -> Result<PublicKey, String> {
        match &*self.source(t)? {
            KeySource::Static(set) => pick(set, kid, alg),
            KeySource::Discovered { cache, failed } => {
                let cache = self.discovered(t, cache, failed).await?;
                match kid {
                    Some(k) => cache.key(k).await.map_err(|e| e.to_string()),
                    None => {
                        // No kid: only an issuer with a single key can be used.
                        let set = cache.current().await;
                        pick(&set, None, alg)
                    }
                }
            }
        }
    }

    /// What `describe trust` shows about the keys: their ids and algorithms, and for discovered
    /// keys how long ago they were fetched.
    pub async fn describe(&self, t: &Trust) -> Value {
        match self.source(t) {
            Err(e) => json!({"error": e}),
            Ok(src) => match &*src {
                KeySource::Static(set) => json!({
                    "source": "jwks_file",
                    "keys": set.keys().map(|k| json!({"kid": k.kid(), "alg": k.alg().as_str()})).collect::<Vec<_>>(),
                }),
                KeySource::Discovered { cache, failed } => {
                    let last_error = failed
                        .lock()
                        .ok()
                        .and_then(|f| f.as_ref().map(|(_, w)| w.clone()));
                    match cache.get() {
                        None => {
                            json!({"source": "discovery", "fetched": false, "last_error": last_error})
                        }
                        Some(c) => json!({
                            "source": "discovery",
                            "fetched_seconds_ago": c.fetched_at().await.map(|t| t.elapsed().as_secs()),
                            "keys": c.current().await.keys().map(|k| json!({"kid": k.kid(), "alg": k.alg().as_str()})).collect::<Vec<_>>(),
                            "last_error": last_error,
                        }),
                    }
                }
            },
        }
    }
}

fn pick(set: &KeySet, kid: Option<&Kid>, alg: Alg) -> Result<PublicKey, String> {
    match kid {
        Some(k) => set
            .get(k)
            .cloned()
            .ok_or_else(|| format!("the issuer has no key `{k}`")),
        None => {
            let mut of_alg = set.keys().filter(|k| k.alg() == alg);
            match (of_alg.next(), of_alg.next()) {
                (Some(k), None) => Ok(k.clone()),
                _ => Err("the token names no `kid` and the issuer has several keys".into()),
            }
        }
    }
}

/// `jwks_uri` from `<issuer>/.well-known/openid-configuration` (or the RFC 8414 document),
/// whose `issuer` must be the trust's issuer exactly.
async fn discover(client: &reqwest::Client, issuer: &str) -> Result<reqwest::Url, String> {
    let base = issuer.trim_end_matches('/');
    let mut last = String::new();
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let url = format!("{base}{path}");
        let resp = match client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                last = format!("`{url}` answered HTTP {}", r.status());
                continue;
            }
            Err(e) => {
                last = format!("`{url}` is unreachable: {}", e.without_url());
                continue;
            }
        };
        if resp.content_length().is_some_and(|n| n > 256 * 1024) {
            return Err(format!("`{url}` is larger than 256 KiB"));
        }
        let doc: Value = resp
            .json()
            .await
            .map_err(|_| format!("`{url}` is not a JSON document"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(format!("`{url}` names another issuer"));
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`{url}` has no `jwks_uri`"))?;
        return reqwest::Url::parse(jwks).map_err(|_| format!("`jwks_uri` `{jwks}` is not a URL"));
    }
    Err(format!("cannot discover the keys of `{issuer}`: {last}"))
}

/// A glob with `*` only.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return false;
    };
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = text.get(first.len()..text.len() - last.len()).unwrap_or("");
    for mid in parts.iter().skip(1).take(parts.len().saturating_sub(2)) {
        match rest.find(mid) {
            Some(i) => rest = rest.get(i + mid.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

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
                    glob_match(w, h)
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
pub struct Mapped {
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
pub struct Refusal {
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
pub async fn verify_outside(
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

async fn audit_refusal(app: &App, grant_type: &str, r: &Refusal) {
    let event = AuditEvent {
        kind: "federation.refused".into(),
        actor: r
            .trust
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |t| format!("trust:{t}")),
        subject: r
            .issuer
            .clone()
            .unwrap_or_else(|| "unknown".into())
            .chars()
            .take(200)
            .collect(),
        outcome: "denied".into(),
        detail: json!({"reason": r.reason, "grant_type": grant_type}),
    };
    if let Err(e) = app.audit.append(event).await {
        tracing::error!(error = %e, "could not record a refused exchange");
    }
}

fn grant_err(reason: impl Into<String>) -> ApiError {
    ApiError::oauth(OAuthCode::InvalidGrant, reason)
}

fn invalid_request(reason: impl Into<String>) -> ApiError {
    ApiError::oauth(OAuthCode::InvalidRequest, reason)
}

/// RFC 8693 token exchange and RFC 7523 `jwt-bearer`.
pub async fn exchange(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
    grant_type: &'static str,
) -> Result<Value, ApiError> {
    let (token, token_type) = if grant_type == JWT_BEARER {
        let a = form
            .get("assertion")
            .ok_or_else(|| invalid_request("`assertion` is missing"))?;
        (a, TT_JWT)
    } else {
        let t = form
            .get("subject_token")
            .ok_or_else(|| invalid_request("`subject_token` is missing"))?;
        let tt = form
            .get("subject_token_type")
            .ok_or_else(|| invalid_request("`subject_token_type` is missing"))?;
        if let Some(r) = form.get("requested_token_type") {
            if r != TT_ACCESS_TOKEN && r != TT_JWT {
                return Err(invalid_request(
                    "only access tokens are issued (`requested_token_type` …:access_token)",
                ));
            }
        }
        (t, tt)
    };
    match token_type {
        TT_JWT | TT_ID_TOKEN => {
            if form.get("actor_token").is_some() {
                return Err(invalid_request(
                    "`actor_token` goes with a Tessera access token as `subject_token` (delegation)",
                ));
            }
            federated(app, snap, issuer, form, token, grant_type).await
        }
        TT_ACCESS_TOKEN if grant_type == TOKEN_EXCHANGE => {
            crate::delegation::delegate(app, snap, issuer, headers, form, token).await
        }
        other => Err(invalid_request(format!(
            "`subject_token_type` `{}` is not accepted (…:jwt, …:id_token, or …:access_token for delegation)",
            other.chars().take(80).collect::<String>()
        ))),
    }
}

async fn federated(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    form: &Form,
    token: &str,
    grant_type: &'static str,
) -> Result<Value, ApiError> {
    let mapped = match verify_outside(app, snap, token, None).await {
        Ok(m) => m,
        Err(r) => {
            audit_refusal(app, grant_type, &r).await;
            return Err(grant_err(r.reason));
        }
    };
    let trust = mapped.trust.name.to_string();
    let client_id = format!("trust:{trust}");
    let mut detail = Map::new();
    detail.insert("trust".into(), trust.clone().into());
    detail.insert("outside_iss".into(), mapped.trust.issuer.clone().into());
    detail.insert("outside_sub".into(), mapped.subject.clone().into());
    detail.insert("rule".into(), (mapped.rule + 1).into());
    let options = MintOptions {
        context: tessera_policy::IssueContext {
            actor: None,
            trust: Some(trust.clone()),
        },
        act: None,
        not_after: None,
        subject: None,
        detail,
        subject_iat: numeric_date(&mapped.claims, "iat").ok().flatten(),
        cnf: None,
    };
    let minted = match mint(
        snap,
        issuer,
        &mapped.workload,
        &client_id,
        "federation",
        form,
        grant_type,
        &options,
    ) {
        Ok(m) => m,
        Err(denied) => return Err(crate::oauth::record_denial(app, denied, None).await),
    };
    // Fail closed, and single use where the trust asks: the outside token is claimed in the same
    // commit as the issuance record.
    if mapped.trust.single_use {
        let claim = AssertionClaim {
            client_id: client_id.clone(),
            jti: mapped.replay_key.clone(),
            expires_at: mapped.exp + LEEWAY,
        };
        match app.audit.append_claimed(claim, minted.event.clone()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let r = Refusal {
                    reason: format!(
                        "this outside token was already exchanged (trust `{trust}` is single-use)"
                    ),
                    trust: Some(trust),
                    issuer: Some(mapped.trust.issuer.clone()),
                };
                audit_refusal(app, grant_type, &r).await;
                return Err(grant_err(r.reason));
            }
            Err(e) => return Err(ApiError::unavailable(e)),
        }
    } else {
        app.audit
            .append(minted.event.clone())
            .await
            .map_err(ApiError::unavailable)?;
    }
    Ok(minted.response())
}

/// Checks a trust's mapping rules at apply time: globs only where documented.
pub fn check_rules(t: &Trust) -> Result<(), String> {
    for (i, m) in t.map.iter().enumerate() {
        for (name, v) in &m.claims {
            if let toml::Value::String(s) = v {
                if s.contains('*') && !GLOB_CLAIMS.contains(&name.as_str()) {
                    return Err(format!(
                        "trust `{}` rule {}: claim `{name}` is matched exactly; `*` is allowed only in {}",
                        t.name,
                        i + 1,
                        GLOB_CLAIMS.join(", ")
                    ));
                }
            }
        }
        if m.claims.is_empty() {
            return Err(format!(
                "trust `{}` rule {}: a rule must match at least one claim",
                t.name,
                i + 1
            ));
        }
    }
    for a in &t.algorithms {
        if !matches!(a.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err(format!(
                "trust `{}`: algorithm `{a}` is not accepted (RS256, ES256, EdDSA)",
                t.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("refs/heads/*", "refs/heads/main"));
        assert!(glob_match(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/orders:ref:refs/heads/main"
        ));
        assert!(!glob_match(
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/orders:ref:refs/heads/dev"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXcYYb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

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
        let mut other = claims.clone();
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
