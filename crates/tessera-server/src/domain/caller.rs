//! Who is calling: every way a caller proves itself, worked out in one place. A Tessera access
//! token for the authority, a JWT-SVID for an issuer, the X.509-SVID of the connection, a node
//! agent's SVID, an administrator. The HTTP extractors in `extract.rs` call these.

use std::net::IpAddr;

use serde_json::Value;
use tessera_core::agent_api::Registration;
use tessera_core::{AgentId, SpiffeId, TrustDomain};
use tessera_policy::Authn;
use tessera_token::claims::{audience_exactly, check_times, TimeRules};
use tessera_token::{Unverified, TYP_ACCESS_TOKEN};

use crate::app::{authority_id, App, Issuer, Snapshot};
use crate::tls::PeerCertificates;

/// Why a caller is not accepted. `error.rs` maps `Unauthenticated` to 401, `Forbidden` to 403.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// No credential, or one that does not prove who the caller is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not use this API.
    #[error("{0}")]
    Forbidden(String),
}

fn unauthenticated(why: impl Into<String>) -> CallerError {
    CallerError::Unauthenticated(why.into())
}

/// Who made an admin change, as the audit trail names it: `admin:uid=N` or `admin:token`.
#[derive(Clone, Debug)]
pub(crate) struct Actor(pub String);

/// The token of an `Authorization: Bearer` header value. The one place Bearer is parsed.
pub(crate) fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// What an introspection or revocation finds out about a token: its claims if it is one of ours,
/// correctly signed and unexpired.
pub(crate) fn our_token(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    token: &str,
) -> Option<serde_json::Map<String, Value>> {
    let parsed = Unverified::parse(token).ok()?;
    let typ = parsed.typ.as_deref()?;
    if !(typ.eq_ignore_ascii_case(TYP_ACCESS_TOKEN)
        || typ.eq_ignore_ascii_case("application/at+jwt"))
    {
        return None;
    }
    let now = tessera_core::now_unix();
    let key = snap.keys.find(&issuer.td, parsed.kid.as_ref()?, now)?;
    parsed.verify_with(key).ok()?;
    let claims = parsed.into_claims();
    let iss = claims.get("iss")?.as_str()?;
    if !app.issuer_urls(&issuer.td).iter().any(|u| u == iss) {
        return None;
    }
    check_times(
        &claims,
        &TimeRules {
            now,
            leeway: 0,
            max_ahead: None,
        },
    )
    .ok()?;
    Some(claims)
}

/// Verifies a JWT-SVID of this trust domain whose audience is this issuer.
pub(crate) fn jwt_svid_of(
    app: &App,
    snap: &Snapshot,
    issuer: &Issuer,
    token: &str,
) -> Result<SpiffeId, CallerError> {
    let parsed = Unverified::parse(token).map_err(|e| unauthenticated(e.to_string()))?;
    if !matches!(parsed.typ.as_deref(), None | Some("JWT" | "JOSE")) {
        return Err(unauthenticated("it is not a JWT-SVID (`typ`)"));
    }
    let now = tessera_core::now_unix();
    let kid = parsed
        .kid
        .as_ref()
        .ok_or_else(|| unauthenticated("it has no `kid`"))?;
    let key = snap
        .keys
        .find(&issuer.td, kid, now)
        .ok_or_else(|| unauthenticated("it is not signed by this trust domain"))?;
    parsed
        .verify_with(key)
        .map_err(|e| unauthenticated(e.to_string()))?;
    check_times(
        &parsed.claims,
        &TimeRules {
            now,
            leeway: 30,
            max_ahead: None,
        },
    )
    .map_err(|e| unauthenticated(e.to_string()))?;
    let urls = app.issuer_urls(&issuer.td);
    let expected: Vec<&str> = urls.iter().map(String::as_str).collect();
    audience_exactly(&parsed.claims, &expected).map_err(|e| unauthenticated(e.to_string()))?;
    let sub = parsed
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| unauthenticated("it has no `sub`"))?;
    let id = SpiffeId::parse(sub).map_err(|e| unauthenticated(e.to_string()))?;
    if id.trust_domain_str() != issuer.td.as_str() {
        return Err(unauthenticated("it is from another trust domain"));
    }
    Ok(id)
}

/// The workload calling a Tessera workload API: from a Tessera access token whose audience is
/// the authority, or from its JWT-SVID whose audience is this issuer (what a sidecar holds).
pub(crate) fn workload_caller(
    app: &App,
    snap: &Snapshot,
    authorization: Option<&str>,
) -> Result<SpiffeId, CallerError> {
    let token = bearer(authorization).ok_or_else(|| {
        unauthenticated(
            "a Tessera access token for the authority is required (`Authorization: Bearer`)",
        )
    })?;
    for td in &app.config.trust_domains {
        let issuer = app.issuer_of(&td.name);
        let Some(claims) = our_token(app, snap, &issuer, token) else {
            if let Ok(id) = jwt_svid_of(app, snap, &issuer, token) {
                if snap
                    .workloads
                    .get(&id)
                    .is_some_and(|w| w.revoked_at.is_none())
                {
                    return Ok(id);
                }
                return Err(unauthenticated(
                    "the JWT-SVID's workload is unknown or revoked",
                ));
            }
            continue;
        };
        let aud_ok = authority_id(td.name.as_str()).is_some_and(|a| {
            tessera_token::claims::audience_exactly(&claims, &[a.as_str()]).is_ok()
        });
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
        if !aud_ok {
            return Err(unauthenticated(
                "the token is not for the authority (ask for `audience=<issuer URL>`)",
            ));
        }
        if snap.revoked_jtis.contains_key(jti) || snap.workload_revoked(sub, iat) {
            return Err(unauthenticated("the token has been revoked"));
        }
        return SpiffeId::parse(sub)
            .map_err(|_| unauthenticated("the token's subject is not a workload"));
    }
    Err(unauthenticated(
        "the token is not a valid Tessera access token",
    ))
}

/// A workload calling a workload API that also accepts mTLS (the vault, database credentials):
/// who, how it proved it, from where.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    pub id: SpiffeId,
    pub authn: Authn,
    pub source_ip: Option<IpAddr>,
}

/// The calling workload and how it proved itself: a Tessera token for the authority or a
/// JWT-SVID for this issuer (when an `Authorization` header is sent), else the X.509-SVID of the
/// connection (mTLS).
pub(crate) fn reader(
    app: &App,
    snap: &Snapshot,
    authorization: Option<&str>,
    peer: Option<&PeerCertificates>,
    source_ip: Option<IpAddr>,
) -> Result<Reader, CallerError> {
    let reader = |id, authn| Reader {
        id,
        authn,
        source_ip,
    };
    if authorization.is_some() {
        return workload_caller(app, snap, authorization).map(|id| reader(id, Authn::Jwt));
    }
    let leaf = peer.and_then(|p| p.0.first()).ok_or_else(|| {
        unauthenticated("authenticate with your X.509-SVID (mTLS), a JWT-SVID or a Tessera token for the authority")
    })?;
    let id = tessera_ca::leaf_spiffe_id(leaf)
        .map_err(|_| unauthenticated("the client certificate is not an X.509-SVID"))?;
    let now = tessera_core::now_unix();
    if tessera_ca::validity(leaf).is_none_or(|(_, naf)| naf <= now) {
        return Err(unauthenticated("the client certificate has expired"));
    }
    match snap.workloads.get(&id) {
        Some(w) if w.revoked_at.is_none() => Ok(reader(id, Authn::Mtls)),
        _ => Err(unauthenticated(
            "the certificate's workload is unknown or revoked",
        )),
    }
}

/// A node agent authenticated by its SVID (chain validated in the TLS handshake against its trust
/// domain's bundle), known and not revoked.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub id: AgentId,
    pub td: TrustDomain,
    pub spiffe_id: SpiffeId,
    /// What the agent was attested with (none for a join token), as the snapshot holds it.
    pub selectors: Vec<tessera_core::manifest::Selector>,
}

/// The node agent whose SVID the connection presented.
pub(crate) fn agent_of(
    app: &App,
    snap: &Snapshot,
    peer: Option<&PeerCertificates>,
) -> Result<Agent, CallerError> {
    let Some(PeerCertificates(chain)) = peer else {
        return Err(unauthenticated(
            "this endpoint needs a node agent's X.509-SVID as TLS client certificate",
        ));
    };
    let leaf = chain
        .first()
        .ok_or_else(|| unauthenticated("no client certificate"))?;
    let spiffe_id = tessera_ca::leaf_spiffe_id(leaf).map_err(|e| unauthenticated(e.to_string()))?;
    let id = AgentId::from_spiffe_id(&spiffe_id)
        .ok_or_else(|| CallerError::Forbidden(format!("`{spiffe_id}` is not a node agent")))?;
    let td = spiffe_id.trust_domain();
    if app.serves(td.as_str()).is_none() {
        return Err(CallerError::Forbidden(format!(
            "trust domain `{td}` is not served here"
        )));
    }
    let selectors = snap
        .agents
        .get(id.as_str())
        .map(|a| a.selectors.clone())
        .unwrap_or_default();
    let agent = Agent {
        id,
        td,
        spiffe_id,
        selectors,
    };
    in_good_standing(snap, &agent)?;
    Ok(agent)
}

/// Whether `agent` is still registered and not revoked in `snap` (it may have been revoked while
/// it waited on a long poll).
pub(crate) fn in_good_standing(snap: &Snapshot, agent: &Agent) -> Result<(), CallerError> {
    let id = &agent.id;
    match snap.agents.get(id.as_str()) {
        Some(a) if a.trust_domain == agent.td.as_str() && a.revoked_at.is_none() => Ok(()),
        Some(a) if a.revoked_at.is_some() => Err(CallerError::Forbidden(format!(
            "agent `{id}` has been revoked"
        ))),
        _ => Err(CallerError::Forbidden(format!(
            "agent `{id}` is not registered"
        ))),
    }
}

/// Whether `agent` may hand out `reg`'s SVIDs.
pub(crate) fn visible(reg: &Registration, agent: &Agent) -> bool {
    reg.spiffe_id.trust_domain_str() == agent.td.as_str()
        && (reg.nodes.is_empty() || reg.nodes.contains(&agent.id))
        && reg
            .node_selectors
            .iter()
            .all(|s| agent.selectors.contains(s))
}

/// The registration `id` if `agent` may hand it out.
pub(crate) fn registration<'a>(
    snap: &'a Snapshot,
    agent: &Agent,
    id: &SpiffeId,
) -> Result<&'a Registration, CallerError> {
    snap.registrations
        .entries
        .get(id)
        .filter(|r| visible(r, agent))
        .ok_or_else(|| {
            CallerError::Forbidden(format!("`{id}` is not registered for agent `{}`", agent.id))
        })
}
