//! The hardening pass: each test makes an attack the way an outsider would (real processes,
//! raw sockets, exec tricks) against the real binary, and checks that it now fails while the
//! legitimate use beside it still works.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use tessera_testkit::spawn_ready;

const ATTACKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/attacks.py");

/// A child process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn real(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap()
}

fn python() -> PathBuf {
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys, os; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .unwrap();
    PathBuf::from(stdout(&o).trim())
}

fn attack(args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg(ATTACKS)
        .args(args)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        out.starts_with("GOT") || out.starts_with("REFUSED"),
        "the attack script failed: {out}{}",
        stderr(&o)
    );
    out
}

/// A server, and an agent with a Workload API socket and a managed-identity endpoint, for a
/// mesh where `sleeper` is the workload whose binary is `sleep` and `py` is any python3.
fn agent_mesh(dir: &Path) -> (Server, tessera_testkit::Proc, PathBuf, String) {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let mesh = format!(
        r#"
[[workload]]
id = "spiffe://example.org/sleeper"
owner = "team-a"
purpose = "The workload the attacker wants to be"
selectors = ["unix:path:{sleep}"]

[[workload]]
id = "spiffe://example.org/py"
owner = "team-a"
purpose = "Whatever python3 runs: the control"
selectors = ["unix:path:{py}"]

[[workload]]
id = "spiffe://example.org/api"
owner = "team-b"
purpose = "A resource"
aliases = ["api"]

[[grant]]
from = "spiffe://example.org/sleeper"
to = "spiffe://example.org/api"
why = "tests"

[[grant]]
from = "spiffe://example.org/py"
to = "spiffe://example.org/api"
why = "tests"
"#,
        sleep = real("/usr/bin/sleep").display(),
        py = python().display()
    );
    let p = write(dir, "mesh.toml", &mesh);
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&s.data, &["agent", "token", "create"]);
    let token = stdout(&o).lines().next().unwrap().to_owned();
    let socket = dir.join("agent.sock");
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--server", &s.url, "--socket"])
        .arg(&socket)
        .arg("--data")
        .arg(dir.join("agent-data"))
        .args(["--join-token", &token, "--imds-listen", "127.0.0.1:0"])
        .env("TESSERA_LOG", "warn");
    let agent = spawn_ready(cmd, "tessera: agent ready socket=");
    let imds = agent
        .line
        .split_once(" imds=")
        .map(|(_, u)| u.trim().trim_start_matches("http://").to_owned())
        .unwrap();
    (s, agent, socket, imds)
}

/// Finding 1: a process connects, forks, and execs the binary a workload's selectors name
/// while its child talks on the connection. Refused, for the Workload API and the
/// managed-identity endpoint, whether or not the exec'd program keeps the connection too.
#[test]
fn exec_after_connect_does_not_borrow_an_attestation() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _agent, socket, imds) = agent_mesh(dir.path());
    let sock = socket.to_str().unwrap();
    let sleep = real("/usr/bin/sleep");
    let sleep = sleep.to_str().unwrap();
    // Wait for the agent's first SVIDs: the control must see them.
    let mut control = String::new();
    for _ in 0..50 {
        control = attack(&["workload", sock, "none", sleep]);
        if control.starts_with("GOT") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        control.contains("spiffe://example.org/py"),
        "the genuine process gets its own SVID: {control}"
    );
    assert!(!control.contains("sleeper"), "{control}");
    // A workload that starts programs while it calls lends its connections to each child for
    // the moment between fork and exec: never refused for that.
    let busy = attack(&["workload", sock, "spawning", sleep]);
    assert!(busy.contains("spiffe://example.org/py"), "{busy}");
    for mode in ["fork", "fork-inherit"] {
        let out = attack(&["workload", sock, mode, sleep]);
        assert!(out.starts_with("REFUSED"), "{mode}: {out}");
        assert!(!out.contains("sleeper"), "{mode}: {out}");
        assert!(
            out.contains("executed another program") || out.contains("also held by process"),
            "{mode}: {out}"
        );
    }

    // Over TCP the peer is whoever holds the connection: the forked child is python3 and gets
    // python3's identity at most, never the one its parent exec'd into.
    let control = attack(&["imds", &imds, "none", sleep]);
    assert_eq!(control.trim(), "GOT 200 sub=spiffe://example.org/py");
    let out = attack(&["imds", &imds, "fork", sleep]);
    assert!(!out.contains("sleeper"), "fork: {out}");
    let out = attack(&["imds", &imds, "fork-inherit", sleep]);
    assert!(out.starts_with("REFUSED 403"), "fork-inherit: {out}");
    assert!(out.contains("also held by process"), "fork-inherit: {out}");
}

/// Finding 16: the managed-identity endpoint answers only requests addressed to it (DNS
/// rebinding sends another `Host`), never relayed ones.
#[tokio::test]
async fn managed_identity_refuses_rebinding_and_relays() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, _agent, _socket, imds) = agent_mesh(dir.path());
    let url =
        format!("http://{imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api");
    let http = reqwest::Client::new();
    let port = imds.rsplit_once(':').unwrap().1;
    for (name, value) in [
        ("host", "attacker.example:80".to_owned()),
        ("host", format!("rebind.attacker.example:{port}")),
        ("forwarded", "for=10.0.0.1".to_owned()),
        ("x-real-ip", "10.0.0.1".to_owned()),
        ("via", "1.1 proxy".to_owned()),
    ] {
        let r = http
            .get(&url)
            .header("Metadata", "true")
            .header(name, value.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}: {value}");
    }
    // `localhost` on the endpoint's port is what a local client may send.
    let r = http
        .get(url.replace(&format!("127.0.0.1:{port}"), &format!("localhost:{port}")))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(
        body.contains("no workload registration matches"),
        "localhost is a local name; this test process is simply not a workload: {body}"
    );
}

/// Finding 2: 1,100 connections holding half a request head, against a server limited to
/// 1,024 descriptors, do not stop a legitimate token request, and do not flood the log.
#[tokio::test]
async fn held_connections_do_not_stop_issuance() {
    let data = tessera_testkit::data_dir();
    let s = server_limited(data.path(), 1024);
    let (secret, _) = setup_mesh(&s);
    let port = s
        .url
        .rsplit_once(':')
        .unwrap()
        .1
        .trim_end_matches('/')
        .to_owned();
    let mut holder = Killed(
        Command::new("python3")
            .arg(ATTACKS)
            .args(["hold", "127.0.0.1", &port, "1100"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(holder.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held 1100");
    let form = [
        ("audience", "spiffe://example.org/prod/inventory-api"),
        ("scope", "inventory:read"),
    ];
    for _ in 0..3 {
        let (status, body) = token(&s, &secret, &form).await;
        assert_eq!(status, 200, "{body}");
    }
    drop(holder);
    let log = s.proc.stderr();
    assert!(log.len() < 64 * 1024, "the log grew to {} bytes", log.len());
}

/// Finding 3, against the real binary: someone with write access to the database (not the
/// KEK) deletes a record and re-chains the rest with SHA-256, as the unkeyed chain was built,
/// head included. `tessera audit verify` finds it.
#[tokio::test]
async fn audit_records_cannot_be_removed_and_rechained_from_the_database() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let (secret, _) = setup_mesh(&s);
    let form = [("audience", "spiffe://example.org/prod/inventory-api")];
    for _ in 0..3 {
        assert_eq!(token(&s, &secret, &form).await.0, 200);
    }
    let o = tessera(&s.data, &["audit", "verify"]);
    assert!(
        o.status.success(),
        "the genuine trail verifies: {}",
        stderr(&o)
    );
    let rechain = r#"
import hashlib, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT seq, at, kind, actor, subject, outcome, detail, prev_hash FROM audit ORDER BY seq").fetchall()
victim = rows[-2][0]
db.execute("DELETE FROM audit WHERE seq >= ?", (victim,))
prev = db.execute("SELECT hash FROM audit WHERE seq = ?", (victim - 1,)).fetchone()[0]
seq = victim
for r in rows[-1:]:
    fields = [seq, r[1], r[2], r[3], r[4], r[5], r[6], prev]
    h = hashlib.sha256(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    db.execute("INSERT INTO audit (seq, at, kind, actor, subject, outcome, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?)", (seq, r[1], r[2], r[3], r[4], r[5], r[6], prev, h))
    prev = h
    seq += 1
db.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{seq - 1} {prev}",))
db.commit()
"#;
    let o = Command::new("python3")
        .args(["-c", rechain])
        .arg(s.data.join("tessera.db"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&s.data, &["audit", "verify"]);
    assert!(!o.status.success());
    assert!(
        format!("{}{}", stdout(&o), stderr(&o)).contains("it is not keyed"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// Finding 10: an outside token's `iss` with a newline and terminal escapes does not forge a
/// line of `tessera audit tail`, nor reach the operator's terminal.
#[tokio::test]
async fn attacker_text_cannot_forge_audit_lines() {
    use base64::Engine;
    let s = server(Backend::Sqlite, &[]).unwrap();
    setup_mesh(&s);
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let evil = "https://idp.example\n#999 2026-01-01T00:00:00Z token.issued ok actor=admin subject=x\u{1b}[2J\u{1b}]0;owned\u{7}";
    let jwt = format!(
        "{}.{}.c2ln",
        b64(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64(serde_json::json!({"iss": evil, "sub": "x", "aud": "y", "exp": 4_000_000_000u64}))
    );
    let (status, _) = post_form(
        &format!("{}/token", s.url),
        None,
        &[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", &jwt),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", "spiffe://example.org/prod/inventory-api"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let o = tessera(&s.data, &["audit", "tail", "-n", "50"]);
    let out = stdout(&o);
    assert!(out.contains("federation"), "the refusal is recorded: {out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(
        !out.lines().any(|l| l.starts_with("#999")),
        "a forged line: {out}"
    );
    assert!(out.contains("malformed-issuer:sha256:"), "{out}");
}

/// Finding 9: a stream of failed client authentications is one record per client and minute
/// (and the count of the rest), not one durable record each.
#[tokio::test]
async fn failed_authentications_cannot_flood_the_audit_trail() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    setup_mesh(&s);
    let form = [
        ("grant_type", "client_credentials"),
        ("audience", "spiffe://example.org/prod/inventory-api"),
    ];
    for _ in 0..300 {
        let (status, _) = post_form(
            &format!("{}/token", s.url),
            Some(("orders", "tsk_wrong")),
            &form,
        )
        .await;
        assert_eq!(status, 401);
    }
    let o = tessera(
        &s.data,
        &["audit", "tail", "-n", "1000", "--output", "json"],
    );
    let rows: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let failures = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"].as_str().unwrap_or("").contains("auth_failed"))
        .count();
    assert_eq!(
        failures, 1,
        "one record opens the window; the rest are counted"
    );
    let metrics = get_text(&format!("{}/metrics", s.url)).await;
    assert!(
        metrics.contains("tessera_refusals_aggregated_total 299"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("refusals"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Finding 8: only a service reports decisions, about callers that exist, within a quota.
#[tokio::test]
async fn decision_records_come_only_from_services_within_a_quota() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let (orders, inventory) = setup_mesh(&s);
    let token_of = |id: &'static str, secret: String| {
        let url = format!("{}/token", s.url);
        let aud = s.url.clone();
        async move {
            let (status, body) = post_form(
                &url,
                Some((id, &secret)),
                &[("grant_type", "client_credentials"), ("audience", &aud)],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let orders_token = token_of("orders", orders).await;
    let inventory_token = token_of("inventory", inventory).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let record = |caller: &str| serde_json::json!({"caller": caller, "method": "GET", "path": "/x", "allowed": false, "reason": "r", "at": now});
    let post = |token: String, records: Vec<serde_json::Value>| {
        let url = format!("{}/v1/policy/decisions", s.url);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "records": records }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // The order processor calls services; it is none: it has no decisions to report.
    let (status, _) = post(
        orders_token,
        vec![record("spiffe://example.org/prod/inventory-api")],
    )
    .await;
    assert_eq!(status, 403);
    // The inventory is a service; a record about a caller that is no workload is dropped.
    let (status, body) = post(
        inventory_token.clone(),
        vec![
            record("spiffe://example.org/prod/order-processor"),
            record("spiffe://example.org/forged/caller"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["recorded"], 1);
    assert_eq!(body["dropped"], 1);
    // Past its quota (20,000 a minute), 429.
    let full: Vec<_> = (0..1000)
        .map(|_| record("spiffe://example.org/prod/order-processor"))
        .collect();
    let mut limited = false;
    for _ in 0..21 {
        let (status, _) = post(inventory_token.clone(), full.clone()).await;
        if status == 429 {
            limited = true;
            break;
        }
        assert_eq!(status, 200);
    }
    assert!(limited, "no quota");
}
