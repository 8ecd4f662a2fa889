//! The transparency log end to end (issue 17), on both backends: checkpoints signed and
//! written to a sink, cosigned by a real `tessera audit witness` process, inclusion proofs
//! checked by an independent RFC 9162 implementation in Python, the stored log checked against
//! a checkpoint kept outside the database after edits and truncation made directly in SQL, and
//! the witness refusing the checkpoint of a rewritten log.
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

const MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/frontend"
owner = "team-web"
purpose = "Serves the web UI"
selectors = ["unix:uid:UID"]

[[workload]]
id = "spiffe://example.org/backend"
owner = "team-api"
purpose = "Serves the API"
scopes = ["read"]

[[grant]]
from = "spiffe://example.org/frontend"
to = "spiffe://example.org/backend"
scopes = ["read"]
why = "The web tier reads the API"

[[client]]
id = "frontend"
workload = "spiffe://example.org/frontend"
auth = "client_secret"
"#;

async fn token(url: &str, secret: &str) -> String {
    let (st, body) = post_form(
        &format!("{url}/token"),
        Some(("frontend", secret)),
        &[
            ("grant_type", "client_credentials"),
            ("resource", "spiffe://example.org/backend"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn jti(token: &str) -> String {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

fn json_of(data: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let o = tessera(data, &a);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn log_end_to_end(backend: Backend) {
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => match tessera_testkit::postgres_database() {
            Some(db) => Some(db),
            None => return,
        },
    };
    let dir = tessera_testkit::data_dir();
    let data = dir.path().to_path_buf();
    let first = server_on(&data, db.as_deref(), &[]);
    let log_key = json_of(&data, &["audit", "checkpoint", "--now"])["log_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(log_key.starts_with("example.org/audit+"), "{log_key}");
    drop(first);

    // A witness for this log, then the server again, pushing to it and to a sink folder.
    let wdir = tempfile::tempdir().unwrap();
    let seed = [42u8; 32];
    std::fs::write(wdir.path().join("witness.key"), seed).unwrap();
    let wkey = tessera_log::NoteSigner::from_seed(
        "tessera-witness",
        tessera_log::KeyType::Cosignature,
        &seed,
    )
    .unwrap()
    .verifier()
    .to_vkey();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "audit",
        "witness",
        "--listen",
        "127.0.0.1:0",
        "--log",
        &log_key,
    ])
    .arg("--key")
    .arg(wdir.path().join("witness.key"))
    .arg("--state")
    .arg(wdir.path().join("state.json"));
    let witness = tessera_testkit::spawn_ready(cmd, "tessera: witness ready url=");
    let wurl = witness.ready.clone();
    let sinks = tempfile::tempdir().unwrap();
    let sink_arg = format!("dir:{}", sinks.path().display());
    let witness_arg = format!("{wurl} {wkey}");
    let s = server_on(
        &data,
        db.as_deref(),
        &[
            "--checkpoint-sink",
            &sink_arg,
            "--log-witness",
            &witness_arg,
        ],
    );
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let mesh = MESH.replace("UID", uid.trim());
    let o = tessera(
        &data,
        &[
            "apply",
            "-f",
            write(wdir.path(), "mesh.toml", &mesh).to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&data, &["client", "secret", "frontend"]);
    let secret = stdout(&o).lines().next().unwrap().to_owned();
    let t1 = token(&s.url, &secret).await;

    // 1. The token's issuance is in the log: proved to Python's RFC 9162 verifier through the
    //    public endpoint, and by `tessera audit prove`.
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/tlog_verify.py"))
        .arg(format!("{}/log/proof?jti={}", s.url, jti(&t1)))
        .arg(&log_key)
        .arg(&t1)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}{}", stdout(&py), stderr(&py));
    assert!(stdout(&py).starts_with("included seq="), "{}", stdout(&py));
    let o = tessera(&data, &["audit", "prove", &jti(&t1), "--log-key", &log_key]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("is in the log"), "{}", stdout(&o));
    let o = tessera(&data, &["audit", "prove", "no-such-jti"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("no credential `no-such-jti`"),
        "{}",
        stderr(&o)
    );
    let o = tessera(
        &data,
        &[
            "audit",
            "prove",
            "3",
            "--log-key",
            "example.org/audit+00000000+AQ==",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // A relying party that requires logged issuance: `tessera verify --require-logged` passes
    // the logged token, and refuses it when the proof is checked with another log's key.
    let verify_logged = |token: &str, extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--issuer",
            &s.url,
            "--audience",
            "spiffe://example.org/backend",
            "--require-logged",
        ];
        args.extend_from_slice(extra);
        args.push(token);
        Command::new(BIN).args(&args).output().unwrap()
    };
    let o = verify_logged(&t1, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let other_log = tessera_log::NoteSigner::from_seed(
        "example.org/audit",
        tessera_log::KeyType::Ed25519,
        &[9; 32],
    )
    .unwrap()
    .verifier()
    .to_vkey();
    let o = verify_logged(&t1, &["--log-key", &other_log]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not in the issuer's log: the proof does not hold"),
        "{}",
        stderr(&o)
    );

    // An agent that requires logged issuance serves the workload's SVID (its serial and digest
    // proved from the log); one checking with another log's key serves nothing.
    let (_logged, socket) = join_agent_with(&s, wdir.path(), "logged", &["--require-logged"]);
    let (pem, _, _) = svid_files(&socket, "spiffe://example.org/frontend", wdir.path()).await;
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        stdout(&serial).starts_with("serial="),
        "{}",
        stderr(&serial)
    );
    let (wrong, socket) = join_agent_with(
        &s,
        wdir.path(),
        "wrong",
        &["--require-logged", "--log-key", &other_log],
    );
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), client.fetch_all_x509_svids()).await;
    assert!(
        !matches!(&got, Ok(Ok(all)) if !all.is_empty()),
        "an SVID the log did not prove was served"
    );
    // It keeps asking (and refusing) at each rotation tick: stop it before the log is compared.
    drop(wrong);

    // 2. Checkpoints reach the sink and the witness cosigns them.
    wait_for(Duration::from_secs(10), "a cosigned checkpoint", || {
        let note = curl_get(&format!("{}/log/checkpoint", s.url));
        note.contains("\u{2014} tessera-witness ")
    });
    wait_for(Duration::from_secs(5), "a checkpoint in the sink", || {
        std::fs::read_dir(sinks.path()).unwrap().count() > 0
    });
    let kept = wdir.path().join("kept.checkpoint");
    std::fs::write(
        &kept,
        stdout(&tessera(&data, &["audit", "checkpoint", "--now"])),
    )
    .unwrap();
    for _ in 0..3 {
        token(&s.url, &secret).await;
    }
    // The witness holds every record so far before anything is edited.
    let last = json_of(&data, &["audit", "tail", "-n", "1"])[0]["seq"]
        .as_i64()
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the witness cosigns the latest size",
        || {
            let note = curl_get(&format!("{}/log/checkpoint", s.url));
            note.lines().nth(1) == Some(&last.to_string())
                && note.contains("\u{2014} tessera-witness ")
        },
    );
    let o = tessera(
        &data,
        &["audit", "verify", "--checkpoint", kept.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = tessera(
        &data,
        &[
            "audit",
            "verify",
            "--checkpoint",
            sinks.path().to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "every sink checkpoint: {}{}",
        stdout(&o),
        stderr(&o)
    );
    // A monitor reading the log alerts on the watched workload and an unexpected path.
    let o = tessera(
        &data,
        &[
            "audit",
            "monitor",
            "--once",
            "--watch",
            "spiffe://example.org/front*",
            "--expect-path",
            "x509",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("ALERT watched: record"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("via client_credentials"),
        "{}",
        stdout(&o)
    );
    let o = tessera(
        &data,
        &[
            "audit",
            "monitor",
            "--once",
            "--expect-path",
            "client_credentials",
            "--expect-path",
            "x509",
        ],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // A forged checkpoint file: refused with the reason.
    let forged = std::fs::read_to_string(&kept)
        .unwrap()
        .replacen('\n', "\n9", 1);
    let f = write(wdir.path(), "forged.checkpoint", &forged);
    let o = tessera(
        &data,
        &["audit", "verify", "--checkpoint", f.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("checkpoint"), "{}", stderr(&o));

    // 3. Edited in SQL beside the running server: named.
    let seq = json_of(&data, &["audit", "tail", "-n", "1"])[0]["seq"]
        .as_i64()
        .unwrap()
        - 2;
    s.danger_sql(&format!(
        "UPDATE audit SET actor = 'someone-else' WHERE seq = {seq}"
    ));
    let o = tessera(
        &data,
        &["audit", "verify", "--checkpoint", kept.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("record {seq}: its content does not match")),
        "{}",
        stdout(&o)
    );

    // 4. The whole tree rebuilt by the server from the edited records (what an attacker who
    //    also holds the KEK gets): the witness refuses the fork, and the kept checkpoint fails.
    let state_before = std::fs::read_to_string(wdir.path().join("state.json")).unwrap();
    s.danger_sql("DELETE FROM audit_tiles; DELETE FROM audit_checkpoints; DELETE FROM meta WHERE key = 'log_size'");
    token(&s.url, &secret).await;
    wait_for(
        Duration::from_secs(10),
        "a new checkpoint over the rewritten log",
        || {
            json_of(&data, &["audit", "checkpoint"])["size"]
                .as_u64()
                .unwrap()
                > 0
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    let note = curl_get(&format!("{}/log/checkpoint", s.url));
    assert!(
        !note.contains("\u{2014} tessera-witness "),
        "the fork was cosigned: {note}"
    );
    assert_eq!(
        std::fs::read_to_string(wdir.path().join("state.json")).unwrap(),
        state_before
    );
    let o = tessera(
        &data,
        &["audit", "verify", "--checkpoint", kept.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));

    // 5. Truncated, head moved: the kept checkpoint covers records that are gone.
    let size: u64 = std::fs::read_to_string(&kept)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    s.danger_sql(&format!(
        "UPDATE audit SET actor = (SELECT actor FROM audit WHERE seq = {}) WHERE seq = {seq}; DELETE FROM audit WHERE seq >= {size}; DELETE FROM audit_tiles; DELETE FROM audit_checkpoints; DELETE FROM meta WHERE key = 'log_size'",
        seq + 1
    ));
    let o = tessera(
        &data,
        &["audit", "verify", "--checkpoint", kept.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!(
            "audit log BROKEN: the log ends at record {} but checkpoint {size} covers {size} records",
            size - 1
        )),
        "{}",
        stdout(&o)
    );

    // 6. Issuance the log does not show (its record removed in SQL): refused by a relying party
    //    that requires logged issuance.
    let t3 = token(&s.url, &secret).await;
    assert!(verify_logged(&t3, &[]).status.success());
    s.danger_sql(&format!(
        "DELETE FROM audit WHERE credential = '{}'",
        jti(&t3)
    ));
    let o = verify_logged(&t3, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the issuer's log has no record of it"),
        "{}",
        stderr(&o)
    );
    drop(witness);
}

/// The body of `GET url`, by curl: `wait_for` polls with plain closures.
fn curl_get(url: &str) -> String {
    let o = std::process::Command::new("curl")
        .args(["-s", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn transparency_log_on_sqlite() {
    log_end_to_end(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transparency_log_on_postgres() {
    log_end_to_end(Backend::Postgres).await;
}
