//! The CAs of each trust domain: loaded from storage (keys sealed under the KEK), the one that
//! signs now, the ones in the bundle, and rotation (prepare → activate → retire).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tessera_ca::{BundleSource, CertificateAuthority, MAX_SVID_TTL_SECS};
use tessera_core::TrustDomain;
use tessera_store::{CaRecord, Op};
use tessera_token::Kek;

use crate::app::keys::KeyError;

fn ca_aad(td: &str, id: &str) -> String {
    format!("tessera-ca:{td}:{id}")
}

#[derive(Debug)]
pub struct CaEntry {
    pub id: String,
    pub ca: Arc<CertificateAuthority>,
    pub created_at: i64,
    pub activate_at: i64,
    pub retire_at: Option<i64>,
    pub not_after: i64,
}

impl CaEntry {
    fn published(&self, now: i64) -> bool {
        self.retire_at.is_none_or(|r| now < r) && now < self.not_after
    }
}

#[derive(Debug, Default)]
pub struct CaRing {
    by_td: HashMap<TrustDomain, Vec<CaEntry>>,
}

impl CaRing {
    pub fn load(records: &[CaRecord], kek: &Kek) -> Result<Self, KeyError> {
        let mut by_td: HashMap<TrustDomain, Vec<CaEntry>> = HashMap::new();
        for r in records {
            let bad = |reason: &dyn std::fmt::Display| KeyError::stored("CA", &r.id, reason);
            let td = TrustDomain::parse(&r.trust_domain).map_err(|e| bad(&e))?;
            let sealed = STANDARD
                .decode(&r.sealed)
                .map_err(|_| bad(&"it is not base64"))?;
            let pkcs8 = kek
                .open(&sealed, &ca_aad(&r.trust_domain, &r.id))
                .map_err(|_| bad(&"it does not open with this key-encryption key"))?;
            let cert = STANDARD
                .decode(&r.cert)
                .map_err(|_| bad(&"its certificate is not base64"))?;
            let ca = CertificateAuthority::load(cert, &pkcs8).map_err(|e| bad(&e))?;
            by_td.entry(td).or_default().push(CaEntry {
                id: r.id.clone(),
                ca: Arc::new(ca),
                created_at: r.created_at,
                activate_at: r.activate_at,
                retire_at: r.retire_at,
                not_after: r.not_after,
            });
        }
        for cas in by_td.values_mut() {
            cas.sort_by(|a, b| (a.activate_at, &a.id).cmp(&(b.activate_at, &b.id)));
        }
        Ok(Self { by_td })
    }

    /// The CA that signs now: the most recently activated one that is still valid.
    pub fn signing(&self, td: &TrustDomain, now: i64) -> Option<&CaEntry> {
        self.by_td
            .get(td)?
            .iter()
            .rev()
            .find(|c| c.activate_at <= now && c.published(now))
    }

    /// The CA certificates in the bundle now: the active one, a prepared next one, and retired
    /// ones whose SVIDs may still be live.
    pub fn published(&self, td: &TrustDomain, now: i64) -> Vec<CertificateDer<'static>> {
        self.by_td
            .get(td)
            .map(|cs| {
                cs.iter()
                    .filter(|c| c.published(now))
                    .map(|c| c.ca.cert().clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn entries(&self, td: &TrustDomain) -> &[CaEntry] {
        self.by_td.get(td).map(Vec::as_slice).unwrap_or_default()
    }
}

/// A new CA for `td`, sealed for storage, that signs from `activate_at`.
pub(crate) fn new_ca_record(
    td: &TrustDomain,
    kek: &Kek,
    now: i64,
    activate_at: i64,
    ttl_secs: i64,
) -> Result<CaRecord, KeyError> {
    let (ca, pkcs8) =
        CertificateAuthority::generate(td, now, ttl_secs).map_err(|e| KeyError::make("CA", e))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, ca.cert());
    let id: String = digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let sealed = kek
        .seal(&pkcs8, &ca_aad(td.as_str(), &id))
        .map_err(|e| KeyError::make("CA", e))?;
    Ok(CaRecord {
        id,
        trust_domain: td.to_string(),
        sealed: STANDARD.encode(sealed),
        cert: STANDARD.encode(ca.cert()),
        created_at: now,
        activate_at,
        retire_at: None,
        not_after: ca.not_after(),
    })
}

/// Rotation: a new CA, in the bundle from now and signing from `now + publish_ahead`; the CAs
/// it replaces leave the bundle once every SVID they can still sign has expired.
pub(crate) fn rotation_ops(
    ring: &CaRing,
    td: &TrustDomain,
    kek: &Kek,
    now: i64,
    publish_ahead: i64,
    ttl_secs: i64,
) -> Result<(CaRecord, Vec<Op>), KeyError> {
    let activate_at = now + publish_ahead;
    let record = new_ca_record(td, kek, now, activate_at, ttl_secs)?;
    let mut ops = vec![Op::InsertCa(record.clone())];
    for c in ring.entries(td) {
        if c.retire_at.is_none() {
            ops.push(Op::RetireCa {
                id: c.id.clone(),
                retire_at: (activate_at + MAX_SVID_TTL_SECS + 60)
                    .min(c.not_after)
                    .max(c.activate_at + 1),
            });
        }
    }
    Ok((record, ops))
}

/// The bundle's X.509 authorities, shared with the TLS client verifier. Updated on each reload.
#[derive(Debug, Default)]
pub(crate) struct Bundles {
    by_td: RwLock<HashMap<TrustDomain, Vec<CertificateDer<'static>>>>,
}

impl Bundles {
    pub(crate) fn set(&self, ring: &CaRing, tds: &[TrustDomain], now: i64) {
        let map = tds
            .iter()
            .map(|td| (td.clone(), ring.published(td, now)))
            .collect();
        match self.by_td.write() {
            Ok(mut g) => *g = map,
            Err(p) => *p.into_inner() = map,
        }
    }
}

impl BundleSource for Bundles {
    fn x509_authorities(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        let g = match self.by_td.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get(td).filter(|v| !v.is_empty()).cloned()
    }
}

/// A CA certificate as a JWK of the SPIFFE bundle format: its public key with `use`
/// `x509-svid` and the certificate in `x5c` (SPIFFE Trust Domain and Bundle §4.2.1).
pub(crate) fn x509_jwk(cert: &CertificateDer<'_>) -> Option<Value> {
    let (x, y) = tessera_ca::p256_coordinates(cert)?;
    Some(json!({
        "kty": "EC",
        "crv": "P-256",
        "x": tessera_token::strict::b64_encode(&x),
        "y": tessera_token::strict::b64_encode(&y),
        "use": "x509-svid",
        "x5c": [STANDARD.encode(cert)],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_prepares_then_activates_then_retires() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let year = 365 * 86400;
        let first = new_ca_record(&td, &kek, 1000, 1000, year).unwrap();
        let ring = CaRing::load(std::slice::from_ref(&first), &kek).unwrap();
        let (next, ops) = rotation_ops(&ring, &td, &kek, 2000, 3600, year).unwrap();
        let retire = ops.iter().find_map(|o| match o {
            Op::RetireCa { retire_at, .. } => Some(*retire_at),
            _ => None,
        });
        let mut first_after = first.clone();
        first_after.retire_at = retire;
        let ring = CaRing::load(&[first_after, next.clone()], &kek).unwrap();
        // Prepared: in the bundle, not signing.
        assert_eq!(ring.signing(&td, 2500).unwrap().id, first.id);
        assert_eq!(ring.published(&td, 2500).len(), 2);
        // Active: the new CA signs; the old one stays in the bundle for its live SVIDs.
        assert_eq!(ring.signing(&td, 5600).unwrap().id, next.id);
        assert_eq!(ring.published(&td, 5600 + MAX_SVID_TTL_SECS).len(), 2);
        // Retired: withdrawn once its last SVID expired.
        assert_eq!(ring.published(&td, 5600 + MAX_SVID_TTL_SECS + 61).len(), 1);
        assert!(CaRing::load(&[next], &Kek::from_bytes(&[8u8; 32]).unwrap())
            .unwrap_err()
            .to_string()
            .contains("does not open"));
    }

    #[test]
    fn bundle_jwk_carries_the_certificate() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let td = TrustDomain::parse("example.org").unwrap();
        let rec = new_ca_record(&td, &kek, 1000, 1000, 86400).unwrap();
        let ring = CaRing::load(std::slice::from_ref(&rec), &kek).unwrap();
        let cert = ring.published(&td, 1000).remove(0);
        let jwk = x509_jwk(&cert).unwrap();
        assert_eq!(jwk["use"], "x509-svid");
        assert_eq!(jwk["x5c"][0], rec.cert.as_str());
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
    }
}
