//! Outside issuers' keys, per trust: a trust's own `jwks_file`, or the keys its issuer publishes
//! (OpenID/OAuth discovery, then a cached JWKS). Kept across snapshots; rebuilt when a trust's
//! issuer or key file changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_core::manifest::Trust;
use tessera_core::Kid;
use tessera_token::{Alg, PublicKey};
use tessera_verify::{JwksCache, KeySet};

/// After a failed discovery, callers are refused at once for this long before it is retried.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// Why a trust's key could not be had. The text is for the caller's error and the audit trail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrustKeyError {
    #[error("its `jwks_file` does not load: {0}")]
    Jwks(String),
    #[error("the issuer has no key `{0}`")]
    NoSuchKey(String),
    #[error("the token names no `kid` and the issuer has several keys")]
    Ambiguous,
    #[error("{0}")]
    Discovery(String),
    #[error("{0}")]
    Fetch(String),
}

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
#[derive(Debug)]
pub struct TrustKeys {
    by_name: Mutex<HashMap<String, (String, Arc<KeySource>)>>,
    /// For issuers on public addresses only (the default).
    public: reqwest::Client,
    /// For trusts that opt in with `private_network = true`.
    private: reqwest::Client,
}

impl TrustKeys {
    /// The client for outside issuers: public addresses only unless `private`, no redirects.
    pub(crate) fn client(&self, private: bool) -> &reqwest::Client {
        if private {
            &self.private
        } else {
            &self.public
        }
    }

    /// Fails rather than fall back to a client that follows redirects to any address.
    pub fn new() -> Result<Self, TrustKeyError> {
        Ok(Self {
            by_name: Mutex::default(),
            public: outside_client(false)?,
            private: outside_client(true)?,
        })
    }
}

/// A client for outside issuers: no redirects (a discovery document or JWKS that redirects is
/// refused, not followed to wherever it points), short timeouts, and unless `private` only
/// public addresses, whatever a name resolves to.
fn outside_client(private: bool) -> Result<reqwest::Client, TrustKeyError> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if !private {
        b = b.dns_resolver(Arc::new(PublicOnly));
    }
    b.build()
        .map_err(|e| TrustKeyError::Fetch(format!("cannot build the outside-issuer client: {e}")))
}

/// Whether `ip` is on the public internet: not loopback, private, link-local, shared (CGNAT),
/// unique-local, multicast or unspecified.
pub(crate) fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A resolver that keeps only public addresses.
#[derive(Debug)]
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<std::net::SocketAddr> =
                all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to private addresses (set `private_network = true` on the trust to allow it)"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Refuses a URL whose host is a private IP literal (a resolver never sees those).
pub(crate) fn check_address(url: &reqwest::Url, private: bool) -> Result<(), TrustKeyError> {
    if private {
        return Ok(());
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    match literal {
        Some(ip) if !is_public(ip) => Err(TrustKeyError::Discovery(format!(
            "`{url}` is a private address (set `private_network = true` on the trust to allow it)"
        ))),
        _ => Ok(()),
    }
}

fn fingerprint(t: &Trust) -> String {
    format!(
        "{}\n{}\n{}",
        t.issuer,
        t.jwks.as_deref().unwrap_or(""),
        t.private_network
    )
}

impl TrustKeys {
    fn source(&self, t: &Trust) -> Result<Arc<KeySource>, TrustKeyError> {
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
                KeySet::from_jwks_with_rsa(text.as_bytes())
                    .map_err(|e| TrustKeyError::Jwks(e.to_string()))?,
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
    ) -> Result<Arc<JwksCache>, TrustKeyError> {
        if let Some(c) = cache.get() {
            return Ok(c.clone());
        }
        if let Ok(f) = failed.lock() {
            if let Some((at, why)) = f.as_ref() {
                if at.elapsed() < DISCOVERY_RETRY {
                    return Err(TrustKeyError::Discovery(why.clone()));
                }
            }
        }
        let result = cache
            .get_or_try_init(|| async {
                let client = if t.private_network {
                    &self.private
                } else {
                    &self.public
                };
                let jwks_uri = discover(client, &t.issuer, t.private_network).await?;
                let mut c = JwksCache::with_client(jwks_uri, client.clone());
                c.allow_rsa = true;
                Ok::<_, TrustKeyError>(Arc::new(c))
            })
            .await
            .cloned();
        if let Err(why) = &result {
            if let Ok(mut f) = failed.lock() {
                *f = Some((Instant::now(), why.to_string()));
            }
        }
        result
    }

    /// The key `kid` (or the only key, when the token names none) of trust `t`.
    pub async fn key(
        &self,
        t: &Trust,
        kid: Option<&Kid>,
        alg: Alg,
    ) -> Result<PublicKey, TrustKeyError> {
        match &*self.source(t)? {
            KeySource::Static(set) => pick(set, kid, alg),
            KeySource::Discovered { cache, failed } => {
                let cache = self.discovered(t, cache, failed).await?;
                match kid {
                    Some(k) => cache
                        .key(k)
                        .await
                        .map_err(|e| TrustKeyError::Fetch(e.to_string())),
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
            Err(e) => json!({"error": e.to_string()}),
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

fn pick(set: &KeySet, kid: Option<&Kid>, alg: Alg) -> Result<PublicKey, TrustKeyError> {
    match kid {
        Some(k) => set
            .get(k)
            .cloned()
            .ok_or_else(|| TrustKeyError::NoSuchKey(k.to_string())),
        None => {
            let mut of_alg = set.keys().filter(|k| k.alg() == alg);
            match (of_alg.next(), of_alg.next()) {
                (Some(k), None) => Ok(k.clone()),
                _ => Err(TrustKeyError::Ambiguous),
            }
        }
    }
}

/// `jwks_uri` from `<issuer>/.well-known/openid-configuration` (or the RFC 8414 document),
/// whose `issuer` must be the trust's issuer exactly.
async fn discover(
    client: &reqwest::Client,
    issuer: &str,
    private: bool,
) -> Result<reqwest::Url, TrustKeyError> {
    let base = issuer.trim_end_matches('/');
    let issuer_url = reqwest::Url::parse(base)
        .map_err(|_| TrustKeyError::Discovery(format!("`{issuer}` is not a URL")))?;
    check_address(&issuer_url, private)?;
    let mut tried: Vec<String> = Vec::new();
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
                // A redirect is answered as such: never followed.
                tried.push(format!("`{url}` answered HTTP {}", r.status()));
                continue;
            }
            Err(e) => {
                // The innermost cause says why (a private address, a refused connection).
                let e = e.without_url();
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = s.to_string();
                    source = s.source();
                }
                tried.push(format!("`{url}` is unreachable: {why}"));
                continue;
            }
        };
        let body = tessera_verify::read_capped(resp, 256 * 1024)
            .await
            .map_err(|e| TrustKeyError::Discovery(format!("`{url}` {e}")))?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| TrustKeyError::Discovery(format!("`{url}` is not a JSON document")))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(TrustKeyError::Discovery(format!(
                "`{url}` names another issuer"
            )));
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| TrustKeyError::Discovery(format!("`{url}` has no `jwks_uri`")))?;
        let jwks = reqwest::Url::parse(jwks)
            .map_err(|_| TrustKeyError::Discovery(format!("`jwks_uri` `{jwks}` is not a URL")))?;
        check_address(&jwks, private)?;
        return Ok(jwks);
    }
    Err(TrustKeyError::Discovery(format!(
        "cannot discover the keys of `{issuer}`: {}",
        tried.join("; ")
    )))
}
