//! Withdrawn everywhere, pushed: two servers on one PostgreSQL (the second polls only once a
//! minute, so what it learns in time it learns from the commit's notification), a node agent,
//! the inbound sidecar with an open keep-alive connection from `openssl s_client`, the verifier
//! library in an axum service, `tessera verify`, a webhook and the token status list read by an
//! outside decoder. Each kind of revocation is made on server A and refused where the
//! subscribers of server B stand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FRONTEND: &str = "spiffe://example.org/prod/frontend";
const BACKEND: &str = "spiffe://example.org/prod/backend";
const REPORTS: &str = "spiffe://example.org/prod/reports";

fn mesh() -> String {
    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let uid = uid.trim();
    format!(
        r#"
[[workload]]
id = "{FRONTEND}"
owner = "team-web"
purpose = "Calls the backend"
environment = "prod"
selectors = ["unix:uid:{uid}"]

[[workload]]
id = "{BACKEND}"
owner = "team-api"
purpose = "Serves the API"
environment = "prod"
selectors = ["unix:uid:{uid}"]

[[workload]]
id = "{REPORTS}"
owner = "team-bi"
purpose = "Reads the API at night"
environment = "prod"

[[grant]]
from = "{FRONTEND}"
to = "{BACKEND}"
scopes = []
routes = [{{ methods = ["GET"], paths = ["/api/*"] }}]
why = "The web tier reads the API"

[[grant]]
from = "{REPORTS}"
to = "{FRONTEND}"
routes = [{{ methods = ["GET"], paths = ["/*"] }}]
why = "Reports read the web tier's summaries"

[[client]]
id = "frontend"
workload = "{FRONTEND}"
auth = "client_secret"
"#
    )
}

/// `tessera server --dev` on `db`, polling only once a minute.
fn server_at(data: &Path, db: &str, listen: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", listen, "--poll-interval", "60s"];
    args.extend_from_slice(extra);
    server_with(data, Some(db), &args)
}

/// Polls `check` until it is true, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn token_for(url: &str, secret: &str, resource: &str) -> String {
    let (st, body) = post_form(
        &format!("{url}/token"),
        Some(("frontend", secret)),
        &[("grant_type", "client_credentials"), ("resource", resource)],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A keep-alive connection to the sidecar held by `openssl s_client` with the frontend's SVID:
/// one request answered, then the connection stays open.
struct Held {
    child: std::process::Child,
    /// Kept open: with its stdout closed, s_client would die of SIGPIPE and look "closed".
    _out: BufReader<std::process::ChildStdout>,
}

impl Held {
    fn open(addr: &str, pem: &Path, key: &Path, token: &str) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", addr, "-cert"])
            .arg(pem)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.as_mut().unwrap();
        write!(
            stdin,
            "GET /api/held HTTP/1.1\r\nHost: backend\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        stdin.flush().unwrap();
        let mut status = String::new();
        out.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "held connection: {status}"
        );
        Self { child, _out: out }
    }

    /// Whether the server closed the connection (s_client saw the end of the stream).
    fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver: the bodies it was posted.
async fn webhook() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let g = g.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                g.lock().unwrap().push((ct, body));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, got)
}

/// The service behind the sidecar, and a second one that verifies tokens itself with the
/// verifier library, subscribed to server B's change stream.
async fn services(b_url: &str, secret: &str) -> (std::net::SocketAddr, String) {
    let app = axum::Router::new().fallback(|| async { "upstream\n" });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let base: reqwest::Url = format!("{b_url}/").parse().unwrap();
    let verifier = tessera_verify::Verifier::new(
        tessera_verify::VerifierConfig::access_token(b_url, BACKEND).unwrap(),
        tessera_verify::JwksCache::new(base.join("jwks").unwrap()),
    );
    let source = tessera_verify::BundleSource::client_credentials(
        base,
        reqwest::Client::new(),
        "frontend".into(),
        secret.into(),
    );
    verifier.spawn_change_feed(source);
    let app = axum::Router::new()
        .route(
            "/api/{*rest}",
            axum::routing::get(|| async { "verified\n" }),
        )
        .layer(tessera_verify::RequireTokenLayer::new(verifier));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lib = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (upstream, lib)
}

fn curl_status(args: &[&str]) -> String {
    let o = Command::new("curl")
        .args([
            "-s",
            "-k",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    stdout(&o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_revocation_is_refused_everywhere_within_the_bound() {
    let Some(db) = tessera_testkit::postgres_database() else {
        return;
    };
    let (hook, notices) = webhook().await;
    let (da, dbd) = (tessera_testkit::data_dir(), tessera_testkit::data_dir());
    let a = server_at(da.path(), &db, "127.0.0.1:0", &["--notify-webhook", &hook]);
    share_kek(da.path(), dbd.path());
    let b = server_at(dbd.path(), &db, "127.0.0.1:0", &[]);
    // Tokens come from B (the issuer the subscribers know); every change is made on A.
    let b_url = b.url.clone();
    let b_listen = b.url.trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mesh.toml", &mesh());
    let o = tessera(&a.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&a.data, &["client", "secret", "frontend"]);
    let secret = stdout(&o).lines().next().unwrap().to_owned();
    let (_agent, socket) = join_agent(&a, dir.path(), "agent");

    let (upstream, lib) = services(&b.url, &secret).await;
    let upstream = upstream.to_string();
    let inbound = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--server",
            &b.url,
            "--require-token",
        ],
        &socket,
        BACKEND,
    );
    let (in_addr, in_admin) = addrs(&inbound);
    let (front_pem, front_key, _) = svid_files(&socket, FRONTEND, dir.path()).await;
    let sidecar = |token: &str| {
        curl_status(&[
            "--cert",
            front_pem.to_str().unwrap(),
            "--key",
            front_key.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("https://{in_addr}/api/items"),
        ])
    };
    let http = reqwest::Client::new();
    let library = |token: String| {
        let (http, lib) = (http.clone(), lib.clone());
        async move {
            http.get(format!("{lib}/api/items"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // Both subscribers are current: the sidecar says so, and both accept a fresh token.
    let t1 = token_for(&b_url, &secret, BACKEND).await;
    eventually(Duration::from_secs(15), "sidecar ready", || async {
        http.get(format!("{in_admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    eventually(Duration::from_secs(15), "sidecar allows", || async {
        sidecar(&t1) == "200"
    })
    .await;
    assert_eq!(library(t1.clone()).await, 200);
    // New tokens carry their place in a status list.
    let status = claims(&t1)["status"]["status_list"].clone();
    assert!(status["idx"].is_u64(), "{status}");

    // 1. A token revoked on A: refused by the sidecar and the library (both subscribed to B),
    //    by `tessera verify` (asking B once), and set in its status list.
    let jti = claims(&t1)["jti"].as_str().unwrap().to_owned();
    let o = tessera(&a.data, &["revoke", "token", &jti]);
    assert!(o.status.success(), "{}", stderr(&o));
    eventually(
        Duration::from_secs(2),
        "sidecar refuses the revoked token",
        || async { sidecar(&t1) == "401" },
    )
    .await;
    eventually(
        Duration::from_secs(2),
        "library refuses the revoked token",
        || async { library(t1.clone()).await == 401 },
    )
    .await;
    let o = cli(&["verify", "--issuer", &b_url, "--audience", BACKEND, &t1]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    let o = cli(&[
        "verify",
        "--issuer",
        &b_url,
        "--audience",
        BACKEND,
        "--no-revocation-check",
        &t1,
    ]);
    assert!(o.status.success(), "signature and claims alone still pass");
    // A decoder written from the draft, with PyJWT for the signatures.
    let status_of = |token: &str| {
        let py = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/status_list.py"))
            .arg(token)
            .arg(format!("{}/jwks", a.url))
            .output()
            .unwrap();
        assert!(py.status.success(), "{}{}", stdout(&py), stderr(&py));
        stdout(&py).trim().to_owned()
    };
    assert_eq!(status_of(&t1), "status=1");
    let t2 = token_for(&b_url, &secret, BACKEND).await;
    assert_eq!(status_of(&t2), "status=0");

    // 2. The stream survives server B's death: the subscribers keep enforcing what they know,
    //    B comes back on its address, they resume, and a revocation made meanwhile on A arrives.
    let mut b = b;
    b.proc.child.kill().unwrap();
    b.proc.child.wait().unwrap();
    assert_eq!(sidecar(&t1), "401", "the revocation held stays in force");
    assert_eq!(sidecar(&t2), "200");
    let jti2 = claims(&t2)["jti"].as_str().unwrap().to_owned();
    let o = tessera(&a.data, &["revoke", "token", &jti2]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _b2 = server_at(dbd.path(), &db, &b_listen, &[]);
    eventually(
        Duration::from_secs(40),
        "the sidecar resumed and refuses",
        || async { sidecar(&t2) == "401" },
    )
    .await;
    eventually(
        Duration::from_secs(40),
        "the library resumed and refuses",
        || async { library(t2.clone()).await == 401 },
    )
    .await;

    // 3. A grant withdrawn on A is in force at the sidecar (its policy bundle, from B) within
    //    the bound, for a token that is still valid; applied again, it is back.
    let t4 = token_for(&b_url, &secret, BACKEND).await;
    assert_eq!(sidecar(&t4), "200");
    let without = mesh().replace(
        &format!("[[grant]]\nfrom = \"{FRONTEND}\"\nto = \"{BACKEND}\""),
        &format!("[[grant]]\nfrom = \"{REPORTS}\"\nto = \"{BACKEND}\""),
    );
    assert_ne!(without, mesh());
    let p2 = write(dir.path(), "without.toml", &without);
    let o = tessera(&a.data, &["apply", "--prune", "-f", p2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    eventually(
        Duration::from_secs(2),
        "the withdrawn grant denies",
        || async { sidecar(&t4) == "403" },
    )
    .await;
    let o = tessera(&a.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    eventually(
        Duration::from_secs(2),
        "the grant applied again allows",
        || async { sidecar(&t4) == "200" },
    )
    .await;

    // 4. A workload revoked on A: its open connection is closed, its certificate refused at a
    //    new handshake, its tokens refused, its dependents listed and told.
    let t3 = token_for(&b_url, &secret, BACKEND).await;
    let mut held = Held::open(&in_addr, &front_pem, &front_key, &t3);
    // The frontend's outbound sidecar, subscribed to B too.
    let outbound = proxy(
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &in_addr,
            "--target-id",
            BACKEND,
            "--server",
            &b_url,
        ],
        &socket,
        FRONTEND,
    );
    let (out_addr, _) = addrs(&outbound);
    let through = |token: String| {
        let (http, out_addr) = (http.clone(), out_addr.clone());
        async move {
            let r = http
                .get(format!("http://{out_addr}/api/items"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    eventually(Duration::from_secs(10), "through both sidecars", || async {
        through(t3.clone()).await.0 == 200
    })
    .await;
    let o = tessera(&a.data, &["revoke", "workload", FRONTEND]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("caller that loses access: {REPORTS}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("target it could call: {BACKEND}")),
        "{out}"
    );
    assert!(
        held.closed_within(Duration::from_secs(3)),
        "the open connection stayed open"
    );
    assert_eq!(
        sidecar(&t3),
        "000",
        "a new handshake with its certificate is refused"
    );
    // The agent (joined to A, its sync long poll woken by the commit) stops serving its SVIDs.
    eventually(
        Duration::from_secs(3),
        "the agent dropped its SVID",
        || async {
            let client =
                spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
                    .await
                    .unwrap();
            let all = client.fetch_all_x509_svids().await.unwrap();
            all.iter().all(|s| s.spiffe_id().to_string() != FRONTEND)
                && all.iter().any(|s| s.spiffe_id().to_string() == BACKEND)
        },
    )
    .await;
    eventually(
        Duration::from_secs(2),
        "the outbound refuses to call",
        || async {
            let (status, body) = through(t3.clone()).await;
            status == 403 && body.contains("revoked")
        },
    )
    .await;
    eventually(
        Duration::from_secs(2),
        "library refuses its tokens",
        || async { library(t3.clone()).await == 401 },
    )
    .await;
    let o = cli(&["verify", "--issuer", &b_url, "--audience", BACKEND, &t3]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    eventually(Duration::from_secs(5), "the webhook was told", || async {
        !notices.lock().unwrap().is_empty()
    })
    .await;
    let (ct, jwt) = notices.lock().unwrap()[0].clone();
    assert_eq!(ct, "application/jwt");
    // Verified by an outside library against the published keys.
    let py = Command::new("python3")
        .args([
            "-c",
            r#"
import json, sys, urllib.request, jwt
token, jwks = sys.argv[1], json.load(urllib.request.urlopen(sys.argv[2]))
head = jwt.get_unverified_header(token)
assert head["typ"] == "tessera-notice+jwt", head
key = next(k for k in jwks["keys"] if k["kid"] == head["kid"])
claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=[head["alg"]])
print(json.dumps(claims))
"#,
            &jwt,
            &format!("{}/jwks", a.url),
        ])
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", stderr(&py));
    let notice: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(notice["workload"]["sub"], FRONTEND);
    assert_eq!(notice["dependents"]["callers"][0], REPORTS);

    // The subscribers' side of the SLI is reported, and the sidecar counted the closed connection.
    let metrics = get_text(&format!("{in_admin}/metrics")).await;
    assert!(
        metrics.contains("tessera_revocation_propagation_seconds_count"),
        "{metrics}"
    );
    // The held connection, and the outbound's pooled one when it was still open.
    let closed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_proxy_connections_closed_revoked_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&closed), "{metrics}");
    drop(a);
}

/// The stream itself, as an outside client (curl) meets it: authentication required, a
/// version that is not one refused, a resume from the current version gets nothing but
/// heartbeats, a stale one a snapshot.
#[tokio::test]
async fn the_change_stream_authenticates_and_resumes() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mesh.toml", &mesh());
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tessera(&s.data, &["client", "secret", "frontend"]);
    let secret = stdout(&o).lines().next().unwrap().to_owned();
    let url = format!("{}/v1/changes", s.url);
    assert_eq!(curl_status(&[&url]), "401");
    let (st, body) = post_form(
        &format!("{}/token", s.url),
        Some(("frontend", &secret)),
        &[("grant_type", "client_credentials"), ("audience", &s.url)],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let tok = body["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Authorization: Bearer {tok}");
    assert_eq!(
        curl_status(&["-H", &bearer, "-H", "Last-Event-ID: yesterday", &url]),
        "400"
    );
    let stream = |extra: &[&str]| {
        let o = Command::new("curl")
            .args(["-sN", "--max-time", "6", "-H", &bearer])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        stdout(&o)
    };
    let fresh = stream(&[]);
    assert!(fresh.starts_with("event: snapshot\n"), "{fresh}");
    let version: i64 = fresh
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .parse()
        .unwrap();
    let current = stream(&["-H", &format!("Last-Event-ID: {version}")]);
    assert!(!current.contains("event: snapshot"), "{current}");
    assert!(current.contains("event: heartbeat"), "{current}");
    let old = stream(&["-H", "Last-Event-ID: 0"]);
    assert!(old.starts_with("event: snapshot\n"), "{old}");
}
