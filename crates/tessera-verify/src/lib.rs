//! Verify Tessera tokens where a call lands.
//!
//! RFC 8725 in full: the algorithm is taken from the key, never from the header; only
//! asymmetric algorithms exist; `crit`, `jku`, `x5u` and embedded keys are refused; duplicate JSON
//! members and non-canonical base64url are refused; size is capped; `typ` separates access tokens
//! (RFC 9068, `at+jwt`) from JWT-SVIDs; `iss` must match exactly; `aud` must contain the expected
//! audience; `exp` is required and leeway is explicit and small.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tessera_verify::{JwksCache, Verifier, VerifierConfig};
//! let keys = JwksCache::new("http://127.0.0.1:8443/jwks".parse()?);
//! let verifier = Verifier::new(VerifierConfig::access_token("http://127.0.0.1:8443", "spiffe://example.org/api")?, keys);
//! let verified = verifier.verify("eyJ...").await?;
//! verified.require_scope("inventory:read")?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tessera_core::{Audience, Kid};
use tessera_token::claims::{
    audience_contains, check_times, numeric_date, string_claim, TimeRules,
};
use tessera_token::{JwkSet, PublicKey, TokenError, Unverified};
use tokio::sync::{Mutex, RwLock};

pub mod authorize;
pub mod changes;
mod layer;
pub mod logged;
mod metrics;
pub use authorize::{actor_chain, Authorizer, AuthzDecision, AuthzMetrics, BundleSource};
pub use changes::{spawn_feed, FeedMetrics, Freshness, RevocationState, Withdrawn};
pub use layer::{RequireToken, RequireTokenLayer};
pub use metrics::VerifyMetrics;
pub use tessera_policy::{Authn, Env, PolicyBundle};

/// Which kind of token a verifier accepts; the rules of one are never applied to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// RFC 9068 access token: `typ` must be `at+jwt`.
    AccessToken,
    /// SPIFFE JWT-SVID: `typ` absent, `JWT` or `JOSE`; `sub` is a SPIFFE ID.
    JwtSvid,
}

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub issuer: Option<String>,
    pub audience: Audience,
    pub kind: TokenKind,
    /// Allowed clock skew. Default 30 s; refused above 5 minutes.
    pub leeway: Duration,
}

impl VerifierConfig {
    pub fn access_token(issuer: &str, audience: &str) -> Result<Self, VerifyError> {
        Ok(Self {
            issuer: Some(issuer.to_owned()),
            audience: Audience::parse(audience).map_err(|e| VerifyError::Config(e.to_string()))?,
            kind: TokenKind::AccessToken,
            leeway: Duration::from_secs(30),
        })
    }

    pub fn jwt_svid(audience: &str) -> Result<Self, VerifyError> {
        Ok(Self {
            issuer: None,
            audience: Audience::parse(audience).map_err(|e| VerifyError::Config(e.to_string()))?,
            kind: TokenKind::JwtSvid,
            leeway: Duration::from_secs(30),
        })
    }
}

/// Why a token was refused. `reason()` is a short stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token's key `{0}` is not in the issuer's key set")]
    UnknownKey(String),
    #[error("the token names no key (`kid`)")]
    NoKid,
    #[error("the token's issuer is `{found}`, expected `{expected}`")]
    Issuer { found: String, expected: String },
    #[error("the token's `typ` is `{found}`, expected {expected}")]
    Type {
        found: String,
        expected: &'static str,
    },
    #[error("the token has been revoked")]
    Revoked,
    /// Fail closed: the verifier does not know what has been revoked (no snapshot yet, or the
    /// change stream has been silent for too long).
    #[error("revocation state unknown or stale; refusing every token until it is current")]
    RevocationStale,
    #[error("the token does not carry scope `{0}`")]
    Scope(String),
    #[error("the issuer's keys are not available: {0}")]
    KeysUnavailable(String),
    #[error("verifier misconfigured: {0}")]
    Config(String),
    /// RFC 8705 §3: the token is bound to a certificate other than the one presented (or none
    /// was presented).
    #[error("the JWT-SVID's trust domain `{0}` is not trusted here")]
    UntrustedDomain(String),
    #[error("the token is bound to another client certificate")]
    CertificateBinding,
}

impl VerifyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(TokenError::Expired) => "expired",
            Self::Token(TokenError::NotYetValid) => "not_yet_valid",
            Self::Token(TokenError::Audience) => "audience",
            Self::Token(TokenError::Signature) => "signature",
            Self::Token(TokenError::Header(_)) => "header",
            Self::Token(TokenError::Claims(_)) => "claims",
            Self::Token(_) => "malformed",
            Self::UnknownKey(_) | Self::NoKid => "unknown_key",
            Self::Issuer { .. } => "issuer",
            Self::Type { .. } => "type",
            Self::Revoked => "revoked",
            Self::RevocationStale => "revocation_stale",
            Self::Scope(_) => "scope",
            Self::KeysUnavailable(_) => "keys_unavailable",
            Self::Config(_) => "config",
            Self::CertificateBinding => "certificate_binding",
            Self::UntrustedDomain(_) => "untrusted_domain",
        }
    }
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub subject: String,
    pub jti: Option<String>,
    pub expires_at: i64,
    pub scopes: Vec<String>,
    pub claims: Map<String, Value>,
}

impl Verified {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The token's RFC 8705 certificate thumbprint (`cnf.x5t#S256`), if it is bound.
    pub fn bound_certificate(&self) -> Option<&str> {
        self.claims
            .get("cnf")
            .and_then(|c| c.get("x5t#S256"))
            .and_then(Value::as_str)
    }

    /// RFC 8705 §3: a certificate-bound token is accepted only over the certificate it is bound
    /// to (`presented`, the DER of the client's leaf certificate on this connection). A token
    /// without `cnf` passes; one whose `cnf` is malformed fails.
    pub fn check_certificate_binding(&self, presented: Option<&[u8]>) -> Result<(), VerifyError> {
        let Some(cnf) = self.claims.get("cnf") else {
            return Ok(());
        };
        let want = cnf
            .get("x5t#S256")
            .and_then(Value::as_str)
            .ok_or(VerifyError::CertificateBinding)?;
        let presented = presented.ok_or(VerifyError::CertificateBinding)?;
        let got = tessera_token::x5t_s256(presented);
        // Both are public digests of public certificates: no timing secret to protect.
        if got == want {
            Ok(())
        } else {
            Err(VerifyError::CertificateBinding)
        }
    }

    pub fn require_scope(&self, scope: &str) -> Result<(), VerifyError> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(VerifyError::Scope(scope.to_owned()))
        }
    }
}

/// Public keys by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<Kid, PublicKey>,
}

impl KeySet {
    pub fn from_jwks(text: &[u8]) -> Result<Self, VerifyError> {
        Self::from_keys(JwkSet::parse_keys(text)?)
    }

    /// Also reads RSA keys (RS256): for outside issuers' key sets only.
    pub fn from_jwks_with_rsa(text: &[u8]) -> Result<Self, VerifyError> {
        Self::from_keys(JwkSet::parse_keys_with_rsa(text)?)
    }

    fn from_keys(keys: Vec<PublicKey>) -> Result<Self, VerifyError> {
        Ok(Self {
            keys: keys.into_iter().map(|k| (k.kid().clone(), k)).collect(),
        })
    }

    /// Every key, for a set without `kid`s to choose by.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, kid: &Kid) -> Option<&PublicKey> {
        self.keys.get(kid)
    }
}

/// Reads a response body, stopping as soon as it passes `cap` bytes (a declared length is not
/// trusted, and an undeclared one is counted as it arrives): a hostile server cannot make the
/// reader hold more than `cap`.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(cap).unwrap_or(u64::MAX))
    {
        return Err(format!("is larger than {} KiB", cap / 1024));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > cap {
            return Err(format!("is larger than {} KiB", cap / 1024));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where a verifier gets keys: a fixed set, an issuer's JWKS URL through a cache, or (for
/// JWT-SVIDs) a JWT bundle per trust domain.
#[derive(Debug, Clone)]
pub enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<JwksCache>),
    PerTrustDomain(Arc<JwtBundles>),
}

/// JWT bundles per trust domain (the local one and federated ones), as the Workload API's
/// FetchJWTBundles gives them: a JWT-SVID is verified with the keys of its `sub`'s trust domain
/// and no other (SPIFFE JWT-SVID §7), so a federated authority's key never vouches for a local
/// identity. Updated in place as bundles rotate.
#[derive(Debug, Default)]
pub struct JwtBundles {
    by_td: std::sync::RwLock<HashMap<tessera_core::TrustDomain, Arc<KeySet>>>,
}

impl JwtBundles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `td`'s JWT bundle (a JWKS document) in force, replacing the one held.
    pub fn set(&self, td: tessera_core::TrustDomain, jwks: &[u8]) -> Result<(), VerifyError> {
        let keys = Arc::new(KeySet::from_jwks_with_rsa(jwks)?);
        match self.by_td.write() {
            Ok(mut m) => m.insert(td, keys),
            Err(p) => p.into_inner().insert(td, keys),
        };
        Ok(())
    }

    /// Stops trusting `td` (its federation relationship was removed).
    pub fn remove(&self, td: &tessera_core::TrustDomain) {
        match self.by_td.write() {
            Ok(mut m) => m.remove(td),
            Err(p) => p.into_inner().remove(td),
        };
    }

    pub fn get(&self, td: &tessera_core::TrustDomain) -> Option<Arc<KeySet>> {
        match self.by_td.read() {
            Ok(m) => m.get(td).cloned(),
            Err(p) => p.into_inner().get(td).cloned(),
        }
    }
}

impl From<JwtBundles> for Keys {
    fn from(b: JwtBundles) -> Self {
        Self::PerTrustDomain(Arc::new(b))
    }
}

impl From<KeySet> for Keys {
    fn from(k: KeySet) -> Self {
        Self::Static(Arc::new(k))
    }
}

impl From<JwksCache> for Keys {
    fn from(c: JwksCache) -> Self {
        Self::Remote(Arc::new(c))
    }
}

/// A JWKS cache with the rules that keep verification up through key rotation and outages:
/// refresh on an unknown `kid` at most once per `min_refresh`; keep the last good set when a
/// fetch fails (never swap in an empty set); refetch after `max_age` so removed keys go.
#[derive(Debug)]
pub struct JwksCache {
    url: reqwest::Url,
    client: reqwest::Client,
    state: RwLock<CacheState>,
    refresh: Mutex<()>,
    pub min_refresh: Duration,
    pub max_age: Duration,
    /// Past this age without a successful fetch, keys are no longer trusted.
    pub max_stale: Duration,
    /// Read RSA keys too (an outside issuer's set, for RS256).
    pub allow_rsa: bool,
}

#[derive(Debug)]
struct CacheState {
    keys: Arc<KeySet>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Why the last fetch failed (cleared by a good one): said when no key set is in hand.
    last_error: Option<String>,
}

impl JwksCache {
    pub fn new(url: reqwest::Url) -> Self {
        Self::with_client(url, reqwest::Client::new())
    }

    pub fn with_client(url: reqwest::Url, client: reqwest::Client) -> Self {
        Self {
            url,
            client,
            state: RwLock::new(CacheState {
                keys: Arc::new(KeySet::default()),
                fetched: None,
                last_attempt: None,
                last_error: None,
            }),
            refresh: Mutex::new(()),
            min_refresh: Duration::from_secs(10),
            max_age: Duration::from_secs(300),
            max_stale: Duration::from_secs(24 * 3600),
            allow_rsa: false,
        }
    }

    /// When the set was last fetched successfully (for `describe`), if ever.
    pub async fn fetched_at(&self) -> Option<Instant> {
        self.state.read().await.fetched
    }

    /// The keys held now, without fetching.
    pub async fn current(&self) -> Arc<KeySet> {
        self.state.read().await.keys.clone()
    }

    async fn fetch(&self) -> Result<KeySet, VerifyError> {
        let resp = self
            .client
            .get(self.url.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| VerifyError::KeysUnavailable(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(VerifyError::KeysUnavailable(format!(
                "HTTP {}",
                resp.status()
            )));
        }
        let body = read_capped(resp, 1024 * 1024)
            .await
            .map_err(|e| VerifyError::KeysUnavailable(format!("the JWKS {e}")))?;
        let set = if self.allow_rsa {
            KeySet::from_jwks_with_rsa(&body)?
        } else {
            KeySet::from_jwks(&body)?
        };
        if set.is_empty() {
            return Err(VerifyError::KeysUnavailable(
                "the JWKS holds no usable key".into(),
            ));
        }
        Ok(set)
    }

    /// Refreshes unless another refresh happened within `min_refresh`. Returns the current set.
    async fn refresh(&self, force: bool) -> Arc<KeySet> {
        let _one_at_a_time = self.refresh.lock().await;
        {
            let st = self.state.read().await;
            let recent = st
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.min_refresh);
            let fresh = st.fetched.is_some_and(|t| t.elapsed() < self.max_age);
            if recent || (!force && fresh) {
                return st.keys.clone();
            }
        }
        let result = self.fetch().await;
        let mut st = self.state.write().await;
        st.last_attempt = Some(Instant::now());
        match result {
            Ok(set) => {
                st.keys = Arc::new(set);
                st.fetched = Some(Instant::now());
                st.last_error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good key set");
                st.last_error = Some(e.to_string());
            }
        }
        st.keys.clone()
    }

    /// The key for `kid`, fetching when it is unknown or the set is old.
    pub async fn key(&self, kid: &Kid) -> Result<PublicKey, VerifyError> {
        let (keys, fetched) = {
            let st = self.state.read().await;
            (st.keys.clone(), st.fetched)
        };
        let stale = fetched.is_none_or(|t| t.elapsed() >= self.max_age);
        let keys = if stale || keys.get(kid).is_none() {
            self.refresh(!stale).await
        } else {
            keys
        };
        let st = self.state.read().await;
        match st.fetched {
            None => {
                return Err(VerifyError::KeysUnavailable(match &st.last_error {
                    Some(why) => format!("no key set was ever fetched ({why})"),
                    None => "no key set was ever fetched".into(),
                }))
            }
            Some(t) if t.elapsed() > self.max_stale => {
                return Err(VerifyError::KeysUnavailable(
                    "the key set is too old to trust".into(),
                ))
            }
            _ => {}
        }
        keys.get(kid)
            .cloned()
            .ok_or_else(|| VerifyError::UnknownKey(kid.to_string()))
    }
}

/// Verifies tokens for one audience. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Verifier {
    config: Arc<VerifierConfig>,
    keys: Keys,
    revocations: RevocationState,
    metrics: Option<VerifyMetrics>,
}

impl Verifier {
    pub fn new(config: VerifierConfig, keys: impl Into<Keys>) -> Self {
        Self {
            config: Arc::new(config),
            keys: keys.into(),
            revocations: RevocationState::default(),
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: VerifyMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Shares `state` (kept current by [`spawn_feed`]) instead of the verifier's own.
    pub fn with_revocations(mut self, state: RevocationState) -> Self {
        self.revocations = state;
        self
    }

    /// The revocation state this verifier consults.
    pub fn revocations(&self) -> &RevocationState {
        &self.revocations
    }

    /// Subscribes this verifier to the authority's change stream (see [`spawn_feed`]): revoked
    /// tokens and workloads are refused within milliseconds of the revocation.
    pub fn spawn_change_feed(&self, source: BundleSource) -> tokio::task::JoinHandle<()> {
        spawn_feed(source, self.revocations.clone())
    }

    /// Replaces the whole revocation state: token IDs, and workloads revoked at a time (their
    /// tokens issued at or before it are refused).
    pub fn set_revocations(&self, revocations: Revocations) {
        self.revocations.replace(
            revocations
                .jtis
                .into_iter()
                .map(|j| (j, i64::MAX))
                .collect(),
            revocations.workloads,
        );
    }

    /// Polls the authority's revocation list (`GET <issuer>/revocations`) every `every`.
    pub fn spawn_revocation_poller(
        &self,
        url: reqwest::Url,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_revocation_poller_with(reqwest::Client::new(), url, every)
    }

    /// [`Verifier::spawn_revocation_poller`] with a client of the caller's (its trust roots).
    pub fn spawn_revocation_poller_with(
        &self,
        client: reqwest::Client,
        url: reqwest::Url,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match fetch_revocations(&client, &url).await {
                    Ok(list) => this.set_revocations(list),
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation list fetch failed; keeping the last one")
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let result = self.verify_inner(token, tessera_core::now_unix()).await;
        if let Some(m) = &self.metrics {
            m.record(&result);
        }
        result
    }

    /// Verification at a given time, for tests of clock skew.
    pub async fn verify_at(&self, token: &str, now: i64) -> Result<Verified, VerifyError> {
        self.verify_inner(token, now).await
    }

    async fn verify_inner(&self, token: &str, now: i64) -> Result<Verified, VerifyError> {
        let parsed = Unverified::parse(token)?;
        self.check_type(parsed.typ.as_deref())?;
        let kid = parsed.kid.as_ref().ok_or(VerifyError::NoKid)?;
        match &self.keys {
            Keys::Static(set) => {
                let key = set
                    .get(kid)
                    .ok_or_else(|| VerifyError::UnknownKey(kid.to_string()))?;
                parsed.verify_with(key)?;
            }
            Keys::Remote(cache) => {
                let key = cache.key(kid).await?;
                parsed.verify_with(&key)?;
            }
            Keys::PerTrustDomain(bundles) => {
                if self.config.kind != TokenKind::JwtSvid {
                    return Err(VerifyError::Config(
                        "keys per trust domain verify JWT-SVIDs only".into(),
                    ));
                }
                let sub = string_claim(&parsed.claims, "sub")?;
                let td = tessera_core::SpiffeId::parse(sub)
                    .map_err(|e| TokenError::Claims(format!("`sub` is not a SPIFFE ID: {e}")))?
                    .trust_domain();
                let set = bundles
                    .get(&td)
                    .ok_or_else(|| VerifyError::UntrustedDomain(td.to_string()))?;
                let key = set
                    .get(kid)
                    .ok_or_else(|| VerifyError::UnknownKey(kid.to_string()))?;
                parsed.verify_with(key)?;
            }
        }
        self.check_claims(parsed.into_claims(), now)
    }

    fn check_type(&self, typ: Option<&str>) -> Result<(), VerifyError> {
        let typ_lower = typ.map(str::to_ascii_lowercase);
        match self.config.kind {
            TokenKind::AccessToken => match typ_lower.as_deref() {
                Some("at+jwt" | "application/at+jwt") => Ok(()),
                _ => Err(VerifyError::Type {
                    found: typ.unwrap_or("(none)").chars().take(40).collect(),
                    expected: "`at+jwt`",
                }),
            },
            TokenKind::JwtSvid => match typ_lower.as_deref() {
                None | Some("jwt" | "jose") => Ok(()),
                Some(_) => Err(VerifyError::Type {
                    found: typ.unwrap_or_default().chars().take(40).collect(),
                    expected: "`JWT`, `JOSE` or none",
                }),
            },
        }
    }

    fn check_claims(&self, claims: Map<String, Value>, now: i64) -> Result<Verified, VerifyError> {
        let leeway = i64::try_from(self.config.leeway.as_secs().min(300)).unwrap_or(30);
        let exp = check_times(
            &claims,
            &TimeRules {
                now,
                leeway,
                max_ahead: None,
            },
        )?;
        if let Some(expected) = &self.config.issuer {
            let iss = string_claim(&claims, "iss")?;
            if iss != expected {
                return Err(VerifyError::Issuer {
                    found: iss.chars().take(200).collect(),
                    expected: expected.clone(),
                });
            }
        }
        audience_contains(&claims, &[self.config.audience.as_str()])?;
        let subject = string_claim(&claims, "sub")?.to_owned();
        let jti = match self.config.kind {
            TokenKind::AccessToken => {
                // RFC 9068 §2.2: these are required.
                string_claim(&claims, "client_id")?;
                numeric_date(&claims, "iat")?
                    .ok_or_else(|| TokenError::Claims("`iat` is missing".into()))?;
                Some(string_claim(&claims, "jti")?.to_owned())
            }
            TokenKind::JwtSvid => {
                tessera_core::SpiffeId::parse(&subject)
                    .map_err(|e| TokenError::Claims(format!("`sub` is not a SPIFFE ID: {e}")))?;
                claims.get("jti").and_then(Value::as_str).map(str::to_owned)
            }
        };
        let iat = numeric_date(&claims, "iat")?.unwrap_or(i64::MIN);
        if self.revocations.refuses_all() {
            return Err(VerifyError::RevocationStale);
        }
        if self
            .revocations
            .token_revoked(jti.as_deref(), &subject, iat)
        {
            return Err(VerifyError::Revoked);
        }
        let scopes = match claims.get("scope") {
            None => Vec::new(),
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(TokenError::Claims("`scope` must be a string".into()).into()),
        };
        Ok(Verified {
            subject,
            jti,
            expires_at: exp,
            scopes,
            claims,
        })
    }
}

/// What the authority's revocation list says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    pub jtis: std::collections::HashSet<String>,
    /// Workload SPIFFE ID to the time it was revoked.
    pub workloads: HashMap<String, i64>,
}

/// The authority's revocation list now (`GET <issuer>/revocations`), for one-shot checks.
pub async fn fetch_revocations(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> Result<Revocations, String> {
    let resp = client
        .get(url.clone())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body: Value = resp.json().await.map_err(|e| e.without_url().to_string())?;
    let list = |name: &str| {
        body.get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    Ok(Revocations {
        jtis: list("revoked")
            .iter()
            .filter_map(|e| e.get("jti").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        workloads: list("revoked_workloads")
            .iter()
            .filter_map(|e| {
                Some((
                    e.get("sub")?.as_str()?.to_owned(),
                    e.get("revoked_at")?.as_i64()?,
                ))
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests;
