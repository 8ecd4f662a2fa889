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
use tessera_token::Alg;

use crate::app::custody::KeyError;
use crate::app::custody::{Custody, NewKey, StoredKey};
use crate::config::KeyKind;

pub(crate) fn ca_aad(td: &str, id: &str) -> String {
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
    pub fn load(records: &[CaRecord], custody: &Custody) -> Result<Self, KeyError> {
        let mut by_td: HashMap<TrustDomain, Vec<CaEntry>> = HashMap::new();
        for r in records {
            let bad = |reason: &dyn std::fmt::Display| KeyError::stored("CA", &r.id, reason);
            let td = TrustDomain::parse(&r.trust_domain).map_err(|e| bad(&e))?;
            let stored = StoredKey::parse(&r.sealed).map_err(|e| bad(&e))?;
            let key = custody
                .open_key(&stored, Alg::ES256, &ca_aad(&r.trust_domain, &r.id))
                .map_err(|e| bad(&e))?;
            let cert = STANDARD
                .decode(&r.cert)
                .map_err(|_| bad(&"its certificate is not base64"))?;
            let ca = CertificateAuthority::load(cert, key).map_err(|e| bad(&e))?;
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

/// A CA's id: the first 8 bytes of its certificate's SHA-256, in hex.
pub(crate) fn ca_id(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The record of a CA whose key was just made.
pub(crate) fn ca_record(
    td: &TrustDomain,
    ca: &CertificateAuthority,
    new: &NewKey,
    custody: &Custody,
    now: i64,
    activate_at: i64,
) -> Result<CaRecord, KeyError> {
    let id = ca_id(ca.cert());
    let stored = new.stored(custody.kek(), &ca_aad(td.as_str(), &id))?;
    Ok(CaRecord {
        id,
        trust_domain: td.to_string(),
        sealed: stored.to_text(),
        cert: STANDARD.encode(ca.stored_der()),
        created_at: now,
        activate_at,
        retire_at: None,
        not_after: ca.not_after(),
    })
}

/// A new CA for `td` that signs from `activate_at`: an intermediate under `root`, or
/// self-signed; its key in the token or sealed for storage.
pub(crate) fn new_ca_record(
    td: &TrustDomain,
    custody: &Custody,
    root: Option<&CertificateAuthority>,
    now: i64,
    activate_at: i64,
    ttl_secs: i64,
) -> Result<CaRecord, KeyError> {
    let new = custody.generate(KeyKind::Ca, td.as_str(), Alg::ES256)?;
    let key = new.key().clone();
    let ca = match root {
        Some(root) => root.sign_intermediate(td, key, now, ttl_secs),
        None => CertificateAuthority::self_signed(td, key, now, ttl_secs),
    }
    .map_err(|e| KeyError::make("CA", e))?;
    ca_record(td, &ca, &new, custody, now, activate_at)
}

/// The meta entry that holds the key of `td`'s CA being signed outside, and its AAD.
pub(crate) fn pending_meta(td: &TrustDomain) -> String {
    format!("ca_pending:{td}")
}

pub(crate) fn pending_aad(td: &TrustDomain) -> String {
    format!("tessera-ca-pending:{td}")
}

/// What the database keeps of the root: its certificate and its key's reference.
pub(crate) const ROOT_CERT_META: &str = "ca_root_cert";
pub(crate) const ROOT_KEY_META: &str = "ca_root_key";
const ROOT_AAD: &str = "tessera-ca-root";

/// A new root: (the CA, its certificate as stored, its key's reference as stored).
pub(crate) fn new_root(
    custody: &Custody,
    now: i64,
    ttl_secs: i64,
) -> Result<(CertificateAuthority, String, String), KeyError> {
    let new = custody.generate(KeyKind::Root, "root", Alg::ES256)?;
    let root = CertificateAuthority::root(new.key().clone(), now, ttl_secs)
        .map_err(|e| KeyError::make("root CA", e))?;
    let stored = new.stored(custody.kek(), ROOT_AAD)?;
    let cert = STANDARD.encode(root.cert());
    Ok((root, cert, stored.to_text()))
}

/// The root from its stored certificate and key reference.
pub(crate) fn load_root(
    custody: &Custody,
    cert: &str,
    key: &str,
) -> Result<CertificateAuthority, KeyError> {
    let bad = |reason: &dyn std::fmt::Display| KeyError::stored("root CA", "root", reason);
    let stored = StoredKey::parse(key).map_err(|e| bad(&e))?;
    let key = custody
        .open_key(&stored, Alg::ES256, ROOT_AAD)
        .map_err(|e| bad(&e))?;
    let cert = STANDARD
        .decode(cert)
        .map_err(|_| bad(&"its certificate is not base64"))?;
    CertificateAuthority::load(cert, key).map_err(|e| bad(&e))
}

/// Rotation: a new CA, in the bundle from now and signing from `now + publish_ahead`; the CAs
/// it replaces leave the bundle once every SVID they can still sign has expired.
pub(crate) fn rotation_ops(
    ring: &CaRing,
    td: &TrustDomain,
    custody: &Custody,
    root: Option<&CertificateAuthority>,
    now: i64,
    publish_ahead: i64,
    ttl_secs: i64,
) -> Result<(CaRecord, Vec<Op>), KeyError> {
    let activate_at = next_activation(ring, td, now + publish_ahead);
    let record = new_ca_record(td, custody, root, now, activate_at, ttl_secs)?;
    Ok((record.clone(), replacing_ops(ring, td, record, activate_at)))
}

/// `wanted`, or just after the last CA of `td` starts signing: a new CA always follows the
/// ones it replaces (within one second, an id would otherwise decide).
pub(crate) fn next_activation(ring: &CaRing, td: &TrustDomain, wanted: i64) -> i64 {
    ring.entries(td)
        .iter()
        .map(|c| c.activate_at + 1)
        .fold(wanted, i64::max)
}

/// Inserting `record`, which signs from `activate_at`, and retiring the CAs it replaces once
/// every SVID they can still sign has expired.
pub(crate) fn replacing_ops(
    ring: &CaRing,
    td: &TrustDomain,
    record: CaRecord,
    activate_at: i64,
) -> Vec<Op> {
    let mut ops = vec![Op::InsertCa(record)];
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
    ops
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
    use tessera_token::Kek;

    #[test]
    fn rotation_prepares_then_activates_then_retires() {
        let kek = Custody::software(Kek::from_bytes(&[7u8; 32]).unwrap());
        let td = TrustDomain::parse("example.org").unwrap();
        let year = 365 * 86400;
        let first = new_ca_record(&td, &kek, None, 1000, 1000, year).unwrap();
        let ring = CaRing::load(std::slice::from_ref(&first), &kek).unwrap();
        let (next, ops) = rotation_ops(&ring, &td, &kek, None, 2000, 3600, year).unwrap();
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
        assert!(CaRing::load(
            &[next],
            &Custody::software(Kek::from_bytes(&[8u8; 32]).unwrap())
        )
        .unwrap_err()
        .to_string()
        .contains("does not open"));
    }

    #[test]
    fn under_a_root_each_domain_gets_an_intermediate_that_chains_to_it() {
        let custody = Custody::software(Kek::from_bytes(&[7u8; 32]).unwrap());
        let (root, cert, key) = new_root(&custody, 1000, 10 * 365 * 86400).unwrap();
        let root = load_root(&custody, &cert, &key).unwrap_or(root);
        let dev = TrustDomain::parse("dev.example.org").unwrap();
        let prod = TrustDomain::parse("prod.example.org").unwrap();
        let recs = [
            new_ca_record(&dev, &custody, Some(&root), 1000, 1000, 86400).unwrap(),
            new_ca_record(&prod, &custody, Some(&root), 1000, 1000, 86400).unwrap(),
        ];
        let ring = CaRing::load(&recs, &custody).unwrap();
        let dev_ca = &ring.signing(&dev, 1000).unwrap().ca;
        assert!(dev_ca.is_intermediate());
        // The bundle of each domain holds its own intermediate only, never the root.
        assert_eq!(ring.published(&dev, 1000), vec![dev_ca.cert().clone()]);
        assert!(!ring.published(&prod, 1000).contains(root.cert()));
        // An SVID carries the intermediate after the leaf.
        let id = tessera_core::SpiffeId::parse("spiffe://dev.example.org/a").unwrap();
        let (_, csr) = tessera_ca::new_key_and_csr(&id).unwrap();
        let svid = dev_ca.sign_csr(&csr, &id, 1000, 600).unwrap();
        assert_eq!(svid.chain(), vec![svid.cert.clone(), dev_ca.cert().clone()]);
        // Validation is against the domain's own bundle: prod's does not take dev's SVID.
        let bundles = tessera_ca::StaticBundles::new([&dev, &prod].into_iter().flat_map(|td| {
            ring.published(td, 1000)
                .into_iter()
                .map(|c| (td.clone(), c))
        }));
        let at =
            rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(1100));
        let usage = tessera_ca::Usage::Client;
        assert!(tessera_ca::verify_chain(&svid.chain(), &bundles, at, usage).is_ok());
        let forged = tessera_core::SpiffeId::parse("spiffe://prod.example.org/a").unwrap();
        let (_, csr) = tessera_ca::new_key_and_csr(&forged).unwrap();
        let cross = dev_ca.sign_csr(&csr, &forged, 1000, 600).unwrap();
        assert!(tessera_ca::verify_chain(&cross.chain(), &bundles, at, usage).is_err());
    }

    #[test]
    fn bundle_jwk_carries_the_certificate() {
        let kek = Custody::software(Kek::from_bytes(&[7u8; 32]).unwrap());
        let td = TrustDomain::parse("example.org").unwrap();
        let rec = new_ca_record(&td, &kek, None, 1000, 1000, 86400).unwrap();
        let ring = CaRing::load(std::slice::from_ref(&rec), &kek).unwrap();
        let cert = ring.published(&td, 1000).remove(0);
        let jwk = x509_jwk(&cert).unwrap();
        assert_eq!(jwk["use"], "x509-svid");
        assert_eq!(jwk["x5c"][0], rec.cert.as_str());
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
    }
}
