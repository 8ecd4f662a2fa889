//! The vault end to end, on both backends: values sealed at rest (checked in the database
//! itself), reads by workload identity under `secret_grant`s only, metadata apart from values,
//! rotation notices by long poll, disabled and expired versions, soft delete, restore and purge,
//! every read in the audit chain and no value in it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PAY: &str = "spiffe://example.org/prod/payments";
const REPORTS: &str = "spiffe://example.org/prod/reports";
const STRANGER: &str = "spiffe://example.org/prod/stranger";
const VALUE: &str = "sk_live_51HxTesseraVaultCanary";

fn mesh() -> String {
    let mut m = String::new();
    for (id, client) in [
        (PAY, "payments"),
        (REPORTS, "reports"),
        (STRANGER, "stranger"),
    ] {
        m.push_str(&format!(
            "[[workload]]\nid = \"{id}\"\nowner = \"team-x\"\npurpose = \"test\"\nenvironment = \"prod\"\n\n[[client]]\nid = \"{client}\"\nworkload = \"{id}\"\nauth = \"client_secret\"\n\n"
        ));
    }
    m.push_str(&format!(
        r#"
[[secret_grant]]
from = "{PAY}"
secrets = ["payments/stripe", "legacy/*"]
why = "charges cards"

[[secret_grant]]
from = "{REPORTS}"
secrets = ["payments/stripe"]
access = "metadata"
why = "reports on key age"
"#
    ));
    m
}

/// A Tessera token for the authority itself, for `client`.
async fn authority_token(s: &Server, client: &str) -> String {
    let o = tessera(&s.data, &["client", "secret", client]);
    let secret = stdout(&o).lines().next().unwrap().to_owned();
    let (status, body) = post_form(
        &format!("{}/token", s.url),
        Some((client, &secret)),
        &[("grant_type", "client_credentials"), ("audience", &s.url)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn get(url: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
    stdout(o)
}

/// Every byte the database holds for the secrets, as text: the SQLite files, or a dump of the
/// PostgreSQL tables.
fn stored_bytes(s: &Server) -> String {
    match &s.db {
        None => {
            let mut all = Vec::new();
            for f in ["tessera.db", "tessera.db-wal"] {
                if let Ok(b) = std::fs::read(s.data.join(f)) {
                    all.extend(b);
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        }
        Some(url) => {
            let o = Command::new("psql")
                .args([url.as_str(), "-At", "-c"])
                .arg("SELECT s.*, v.* FROM secrets s JOIN secret_versions v USING (name)")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            stdout(&o)
        }
    }
}

async fn vault_flow(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mesh.toml", &mesh());
    ok(&tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]));
    let value_file = write(dir.path(), "v", VALUE);
    let out = ok(&tessera(
        &s.data,
        &[
            "secret",
            "put",
            "payments/stripe",
            "--value-file",
            value_file.to_str().unwrap(),
            "--owner",
            "team-pay",
            "--purpose",
            "Stripe API key",
            "--rotation-period",
            "90d",
        ],
    ));
    assert_eq!(out, "payments/stripe version 1\n");

    // Sealed at rest: the value is nowhere in the database, its ciphertext is.
    let stored = stored_bytes(&s);
    assert!(stored.contains("payments/stripe"), "the row is there");
    assert!(!stored.contains(VALUE), "the value is stored in the clear");

    let pay = authority_token(&s, "payments").await;
    let reports = authority_token(&s, "reports").await;
    let stranger = authority_token(&s, "stranger").await;
    let url = |path: &str| format!("{}/v1/{path}", s.url);

    // Least privilege: the grantee reads the value; metadata readers see metadata only;
    // everyone else nothing, not even whether a secret exists.
    let (status, body) = get(&url("secrets/payments/stripe"), &pay).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], VALUE);
    assert_eq!(body["version"], 1);
    let (status, body) = get(&url("secrets/payments/stripe"), &reports).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get(&url("secret-metadata/payments/stripe"), &reports).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["owner"], "team-pay");
    assert!(!body.to_string().contains(VALUE));
    for path in [
        "secret-metadata/payments/stripe",
        "secrets/payments/stripe",
        "secrets/payments/missing",
    ] {
        let (status, _) = get(&url(path), &stranger).await;
        assert_eq!(status, 403, "{path}");
    }
    // Granted by an explicit prefix, missing: 404 to the grantee only.
    assert_eq!(get(&url("secrets/legacy/db"), &pay).await.0, 404);
    assert_eq!(get(&url("secrets/payments/stripe2"), &pay).await.0, 403);
    // No token: 401. Path tricks: refused as names.
    let r = reqwest::get(url("secrets/payments/stripe")).await.unwrap();
    assert_eq!(r.status(), 401);
    for trick in [
        "payments/../payments/stripe",
        "payments/%2e%2e/stripe",
        "Payments/stripe",
    ] {
        let o = Command::new("curl")
            .args([
                "-s",
                "--path-as-is",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {pay}"))
            .arg(url(&format!("secrets/{trick}")))
            .output()
            .unwrap();
        assert_eq!(stdout(&o), "400", "{trick}");
    }

    // Rotation: a reader waiting on version 1 is answered with version 2 when it is written.
    let waiter = {
        let (u, t) = (url("secrets/payments/stripe?after=1&wait=30"), pay.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = get(&u, &t).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = ok(&tessera(
        &s.data,
        &["secret", "rotate", "payments/stripe", "--generate", "32"],
    ));
    assert_eq!(out, "payments/stripe rotated to version 2\n");
    let ((status, body), waited) = waiter.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_ne!(body["value"], VALUE);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // Nothing newer: the wait ends in 304.
    let (status, _) = get(&url("secrets/payments/stripe?after=2&wait=1"), &pay).await;
    assert_eq!(status, 304);

    // Disabled and expired versions: clear refusals; older versions stay readable.
    ok(&tessera(
        &s.data,
        &["secret", "disable", "payments/stripe", "--version", "2"],
    ));
    let (status, body) = get(&url("secrets/payments/stripe"), &pay).await;
    assert_eq!(status, 403);
    assert!(body.to_string().contains("disabled"), "{body}");
    let (status, body) = get(&url("secrets/payments/stripe?version=1"), &pay).await;
    assert_eq!((status, body["value"].as_str()), (200, Some(VALUE)));
    ok(&tessera(
        &s.data,
        &["secret", "enable", "payments/stripe", "--version", "2"],
    ));
    ok(&tessera(
        &s.data,
        &[
            "secret",
            "put",
            "legacy/db",
            "--value-file",
            value_file.to_str().unwrap(),
            "--owner",
            "team-pay",
            "--purpose",
            "legacy database password",
            "--expires-in",
            "1s",
        ],
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = get(&url("secrets/legacy/db"), &pay).await;
    assert_eq!(status, 403);
    assert!(body.to_string().contains("expired"), "{body}");
    let list = ok(&tessera(&s.data, &["secret", "list"]));
    assert!(list.contains("OVERDUE: expired"), "{list}");
    // The server's upkeep (every 10 s) counts it and records it once in the audit trail.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let metrics = get_text(&format!("{}/metrics", s.url)).await;
        let audit = ok(&tessera(
            &s.data,
            &["audit", "tail", "-n", "100", "--output", "json"],
        ));
        let recorded = audit.contains("secret.overdue") && audit.contains("secret:legacy/db");
        if metrics.contains("tessera_secrets_overdue{reason=\"expired\"} 1") && recorded {
            break;
        }
        assert!(Instant::now() < deadline, "overdue not reported: {metrics}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Bad input: oversized values and path tricks in names, refused with a one-line message.
    let big = write(dir.path(), "big", &"x".repeat(25 * 1024 + 1));
    let o = tessera(
        &s.data,
        &[
            "secret",
            "put",
            "payments/stripe",
            "--value-file",
            big.to_str().unwrap(),
        ],
    );
    refused(&o, "25 KiB");
    let o = tessera(
        &s.data,
        &[
            "secret",
            "put",
            "../etc",
            "--value-file",
            value_file.to_str().unwrap(),
        ],
    );
    refused(&o, "secret name");

    // Describe: who may read, and why.
    let d = ok(&tessera(
        &s.data,
        &["describe", "secret", "payments/stripe"],
    ));
    assert!(d.contains(PAY) && d.contains("secret grants of"), "{d}");
    assert!(
        d.contains("may read the metadata only:\n    spiffe://example.org/prod/reports"),
        "{d}"
    );
    assert!(!d.contains(STRANGER), "{d}");

    // Soft delete, restore, purge.
    ok(&tessera(&s.data, &["secret", "delete", "payments/stripe"]));
    assert_eq!(get(&url("secrets/payments/stripe"), &pay).await.0, 404);
    let o = tessera(
        &s.data,
        &[
            "secret",
            "put",
            "payments/stripe",
            "--value-file",
            value_file.to_str().unwrap(),
        ],
    );
    refused(&o, "deleted");
    let o = tessera(&s.data, &["secret", "get", "payments/stripe"]);
    refused(&o, "deleted");
    ok(&tessera(&s.data, &["secret", "restore", "payments/stripe"]));
    let (status, body) = get(&url("secrets/payments/stripe?version=1"), &pay).await;
    assert_eq!((status, body["value"].as_str()), (200, Some(VALUE)));
    let o = tessera(&s.data, &["secret", "purge", "payments/stripe"]);
    refused(&o, "delete it first");
    ok(&tessera(&s.data, &["secret", "delete", "payments/stripe"]));
    ok(&tessera(&s.data, &["secret", "purge", "payments/stripe"]));
    let all = ok(&tessera(&s.data, &["secret", "list", "--deleted"]));
    assert!(!all.contains("payments/stripe"), "{all}");

    // The audit trail: every read by whom and which version, denials, writes; never a value.
    let o = tessera(&s.data, &["audit", "tail", "-n", "500", "--output", "json"]);
    let audit = ok(&o);
    assert!(!audit.contains(VALUE), "a value reached the audit trail");
    let rows: Vec<Value> = serde_json::from_str(&audit).unwrap();
    let count = |kind: &str, actor: &str| {
        rows.iter()
            .filter(|r| {
                r["kind"] == kind && r["actor"] == actor && r["subject"] == "secret:payments/stripe"
            })
            .count()
    };
    assert!(count("secret.read", PAY) >= 3, "{audit}");
    assert!(count("secret.denied", REPORTS) >= 1, "{audit}");
    assert!(count("secret.denied", STRANGER) >= 2, "{audit}");
    for kind in [
        "secret.written",
        "secret.rotated",
        "secret.disabled",
        "secret.deleted",
        "secret.restored",
        "secret.purged",
    ] {
        assert!(rows.iter().any(|r| r["kind"] == kind), "{kind}: {audit}");
    }
    ok(&tessera(&s.data, &["audit", "verify"]));
    let metrics = get_text(&format!("{}/metrics", s.url)).await;
    assert!(
        metrics.contains("tessera_secret_reads_total{result=\"denied\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_sqlite() {
    vault_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_postgres() {
    vault_flow(Backend::Postgres).await;
}

/// Two servers on one PostgreSQL database: a read on B is served from B's memory, and a change
/// made through A (a new version, a disabled one, a deletion) reaches B's readers as soon as A's
/// notice does, never the old value for longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_cache_follows_another_servers_changes() {
    let Some(db) = tessera_testkit::postgres_database() else {
        return;
    };
    let (da, dbb) = (tessera_testkit::data_dir(), tessera_testkit::data_dir());
    let a = server_on(da.path(), Some(&db), &[]);
    // One key-encryption key for both: B opens what A sealed.
    share_kek(da.path(), dbb.path());
    // A poll interval far longer than the test: only the notice can tell B.
    let b = server_with(
        dbb.path(),
        Some(&db),
        &["--listen", "127.0.0.1:0", "--poll-interval", "10m"],
    );
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mesh.toml", &mesh());
    ok(&tessera(&a.data, &["apply", "-f", p.to_str().unwrap()]));
    let v1 = write(dir.path(), "v1", "first-value");
    ok(&tessera(
        &a.data,
        &[
            "secret",
            "put",
            "legacy/db",
            "--value-file",
            v1.to_str().unwrap(),
            "--owner",
            "team-pay",
            "--purpose",
            "test",
        ],
    ));
    // A token for B (its own issuer URL), the client's secret set through B.
    let pay = authority_token(&b, "payments").await;
    let on_b = format!("{}/v1/secrets/legacy/db", b.url);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&on_b, &pay).await;
        if status == 200 {
            assert_eq!(body["value"], "first-value");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never served the secret: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Served from memory now; A writes a new version.
    for _ in 0..5 {
        assert_eq!(get(&on_b, &pay).await.1["value"], "first-value");
    }
    let v2 = write(dir.path(), "v2", "second-value");
    ok(&tessera(
        &a.data,
        &[
            "secret",
            "put",
            "legacy/db",
            "--value-file",
            v2.to_str().unwrap(),
        ],
    ));
    seen(&on_b, &pay, |st, b| {
        st == 200 && b["value"] == "second-value"
    })
    .await;
    ok(&tessera(
        &a.data,
        &["secret", "disable", "legacy/db", "--version", "2"],
    ));
    seen(&on_b, &pay, |st, _| st == 403).await;
    ok(&tessera(&a.data, &["secret", "delete", "legacy/db"]));
    seen(&on_b, &pay, |st, _| st == 404).await;
}

/// Waits (3 s at most) until a read of `url` gives what `want` accepts.
async fn seen(url: &str, token: &str, want: impl Fn(u16, &Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = get(url, token).await;
        if want(status, &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "B kept serving the old state: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `tessera exec` as a workload attested by the node agent: secrets into the environment and into
/// a 0600 file on tmpfs, a reference without a grant stops before the program starts, a rotation
/// rewrites the file and signals the program; and a read with the X.509-SVID over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_svid_reads() {
    use std::io::BufRead;

    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uid = stdout(&Command::new("id").arg("-u").output().unwrap())
        .trim()
        .to_owned();
    let mesh = mesh().replacen(
        "environment = \"prod\"\n",
        &format!("environment = \"prod\"\nselectors = [\"unix:uid:{uid}\"]\n"),
        1,
    );
    let p = write(dir.path(), "mesh.toml", &mesh);
    ok(&tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]));
    let value_file = write(dir.path(), "v", VALUE);
    ok(&tessera(
        &s.data,
        &[
            "secret",
            "put",
            "payments/stripe",
            "--value-file",
            value_file.to_str().unwrap(),
            "--owner",
            "team-pay",
            "--purpose",
            "Stripe API key",
        ],
    ));
    let (_agent, socket) = join_agent(&s, dir.path(), "agent");
    let exec = |extra: &[&str], program: &str| {
        let mut c = Command::new(BIN);
        c.args(["exec", "--server", &s.url, "--id", PAY, "--socket"])
            .arg(&socket)
            .args(extra)
            .args(["--", "sh", "-c", program])
            .current_dir(dir.path());
        c
    };

    let o = exec(
        &[
            "--env",
            "STRIPE=tessera://secret/payments/stripe",
            "--file",
            "keys/stripe.txt=tessera://secret/payments/stripe?version=1",
        ],
        "echo \"env=$STRIPE\"; echo \"file=$(cat \"$TESSERA_SECRETS_DIR/keys/stripe.txt\")\"; stat -c 'mode=%a' \"$TESSERA_SECRETS_DIR/keys/stripe.txt\"; echo \"dir=$TESSERA_SECRETS_DIR\"",
    )
    .output()
    .unwrap();
    let out = ok(&o);
    assert!(out.contains(&format!("env={VALUE}\n")), "{out}");
    assert!(out.contains(&format!("file={VALUE}\n")), "{out}");
    assert!(out.contains("mode=600\n"), "{out}");
    let used = out.lines().find_map(|l| l.strip_prefix("dir=")).unwrap();
    assert!(
        !Path::new(used).exists(),
        "the secrets folder is removed at exit"
    );

    // No grant for the secret: a one-line refusal, and the program never starts.
    let o = exec(
        &["--env", "X=tessera://secret/payments/other"],
        "touch started",
    )
    .output()
    .unwrap();
    refused(&o, "may not read");
    assert!(!dir.path().join("started").exists());
    let o = exec(&["--env", "X=tessera://secret/../x"], "true")
        .output()
        .unwrap();
    refused(&o, "not a secret reference");

    // Rotation: the file is rewritten, then the program gets SIGHUP.
    let mut child = exec(
        &["--file", "k=tessera://secret/payments/stripe", "--on-rotate", "signal:HUP"],
        "trap 'echo rotated=$(cat \"$TESSERA_SECRETS_DIR/k\"); exit 0' HUP; echo started; while :; do sleep 0.1; done",
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    let new_value = write(dir.path(), "v2", "rotated-value-2");
    ok(&tessera(
        &s.data,
        &[
            "secret",
            "rotate",
            "payments/stripe",
            "--value-file",
            new_value.to_str().unwrap(),
        ],
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(lines.next().map(|l| l.unwrap()));
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no rotation within 20 s");
    assert_eq!(line.as_deref(), Some("rotated=rotated-value-2"));
    assert!(child.wait().unwrap().success());

    // The X.509-SVID over mTLS is an identity too: curl with the workload's certificate.
    let svid_dir = dir.path().join("svid");
    ok(&Command::new(BIN)
        .args(["svid", "fetch", "--id", PAY, "--socket"])
        .arg(&socket)
        .arg("--write")
        .arg(&svid_dir)
        .output()
        .unwrap());
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(s.data.join("tls").join("ca.pem"))
        .arg("--cert")
        .arg(svid_dir.join("svid.pem"))
        .arg("--key")
        .arg(svid_dir.join("svid.key"))
        .arg(format!(
            "{}/v1/secrets/payments/stripe",
            s.url.replace("http://", "https://")
        ))
        .output()
        .unwrap();
    let body: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(body["value"], "rotated-value-2", "{body}");
    let audit = ok(&tessera(
        &s.data,
        &["audit", "tail", "-n", "50", "--output", "json"],
    ));
    assert!(audit.contains("\\\"authn\\\":\\\"mtls\\\""), "{audit}");
}
