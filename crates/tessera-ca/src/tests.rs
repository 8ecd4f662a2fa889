use super::*;
use rcgen::{CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, UnixTime};
use std::time::Duration;
use tessera_core::{SpiffeId, TrustDomain};
use x509_parser::extensions::ParsedExtension;

const NOW: i64 = 1_900_000_000;

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn at(t: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(t as u64))
}

fn issue(ca: &CertificateAuthority, who: &str) -> CertificateDer<'static> {
    let (_, csr) = new_key_and_csr(&id(who)).unwrap();
    ca.sign_csr(&csr, &id(who), NOW, 3600).unwrap().cert
}

#[test]
fn svid_follows_the_x509_svid_profile() {
    let (ca, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let (_, csr) = new_key_and_csr(&id("spiffe://example.org/api")).unwrap();
    let svid = ca
        .sign_csr(&csr, &id("spiffe://example.org/api"), NOW, 3600)
        .unwrap();
    assert_eq!(svid.not_after, NOW + 3600);
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.cert).unwrap();
    assert_eq!(
        cert.validity().not_after.timestamp(),
        NOW + 3600,
        "lifetime is the CA's choice"
    );
    let mut seen = (false, false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert_eq!(san.general_names.len(), 1);
                seen.0 = true;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca);
                seen.1 = true;
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "key usage must be critical");
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.key_encipherment());
                seen.2 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth && !eku.any);
                seen.3 = true;
            }
            _ => {}
        }
    }
    assert_eq!(seen, (true, true, true, true));
    assert_eq!(
        cert.raw_serial_as_string().replace(':', ""),
        svid.serial,
        "the recorded serial is the certificate's"
    );
    let bundles = StaticBundles::new(vec![(td("example.org"), ca.cert().clone())]);
    let got = verify_chain(&[svid.cert], &bundles, at(NOW + 10), Usage::Client).unwrap();
    assert_eq!(got.as_str(), "spiffe://example.org/api");
}

#[test]
fn csr_names_and_usages_are_overridden_or_refused() {
    let (ca, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let who = id("spiffe://example.org/api");
    // A CSR for another workload.
    let (_, foreign) = new_key_and_csr(&id("spiffe://example.org/admin")).unwrap();
    let err = ca.sign_csr(&foreign, &who, NOW, 3600).unwrap_err();
    assert!(
        matches!(err, CaError::CsrForeignName(ref n) if n == "spiffe://example.org/admin"),
        "{err}"
    );
    // Extra DNS SAN.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
    p.subject_alt_names
        .push(SanType::URI(who.as_str().try_into().unwrap()));
    let csr = p.serialize_request(&key).unwrap();
    assert!(matches!(
        ca.sign_csr(csr.der(), &who, NOW, 3600),
        Err(CaError::CsrForeignName(_))
    ));
    // Asking to be a CA.
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = p.serialize_request(&key).unwrap();
    assert!(matches!(
        ca.sign_csr(csr.der(), &who, NOW, 3600),
        Err(CaError::CsrExtension)
    ));
    // Asking for keyCertSign and a 10-year life: the usage is dropped, the life is the CA's.
    let mut p = CertificateParams::default();
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let csr = p.serialize_request(&key).unwrap();
    let svid = ca.sign_csr(csr.der(), &who, NOW, 10 * 365 * 86400).unwrap();
    assert_eq!(svid.not_after, NOW + 86400, "cut to the CA's expiry");
    verify_chain(
        &[svid.cert],
        &StaticBundles::new(vec![(td("example.org"), ca.cert().clone())]),
        at(NOW),
        Usage::Server,
    )
    .unwrap();
    // A CSR whose signature does not match its key.
    let (_, mut csr) = new_key_and_csr(&who).unwrap();
    let last = csr.len() - 1;
    csr[last] ^= 1;
    assert!(ca.sign_csr(&csr, &who, NOW, 3600).is_err());
    assert!(ca.sign_csr(b"not a csr", &who, NOW, 3600).is_err());
}

#[test]
fn chains_validate_only_against_their_own_trust_domain() {
    let (prod, _) = CertificateAuthority::generate(&td("prod.example.org"), NOW, 86400).unwrap();
    let (dev, _) = CertificateAuthority::generate(&td("dev.example.org"), NOW, 86400).unwrap();
    // A misconfigured dev CA signs a prod ID: no bundle mixing lets it through.
    let forged = issue(&dev, "spiffe://prod.example.org/api");
    let bundles = StaticBundles::new(vec![
        (td("prod.example.org"), prod.cert().clone()),
        (td("dev.example.org"), dev.cert().clone()),
    ]);
    let err = verify_chain(&[forged], &bundles, at(NOW), Usage::Client).unwrap_err();
    assert!(matches!(err, CaError::Chain(_)), "{err}");
    let good = issue(&prod, "spiffe://prod.example.org/api");
    verify_chain(
        std::slice::from_ref(&good),
        &bundles,
        at(NOW),
        Usage::Client,
    )
    .unwrap();
    // Unknown trust domain.
    let only_dev = StaticBundles::new(vec![(td("dev.example.org"), dev.cert().clone())]);
    assert!(matches!(
        verify_chain(
            std::slice::from_ref(&good),
            &only_dev,
            at(NOW),
            Usage::Client
        ),
        Err(CaError::UntrustedDomain(_))
    ));
    // Expired and not yet valid.
    assert!(verify_chain(
        std::slice::from_ref(&good),
        &bundles,
        at(NOW + 3601),
        Usage::Client
    )
    .is_err());
    assert!(verify_chain(&[good], &bundles, at(NOW - 3600), Usage::Client).is_err());
    assert!(verify_chain(&[], &bundles, at(NOW), Usage::Client).is_err());
}

#[test]
fn leaves_that_break_the_svid_rules_are_refused() {
    let (ca, pkcs8) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let bundles = StaticBundles::new(vec![(td("example.org"), ca.cert().clone())]);
    let ca_key = KeyPair::try_from(pkcs8.as_slice()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert(), ca_key).unwrap();
    let make = |sans: Vec<SanType>, is_ca: IsCa| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.is_ca = is_ca;
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 10).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 100).unwrap();
        p.signed_by(&key, &issuer).unwrap().der().clone()
    };
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());
    let two = make(
        vec![uri("spiffe://example.org/a"), uri("spiffe://example.org/b")],
        IsCa::ExplicitNoCa,
    );
    let none = make(vec![], IsCa::ExplicitNoCa);
    let dns = make(
        vec![SanType::DnsName("a.example.org".try_into().unwrap())],
        IsCa::ExplicitNoCa,
    );
    let as_ca = make(
        vec![uri("spiffe://example.org/a")],
        IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
    );
    let http = make(vec![uri("https://example.org/a")], IsCa::ExplicitNoCa);
    for (name, cert) in [
        ("two", two),
        ("none", none),
        ("dns", dns),
        ("ca", as_ca),
        ("http", http),
    ] {
        let err = verify_chain(&[cert], &bundles, at(NOW), Usage::Client);
        assert!(matches!(err, Err(CaError::BadSvid(_))), "{name}: {err:?}");
    }
    // The CA certificate itself presented as a leaf.
    assert!(verify_chain(&[ca.cert().clone()], &bundles, at(NOW), Usage::Client).is_err());
}

#[test]
fn a_look_alike_ca_with_another_key_is_not_trusted() {
    // CurveBall: same Subject as the real CA, another key.
    let (real, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let (_, real_cert) = x509_parser::parse_x509_certificate(real.cert()).unwrap();
    let cn = real_cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let fake_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::OrganizationName, "Tessera");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 10).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 1000).unwrap();
    let fake_cert = p.self_signed(&fake_key).unwrap();
    let fake_key = std::sync::Arc::new(
        tessera_token::SigningKey::from_pkcs8(tessera_token::Alg::ES256, &fake_key.serialize_der())
            .unwrap(),
    );
    let fake = CertificateAuthority::load(fake_cert.der().to_vec(), fake_key).unwrap();
    let forged = issue(&fake, "spiffe://example.org/api");
    let bundles = StaticBundles::new(vec![(td("example.org"), real.cert().clone())]);
    assert!(verify_chain(
        std::slice::from_ref(&forged),
        &bundles,
        at(NOW),
        Usage::Client
    )
    .is_err());
    // Presenting the look-alike CA as an intermediate does not help either.
    assert!(verify_chain(
        &[forged, fake.cert().clone()],
        &bundles,
        at(NOW),
        Usage::Client
    )
    .is_err());
}

#[test]
fn two_cas_of_one_domain_have_distinct_subjects_and_a_key_must_match_its_cert() {
    let (a, ka) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let (b, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let subject = |c: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(c)
            .unwrap()
            .1
            .subject()
            .to_string()
    };
    assert_ne!(subject(a.cert()), subject(b.cert()));
    let ka = std::sync::Arc::new(
        tessera_token::SigningKey::from_pkcs8(tessera_token::Alg::ES256, &ka).unwrap(),
    );
    assert!(matches!(
        CertificateAuthority::load(b.cert().to_vec(), ka),
        Err(CaError::BadCaCert(_))
    ));
}

/// The DER form of an ECDSA signature made by a key in memory (ring's fixed form re-encoded)
/// verifies as X.509 expects: a certificate signed that way validates with webpki.
#[test]
fn a_ca_signs_with_der_signatures_and_an_intermediate_is_sent_after_the_leaf() {
    let key = |alg| std::sync::Arc::new(tessera_token::SigningKey::generate(alg).unwrap().0);
    let root = CertificateAuthority::root(key(tessera_token::Alg::ES256), NOW, 86400).unwrap();
    assert!(!root.is_intermediate());
    let inter = root
        .sign_intermediate(
            &td("example.org"),
            key(tessera_token::Alg::ES256),
            NOW,
            10 * 86400,
        )
        .unwrap();
    assert!(inter.is_intermediate());
    // Cut to the root's life.
    assert_eq!(inter.not_after(), root.not_after());
    inter.check_installable(&td("example.org"), NOW).unwrap();
    assert!(inter.check_installable(&td("other.org"), NOW).is_err());
    let svid = issue(&inter, "spiffe://example.org/api");
    let bundles = StaticBundles::new(vec![(td("example.org"), inter.cert().clone())]);
    let full = [svid.clone(), inter.cert().clone()];
    assert!(verify_chain(&full, &bundles, at(NOW), Usage::Client).is_ok());
    // The root alone does not make a bundle of example.org accept it: the bundle is per domain.
    let roots = StaticBundles::new(vec![(td("other.org"), root.cert().clone())]);
    assert!(verify_chain(&full, &roots, at(NOW), Usage::Client).is_err());
    // A CSR for an outside root names the trust domain and verifies with its own key.
    let csr =
        CertificateAuthority::csr(&td("example.org"), &key(tessera_token::Alg::ES256)).unwrap();
    let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr.as_slice().into()).unwrap();
    assert!(matches!(parsed.params.is_ca, IsCa::Ca(_)));
    // EdDSA keys sign CAs too.
    assert!(CertificateAuthority::self_signed(
        &td("example.org"),
        key(tessera_token::Alg::EdDSA),
        NOW,
        60
    )
    .is_ok());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let (ca, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
        let _ = ca.sign_csr(&bytes, &id("spiffe://example.org/a"), NOW, 60);
        let _ = leaf_spiffe_id(&bytes);
        let bundles = StaticBundles::new(vec![(td("example.org"), ca.cert().clone())]);
        let _ = verify_chain(&[CertificateDer::from(bytes)], &bundles, at(NOW), Usage::Client);
    }
}

#[test]
fn concatenated_certificates_split_exactly() {
    let (ca, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let (a, b) = (
        issue(&ca, "spiffe://example.org/a"),
        issue(&ca, "spiffe://example.org/b"),
    );
    let joined = [a.as_ref(), b.as_ref()].concat();
    assert_eq!(
        crate::split_certificates(&joined).unwrap(),
        vec![a.clone(), b]
    );
    assert!(crate::split_certificates(&[]).unwrap().is_empty());
    // A truncated certificate or trailing garbage is an error, never read past the end.
    assert!(crate::split_certificates(&joined[..joined.len() - 1]).is_err());
    assert!(crate::split_certificates(&[a.as_ref(), &[0x30, 0x05, 1]].concat()).is_err());
    assert!(crate::split_certificates(&[0x31, 0, 0, 0]).is_err());
}

#[test]
fn validity_errors_stay_typed_up_to_rustls() {
    let (ca, _) = CertificateAuthority::generate(&td("example.org"), NOW, 86400).unwrap();
    let bundles = StaticBundles::new(vec![(td("example.org"), ca.cert().clone())]);
    let leaf = issue(&ca, "spiffe://example.org/api");
    // Checked an hour after the leaf's end, and before its start.
    for (when, want) in [
        (NOW + 2 * 86400, rustls::CertificateError::Expired),
        (NOW - 3600, rustls::CertificateError::NotValidYet),
    ] {
        let err = verify_chain(
            std::slice::from_ref(&leaf),
            &bundles,
            at(when),
            Usage::Client,
        )
        .unwrap_err();
        assert!(matches!(err, CaError::Chain(_)), "{err}");
        assert_eq!(err.into_rustls(), rustls::Error::InvalidCertificate(want));
    }
    // Any other refusal keeps its message.
    let other = CertificateAuthority::generate(&td("example.org"), NOW, 86400)
        .unwrap()
        .0;
    let err = verify_chain(
        &[issue(&other, "spiffe://example.org/api")],
        &bundles,
        at(NOW),
        Usage::Client,
    )
    .unwrap_err();
    match err.into_rustls() {
        rustls::Error::General(m) => assert!(m.contains("does not validate"), "{m}"),
        e => panic!("{e:?}"),
    }
}
