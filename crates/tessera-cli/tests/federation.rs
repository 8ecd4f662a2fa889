//! Workload identity federation end to end: outside issuers shaped like GitHub Actions and a
//! Kubernetes cluster (keys by file and by OIDC discovery), tokens minted by PyJWT, exchanged
//! through RFC 8693 and RFC 7523, delegation chains, refusals, key rotation at the issuer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/federation_interop.py"
);

fn run(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let o = Command::new("python3")
        .arg(SCRIPT)
        .arg(BIN)
        .arg(&s.data)
        .arg(&s.url)
        .arg(work.path())
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "federation checks failed (pip install pyjwt cryptography requests):\n{out}\n{}\nserver:\n{}",
        stderr(&o),
        s.proc.stderr()
    );
    assert!(out.contains("all federation checks passed"), "{out}");
    // Every exchange is audited with the trust, the outside issuer and subject, and the workload.
    let o = tessera(&s.data, &["audit", "tail", "-n", "200", "--output", "json"]);
    let audit: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let records = audit.as_array().unwrap();
    let issued = records
        .iter()
        .find(|r| r["kind"] == "token.issued" && r["actor"] == "trust:github-actions")
        .expect("an audited exchange");
    let detail: serde_json::Value =
        serde_json::from_str(issued["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["trust"], "github-actions");
    assert_eq!(
        detail["outside_iss"],
        "https://token.actions.githubusercontent.com"
    );
    assert_eq!(
        detail["outside_sub"],
        "repo:acme/orders:environment:production"
    );
    assert_eq!(
        issued["subject"],
        "spiffe://example.org/deploy/orders-pipeline"
    );
    let refused = records
        .iter()
        .filter(|r| r["kind"] == "federation.refused")
        .count();
    // One record per trust and issuer a minute (repeats are counted into a summary), so the
    // many refusals above are fewer records, one for each distinct refuser at least.
    assert!(refused >= 6, "refusals are audited: {refused}");
    let delegated = records.iter().any(|r| {
        r["kind"] == "token.issued"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("\"delegated_by\""))
    });
    assert!(delegated, "delegations are audited");
    // Whole outside tokens never reach the server's logs.
    assert!(!s.proc.stderr().contains("eyJ"), "a token in the logs");
}

#[test]
fn federation_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn federation_postgres() {
    run(Backend::Postgres);
}

/// The documented examples apply as they are.
#[test]
fn federation_examples_apply() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/federation");
    for name in [
        "github-actions.toml",
        "kubernetes.toml",
        "generic-oidc.toml",
    ] {
        let path = format!("{dir}/{name}");
        let o = tessera(&s.data, &["apply", "-f", &path]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
    }
    let o = tessera(&s.data, &["get", "trusts"]);
    for t in ["github-actions", "prod-cluster", "other-cloud"] {
        assert!(stdout(&o).contains(t), "{}", stdout(&o));
    }
    // A glob where the claim is matched exactly is refused with its place.
    let bad = tempfile::tempdir().unwrap();
    let p = write(
        bad.path(),
        "bad.toml",
        &std::fs::read_to_string(format!("{dir}/github-actions.toml"))
            .unwrap()
            .replace("repository_id = \"690123456\"", "repository_id = \"690*\""),
    );
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad.toml:") && stderr(&o).contains("matched exactly"),
        "{}",
        stderr(&o)
    );
}
