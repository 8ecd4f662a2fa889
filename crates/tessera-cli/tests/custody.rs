//! Key custody in a PKCS#11 token (Debian's SoftHSM2, a real module loaded by the real binary):
//! every private key in the token and none anywhere else, outside verifiers (joserfc, openssl,
//! curl) accepting what it signs, rotation under load, a root outside Tessera (`openssl ca`),
//! and the start refused with one line for each kind of bad token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use serde_json::Value;
use tessera_testkit::SoftHsm;

/// One SoftHSM2 installation for this test binary (its env is every child's), a token per test.
fn hsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let h = SoftHsm::new();
        set_child_env(h.env());
        h
    })
}

const ALL: &[&str] = &["signing", "ca", "root", "audit", "tls"];
/// Every kind, the key-encryption key too.
const ALL_AND_KEK: &[&str] = &["signing", "ca", "root", "audit", "tls", "kek"];

/// A server config for token `label` holding `keys`, serving example.org and dev.example.org.
fn config(dir: &Path, label: &str, keys: &[&str]) -> String {
    let text = format!(
        "trust_domains = [\"example.org\", \"dev.example.org\"]\n{}",
        hsm().config(label, keys)
    );
    write(dir, "server.toml", &text).display().to_string()
}

fn hsm_server(backend: Backend, label: &str, keys: &[&str]) -> Option<(Server, tempfile::TempDir)> {
    hsm().add_token(label);
    let files = tempfile::tempdir().unwrap();
    let cfg = config(files.path(), label, keys);
    let s = server(backend, &["--config", &cfg])?;
    Some((s, files))
}

fn keys_status(s: &Server) -> Vec<Value> {
    let o = tessera(&s.data, &["keys", "status", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

/// Every private key object of the token, with the access flags `pkcs11-tool` reports.
fn private_keys(label: &str) -> Vec<(String, String)> {
    let o = hsm().tool(label, &["--list-objects", "--type", "privkey"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut out = Vec::new();
    let mut current = None::<String>;
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line.strip_prefix("label:") {
            current = Some(l.trim().to_owned());
        }
        if let Some(a) = line.strip_prefix("Access:") {
            out.push((current.take().unwrap_or_default(), a.trim().to_owned()));
        }
    }
    out
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// The token's JWT verified by joserfc (Python) against the issuer's JWKS.
fn joserfc_verifies(jwks_url: &str, token: &str) -> String {
    let script = r#"
import sys, requests
from joserfc import jwt
from joserfc.jwk import KeySet
keys = KeySet.import_key_set(requests.get(sys.argv[1]).json())
print(jwt.decode(sys.argv[2], keys, algorithms=["ES256"]).claims["sub"])
"#;
    run(Command::new("python3").args(["-c", script, jwks_url, token]))
        .trim()
        .to_owned()
}

async fn every_key_in_the_token(backend: Backend, label: &str) {
    let Some((s, files)) = hsm_server(backend, label, ALL_AND_KEK) else {
        return;
    };
    // `keys status`: every kind, each in the token.
    let status = keys_status(&s);
    let kinds: Vec<&str> = status.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    for kind in ALL_AND_KEK {
        assert!(kinds.contains(kind), "{kind} missing: {status:?}");
    }
    for k in &status {
        assert!(
            k["location"]
                .as_str()
                .unwrap()
                .starts_with(&format!("pkcs11 token `{label}`")),
            "{k}"
        );
    }
    // The token's own view: seven private keys (two signing, two CAs, root, log, TLS), none of
    // which can leave it.
    let keys = private_keys(label);
    assert_eq!(keys.len(), 7, "{keys:?}");
    for (l, access) in &keys {
        assert!(l.starts_with("tessera-"), "{l}");
        assert!(access.contains("never extractable"), "{l}: {access}");
        assert!(access.contains("always sensitive"), "{l}: {access}");
    }

    // The KEK is an AES key in the token: no key file, and it cannot leave either.
    assert!(!s.data.join("kek").exists());
    let o = hsm().tool(label, &["--list-objects", "--type", "secrkey"]);
    let secret = stdout(&o);
    assert!(secret.contains("tessera-kek"), "{secret}");
    assert!(secret.contains("never extractable"), "{secret}");

    // A token signed in the token verifies with joserfc.
    let (orders, _) = setup_mesh(&s);
    let (st, body) = token(
        &s,
        &orders,
        &[("resource", "https://inventory.internal.example.org")],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let at = body["access_token"].as_str().unwrap();
    assert_eq!(
        joserfc_verifies(&format!("{}/example.org/jwks", s.url), at),
        "spiffe://example.org/prod/order-processor"
    );

    // The API's TLS handshake is signed in the token: curl trusts it with the API's CA.
    let https = s.url.replace("http://", "https://");
    let out = run(Command::new("curl").args([
        "-sS",
        "--cacert",
        s.data.join("tls/ca.pem").to_str().unwrap(),
        &format!("{https}/bundle/example.org"),
    ]));
    assert!(out.contains("spiffe_sequence"), "{out}");

    // An X.509-SVID signed by the intermediate in the token, which the root in the token
    // signed: openssl verifies the chain from the root.
    let p = write(files.path(), "sidecar.toml", &sidecar_mesh());
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_agent, socket) = join_agent(&s, files.path(), "agent");
    let (chain, _key, bundle) = svid_files(&socket, FRONTEND, files.path()).await;
    let chain_pem = std::fs::read_to_string(&chain).unwrap();
    assert_eq!(
        chain_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + intermediate"
    );
    let o = tessera(&s.data, &["ca", "root"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let root = write(files.path(), "root.pem", &stdout(&o));
    let leaf = split_pem(files.path(), &chain_pem);
    let out = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        leaf[1].to_str().unwrap(),
        leaf[0].to_str().unwrap(),
    ]));
    assert!(out.contains(": OK"), "{out}");
    // The bundle holds the intermediate only, never the root: a dev intermediate can never
    // vouch for example.org.
    let bundle_pem = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(bundle_pem, std::fs::read_to_string(&leaf[1]).unwrap());
    assert_ne!(bundle_pem, std::fs::read_to_string(&root).unwrap());

    // No private key material in the database or the data folder: every stored key is a
    // token label, the log's key was never made in software, no key file or PKCS#8 anywhere.
    let (refs, software_log_key) = stored_key_refs(&s);
    assert_eq!(refs.len(), 7, "{refs:?}");
    for r in &refs {
        assert!(r.starts_with("pkcs11:tessera-"), "{r}");
    }
    assert!(!software_log_key);
    assert_no_private_keys(&s.data);

    // Restarted on the same data: what the KEK in the token sealed opens, the keys are found
    // by their labels, and issuance goes on with the same key.
    let data = s.data.clone();
    let db = s.db.clone();
    let mut s = s;
    s.proc.terminate();
    let cfg = files.path().join("server.toml");
    let again = server_on(&data, db.as_deref(), &["--config", cfg.to_str().unwrap()]);
    let (st, body) = token(
        &again,
        &orders,
        &[("resource", "https://inventory.internal.example.org")],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        joserfc_verifies(
            &format!("{}/example.org/jwks", again.url),
            body["access_token"].as_str().unwrap()
        ),
        "spiffe://example.org/prod/order-processor"
    );
}

/// Every stored key reference: the keys' and CAs' (two trust domains each), the root's, the
/// log's and the TLS key's; and whether a software log key was ever made.
fn stored_key_refs(s: &Server) -> (Vec<String>, bool) {
    let query = |sql: &str| -> Vec<String> {
        let out = match &s.db {
            Some(url) => run(Command::new("psql").args([url.as_str(), "-At", "-c", sql])),
            None => run(Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3,sys\nfor r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]): print(r[0])",
                ])
                .arg(s.data.join("tessera.db"))
                .arg(sql)),
        };
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let refs = query(
        "SELECT sealed FROM signing_keys UNION ALL SELECT sealed FROM ca_certs UNION ALL \
         SELECT value FROM meta WHERE key IN ('ca_root_key', 'audit_log_key_token', 'tls_key_token')",
    );
    let software_log_key = !query("SELECT value FROM meta WHERE key = 'audit_log_key'").is_empty();
    (refs, software_log_key)
}

/// Scans every file under `dir` for a PEM private key, a PKCS#8 EC or Ed25519 key, or a SEC1
/// EC private key.
fn assert_no_private_keys(dir: &Path) {
    // PKCS#8 (version 0) of an EC key, of an Ed25519 key, and a SEC1 ECPrivateKey of P-256.
    const PKCS8_EC: &[u8] = &[
        0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    ];
    const PKCS8_ED25519: &[u8] = &[0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
    const SEC1: &[u8] = &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
    let mut seen = 0;
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        seen += 1;
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "{}", entry.display());
        for needle in [PKCS8_EC, PKCS8_ED25519, SEC1] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a private key's encoding in {}",
                entry.display()
            );
        }
    }
    assert!(seen >= 3, "the scan read the data folder");
    assert!(!dir.join("tls/server.key").exists());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// Writes each certificate of a PEM chain to its own file, in order.
fn split_pem(dir: &Path, chain: &str) -> Vec<std::path::PathBuf> {
    chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|c| c.contains("BEGIN"))
        .enumerate()
        .map(|(i, c)| write(dir, &format!("chain-{i}.pem"), c))
        .collect()
}

#[tokio::test]
async fn every_private_key_lives_in_the_token_sqlite() {
    every_key_in_the_token(Backend::Sqlite, "sqlite").await;
}

#[tokio::test]
async fn every_private_key_lives_in_the_token_postgres() {
    every_key_in_the_token(Backend::Postgres, "postgres").await;
}

/// Token issuance and SVID signing go on while the signing keys and CAs rotate (keys made in
/// the token): not one request fails, and the new keys are in the token too.
#[tokio::test]
async fn rotation_in_the_token_under_load_fails_nothing() {
    let (s, _files) = hsm_server(Backend::Sqlite, "rotation", ALL).unwrap();
    let (orders, _) = setup_mesh(&s);
    let before: Vec<String> = keys_status(&s)
        .iter()
        .filter(|k| k["kind"] == "signing" || k["kind"] == "ca")
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, secret, stop) = (s.url.clone(), orders.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .post(format!("{url}/token"))
                    .basic_auth("orders", Some(&secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("resource", "https://inventory.internal.example.org"),
                    ])
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("{} {}", r.status(), r.text().await.unwrap()));
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for args in [
        &["keys", "rotate"][..],
        &["ca", "rotate", "--activate-in", "0s"][..],
        &["keys", "rotate"][..],
    ] {
        let o = tessera(&s.data, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for h in load {
        let (ok, failed) = h.await.unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        total += ok;
    }
    assert!(total > 20, "the load ran: {total}");
    let after = keys_status(&s);
    let new: Vec<&Value> = after
        .iter()
        .filter(|k| {
            (k["kind"] == "signing" || k["kind"] == "ca")
                && !before.contains(&k["id"].as_str().unwrap().to_owned())
        })
        .collect();
    // Two keys and one CA per trust domain were made, all in the token.
    assert_eq!(new.len(), 6, "{after:?}");
    for k in new {
        assert!(k["location"].as_str().unwrap().contains("pkcs11"), "{k}");
    }
    assert_eq!(private_keys("rotation").len(), 7 + 6);
}

/// A root outside Tessera (`openssl ca`) signs the CSR `tessera ca csr` made for example.org's
/// next CA, whose key stays in the token; `tessera ca install` takes it, the bundle serves it
/// and SVIDs chain to that root. Wrong certificates are refused, nothing changed.
#[tokio::test]
async fn an_outside_root_signs_the_intermediate() {
    let (s, files) = hsm_server(Backend::Sqlite, "outside", &["signing", "ca"]).unwrap();
    let dir = files.path();
    // No CSR asked yet: install is refused.
    let any = write(
        dir,
        "any.pem",
        "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
    );
    let o = tessera(
        &s.data,
        &[
            "ca",
            "install",
            "--trust-domain",
            "example.org",
            "--cert",
            any.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());

    let o = tessera(&s.data, &["ca", "csr", "--trust-domain", "example.org"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csr = write(dir, "td.csr", &stdout(&o));
    // The outside root: openssl's own key and `openssl ca` with its database.
    let ca_dir = dir.join("rootca");
    std::fs::create_dir_all(ca_dir.join("new")).unwrap();
    std::fs::write(ca_dir.join("index.txt"), "").unwrap();
    std::fs::write(ca_dir.join("serial"), "1000\n").unwrap();
    let cnf = write(
        &ca_dir,
        "openssl.cnf",
        &format!(
            "[ca]\ndefault_ca = root\n[root]\ndir = {d}\ndatabase = $dir/index.txt\nserial = $dir/serial\nnew_certs_dir = $dir/new\ncertificate = $dir/root.pem\nprivate_key = $dir/root.key\ndefault_md = sha256\ndefault_days = 30\npolicy = any\ncopy_extensions = copy\nunique_subject = no\nx509_extensions = intermediate\n[any]\norganizationName = optional\ncommonName = supplied\n[intermediate]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
            d = ca_dir.display()
        ),
    );
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/O=Outside/CN=Outside Root",
        "-days",
        "365",
        "-keyout",
        ca_dir.join("root.key").to_str().unwrap(),
        "-out",
        ca_dir.join("root.pem").to_str().unwrap(),
        "-addext",
        "basicConstraints=critical,CA:TRUE,pathlen:1",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    let inter = dir.join("intermediate.pem");
    run(Command::new("openssl").args([
        "ca",
        "-batch",
        "-config",
        cnf.to_str().unwrap(),
        "-notext",
        "-in",
        csr.to_str().unwrap(),
        "-out",
        inter.to_str().unwrap(),
    ]));

    // A certificate for another key (the root's own) is refused; nothing is installed.
    let o = tessera(
        &s.data,
        &[
            "ca",
            "install",
            "--trust-domain",
            "example.org",
            "--cert",
            ca_dir.join("root.pem").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("does not belong") || stderr(&o).contains("self-signed"),
        "{}",
        stderr(&o)
    );
    // For another trust domain it is refused too (its SPIFFE ID names example.org).
    let o = tessera(
        &s.data,
        &[
            "ca",
            "install",
            "--trust-domain",
            "dev.example.org",
            "--cert",
            inter.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success(), "{}", stdout(&o));

    let o = tessera(
        &s.data,
        &[
            "ca",
            "install",
            "--trust-domain",
            "example.org",
            "--cert",
            inter.to_str().unwrap(),
            "--activate-in",
            "0s",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // It follows the CA it replaces by at least a second.
    let mut status = keys_status(&s);
    for _ in 0..30 {
        if status
            .iter()
            .any(|k| k["kind"] == "ca" && k["rotation"].is_string())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = keys_status(&s);
    }
    let active: Vec<&Value> = status
        .iter()
        .filter(|k| {
            k["kind"] == "ca" && k["trust_domain"] == "example.org" && k["state"] == "active"
        })
        .collect();
    assert_eq!(active.len(), 1, "{status:?}");
    assert!(active[0]["location"].as_str().unwrap().contains("pkcs11"));
    assert!(
        active[0]["rotation"]
            .as_str()
            .unwrap_or_default()
            .contains("tessera ca csr"),
        "{status:?}"
    );

    // The bundle serves the installed intermediate; an SVID chains to the outside root.
    let bundle: Value = get_json(&format!("{}/bundle/example.org", s.url)).await;
    let inter_b64: String = std::fs::read_to_string(&inter)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        bundle["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["x5c"][0] == inter_b64.as_str()),
        "{bundle}"
    );
    let p = write(dir, "sidecar.toml", &sidecar_mesh());
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_agent, socket) = join_agent(&s, dir, "agent");
    let (chain, _, _) = svid_files(&socket, FRONTEND, dir).await;
    let parts = split_pem(dir, &std::fs::read_to_string(&chain).unwrap());
    assert_eq!(parts.len(), 2);
    let out = run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        ca_dir.join("root.pem").to_str().unwrap(),
        "-untrusted",
        parts[1].to_str().unwrap(),
        parts[0].to_str().unwrap(),
    ]));
    assert!(out.contains(": OK"), "{out}");
}

/// Each bad token or key stops the start with one line, and changes nothing.
#[test]
fn a_bad_token_is_refused_at_start_with_one_line() {
    let h = hsm();
    h.add_token("refusals");
    let files = tempfile::tempdir().unwrap();
    let data = files.path().join("data");
    let start = |cfg: &str, pin: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "server",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg,
            "--data",
        ])
        .arg(&data)
        .env("TESSERA_LOG", "warn")
        .envs(h.env());
        if let Some(pin) = pin {
            cmd.env("TEST_HSM_PIN", pin);
        }
        cmd.output().unwrap()
    };
    let one_line = |o: &std::process::Output, want: &str| {
        assert!(!o.status.success());
        let err = stderr(o);
        assert!(err.contains(want), "wanted `{want}`: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    };
    let good = config(files.path(), "refusals", ALL);
    one_line(&start(&good, Some("9999")), "the PIN is refused");
    assert!(!data.exists(), "nothing was written");
    let missing = write(
        files.path(),
        "missing.toml",
        &std::fs::read_to_string(&good)
            .unwrap()
            .replace("\"refusals\"", "\"nowhere\""),
    );
    one_line(
        &start(missing.to_str().unwrap(), None),
        "no PKCS#11 token labelled `nowhere`",
    );
    let not_module = write(
        files.path(),
        "libc.toml",
        &std::fs::read_to_string(&good)
            .unwrap()
            .replace(tessera_testkit::SOFTHSM_MODULE, "/bin/true"),
    );
    one_line(
        &start(not_module.to_str().unwrap(), None),
        "is not a PKCS#11 module",
    );
    assert!(!data.exists(), "nothing was written");
    // The KEK in the token and one given as well: which one is meant is not guessed.
    let with_kek = write(
        files.path(),
        "kek.toml",
        &std::fs::read_to_string(&good)
            .unwrap()
            .replace("\"tls\"]", "\"tls\", \"kek\"]"),
    );
    let o = Command::new(BIN)
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--config"])
        .arg(&with_kek)
        .arg("--data")
        .arg(&data)
        .envs(h.env())
        .env(
            "TESSERA_KEK",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    one_line(&o, "the KEK is in the token");

    // A first good start makes the keys; then a key is swapped in the token for one of the
    // wrong kind, and then for one that can leave the token: each refused by label.
    let mut s = server_with(&data, None, &["--listen", "127.0.0.1:0", "--config", &good]);
    let status = keys_status(&s);
    s.proc.terminate();
    let label_of = |kind: &str| -> String {
        let k = status.iter().find(|k| k["kind"] == kind).unwrap();
        let loc = k["location"].as_str().unwrap();
        loc.rsplit('`').nth(1).unwrap().to_owned()
    };
    // Runs pkcs11-tool on the token; it must succeed.
    let tool = |args: &[&str]| {
        let o = h.tool("refusals", args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    let delete = |label: &str| tool(&["--delete-object", "--type", "privkey", "--label", label]);
    let replace = |label: &str, flag: &str| {
        delete(label);
        tool(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            label,
            "--usage-sign",
            flag,
        ]);
    };
    // A signing key that can leave the token.
    let signing = label_of("signing");
    replace(&signing, "--extractable");
    one_line(
        &start(&good, None),
        &format!("key `{signing}` can leave the token"),
    );
    // The log's key of the wrong type (P-256 where Ed25519 is needed); it is checked first.
    let audit = label_of("audit");
    replace(&audit, "--sensitive");
    one_line(&start(&good, None), &format!("key `{audit}` is of type"));
    // And gone: never replaced by a software key.
    delete(&audit);
    one_line(
        &start(&good, None),
        &format!("no private key labelled `{audit}`"),
    );
}

/// The token goes away under a running server (its folder moved out of SoftHSM's reach): each
/// request that needs a signature fails closed with 503 and an audit record naming the token,
/// never signed by anything else; once the token is back, the server reconnects by itself.
#[tokio::test]
async fn a_token_that_fails_fails_requests_closed_then_reconnects() {
    let (s, _files) = hsm_server(Backend::Sqlite, "failing", ALL).unwrap();
    let (orders, _) = setup_mesh(&s);
    let form = [("resource", "https://inventory.internal.example.org")];
    let (st, body) = token(&s, &orders, &form).await;
    assert_eq!(st, 200, "{body}");
    let kid_of = |t: &str| -> String {
        use base64::Engine;
        let header = t.split('.').next().unwrap();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<Value>(&header).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let kid = kid_of(body["access_token"].as_str().unwrap());

    // The token's folder: the one whose token.object carries the label.
    let tokens = hsm().dir.path().join("tokens");
    let folder = std::fs::read_dir(&tokens)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read(p.join("token.object"))
                .unwrap_or_default()
                .windows(b"failing".len())
                .any(|w| w == b"failing")
        })
        .unwrap();
    let aside = hsm().dir.path().join("aside-failing");
    std::fs::rename(&folder, &aside).unwrap();
    for _ in 0..3 {
        let (st, body) = token(&s, &orders, &form).await;
        assert_eq!(st, 503, "{body}");
        assert!(body.get("access_token").is_none());
    }
    let o = tessera(&s.data, &["audit", "tail", "-n", "20"]);
    let tail = stdout(&o);
    assert!(
        tail.lines()
            .any(|l| l.contains("token.failed error") && l.contains("PKCS#11 token `failing`")),
        "{tail}"
    );

    std::fs::rename(&aside, &folder).unwrap();
    let mut back = None;
    for _ in 0..20 {
        let (st, body) = token(&s, &orders, &form).await;
        if st == 200 {
            back = Some(body);
            break;
        }
        assert_eq!(st, 503, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let body = back.expect("the server reconnected to the token");
    // The same key in the token signs again.
    assert_eq!(kid_of(body["access_token"].as_str().unwrap()), kid);
    // And the metrics say so (the alert TesseraKeyCustodyFailing reads the first).
    let counter = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut text = String::new();
    for _ in 0..30 {
        text = get_text(&format!("{}/metrics", s.url)).await;
        if counter(&text, "tessera_key_custody_reconnects_total") >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        counter(&text, "tessera_key_custody_failures_total") >= 3.0,
        "{text}"
    );
    assert!(
        counter(&text, "tessera_key_custody_reconnects_total") >= 1.0,
        "{text}"
    );
}
