//! The adversarial certificate suite, through real TLS handshakes on loopback: rustls on both
//! sides, with our verifiers wired in exactly as the sidecar and the agent API wire them
//! (`SpiffeClientVerifier` on the server, `SpiffeServerVerifier` on the client). Each bad
//! certificate must fail the handshake for its own reason; the good ones are the control.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tessera_ca::{
    new_key_and_csr, CertificateAuthority, SpiffeClientVerifier, SpiffeServerVerifier,
    StaticBundles,
};
use tessera_core::{now_unix, SpiffeId, TrustDomain};

const SERVER_ID: &str = "spiffe://example.org/server";
const CLIENT_ID: &str = "spiffe://example.org/client";

/// A certificate chain (leaf first) and the leaf's key.
#[derive(Clone)]
struct Creds(Vec<CertificateDer<'static>>, Vec<u8>);

/// A CA of one trust domain, as the authority makes it, with its key for forging bad leaves.
struct Ca {
    ca: CertificateAuthority,
    issuer: Issuer<'static, KeyPair>,
    pkcs8: Vec<u8>,
}

fn ca(td: &str) -> Ca {
    let (ca, pkcs8) =
        CertificateAuthority::generate(&TrustDomain::parse(td).unwrap(), now_unix(), 86_400)
            .unwrap();
    let key = KeyPair::try_from(pkcs8.as_slice()).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca.cert(), key).unwrap();
    Ca { ca, issuer, pkcs8 }
}

impl Ca {
    /// A genuine SVID, as `sign_csr` issues it.
    fn svid(&self, id: &str) -> Creds {
        let id = SpiffeId::parse(id).unwrap();
        let (key, csr) = new_key_and_csr(&id).unwrap();
        let svid = self.ca.sign_csr(&csr, &id, now_unix(), 3600).unwrap();
        Creds(vec![svid.cert], key)
    }

    /// A leaf signed by this CA with whatever the test says, valid from `from` to `to`
    /// (seconds relative to now).
    fn leaf(&self, sans: Vec<SanType>, is_ca: IsCa, from: i64, to: i64) -> Creds {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.is_ca = is_ca;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now_unix() + from).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(now_unix() + to).unwrap();
        Creds(
            vec![p.signed_by(&key, &self.issuer).unwrap().der().clone()],
            key.serialize_der(),
        )
    }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A client leaf for `CLIENT_ID` signed by `issuer`, presented with `chain` after it.
fn client_leaf_under(issuer: &Issuer<'_, KeyPair>, chain: &[CertificateDer<'static>]) -> Creds {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri(CLIENT_ID)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let mut certs = vec![p.signed_by(&key, issuer).unwrap().der().clone()];
    certs.extend_from_slice(chain);
    Creds(certs, key.serialize_der())
}

/// A CA certificate (self-signed when `parent` is None) with `subject` as its common name.
fn ca_cert(
    subject: &str,
    parent: Option<&Issuer<'_, KeyPair>>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, subject);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = match parent {
        Some(issuer) => p.signed_by(&key, issuer).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    (cert.der().clone(), key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn key_der(k: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.to_vec()))
}

/// One handshake over loopback: a server presenting `server` that requires a client SVID, a
/// client presenting `client` that expects `SERVER_ID`. Returns (server's result, client's
/// result); a result is Ok when that side completed the handshake and exchanged a byte.
fn handshake(
    bundles: Arc<StaticBundles>,
    server: &Creds,
    client: &Creds,
) -> (Result<(), String>, Result<(), String>) {
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundles.clone(), true)))
        .with_single_cert(server.0.clone(), key_der(&server.1))
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        // Not a weakening: this is the SPIFFE verifier the sidecar's outbound and the agent use
        // instead of WebPKI name checks.
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            bundles,
            SpiffeId::parse(SERVER_ID).unwrap(),
        )))
        .with_client_auth_cert(client.0.clone(), key_der(&client.1))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).map_err(|e| e.to_string())?;
        tls.write_all(&b).map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from("server.invalid").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let client_result = (|| {
        tls.write_all(b"x").map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).map_err(|e| e.to_string())
    })();
    drop(tls);
    (server_side.join().unwrap(), client_result)
}

/// The CAs of example.org and other.org, both trusted, each for its own trust domain only.
fn two_domains() -> (Ca, Ca, Arc<StaticBundles>) {
    let (good, other) = (ca("example.org"), ca("other.org"));
    let bundles = Arc::new(StaticBundles::new([
        (
            TrustDomain::parse("example.org").unwrap(),
            good.ca.cert().clone(),
        ),
        (
            TrustDomain::parse("other.org").unwrap(),
            other.ca.cert().clone(),
        ),
    ]));
    (good, other, bundles)
}

#[test]
fn bad_client_certificates_fail_the_handshake() {
    let (good, other, bundles) = two_domains();
    let server = good.svid(SERVER_ID);

    // The control: a genuine client SVID completes the handshake both ways.
    let (s, c) = handshake(bundles.clone(), &server, &good.svid(CLIENT_ID));
    assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");

    // An unknown intermediate: signed by a root nobody trusts, issuing an example.org ID.
    let (root, root_key) = ca_cert("Unknown Root", None);
    let root_issuer = Issuer::from_ca_cert_der(&root, root_key).unwrap();
    let (inter, inter_key) = ca_cert("Unknown Intermediate", Some(&root_issuer));
    let inter_issuer = Issuer::from_ca_cert_der(&inter, inter_key).unwrap();
    let via_unknown = client_leaf_under(&inter_issuer, &[inter, root]);

    // CurveBall: a CA with the real CA's Subject and another key.
    let real_subject = x509_parser::parse_x509_certificate(good.ca.cert())
        .unwrap()
        .1
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let (fake, fake_key) = ca_cert(&real_subject, None);
    let fake_issuer = Issuer::from_ca_cert_der(&fake, fake_key).unwrap();
    let look_alike = client_leaf_under(&fake_issuer, &[fake]);

    // Longer than any chain we issue: a genuine leaf followed by five copies of its CA.
    let mut too_long = good.svid(CLIENT_ID);
    too_long
        .0
        .extend(std::iter::repeat_n(good.ca.cert().clone(), 5));

    let none = IsCa::ExplicitNoCa;
    let cases: Vec<(&str, Creds, &str)> = vec![
        (
            "another trust domain's CA signing an example.org ID",
            other.leaf(vec![uri(CLIENT_ID)], none, -10, 3600),
            "does not validate",
        ),
        (
            "an ID of a trust domain nobody trusts",
            good.leaf(vec![uri("spiffe://unknown.org/client")], none, -10, 3600),
            "is not trusted",
        ),
        (
            "the CA certificate itself as the leaf",
            Creds(vec![good.ca.cert().clone()], good.pkcs8.clone()),
            "not a valid X.509-SVID",
        ),
        (
            "a leaf that is a CA",
            good.leaf(
                vec![uri(CLIENT_ID)],
                IsCa::Ca(BasicConstraints::Unconstrained),
                -10,
                3600,
            ),
            "not a valid X.509-SVID",
        ),
        (
            "two URI SANs",
            good.leaf(
                vec![uri(CLIENT_ID), uri("spiffe://example.org/b")],
                none,
                -10,
                3600,
            ),
            "URI SANs",
        ),
        (
            "no SAN at all",
            good.leaf(vec![], none, -10, 3600),
            "no URI SAN",
        ),
        (
            "a DNS name only",
            good.leaf(
                vec![SanType::DnsName("client.example.org".try_into().unwrap())],
                none,
                -10,
                3600,
            ),
            "no URI SAN",
        ),
        (
            "expired",
            good.leaf(vec![uri(CLIENT_ID)], none, -7200, -60),
            "Expired",
        ),
        (
            "not yet valid",
            good.leaf(vec![uri(CLIENT_ID)], none, 600, 7200),
            "NotValidYet",
        ),
        (
            "a chain through an unknown intermediate",
            via_unknown,
            "does not validate",
        ),
        (
            "a look-alike CA with the real CA's Subject (CurveBall)",
            look_alike,
            "does not validate",
        ),
        ("an over-long chain", too_long, "too long"),
    ];
    for (name, client, reason) in cases {
        let (s, c) = handshake(bundles.clone(), &server, &client);
        let s = s.expect_err(name);
        assert!(
            c.is_err(),
            "{name}: the client finished a refused handshake"
        );
        assert!(
            s.contains(reason),
            "{name}: refused for another reason: {s}"
        );
    }
}

#[test]
fn bad_server_certificates_fail_the_handshake() {
    let (good, other, bundles) = two_domains();
    let client = good.svid(CLIENT_ID);

    let (s, c) = handshake(bundles.clone(), &good.svid(SERVER_ID), &client);
    assert!(s.is_ok() && c.is_ok(), "the control: {s:?} {c:?}");

    let none = IsCa::ExplicitNoCa;
    let cases: Vec<(&str, Creds, &str)> = vec![
        (
            "a genuine SVID of another workload",
            good.svid("spiffe://example.org/impostor"),
            "not `spiffe://example.org/server`",
        ),
        (
            "the expected ID from another trust domain's CA",
            other.leaf(vec![uri(SERVER_ID)], none, -10, 3600),
            "does not validate",
        ),
        (
            "the CA certificate as the server's leaf",
            Creds(vec![good.ca.cert().clone()], good.pkcs8.clone()),
            "not a valid X.509-SVID",
        ),
        (
            "expired",
            good.leaf(vec![uri(SERVER_ID)], none, -7200, -60),
            "Expired",
        ),
        (
            "two URI SANs",
            good.leaf(
                vec![uri(SERVER_ID), uri("spiffe://example.org/b")],
                none,
                -10,
                3600,
            ),
            "URI SANs",
        ),
    ];
    for (name, server, reason) in cases {
        let (_, c) = handshake(bundles.clone(), &server, &client);
        let c = c.expect_err(name);
        assert!(
            c.contains(reason),
            "{name}: refused for another reason: {c}"
        );
    }
}
