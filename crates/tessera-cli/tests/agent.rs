//! Workload identity end to end: a real server, a real agent joined with a join token, the
//! SPIFFE Workload API on a real unix socket, and independent clients (the Rust `spiffe` crate,
//! py-spiffe, azure-identity, openssl, curl).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tessera_testkit::{spawn_ready, Proc};

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn mesh(extra: &str) -> String {
    format!(
        r#"
[[workload]]
id = "spiffe://example.org/me"
owner = "team-a"
purpose = "The test process"
selectors = ["unix:uid:{uid}"]
x509_ttl = "1h"

[[workload]]
id = "spiffe://example.org/elsewhere"
owner = "team-a"
purpose = "Same uid, another binary: never this process"
selectors = ["unix:uid:{uid}", "unix:path:/nonexistent/binary"]

[[workload]]
id = "spiffe://example.org/api"
owner = "team-b"
purpose = "A service the test process may call"
aliases = ["api"]
scopes = ["read"]

[[grant]]
from = "spiffe://example.org/me"
to = "spiffe://example.org/api"
scopes = ["read"]
why = "tests"
{extra}
"#,
        uid = my_uid()
    )
}

fn apply(s: &Server, dir: &Path, text: &str) {
    let p = write(dir, "mesh.toml", text);
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn join_token(s: &Server, extra: &[&str]) -> String {
    let mut args = vec!["agent", "token", "create"];
    args.extend_from_slice(extra);
    let o = tessera(&s.data, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).lines().next().unwrap().to_owned()
}

struct Agent {
    proc: Proc,
    socket: PathBuf,
    data: PathBuf,
}

fn agent_cmd(s: &Server, dir: &Path, token: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--server", &s.url, "--socket"])
        .arg(dir.join("agent.sock"))
        .arg("--data")
        .arg(dir.join("agent-data"));
    if let Some(t) = token {
        cmd.args(["--join-token", t]);
    }
    cmd.env("TESSERA_LOG", "warn");
    cmd
}

fn start_agent(s: &Server, dir: &Path, token: Option<&str>) -> Agent {
    let proc = spawn_ready(agent_cmd(s, dir, token), "tessera: agent ready socket=");
    let socket = PathBuf::from(&proc.ready);
    Agent {
        proc,
        socket,
        data: dir.join("agent-data"),
    }
}

async fn spiffe_client(socket: &Path) -> spiffe::WorkloadApiClient {
    spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap()
}

/// Waits until `f` holds, for at most `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

fn openssl_verify(dir: &Path, bundle: &[Vec<u8>], leaf: &[u8], purpose: &str) -> (bool, String) {
    let b: String = bundle.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let bp = write(dir, "bundle.pem", &b);
    let lp = write(dir, "leaf.pem", &pem("CERTIFICATE", leaf));
    let o = Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile"])
        .arg(&bp)
        .arg(&lp)
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
}

async fn workload_api_flow(backend: Backend) {
    let Some(s) = server(backend, &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Other users may reach the socket; what they get is up to attestation.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    apply(&s, dir.path(), &mesh(""));
    let token = join_token(&s, &["--agent-id", "node-a"]);
    let a = start_agent(&s, dir.path(), Some(&token));

    // An independent client: the Rust `spiffe` crate.
    let client = spiffe_client(&a.socket).await;
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/me");
    let all = client.fetch_all_x509_svids().await.unwrap();
    assert_eq!(all.len(), 1, "only the registration this process matches");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle: Vec<Vec<u8>> = bundles
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let leaf = svid.cert_chain()[0].as_bytes().to_vec();
    // openssl, a third implementation, validates the chain for both TLS roles.
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl_verify(dir.path(), &bundle, &leaf, purpose);
        assert!(ok, "openssl verify -purpose {purpose}: {out}");
    }
    // The bundle served over HTTP holds the same CA.
    let http_bundle = get_json(&format!("{}/bundle/example.org", s.url)).await;
    use base64::Engine;
    let x5c = http_bundle["keys"][0]["x5c"][0].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(x5c)
            .unwrap(),
        bundle[0]
    );

    // JWT-SVIDs: fetched, validated by the agent, and by `tessera verify` against the bundle.
    let jwt = client
        .fetch_jwt_svid(["spiffe://example.org/api"], None)
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/me");
    let validated = client
        .validate_jwt_token("spiffe://example.org/api", jwt.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), "spiffe://example.org/me");
    assert!(client
        .validate_jwt_token("spiffe://example.org/other", jwt.token())
        .await
        .is_err());
    let o = cli(&[
        "verify",
        "--kind",
        "jwt-svid",
        "--audience",
        "spiffe://example.org/api",
        "--jwks",
        &format!("{}/bundle/example.org", s.url),
        jwt.token(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A JWT-SVID is not an access token: the access-token rules refuse it.
    let o = cli(&[
        "verify",
        "--issuer",
        &s.url,
        "--audience",
        "spiffe://example.org/api",
        jwt.token(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));

    // The security header is required.
    let mut raw = tessera_agent::workload::connect(&a.socket).await.unwrap();
    let err = raw
        .fetch_jwtsvid(tonic::Request::new(tessera_agent::proto::JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = raw
        .fetch_jwtsvid(tessera_agent::workload::request(
            tessera_agent::proto::JwtsvidRequest {
                audience: vec![],
                spiffe_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Another unix user gets nothing: attestation, not the socket mode, decides.
    if my_uid() == 0 {
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "svid",
                "fetch",
                "--socket",
            ])
            .arg(&a.socket)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(stderr(&o).contains("no identity issued"), "{}", stderr(&o));
    }

    // Identity changes stream at once: a new matching registration arrives in the same stream.
    let mut stream = raw
        .fetch_x509svid(tessera_agent::workload::request(
            tessera_agent::proto::X509svidRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    assert!(!first.svids[0].x509_svid_key.is_empty());
    let added = mesh(&format!(
        "\n[[workload]]\nid = \"spiffe://example.org/me-too\"\nowner = \"team-a\"\npurpose = \"p\"\nselectors = [\"unix:uid:{}\"]\n",
        my_uid()
    ));
    let applied = Instant::now();
    apply(&s, dir.path(), &added);
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .unwrap();
    let mut ids: Vec<_> = next.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["spiffe://example.org/me", "spiffe://example.org/me-too"]
    );
    eprintln!(
        "registration change reached the workload in {:?}",
        applied.elapsed()
    );

    // The agent is listed, and every SVID it got is in the audit trail.
    let o = tessera(&s.data, &["get", "agents", "--output", "json"]);
    let agents: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(agents[0]["id"], "node-a");
    let o = tessera(&s.data, &["audit", "tail", "-n", "50", "--output", "json"]);
    let audit: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let issued: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "svid.issued" && r["subject"] == "spiffe://example.org/me")
        .collect();
    assert!(issued.len() >= 2, "x509 and jwt issuance audited: {audit}");
    assert!(issued
        .iter()
        .all(|r| r["actor"] == "spiffe://example.org/tessera/agent/node-a"));
    drop(a);
}

#[tokio::test]
async fn workload_api_sqlite() {
    workload_api_flow(Backend::Sqlite).await;
}

#[tokio::test]
async fn workload_api_postgres() {
    workload_api_flow(Backend::Postgres).await;
}

const PY_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/spiffe_interop.py"
);

#[test]
fn python_spiffe_and_azure_identity_clients() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    apply(&s, dir.path(), &mesh(""));
    let token = join_token(&s, &[]);
    let mut cmd = agent_cmd(&s, dir.path(), Some(&token));
    cmd.args(["--imds-listen", "127.0.0.1:0"]);
    let proc = spawn_ready(cmd, "tessera: agent ready socket=");
    let socket = dir.path().join("agent.sock");
    let imds = imds_url(&proc);
    let o = Command::new("python3")
        .arg(PY_SCRIPT)
        .arg(format!("unix://{}", socket.display()))
        .arg(&imds)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python SPIFFE/azure interop failed (pip install spiffe azure-identity):\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let out = stdout(&o);
    for check in [
        "x509 spiffe://example.org/me",
        "x509 bundles example.org",
        "jwt spiffe://example.org/me",
        "jwt bundles example.org",
        "validated spiffe://example.org/me",
        "validate refused a wrong audience",
        "azure app service ok",
        "azure imds ok",
    ] {
        assert!(out.contains(check), "missing `{check}` in:\n{out}");
    }
}

/// The managed-identity endpoint's URL, from the agent's ready line.
fn imds_url(p: &Proc) -> String {
    p.line
        .split_once(" imds=")
        .map(|(_, u)| u.trim().to_owned())
        .unwrap_or_else(|| panic!("no imds= on the ready line `{}`", p.line))
}

#[tokio::test]
async fn managed_identity_endpoint_refusals() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    apply(&s, dir.path(), &mesh(""));
    let token = join_token(&s, &[]);
    let mut cmd = agent_cmd(&s, dir.path(), Some(&token));
    cmd.args(["--imds-listen", "127.0.0.1:0"]);
    let proc = spawn_ready(cmd, "tessera: agent ready socket=");
    let imds = imds_url(&proc);
    let http = reqwest::Client::new();
    let url = format!("{imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api");
    let ok = http
        .get(&url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert!(body["expires_in"].is_string() && body["expires_on"].is_string());
    // The token is a Tessera access token for the resource's canonical ID.
    let o = cli(&[
        "verify",
        "--issuer",
        &format!("{}/example.org", s.url),
        "--audience",
        "spiffe://example.org/api",
        "--scope",
        "read",
        body["access_token"].as_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let no_header = http.get(&url).send().await.unwrap();
    assert_eq!(no_header.status(), 400);
    let forwarded = http
        .get(&url)
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 400);
    let wrong_version = http
        .get(url.replace("2018-02-01", "2017-01-01"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_version.status(), 400);
    // A resource with no grant: refused under the same rules as every token.
    let denied = http
        .get(url.replace("resource=api", "resource=spiffe://example.org/elsewhere"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 400);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("may not call"),
        "{body}"
    );
    let app_service = http
        .get(format!(
            "{imds}/msi/token?api-version=2019-08-01&resource=api"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(app_service.status(), 400, "X-IDENTITY-HEADER is required");
    // Another user on this machine gets no token.
    if my_uid() == 0 {
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-s",
                "-H",
                "Metadata: true",
            ])
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            stdout(&o).contains("no workload registration matches"),
            "{}",
            stdout(&o)
        );
    }
}

#[tokio::test]
async fn join_tokens_rejoin_and_revocation() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    apply(&s, dir.path(), &mesh(""));

    // No token, no data: a one-line refusal.
    let o = agent_cmd(&s, dir.path(), None).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--join-token"), "{}", stderr(&o));
    // A made-up token.
    let o = agent_cmd(&s, dir.path(), Some("tjt_nope"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown, expired or already used"),
        "{}",
        stderr(&o)
    );

    let token = join_token(&s, &["--agent-id", "node-b"]);
    let mut a = start_agent(&s, dir.path(), Some(&token));
    let key = a.data.join("agent.key");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    a.proc.terminate();

    // The same token again, from a fresh data folder: refused (single use).
    let other = tempfile::tempdir().unwrap();
    let o = agent_cmd(&s, other.path(), Some(&token)).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already used"), "{}", stderr(&o));

    // Restarted with its data folder, the agent rejoins with its own SVID, no token.
    let a = start_agent(&s, dir.path(), None);
    let client = spiffe_client(&a.socket).await;
    assert_eq!(
        client
            .fetch_x509_svid()
            .await
            .unwrap()
            .spiffe_id()
            .to_string(),
        "spiffe://example.org/me"
    );

    // An expired token is refused as such.
    let short = join_token(&s, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let o = agent_cmd(&s, other.path(), Some(&short)).output().unwrap();
    assert!(stderr(&o).contains("expired"), "{}", stderr(&o));

    // Revoked: the server refuses the agent from then on; it keeps what it has until expiry.
    let o = tessera(&s.data, &["revoke", "agent", "node-b"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&s.data, &["get", "agents", "--output", "json"]);
    let agents: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(agents[0]["revoked_at"].is_number(), "{agents}");
    let o = tessera(&s.data, &["revoke", "agent", "node-zzz"]);
    assert_eq!(o.status.code(), Some(2));
    let err = client
        .fetch_jwt_svid(["spiffe://example.org/new-audience"], None)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("revoked"), "{err:?}");
    drop(a);
    // Restarted, the revoked agent stops at once with the reason instead of serving nothing.
    let o = agent_cmd(&s, dir.path(), None).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    let denied = tessera(&s.data, &["audit", "tail", "-n", "30"]);
    assert!(stdout(&denied).contains("agent.join_refused"));
}

#[tokio::test]
async fn rotation_and_server_outage() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    apply(
        &s,
        dir.path(),
        &mesh("").replace("x509_ttl = \"1h\"", "x509_ttl = \"20s\""),
    );
    let token = join_token(&s, &[]);
    let a = start_agent(&s, dir.path(), Some(&token));
    let mut raw = tessera_agent::workload::connect(&a.socket).await.unwrap();
    let mut stream = raw
        .fetch_x509svid(tessera_agent::workload::request(
            tessera_agent::proto::X509svidRequest {},
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    // Rotation at half-life (10 s, less jitter): the stream brings a new SVID, new key.
    let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a rotated SVID within 20 s")
        .unwrap()
        .unwrap();
    assert_ne!(first.svids[0].x509_svid, next.svids[0].x509_svid);
    assert_ne!(first.svids[0].x509_svid_key, next.svids[0].x509_svid_key);

    // CA rotation: the next CA enters the bundle first; SVIDs from both CAs validate.
    let o = tessera(&s.data, &["ca", "rotate", "--activate-in", "0s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let client = spiffe_client(&a.socket).await;
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    eventually(15, "the new CA in the agent's bundle", || async {
        client
            .fetch_x509_bundles()
            .await
            .ok()
            .and_then(|b| b.get(&td).map(|b| b.authorities().len()))
            == Some(2)
    })
    .await;
    let o = tessera(&s.data, &["ca", "list", "--output", "json"]);
    let cas: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let states: Vec<&str> = cas
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"active") && states.contains(&"retiring"),
        "{cas}"
    );

    let before = client
        .fetch_jwt_svid(["spiffe://example.org/api"], None)
        .await
        .unwrap();

    // The server goes away: the agent keeps serving what it holds.
    drop(s);
    let client = spiffe_client(&a.socket).await;
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/me");
    // A JWT-SVID fetched before the outage is served from the cache; a new audience cannot be.
    let after = client
        .fetch_jwt_svid(["spiffe://example.org/api"], None)
        .await
        .unwrap();
    assert_eq!(after.token(), before.token());
    assert!(client
        .fetch_jwt_svid(["spiffe://example.org/never-asked"], None)
        .await
        .is_err());
    // ... but never past its expiry: once the SVID it holds has expired (20 s SVIDs here), a new
    // fetch gets none (the stream waits for one), though the server is still away.
    let (_, not_after) = tessera_ca::validity(svid.leaf().as_ref()).unwrap();
    let wait = u64::try_from(not_after - tessera_core::now_unix() + 1).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let late = tokio::time::timeout(Duration::from_secs(3), client.fetch_x509_svid()).await;
    assert!(
        !matches!(late, Ok(Ok(_))),
        "the agent served an SVID that expired at {not_after}"
    );
    drop(a);
}

#[test]
fn socket_paths_are_checked() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = join_token(&s, &[]);
    // A socket in a missing folder.
    let o = Command::new(BIN)
        .args([
            "agent",
            "--server",
            &s.url,
            "--join-token",
            &token,
            "--socket",
        ])
        .arg(dir.path().join("missing/agent.sock"))
        .arg("--data")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    // A regular file in the way.
    let file = write(dir.path(), "not-a-socket", "x");
    let o = Command::new(BIN)
        .args([
            "agent",
            "--server",
            &s.url,
            "--join-token",
            &token,
            "--socket",
        ])
        .arg(&file)
        .arg("--data")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));
    // A stale socket file (nobody listening) is replaced.
    let stale = dir.path().join("agent.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let a = start_agent(&s, dir.path(), Some(&token));
    // A second agent on the same live socket is refused.
    let o = Command::new(BIN)
        .args(["agent", "--server", &s.url, "--socket"])
        .arg(&a.socket)
        .arg("--data")
        .arg(dir.path().join("d2"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("another process"), "{}", stderr(&o));
    // An identity file with an unknown selector type is refused before anything changes.
    let bad = write(
        dir.path(),
        "bad.toml",
        "[[workload]]\nid = \"spiffe://example.org/x\"\nowner = \"o\"\npurpose = \"p\"\nselectors = [\"k8s:pod_uid:default\"]\n",
    );
    let o = tessera(&s.data, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.toml:"), "{}", stderr(&o));
}

#[tokio::test]
async fn agent_authenticates_a_tls_server_by_its_trust_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    let proc = tls_server(&data, &["example.org"]);
    let url = proc.ready.clone();
    assert!(url.starts_with("https://"), "{url}");
    let p = write(dir.path(), "mesh.toml", &mesh(""));
    let o = tessera(&data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&data, &["agent", "token", "create"]);
    let token = stdout(&o).lines().next().unwrap().to_owned();
    let agent = |bundle: Option<&Path>, sub: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "agent",
            "--server",
            &url,
            "--join-token",
            &token,
            "--socket",
        ])
        .arg(dir.path().join(format!("{sub}.sock")))
        .arg("--data")
        .arg(dir.path().join(sub));
        if let Some(b) = bundle {
            cmd.arg("--trust-bundle").arg(b);
        }
        cmd
    };
    // No bundle: refused before anything is sent.
    let o = agent(None, "a").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--trust-bundle"), "{}", stderr(&o));
    // Another CA's bundle: the server is not authenticated, the token is not spent.
    let other = tempfile::tempdir().unwrap();
    let other_srv = tls_server(other.path(), &["example.org"]);
    drop(other_srv);
    let o = agent(Some(&other.path().join("tls/ca.pem")), "b")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
    // The right bundle: joined, serving.
    let a = spawn_ready(
        agent(Some(&data.join("tls/ca.pem")), "c"),
        "tessera: agent ready socket=",
    );
    let client = spiffe_client(Path::new(&a.ready)).await;
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/me");
    // The issued certificate is on record for review.
    let o = tessera(&data, &["describe", "workload", "spiffe://example.org/me"]);
    let text = stdout(&o);
    assert!(text.contains("X.509-SVID:   serial"), "{text}");
    assert!(text.contains("Attested by:  unix:uid:"), "{text}");
    let o = tessera(&data, &["get", "agents"]);
    assert!(stdout(&o).starts_with("ID\tTRUST DOMAIN"), "{}", stdout(&o));
}

#[tokio::test]
async fn nodes_restrict_which_agent_serves_a_workload() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let only = |node: &str| {
        mesh("").replace(
            "x509_ttl = \"1h\"",
            &format!("x509_ttl = \"1h\"\nnodes = [\"{node}\"]"),
        )
    };
    apply(&s, dir.path(), &only("node-elsewhere"));
    let token = join_token(&s, &["--agent-id", "node-here"]);
    let a = start_agent(&s, dir.path(), Some(&token));
    let client = spiffe_client(&a.socket).await;
    let err = client.fetch_x509_svid().await.unwrap_err();
    // The spiffe crate reads PermissionDenied as "no identity issued".
    assert!(format!("{err:?}").contains("NoIdentityIssued"), "{err:?}");
    // Changing only `nodes` reaches the agent through incremental sync.
    apply(&s, dir.path(), &only("node-here"));
    eventually(10, "the SVID once this agent may serve it", || async {
        client.fetch_x509_svid().await.is_ok()
    })
    .await;
    apply(&s, dir.path(), &only("node-elsewhere"));
    eventually(10, "the SVID withdrawn again", || async {
        client.fetch_x509_svid().await.is_err()
    })
    .await;
}

/// RFC 8693 delegation with the actor proving itself by its JWT-SVID (`actor_token`), fetched
/// from the agent with the issuer as audience: no client secret anywhere.
#[tokio::test]
async fn delegation_with_a_jwt_svid_as_actor_token() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[[workload]]
id = "spiffe://example.org/front"
owner = "team-f"
purpose = "Calls the test process"

[[grant]]
from = "spiffe://example.org/front"
to = "spiffe://example.org/me"
scopes = ["read"]
why = "front calls me"

[[client]]
id = "front"
workload = "spiffe://example.org/front"
auth = "client_secret"
"#;
    let text = mesh(extra).replace(
        "x509_ttl = \"1h\"",
        "x509_ttl = \"1h\"\nscopes = [\"read\"]",
    );
    apply(&s, dir.path(), &text);
    let o = tessera(&s.data, &["client", "secret", "front"]);
    let secret = stdout(&o).lines().next().unwrap().to_owned();
    let token = join_token(&s, &[]);
    let a = start_agent(&s, dir.path(), Some(&token));
    // front -> me: the token `me` receives.
    let (code, body) = post_form(
        &format!("{}/token", s.url),
        Some(("front", &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("audience", "spiffe://example.org/me"),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let received = body["access_token"].as_str().unwrap().to_owned();
    // me proves itself with a JWT-SVID for the issuer and passes the token on to api.
    let client = spiffe_client(&a.socket).await;
    let issuer = format!("{}/example.org", s.url);
    let svid = client
        .fetch_jwt_svid([issuer.as_str()], None)
        .await
        .unwrap();
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", received.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("actor_token", svid.token()),
        ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", "api"),
    ];
    let (code, body) = post_form(&format!("{issuer}/token"), None, &form).await;
    assert_eq!(code, 200, "{body}");
    let o = cli(&[
        "verify",
        "--issuer",
        &issuer,
        "--audience",
        "spiffe://example.org/api",
        body["access_token"].as_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let claims: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(claims["sub"], "spiffe://example.org/front");
    assert_eq!(claims["act"]["sub"], "spiffe://example.org/me");
    assert_eq!(claims["scope"], "read");
    // A JWT-SVID for another audience is not an actor credential here.
    let other = client
        .fetch_jwt_svid(["spiffe://example.org/api"], None)
        .await
        .unwrap();
    let mut bad = form;
    bad[3] = ("actor_token", other.token());
    let (code, body) = post_form(&format!("{issuer}/token"), None, &bad).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
}
