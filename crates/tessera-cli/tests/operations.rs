//! Operations: several servers on one PostgreSQL, key rotation under load, TLS, the
//! key-encryption key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tessera_verify::{JwksCache, Verifier, VerifierConfig};

const INVENTORY: &str = "spiffe://example.org/prod/inventory-api";

#[tokio::test]
async fn two_servers_share_one_postgres() {
    let Some(db) = tessera_testkit::postgres_database() else {
        return;
    };
    let (da, db_dir) = (tessera_testkit::data_dir(), tessera_testkit::data_dir());
    // Both servers need the same key-encryption key: share the first one's file.
    let a = server_on(da.path(), Some(&db), &[]);
    share_kek(da.path(), db_dir.path());
    let b = server_on(db_dir.path(), Some(&db), &[]);
    let (orders, inventory) = setup_mesh(&a);

    // A change made through A reaches B within its poll interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tok = loop {
        let (st, body) = post_form(
            &format!("{}/token", b.url),
            Some(("orders", &orders)),
            &[
                ("grant_type", "client_credentials"),
                ("resource", "inventory-api"),
            ],
        )
        .await;
        if st == 200 {
            break body["access_token"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "server B never saw the change: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One authority: a token from B verifies with A's JWKS (same keys), and revocation through
    // A is seen by B's introspection.
    let o = cli(&[
        "verify",
        "--issuer",
        &b.url,
        "--audience",
        INVENTORY,
        "--jwks",
        &format!("{}/jwks", a.url),
        &tok,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let jti = serde_json::from_str::<Value>(&stdout(&o)).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = tessera(&a.data, &["revoke", "token", &jti]);
    assert!(
        o.status.success(),
        "{}\nserver A:\n{}\nserver B:\n{}",
        stderr(&o),
        a.proc.stderr(),
        b.proc.stderr()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = post_form(
            &format!("{}/introspect", b.url),
            Some(("inventory", &inventory)),
            &[("token", &tok)],
        )
        .await;
        if body["active"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "B never saw the revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both wrote to one audit chain, and it verifies.
    let o = tessera(&b.data, &["audit", "verify"]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[tokio::test]
async fn key_rotation_under_load_fails_no_verification() {
    let s = server(Backend::Sqlite, &["--key-publish-ahead", "2s"]).unwrap();
    let (orders, _) = setup_mesh(&s);
    // A verifier as a service would run it: JWKS from the issuer through the cache.
    let mut cache = JwksCache::new(format!("{}/jwks", s.url).parse().unwrap());
    cache.min_refresh = Duration::from_millis(500);
    let verifier = Verifier::new(
        VerifierConfig::access_token(&s.url, INVENTORY).unwrap(),
        cache,
    );
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let kids = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let stop = Instant::now() + Duration::from_secs(6);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, orders, verifier, ok, failed, kids) = (
            s.url.clone(),
            orders.clone(),
            verifier.clone(),
            ok.clone(),
            failed.clone(),
            kids.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < stop {
                let resp = client
                    .post(format!("{url}/token"))
                    .basic_auth("orders", Some(&orders))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("resource", "inventory-api"),
                    ])
                    .send()
                    .await
                    .unwrap();
                let body: Value = resp.json().await.unwrap();
                let Some(t) = body["access_token"].as_str() else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                kids.lock().unwrap().insert(
                    tessera_token::Unverified::parse(t)
                        .unwrap()
                        .kid
                        .unwrap()
                        .to_string(),
                );
                match verifier.verify(t).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("verification failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let o = tessera(&s.data, &["keys", "rotate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("published now, signs from"),
        "{}",
        stdout(&o)
    );
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} failures out of {}", ok + failed);
    assert!(ok > 50, "too little load to mean anything: {ok}");
    eprintln!("drill: key rotation under load: {ok} tokens issued and verified, {failed} failed");
    assert_eq!(
        kids.lock().unwrap().len(),
        2,
        "tokens were signed by the old key, then the new one"
    );
    let o = tessera(&s.data, &["keys", "list", "--output", "json"]);
    let keys: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["retiring", "signing"], "{keys}");
}

#[tokio::test]
async fn tls_by_default_and_curl_trusts_the_generated_ca() {
    let dir = tessera_testkit::data_dir();
    let p = tls_server(dir.path(), &["prod.example.org", "dev.example.org"]);
    assert!(p.ready.starts_with("https://127.0.0.1:"), "{}", p.ready);
    let ca = dir.path().join("tls/ca.pem");
    let o = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca)
        .arg(format!(
            "{}/.well-known/oauth-authorization-server/dev.example.org",
            p.ready
        ))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let meta: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(meta["issuer"], format!("{}/dev.example.org", p.ready));
    // Each trust domain has its own keys.
    let jwks = |td: &str| {
        let o = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca)
            .arg(format!("{}/{td}/jwks", p.ready))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["keys"][0]["kid"].clone()
    };
    assert_ne!(jwks("prod.example.org"), jwks("dev.example.org"));
    // Plain HTTP on the TLS port gets nowhere.
    let plain = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "3"])
        .arg(p.ready.replace("https://", "http://") + "/healthz")
        .output()
        .unwrap();
    assert!(!plain.status.success());
}

#[test]
fn wrong_or_exposed_kek_refuses_to_start_and_changes_nothing() {
    let dir = tessera_testkit::data_dir();
    let snapshot = |data: &std::path::Path| {
        let keys = stdout(&tessera(data, &["keys", "list", "--output", "json"]));
        let audit = stdout(&tessera(
            data,
            &["audit", "tail", "-n", "1000", "--output", "json"],
        ));
        (keys, audit)
    };
    let before = {
        let s = server_on(dir.path(), None, &[]);
        snapshot(&s.data)
    };
    let o = std::process::Command::new(BIN)
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env(
            "TESSERA_KEK",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("does not open this authority's keys"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let after = {
        let s = server_on(dir.path(), None, &[]);
        snapshot(&s.data)
    };
    assert!(
        before == after,
        "a refused start changed keys or audit records"
    );

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("kek"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = std::process::Command::new(BIN)
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("readable by others"));

    let o = std::process::Command::new(BIN)
        .args(["server", "--dev", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback only"));
}

#[test]
fn private_keys_are_sealed_at_rest() {
    let dir = tessera_testkit::data_dir();
    let s = server_on(dir.path(), None, &[]);
    let o = tessera(&s.data, &["keys", "list", "--output", "json"]);
    assert!(o.status.success());
    drop(s);
    let db = std::fs::read(dir.path().join("tessera.db")).unwrap();
    let text = String::from_utf8_lossy(&db);
    assert!(
        !text.contains("BEGIN PRIVATE KEY") && !text.contains("\"d\":"),
        "plain private key material in the database"
    );
}

#[test]
fn dev_once_behaves() {
    let o = cli(&["dev", "--once"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("tessera: ready url=http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("every step behaved"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // The sidecar step: an allowed call that names its caller, and a denied one.
    assert!(
        out.contains(
            "GET /stock/apples -> 200 12 apples in stock (asked by spiffe://example.org/dev/shop)"
        ),
        "{out}"
    );
    assert!(out.contains("GET /admin -> 403 denied by policy"), "{out}");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let dir = tessera_testkit::data_dir();
    let mut s = server_on(dir.path(), None, &[]);
    let status = s.proc.terminate();
    assert!(status.success(), "{status:?}: {}", s.proc.stderr());
    assert!(
        !dir.path().join("admin.sock").exists(),
        "the admin socket is removed on shutdown"
    );
}

/// No audit record, no token: with audit inserts failing underneath the server, the token
/// endpoint refuses (503) and hands out nothing; once storage works again, so does issuance.
async fn fail_closed(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let (orders, _) = setup_mesh(&s);
    // A secret the caller may read, to check the vault fails closed too.
    let files = tempfile::tempdir().unwrap();
    let grant = "\n[[secret_grant]]\nfrom = \"spiffe://example.org/prod/order-processor\"\nsecrets = [\"ops/api-key\"]\nwhy = \"fail-closed test\"\n";
    let p = write(files.path(), "mesh.toml", &format!("{MESH}{grant}"));
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let value = write(files.path(), "value", "the-api-key-value");
    let o = tessera(
        &s.data,
        &[
            "secret",
            "put",
            "ops/api-key",
            "--value-file",
            value.to_str().unwrap(),
            "--owner",
            "ops",
            "--purpose",
            "test",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, body) = token(&s, &orders, &[("audience", &s.url)]).await;
    let bearer = body["access_token"].as_str().unwrap().to_owned();
    let read = || async {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/secrets/ops/api-key", s.url))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(read().await.0, 200);
    assert_eq!(
        token(&s, &orders, &[("resource", "inventory-api")]).await.0,
        200
    );
    let (block, unblock) = match backend {
        Backend::Sqlite => (
            "CREATE TRIGGER block_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit blocked by test'); END;",
            "DROP TRIGGER block_audit;",
        ),
        Backend::Postgres => (
            "ALTER TABLE audit ADD CONSTRAINT block_audit CHECK (seq < 0) NOT VALID;",
            "ALTER TABLE audit DROP CONSTRAINT block_audit;",
        ),
    };
    s.danger_sql(block);
    let (st, body) = token(&s, &orders, &[("resource", "inventory-api")]).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body.get("access_token").is_none());
    assert!(
        !body.to_string().contains("audit blocked by test"),
        "internal detail leaked: {body}"
    );
    eprintln!("drill: audit store unwritable ({backend:?}): token request answered {st}, no token");
    // No record of the read, no value.
    let (st, text) = read().await;
    assert_eq!(st, 503, "{text}");
    assert!(!text.contains("the-api-key-value"), "{text}");
    eprintln!("drill: audit store unwritable ({backend:?}): secret read answered {st}, no value");
    let metrics = get_text(&format!("{}/metrics", s.url)).await;
    assert!(
        metrics.contains("tessera_audit_write_failures_total 2"),
        "{metrics}"
    );
    s.danger_sql(unblock);
    assert_eq!(
        token(&s, &orders, &[("resource", "inventory-api")]).await.0,
        200
    );
    assert_eq!(read().await.0, 200);
    let o = tessera(&s.data, &["audit", "verify"]);
    assert!(o.status.success(), "{}", stdout(&o));
}

#[tokio::test]
async fn fail_closed_sqlite() {
    fail_closed(Backend::Sqlite).await;
}

#[tokio::test]
async fn fail_closed_postgres() {
    fail_closed(Backend::Postgres).await;
}

#[test]
fn admin_over_https_with_the_admin_credential() {
    let dir = tessera_testkit::data_dir();
    let p = tls_server(dir.path(), &["example.org"]);
    let token_file = dir.path().join("admin-token");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the admin credential file is private: {mode:o}"
        );
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let files = write(elsewhere.path(), "mesh.toml", MESH);
    let remote = |args: &[&str], token: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(BIN);
        c.args(args)
            .args(["--server", &p.ready, "--ca-file"])
            .arg(dir.path().join("tls/ca.pem"));
        // A data folder without a socket: only the HTTP path can work.
        c.arg("--data").arg(elsewhere.path());
        if let Some(t) = token {
            c.arg("--admin-token-file").arg(t);
        }
        c.env_remove("TESSERA_ADMIN_TOKEN").output().unwrap()
    };
    let o = remote(&["apply", "-f", files.to_str().unwrap()], Some(&token_file));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("applied 6 change(s)"), "{}", stdout(&o));
    let o = remote(&["get", "workloads", "--output", "json"], Some(&token_file));
    assert!(stdout(&o).contains("spiffe://example.org/prod/inventory-api"));

    let o = remote(&["get", "workloads"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("needs an admin credential"),
        "{}",
        stderr(&o)
    );
    let wrong = write(elsewhere.path(), "wrong-token", "tat_not-the-credential\n");
    let o = remote(&["get", "workloads"], Some(&wrong));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("an admin credential is required"),
        "{}",
        stderr(&o)
    );

    // The change is recorded with who made it.
    let o = tessera(
        dir.path(),
        &["audit", "tail", "-n", "50", "--output", "json"],
    );
    let records: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "apply" && r["actor"] == "admin:token"),
        "{records}"
    );
}

/// Another unix user is refused twice over: by the socket's mode, and (with the mode opened on
/// purpose) by the peer-uid check. Needs root to act as `nobody`, as CI runs.
#[test]
fn admin_socket_refuses_other_unix_users() {
    let root = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("not root: cannot act as another unix user here; CI runs this as root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tessera_testkit::data_dir();
    let s = server_on(dir.path(), None, &[]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let as_nobody = || {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", BIN, "get", "workloads", "--data"])
            .arg(&s.data)
            .output()
            .unwrap()
    };
    let o = as_nobody();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).to_lowercase().contains("permission denied"),
        "{}",
        stderr(&o)
    );
    std::fs::set_permissions(
        dir.path().join("admin.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let o = as_nobody();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is not an administrator of this server"),
        "{}",
        stderr(&o)
    );
    // Root, as the server's own user, still gets through.
    assert!(tessera(&s.data, &["get", "workloads"]).status.success());
}
