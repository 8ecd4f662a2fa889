//! Signing in to the console at an outside OpenID Connect provider: the authorization request
//! (code flow with PKCE S256 and a nonce), the code exchange, and the ID token's checks (the
//! provider's keys through the trust-key machinery, issuer, audience, times, nonce). The
//! provider's groups claim decides the role; nobody outside the configured groups gets in.

use std::time::Duration;

use serde_json::{Map, Value};
use tessera_core::manifest::Trust;
use tessera_core::{Audience, Label};
use tessera_token::claims::{audience_contains, check_times, TimeRules};
use tessera_token::strict::b64_encode;
use tessera_token::Unverified;

use crate::app::console::{same_secret, OidcEndpoints, Person, Role};
use crate::app::trust_keys::check_address;
use crate::app::App;
use crate::config::ConsoleOidc;
use crate::domain::federation::LEEWAY;

/// Why an OIDC sign-in failed. The text is logged; the browser is told only the variant's name.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignInError {
    #[error("the console has no OIDC provider configured")]
    NotConfigured,
    #[error("the provider's discovery failed: {0}")]
    Discovery(String),
    #[error("the code exchange failed: {0}")]
    Exchange(String),
    #[error("the ID token is refused: {0}")]
    IdToken(String),
    #[error("`{0}` is in none of the console's groups")]
    NoRole(String),
}

impl SignInError {
    /// The word the browser is sent back with (`/ui/?error=WORD`).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::Discovery(_) | Self::Exchange(_) => "provider",
            Self::IdToken(_) => "id_token",
            Self::NoRole(_) => "no_role",
        }
    }
}

/// Where the provider sends the browser back.
pub(crate) fn redirect_uri(app: &App) -> String {
    format!("{}/ui/oidc/callback", app.base_url.trim_end_matches('/'))
}

/// PKCE S256 (RFC 7636): the challenge of a verifier.
pub(crate) fn challenge(verifier: &str) -> String {
    b64_encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

fn provider(app: &App) -> Result<&ConsoleOidc, SignInError> {
    app.config
        .console_oidc
        .as_ref()
        .ok_or(SignInError::NotConfigured)
}

async fn endpoints(app: &App, p: &ConsoleOidc) -> Result<OidcEndpoints, SignInError> {
    app.console
        .oidc_endpoints
        .get_or_try_init(|| discover(app, p))
        .await
        .cloned()
}

async fn discover(app: &App, p: &ConsoleOidc) -> Result<OidcEndpoints, SignInError> {
    let d = |m: String| SignInError::Discovery(m);
    let url = format!(
        "{}/.well-known/openid-configuration",
        p.issuer.trim_end_matches('/')
    );
    let client = app.trust_keys.client(p.private_network);
    let resp = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| d(format!("`{url}`: {}", e.without_url())))?;
    if !resp.status().is_success() {
        return Err(d(format!("`{url}` answered HTTP {}", resp.status())));
    }
    let body = tessera_verify::read_capped(resp, 256 * 1024)
        .await
        .map_err(|e| d(format!("`{url}` {e}")))?;
    let doc: Value =
        serde_json::from_slice(&body).map_err(|_| d(format!("`{url}` is not JSON")))?;
    if doc.get("issuer").and_then(Value::as_str) != Some(p.issuer.as_str()) {
        return Err(d(format!("`{url}` names another issuer")));
    }
    let endpoint = |name: &str| -> Result<reqwest::Url, SignInError> {
        let s = doc
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| d(format!("`{url}` has no `{name}`")))?;
        let u = reqwest::Url::parse(s).map_err(|_| d(format!("`{name}` is not a URL")))?;
        let loopback = u.host_str().is_some_and(tessera_core::is_loopback_host);
        if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
            return Err(d(format!("`{name}` is neither https nor loopback http")));
        }
        check_address(&u, p.private_network).map_err(|e| d(e.to_string()))?;
        Ok(u)
    };
    Ok(OidcEndpoints {
        authorization: endpoint("authorization_endpoint")?,
        token: endpoint("token_endpoint")?,
    })
}

/// The provider's authorization URL for a sign-in with `state`, PKCE `verifier` and `nonce`.
pub(crate) async fn authorization_url(
    app: &App,
    state: &str,
    verifier: &str,
    nonce: &str,
) -> Result<String, SignInError> {
    let p = provider(app)?;
    let mut url = endpoints(app, p).await?.authorization;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &p.client_id)
        .append_pair("redirect_uri", &redirect_uri(app))
        .append_pair("scope", &format!("openid profile {}", p.groups_claim))
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    Ok(url.into())
}

/// Exchanges the code, checks the ID token and works out who signed in.
pub(crate) async fn finish(
    app: &App,
    code: &str,
    verifier: &str,
    nonce: &str,
) -> Result<Person, SignInError> {
    let p = provider(app)?;
    let token_url = endpoints(app, p).await?.token;
    let redirect = redirect_uri(app);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("code_verifier", verifier),
    ];
    let client = app.trust_keys.client(p.private_network);
    let mut req = client
        .post(token_url.clone())
        .timeout(Duration::from_secs(10));
    match &app.console.oidc_secret {
        Some(secret) => req = req.basic_auth(form_encode(&p.client_id), Some(form_encode(secret))),
        None => form.push(("client_id", p.client_id.as_str())),
    }
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| SignInError::Exchange(e.without_url().to_string()))?;
    let status = resp.status();
    let body = tessera_verify::read_capped(resp, 256 * 1024)
        .await
        .map_err(SignInError::Exchange)?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|_| SignInError::Exchange(format!("HTTP {status}, not JSON")))?;
    if !status.is_success() {
        let err = doc.get("error").and_then(Value::as_str).unwrap_or("?");
        return Err(SignInError::Exchange(format!(
            "HTTP {status}: `{}`",
            err.chars().take(60).collect::<String>()
        )));
    }
    let id_token = doc
        .get("id_token")
        .and_then(Value::as_str)
        .ok_or_else(|| SignInError::Exchange("no `id_token` in the answer".into()))?;
    let claims = check_id_token(app, p, id_token, nonce).await?;
    person(p, &claims)
}

/// The provider as the trust-key machinery knows issuers (discovery and a cached JWKS).
fn as_trust(p: &ConsoleOidc) -> Result<Trust, SignInError> {
    Ok(Trust {
        name: Label::parse("console-oidc").map_err(|e| SignInError::IdToken(e.to_string()))?,
        issuer: p.issuer.clone(),
        jwks: None,
        audience: Audience::parse(&p.client_id)
            .map_err(|e| SignInError::IdToken(format!("client_id: {e}")))?,
        algorithms: vec![],
        max_age: None,
        single_use: false,
        private_network: p.private_network,
        map: vec![],
        source: "[console.oidc]".into(),
    })
}

async fn check_id_token(
    app: &App,
    p: &ConsoleOidc,
    token: &str,
    nonce: &str,
) -> Result<Map<String, Value>, SignInError> {
    let bad = |m: String| SignInError::IdToken(m);
    let parsed = Unverified::parse(token).map_err(|e| bad(e.to_string()))?;
    let key = app
        .trust_keys
        .key(&as_trust(p)?, parsed.kid.as_ref(), parsed.alg)
        .await
        .map_err(|e| bad(e.to_string()))?;
    parsed.verify_with(&key).map_err(|e| bad(e.to_string()))?;
    let claims = parsed.into_claims();
    if claims.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
        return Err(bad("`iss` is not the provider".into()));
    }
    audience_contains(&claims, &[p.client_id.as_str()]).map_err(|e| bad(e.to_string()))?;
    if let Some(azp) = claims.get("azp") {
        if azp.as_str() != Some(p.client_id.as_str()) {
            return Err(bad("`azp` names another client".into()));
        }
    }
    check_times(
        &claims,
        &TimeRules {
            now: tessera_core::now_unix(),
            leeway: LEEWAY,
            max_ahead: None,
        },
    )
    .map_err(|e| bad(e.to_string()))?;
    let got = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !same_secret(got, nonce) {
        return Err(bad("`nonce` is not the one this sign-in sent".into()));
    }
    Ok(claims)
}

/// The person's name (`preferred_username`, `email` or `sub`, printable and at most 100
/// characters) and role from the groups claim: admin wins over viewer.
fn person(p: &ConsoleOidc, claims: &Map<String, Value>) -> Result<Person, SignInError> {
    let raw = ["preferred_username", "email", "sub"]
        .iter()
        .find_map(|c| {
            claims
                .get(*c)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .ok_or_else(|| SignInError::IdToken("no `sub`".into()))?;
    let name: String = raw.chars().filter(|c| !c.is_control()).take(100).collect();
    let groups: Vec<&str> = match claims.get(&p.groups_claim) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        _ => vec![],
    };
    let member = |list: &[String]| groups.iter().any(|g| list.iter().any(|l| l == g));
    let role = if member(&p.admin_groups) {
        Role::Admin
    } else if member(&p.viewer_groups) {
        Role::Viewer
    } else {
        return Err(SignInError::NoRole(name));
    };
    Ok(Person {
        name: format!("oidc:{name}"),
        role,
    })
}

/// RFC 6749 §2.3.1: client credentials in Basic are form-encoded first.
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> ConsoleOidc {
        ConsoleOidc {
            issuer: "https://idp.example".into(),
            client_id: "tessera".into(),
            client_secret_file: None,
            groups_claim: "groups".into(),
            admin_groups: vec!["platform".into()],
            viewer_groups: vec!["eng".into()],
            private_network: false,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_groups_decide_the_role() {
        let p = provider();
        let admin = person(
            &p,
            &claims(
                json!({"sub": "1", "preferred_username": "alice", "groups": ["eng", "platform"]}),
            ),
        )
        .unwrap();
        assert_eq!(
            (admin.name.as_str(), admin.role),
            ("oidc:alice", Role::Admin)
        );
        let viewer = person(
            &p,
            &claims(json!({"sub": "2", "email": "bob@x", "groups": "eng"})),
        )
        .unwrap();
        assert_eq!(
            (viewer.name.as_str(), viewer.role),
            ("oidc:bob@x", Role::Viewer)
        );
        assert!(matches!(
            person(&p, &claims(json!({"sub": "3", "groups": ["sales"]}))),
            Err(SignInError::NoRole(n)) if n == "3"
        ));
        assert!(person(&p, &claims(json!({"sub": "4"}))).is_err());
    }

    #[test]
    fn names_lose_control_characters_and_length() {
        let p = provider();
        let long = format!("a\u{7}\n{}", "b".repeat(300));
        let who = person(&p, &claims(json!({"sub": long, "groups": ["eng"]}))).unwrap();
        assert_eq!(who.name.len(), "oidc:".len() + 100);
        assert!(!who.name.contains('\n'));
    }

    proptest::proptest! {
        /// Any claims: a person with a printable name of at most 100 characters, or a refusal;
        /// never a panic.
        #[test]
        fn any_claims_make_a_person_or_a_refusal(
            sub in ".{0,300}",
            groups in proptest::collection::vec(".{0,20}", 0..5),
        ) {
            let p = provider();
            let mut all = groups;
            all.push("eng".into());
            if let Ok(who) = person(&p, &claims(json!({"sub": sub, "groups": all}))) {
                proptest::prop_assert!(who.name.chars().count() <= "oidc:".len() + 100);
                proptest::prop_assert!(!who.name.chars().any(char::is_control));
            }
        }
    }

    #[test]
    fn the_challenge_is_rfc_7636s() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
