//! The sidecar end to end: a node agent gives each sidecar its X.509-SVID; an unmodified HTTP
//! service behind `tessera proxy inbound`, a client behind `tessera proxy outbound`; curl and
//! openssl as outside clients with good and bad certificates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn mesh() -> String {
    sidecar_mesh()
}

use serde_json::Value;

/// The upstream: an unmodified HTTP service that reports what it received.
async fn upstream() -> std::net::SocketAddr {
    use axum::http::HeaderMap;
    let app = axum::Router::new().fallback(|version: axum::http::Version, headers: HeaderMap, uri: axum::http::Uri| async move {
        let caller: Vec<String> = headers
            .get_all("x-tessera-caller")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        axum::Json(serde_json::json!({"path": uri.path(), "caller": caller, "version": format!("{version:?}"), "headers": names}))
    });
    serve_app(app).await
}

fn curl(args: &[&str]) -> (i32, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

// Multi-threaded: the upstream runs in this process while curl and openssl block a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_enforce_mtls_and_policy() {
    let Mesh {
        s,
        dir,
        socket,
        agent: _agent,
    } = start_mesh(&mesh(), &[]);

    let up = upstream().await;
    let up = up.to_string();
    let inbound = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--server",
            &s.url,
            "--sample-allows",
            "1",
        ],
        &socket,
        BACKEND,
    );
    let (in_addr, in_admin) = addrs(&inbound);
    let outbound = proxy(
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &in_addr,
            "--target-id",
            BACKEND,
        ],
        &socket,
        FRONTEND,
    );
    let (out_addr, _) = addrs(&outbound);
    let http = reqwest::Client::new();

    // Through both sidecars: allowed once the inbound has its policy bundle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let body: Value = loop {
        let r = http
            .get(format!("http://{out_addr}/api/items/7"))
            .header("x-tessera-caller", "spiffe://example.org/forged")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "never allowed: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["path"], "/api/items/7");
    assert_eq!(
        body["caller"],
        serde_json::json!([FRONTEND]),
        "the forged header was replaced"
    );
    // Outside the grant's routes: 403 from the inbound, the upstream never sees it.
    let r = http
        .get(format!("http://{out_addr}/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "denied by policy\n");
    // Keep-alive: many requests over the outbound's pooled mTLS connections.
    for i in 0..50 {
        let r = http
            .get(format!("http://{out_addr}/api/k/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Finding 6: another unix user on this host cannot borrow the frontend's identity through
    // its loopback port.
    if uid() == "0" {
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
                "-w",
                "\n%{http_code}",
            ])
            .arg(format!("http://{out_addr}/api/items/7"))
            .output()
            .unwrap();
        let out = stdout(&o);
        // A whole answer: curl fails (18) when fewer bytes come than Content-Length says.
        assert!(o.status.success(), "{out}{}", stderr(&o));
        assert!(
            out.ends_with("403") && out.contains("not for your unix user"),
            "{out}{}",
            stderr(&o)
        );
    }

    // A caller with a valid SVID and no grant: curl with its certificate.
    let (stranger_pem, stranger_key, bundle) = svid_files(&socket, STRANGER, dir.path()).await;
    let url = format!("https://{in_addr}/api/items/7");
    let (code, out) = curl(&[
        "-k",
        "--cert",
        stranger_pem.to_str().unwrap(),
        "--key",
        stranger_key.to_str().unwrap(),
        &url,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("403"), "{out}");
    // The frontend's own certificate, from curl: allowed, and HTTP/2 works too.
    let (front_pem, front_key, _) = svid_files(&socket, FRONTEND, dir.path()).await;
    for version in ["--http1.1", "--http2"] {
        let (code, out) = curl(&[
            version,
            "-k",
            "--cert",
            front_pem.to_str().unwrap(),
            "--key",
            front_key.to_str().unwrap(),
            &url,
        ]);
        assert_eq!(code, 0, "{version} {out}\n{}", inbound.stderr());
        // An HTTP/1.1 upstream gets HTTP/1.1 whatever the caller spoke.
        assert!(out.contains("\"version\":\"HTTP/1.1\""), "{version}: {out}");
        assert!(
            out.ends_with("200") && out.contains(FRONTEND),
            "{version}: {out}"
        );
    }
    // No client certificate: the handshake is refused.
    let (code, out) = curl(&["-k", &url]);
    assert_ne!(code, 0, "{out}");
    // A forged certificate naming the frontend, self-signed: refused.
    let forged_key = dir.path().join("forged.key");
    let forged_pem = dir.path().join("forged.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=forged",
            "-addext",
        ])
        .arg(format!("subjectAltName=URI:{FRONTEND}"))
        .arg("-keyout")
        .arg(&forged_key)
        .arg("-out")
        .arg(&forged_pem)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, out) = curl(&[
        "-k",
        "--cert",
        forged_pem.to_str().unwrap(),
        "--key",
        forged_key.to_str().unwrap(),
        &url,
    ]);
    assert_ne!(code, 0, "a self-signed look-alike must not get in: {out}");
    // openssl as a second client: the server presents the backend's SVID, which validates
    // against the bundle.
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &in_addr, "-CAfile"])
        .arg(&bundle)
        .arg("-cert")
        .arg(&front_pem)
        .arg("-key")
        .arg(&front_key)
        .args(["-verify_return_error", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(text.contains("Verification: OK"), "{text}");
    // Plain HTTP on the TLS port: a clear 400, counted.
    let (code, out) = curl(&[&format!("http://{in_addr}/api/items/7")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("mutual TLS only") && out.ends_with("400"),
        "{out}"
    );

    // An outbound expecting another identity refuses the backend's certificate.
    let wrong = proxy(
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &in_addr,
            "--target-id",
            STRANGER,
        ],
        &socket,
        FRONTEND,
    );
    let (wrong_addr, _) = addrs(&wrong);
    let r = http
        .get(format!("http://{wrong_addr}/api/items/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    // Metrics: decisions by caller and handshake failures by reason.
    let metrics = get_text(&format!("{in_admin}/metrics")).await;
    let count = |caller: &str, decision: &str| -> u64 {
        let prefix = format!("tessera_proxy_requests_total{{caller=\"{caller}\",target=\"{BACKEND}\",decision=\"{decision}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert!(count(FRONTEND, "allow") >= 53, "{metrics}");
    assert!(count(FRONTEND, "deny") >= 1, "{metrics}");
    assert_eq!(count(STRANGER, "deny"), 1, "{metrics}");
    assert_eq!(count(STRANGER, "allow"), 0, "{metrics}");
    assert!(
        metrics.contains("tessera_proxy_handshake_failures_total{reason=\"plain_http\"} 1"),
        "{metrics}"
    );
    // curl without a certificate, and the self-signed look-alike.
    for reason in ["no_client_certificate", "rejected_certificate"] {
        assert!(
            metrics.contains(&format!(
                "tessera_proxy_handshake_failures_total{{reason=\"{reason}\"}} "
            )),
            "{reason}: {metrics}"
        );
    }
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_proxy_svid_expiry_seconds "))
        .expect("the SVID expiry gauge")
        .parse()
        .unwrap();
    assert!((3000..=3600).contains(&expiry), "an SVID of 1 h: {expiry}");
    assert_eq!(get_text(&format!("{in_admin}/healthz")).await, "ok\n");

    // With `--require-token`: the certificate and a token for this service, issued to the same
    // workload.
    let strict = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--server",
            &s.url,
            "--require-token",
            "--upstream-h2",
        ],
        &socket,
        BACKEND,
    );
    let (strict_addr, _) = addrs(&strict);
    let strict_url = format!("https://{strict_addr}/api/items/7");
    let with_front = |extra: &[&str]| {
        let mut a = vec![
            "-k",
            "--cert",
            front_pem.to_str().unwrap(),
            "--key",
            front_key.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.push(strict_url.as_str());
        curl(&a)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = with_front(&[]);
        if out.ends_with("401") {
            break;
        }
        assert!(Instant::now() < deadline, "no token, yet: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = tessera(&s.data, &["client", "secret", "frontend"]);
    let secret = stdout(&o).lines().next().unwrap().to_owned();
    let (status, body) = post_form(
        &format!("{}/token", s.url),
        Some(("frontend", &secret)),
        &[("grant_type", "client_credentials"), ("audience", BACKEND)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let auth = format!(
        "Authorization: Bearer {}",
        body["access_token"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = with_front(&["--http2", "-H", &auth]);
        if out.ends_with("200") {
            // `--upstream-h2`: HTTP/2 end to end (as gRPC needs).
            assert!(out.contains("\"version\":\"HTTP/2.0\""), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "certificate and token: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, out) = curl(&[
        "-k",
        "--cert",
        stranger_pem.to_str().unwrap(),
        "--key",
        stranger_key.to_str().unwrap(),
        "-H",
        &auth,
        &strict_url,
    ]);
    assert!(
        out.ends_with("401") && out.contains("another workload"),
        "a token passed on: {out}"
    );
    // Token attacks at the sidecar, over the frontend's own certificate: each is refused with
    // 401 and never reaches the upstream (which would answer 200).
    let good = body["access_token"].as_str().unwrap();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let payload = good.split('.').nth(1).unwrap();
    let unsigned = format!(
        "{}.{payload}.",
        b64(&serde_json::json!({"alg": "none", "typ": "at+jwt"}))
    );
    let mut other_sig = good.to_owned();
    // The first signature character (its bits all count, unlike the last one's).
    let at = good.rfind('.').unwrap() + 1;
    let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
    other_sig.replace_range(at..=at, flipped);
    let o = cli(&[
        "svid",
        "fetch",
        "--socket",
        socket.to_str().unwrap(),
        "--id",
        FRONTEND,
        "--audience",
        BACKEND,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let jwt_svid = stdout(&o).trim().to_owned();
    let (status, body) = post_form(
        &format!("{}/token", s.url),
        Some(("frontend", &secret)),
        &[("grant_type", "client_credentials"), ("audience", &s.url)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let for_the_authority = body["access_token"].as_str().unwrap().to_owned();
    for (name, token) in [
        ("alg none", unsigned.as_str()),
        ("a changed signature", other_sig.as_str()),
        ("a JWT-SVID instead of an access token", jwt_svid.as_str()),
        ("a token for another audience", for_the_authority.as_str()),
        ("not a JWT", "not-a-token"),
        ("oversized", &"a".repeat(20_000)),
    ] {
        let (_, out) = with_front(&["-H", &format!("Authorization: Bearer {token}")]);
        assert!(
            out.ends_with("401") && out.contains("not valid for this service"),
            "{name}: {out}"
        );
    }

    // Finding 13: a token revoked at the authority (RFC 7009) is refused by the sidecar within
    // its revocation poll.
    let (status, _) = post_form(
        &format!("{}/revoke", s.url),
        Some(("frontend", &secret)),
        &[("token", good)],
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out) = with_front(&["-H", &auth]);
        if out.ends_with("401") {
            break;
        }
        assert!(out.ends_with("200"), "{out}");
        assert!(Instant::now() < deadline, "the revoked token still passes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Revoking the frontend stops it at the point of use, even on a connection that is already
    // open and with an SVID that has not expired: the inbound closes the connection and refuses
    // the next handshake (this outbound is not subscribed itself, so it answers 502).
    let o = tessera(&s.data, &["revoke", "workload", FRONTEND]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(format!("http://{out_addr}/api/items/7"))
            .send()
            .await
            .unwrap();
        if r.status() == 502 {
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(
            Instant::now() < deadline,
            "the revoked frontend still gets through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Denials reach the audit trail, as the backend service's records.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = tessera(&s.data, &["audit", "tail", "-n", "100", "--output", "json"]);
        let audit: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let denied = audit.as_array().unwrap().iter().any(|r| {
            r["kind"] == "call.denied" && r["actor"] == BACKEND && r["subject"] == STRANGER
        });
        if denied {
            break;
        }
        assert!(Instant::now() < deadline, "no call.denied record: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The mesh with X.509-SVIDs of 10 s, which rotate every 5 s.
fn short_lived_mesh() -> String {
    mesh().replace("selectors = [", "x509_ttl = \"10s\"\nselectors = [")
}

/// A field of the certificate the TLS server at `addr` presents, as openssl prints it
/// (`-serial`, `-ext authorityKeyIdentifier`).
fn served_cert(addr: &str, field: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout {field}"
        ))
        .output()
        .unwrap();
    stdout(&o).trim().to_owned()
}

/// Requests through the outbounds from `workers` clients (each on one outbound, in turn) until
/// `stop`.
fn start_load(
    http: &reqwest::Client,
    outbounds: &[&str],
    workers: usize,
    stop: Instant,
) -> Vec<tokio::task::JoinHandle<(u32, Vec<String>)>> {
    (0..workers)
        .map(|w| {
            let (http, addr) = (http.clone(), outbounds[w % outbounds.len()].to_owned());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut i = 0;
                while Instant::now() < stop {
                    i += 1;
                    match http.get(format!("http://{addr}/api/{w}/{i}")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}", r.status())),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// New handshakes with the inbound until `stop`: curl with the frontend's current SVID, every
/// 300 ms, each of which must succeed. Returns how many there were.
async fn curl_handshakes(
    socket: &Path,
    dir: &Path,
    in_addr: &str,
    stop: Instant,
    during: &str,
) -> usize {
    let mut handshakes = 0;
    while Instant::now() < stop {
        let (pem, key, _) = svid_files(socket, FRONTEND, dir).await;
        let (code, out) = curl(&[
            "-k",
            "--cert",
            pem.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &format!("https://{in_addr}/api/curl"),
        ]);
        assert!(
            code == 0 && out.ends_with("200"),
            "a new handshake failed during {during}: {out}"
        );
        handshakes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    handshakes
}

/// Joins the load's workers: no request may have failed, and there must have been enough.
async fn finish_load(workers: Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>, during: &str) {
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {during}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    eprintln!(
        "drill: {during}: {ok} requests through the sidecars, {} failed",
        failed.len()
    );
}

/// SVIDs that live 10 s rotate every few seconds; requests through the sidecars (half of them
/// with certificate-bound tokens), and new mTLS handshakes from curl with the current SVID, go on
/// without a failure, and the inbound serves the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    let Mesh {
        s,
        dir,
        socket,
        agent: _agent,
    } = start_mesh(&short_lived_mesh(), &[]);
    let up = upstream().await.to_string();
    let (_inbound, in_addr, _outbound, out_addr) = sidecar_pair(&s, &up, &socket);
    // A second pair where every call also carries a token bound to the SVID it travels with.
    let (_bound_in, bound_out) = token_pair(&s, &up, &socket);
    let (bound_out_addr, _) = addrs(&bound_out);
    let http = reqwest::Client::new();
    let outbounds = [out_addr.as_str(), bound_out_addr.as_str()];
    wait_allowed(&http, &outbounds).await;
    let first_serial = served_cert(&in_addr, "-serial");

    // Load through the sidecars for 14 s: more than two rotations of either side.
    let stop = Instant::now() + Duration::from_secs(14);
    let workers = start_load(&http, &outbounds, 4, stop);
    let handshakes = curl_handshakes(&socket, dir.path(), &in_addr, stop, "rotation").await;
    finish_load(workers, "rotation").await;
    assert!(handshakes >= 10, "{handshakes}");
    assert_ne!(
        served_cert(&in_addr, "-serial"),
        first_serial,
        "the inbound serves its rotated SVID"
    );
}

/// A CA rotation under load through the sidecars: the next CA is published, then signs the
/// SVIDs rotated after it activates; no request through the sidecars and no new handshake
/// fails, and the inbound ends up serving a certificate of the new CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_under_load_fails_no_handshake() {
    let Mesh {
        s,
        dir,
        socket,
        agent: _agent,
    } = start_mesh(&short_lived_mesh(), &[]);
    let up = upstream().await.to_string();
    let (_inbound, in_addr, _outbound, out_addr) = sidecar_pair(&s, &up, &socket);
    let http = reqwest::Client::new();
    wait_allowed(&http, &[&out_addr]).await;
    let issuer = || served_cert(&in_addr, "-ext authorityKeyIdentifier");
    let before = issuer();
    assert!(before.contains("Authority Key Identifier"), "{before}");

    // The outbound makes new connections to the inbound at each of its own SVID rotations
    // (every 5 s here), across the CA's activation.
    let stop = Instant::now() + Duration::from_secs(20);
    let workers = start_load(&http, &[&out_addr], 3, stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let o = tessera(&s.data, &["ca", "rotate", "--activate-in", "6s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let handshakes = curl_handshakes(&socket, dir.path(), &in_addr, stop, "the CA rotation").await;
    finish_load(workers, "the CA rotation").await;
    assert!(handshakes >= 10, "{handshakes}");
    eprintln!("drill: the CA rotation: {handshakes} new mTLS handshakes from curl, 0 failed");
    assert_ne!(issuer(), before, "the inbound serves an SVID of the new CA");
}

/// The authority's TLS URL (a dev server takes TLS on its HTTP port) and its CA file.
fn authority_tls(s: &Server) -> (String, PathBuf) {
    (
        s.url.replace("http://", "https://"),
        s.data.join("tls").join("ca.pem"),
    )
}

/// An inbound for the backend requiring a token too, and an outbound for the frontend that
/// attaches one, bound to its SVID.
fn token_pair(
    s: &Server,
    upstream: &str,
    socket: &Path,
) -> (tessera_testkit::Proc, tessera_testkit::Proc) {
    let inbound = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--server",
            &s.url,
            "--require-token",
        ],
        socket,
        BACKEND,
    );
    let (in_addr, _) = addrs(&inbound);
    let (tls_url, ca) = authority_tls(s);
    let outbound = proxy(
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &in_addr,
            "--target-id",
            BACKEND,
            "--attach-token",
            "--server",
            &tls_url,
            "--server-ca",
            ca.to_str().unwrap(),
        ],
        socket,
        FRONTEND,
    );
    (inbound, outbound)
}

/// `cnf.x5t#S256` of a PEM certificate file, computed by openssl (not by us).
fn openssl_thumbprint(pem: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -outform DER | openssl dgst -sha256 -binary | basenc --base64url | tr -d '=\\n'",
            pem.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_owned()
}

fn payload(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// RFC 8705 end to end: curl asks for a token with the workload's X.509-SVID alone (no secret)
/// and gets one bound to that certificate; the sidecar accepts it only over that certificate;
/// the outbound sidecar does the same by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens() {
    let Mesh {
        s,
        dir,
        socket,
        agent: _agent,
    } = start_mesh(&mesh(), &[]);
    let up = upstream().await.to_string();
    let (inbound, outbound) = token_pair(&s, &up, &socket);
    let (in_addr, in_admin) = addrs(&inbound);
    let (out_addr, _) = addrs(&outbound);
    let (tls_url, ca) = authority_tls(&s);
    let token_url = format!("{tls_url}/token");
    let meta: Value = reqwest::get(format!(
        "{}/.well-known/oauth-authorization-server/example.org",
        s.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
    assert!(meta["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&"tls_client_auth".into()));

    let (front_pem, front_key, _) = svid_files(&socket, FRONTEND, dir.path()).await;
    let ask = |client_id: &str| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            front_pem.to_str().unwrap(),
            "--key",
            front_key.to_str().unwrap(),
            "-d",
            "grant_type=client_credentials",
            "-d",
            &format!("client_id={client_id}"),
            "-d",
            &format!("audience={BACKEND}"),
            &token_url,
        ])
    };
    let (code, out) = ask(FRONTEND);
    assert_eq!(code, 0, "{out}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "200", "{out}");
    let token = serde_json::from_str::<Value>(body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = payload(&token);
    assert_eq!(claims["sub"], FRONTEND);
    assert_eq!(claims["aud"], BACKEND);
    assert_eq!(
        claims["cnf"]["x5t#S256"].as_str().unwrap(),
        openssl_thumbprint(&front_pem),
        "bound to the certificate presented"
    );
    // The certificate's client_id must be its own SPIFFE ID; without one, RFC 8705 says no.
    let (_, out) = ask(STRANGER);
    assert!(
        out.ends_with("401") && out.contains("invalid_client"),
        "{out}"
    );
    let (_, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        front_pem.to_str().unwrap(),
        "--key",
        front_key.to_str().unwrap(),
        "-d",
        "grant_type=client_credentials",
        &token_url,
    ]);
    assert!(out.ends_with("400") && out.contains("client_id"), "{out}");
    // Without a certificate, the same request is an unauthenticated client.
    let (_, out) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-d",
        "grant_type=client_credentials",
        "-d",
        &format!("client_id={FRONTEND}"),
        &token_url,
    ]);
    assert!(out.ends_with("401"), "{out}");

    // Over the certificate it is bound to: allowed.
    let url = format!("https://{in_addr}/api/items/1");
    let auth = format!("Authorization: Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = curl(&[
            "-k",
            "--cert",
            front_pem.to_str().unwrap(),
            "--key",
            front_key.to_str().unwrap(),
            "-H",
            &auth,
            &url,
        ]);
        if out.ends_with("200") {
            break;
        }
        assert!(Instant::now() < deadline, "bound token refused: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The same workload's SVID from a second agent (another key, another certificate): the
    // token is refused over it.
    let (_agent2, socket2) = join_agent(&s, dir.path(), "agent2");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (pem2, key2, _) = svid_files(&socket2, FRONTEND, &other).await;
    assert_ne!(openssl_thumbprint(&pem2), openssl_thumbprint(&front_pem));
    let (_, out) = curl(&[
        "-k",
        "--cert",
        pem2.to_str().unwrap(),
        "--key",
        key2.to_str().unwrap(),
        "-H",
        &auth,
        &url,
    ]);
    assert!(
        out.ends_with("401") && out.contains("bound to another certificate"),
        "{out}"
    );

    // The outbound sidecar asks for its own bound token: the application sends none.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{out_addr}/api/items/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // An application's own Authorization passes as it is (here a wrong one: refused).
    let r = http
        .get(format!("http://{out_addr}/api/items/3"))
        .header("authorization", "Bearer not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // One token serves many calls (cached until half its life): one issuance audited.
    for i in 0..20 {
        let r = http
            .get(format!("http://{out_addr}/api/many/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let o = tessera(&s.data, &["audit", "tail", "-n", "200", "--output", "json"]);
    let audit: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let records: Vec<(String, String, Value)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let detail = serde_json::from_str(r["detail"].as_str().unwrap()).unwrap();
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
                detail,
            )
        })
        .collect();
    let bound: Vec<&Value> = records
        .iter()
        .filter(|(kind, _, d)| kind == "token.issued" && d["auth"] == "tls_client_auth")
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(bound.len(), 2, "curl's and the sidecar's: {audit}");
    assert!(bound.iter().all(|d| d["cnf"]["x5t#S256"].is_string()));
    let refused = records.iter().any(|(kind, actor, d)| {
        kind == "client.auth_failed" && actor == STRANGER && d["method"] == "tls_client_auth"
    });
    assert!(refused, "the wrong client_id is audited: {audit}");
    let metrics = get_text(&format!("{in_admin}/metrics")).await;
    assert!(
        metrics
            .contains("tessera_proxy_requests_total{caller=\"spiffe://example.org/prod/frontend\""),
        "{metrics}"
    );
}

/// Slow and oversized clients: cut off after the handshake timeout (before TLS, and in the middle
/// of a request head), headers over the limit refused; none reaches the upstream, all are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_clients_are_cut_off() {
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    let Mesh {
        s,
        dir,
        socket,
        agent: _agent,
    } = start_mesh(&mesh(), &[]);
    let up = upstream().await.to_string();
    let inbound = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--server",
            &s.url,
            "--handshake-timeout",
            "1s",
        ],
        &socket,
        BACKEND,
    );
    let (in_addr, in_admin) = addrs(&inbound);
    let (pem, key, _) = svid_files(&socket, FRONTEND, dir.path()).await;

    // A TCP client that never starts TLS: closed after the timeout.
    let started = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(&in_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A client that completes mTLS, then sends half a request head and stalls.
    let started = Instant::now();
    let mut slow = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &in_addr, "-cert"])
        .arg(&pem)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = slow.stdin.take().unwrap();
    stdin
        .write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "a stalled request head was never cut off"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Headers over the limit (64 KiB): refused, the upstream never sees them.
    let huge = format!("X-Big: {}", "a".repeat(100 * 1024));
    let (code, out) = curl(&[
        "--http1.1",
        "-k",
        "--cert",
        pem.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-H",
        &huge,
        &format!("https://{in_addr}/api/big"),
    ]);
    assert!(
        code != 0 || out.ends_with("431"),
        "oversized headers got through: {code} {out}"
    );
    assert!(!out.contains("/api/big"), "{out}");

    let metrics = get_text(&format!("{in_admin}/metrics")).await;
    assert!(
        metrics.contains("tessera_proxy_handshake_failures_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );
    // The proxy is still serving.
    let (code, out) = curl(&[
        "-k",
        "--cert",
        pem.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &format!("https://{in_addr}/api/after"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("200") || out.ends_with("403"), "{out}");
}

/// Finding 4: a Cedar `forbid` on `/api/admin/*` holds against every spelling an upstream
/// would decode to it (`%61dmin`, `..;/`, double encoding, case for a case-insensitive
/// service); the upstream receives exactly the canonical path that was decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_decided_and_forwarded_in_one_canonical_form() {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "policies/admin.cedar",
        "forbid (principal, action in Action::\"call\", resource) when { resource.path like \"/api/admin/*\" };\n",
    );
    let p = write(
        dir.path(),
        "mesh.toml",
        &format!("{}\n[policies]\nfiles = [\"policies/*.cedar\"]\n", mesh()),
    );
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_agent, socket) = join_agent(&s, dir.path(), "agent");
    let up = upstream().await.to_string();
    let inbound = |extra: &[&str]| {
        let mut args = vec![
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--server",
            &s.url,
        ];
        args.extend_from_slice(extra);
        proxy(&args, &socket, BACKEND)
    };
    let sensitive = inbound(&[]);
    let insensitive = inbound(&["--case-insensitive-paths"]);
    let (front_pem, front_key, _) = svid_files(&socket, FRONTEND, dir.path()).await;
    let call = |addr: &str, path: &str| {
        curl(&[
            "-k",
            "--path-as-is",
            "--cert",
            front_pem.to_str().unwrap(),
            "--key",
            front_key.to_str().unwrap(),
            &format!("https://{addr}{path}"),
        ])
        .1
    };
    let (s_addr, _) = addrs(&sensitive);
    let (i_addr, _) = addrs(&insensitive);
    // Wait for both bundles: the control is allowed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(call(&s_addr, "/api/items").ends_with("200")
        && call(&i_addr, "/api/items").ends_with("200"))
    {
        assert!(Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The forbidden path, spelled as an upstream would decode it: denied.
    for path in [
        "/api/admin/users",
        "/api/%61dmin/users",
        "/api/x/%2e%2e/admin/users",
    ] {
        let out = call(&s_addr, path);
        assert!(out.ends_with("403"), "{path}: {out}");
    }
    // What the policy cannot see through: refused outright.
    for path in [
        "/api/admin;x=1/users",
        "/api/x/..;/admin/users",
        "/api/%2561dmin/users",
        "/api/admin%2fusers",
        "/api/%C0%AE%C0%AE/admin/users",
    ] {
        let out = call(&s_addr, path);
        assert!(out.ends_with("400"), "{path}: {out}");
    }
    // The upstream receives the canonical path that was decided.
    let out = call(&s_addr, "/api/%69tems/./7");
    assert!(out.contains("\"path\":\"/api/items/7\""), "{out}");
    // Case: distinct for this service, one for the case-insensitive one.
    let out = call(&s_addr, "/API/admin/users");
    assert!(
        out.ends_with("403"),
        "outside /api/* when case counts: {out}"
    );
    let out = call(&i_addr, "/API/ADMIN/users");
    assert!(out.ends_with("403"), "{out}");
    let out = call(&i_addr, "/API/Items");
    assert!(
        out.contains("\"path\":\"/api/items\"") && out.ends_with("200"),
        "{out}"
    );
}
