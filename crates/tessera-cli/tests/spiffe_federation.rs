//! SPIFFE federation between two authorities (separate data, separate keys, separate agents):
//! a workload of one calls a workload of the other through both sidecars over mTLS under policy;
//! py-spiffe reads the federated bundle and validates the other side's SVID with it; a CA
//! rotation at one side under load fails no handshake at the other; removing the relationship
//! stops acceptance; identity chaining both ways; a SPIRE-format bundle is taken and bad bundles
//! are refused with the last good one kept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ORDERS: &str = "spiffe://a.example/orders";
const STRANGER_A: &str = "spiffe://a.example/stranger";
const INVENTORY: &str = "spiffe://b.example/inventory";
const PARTNER_ORDERS: &str = "spiffe://b.example/partner-orders";
const REPORTS: &str = "spiffe://b.example/reports";
const LEDGER: &str = "spiffe://a.example/ledger";
const PARTNER_REPORTS: &str = "spiffe://a.example/partner-reports";

/// A `--dev` authority serving `td` alone, whose bundle asks to be refreshed every second (so
/// a rotation reaches the other side within the test's publish-ahead).
fn authority(td: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "server.toml",
        &format!("trust_domains = [\"{td}\"]\njwks_max_age = \"1s\"\n"),
    );
    let data = dir.path().join("data");
    let s = server_with(
        &data,
        None,
        &[
            "--listen",
            "127.0.0.1:0",
            "--poll-interval",
            "200ms",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    (s, dir)
}

async fn issuer(s: &Server) -> String {
    get_json(&format!("{}/.well-known/openid-configuration", s.url)).await["issuer"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn tls_url(s: &Server) -> String {
    s.url.replace("http://", "https://")
}

fn apply_refused(s: &Server, dir: &Path, text: &str, why: &str) {
    let p = write(dir, "refused.toml", text);
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(!o.status.success(), "applied: {text}");
    assert!(stderr(&o).contains(why), "wanted `{why}`: {}", stderr(&o));
}

/// The federation with `td` as `tessera get federations -o json` shows it.
fn federation(s: &Server, td: &str) -> Option<Value> {
    let o = tessera(&s.data, &["get", "federations", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    rows.into_iter().find(|r| r["trust_domain"] == td)
}

/// Waits (20 s at most) until the federation with `td` satisfies `ok`.
fn wait_federation(s: &Server, td: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = federation(s, td);
        if let Some(f) = f.as_ref().filter(|f| ok(f)) {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "never {what}: {f:?}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

async fn jwt_svid(socket: &Path, id: &str, audience: &str) -> String {
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let id = spiffe::SpiffeId::new(id).unwrap();
    client
        .fetch_jwt_svid([audience], Some(&id))
        .await
        .unwrap()
        .token()
        .to_owned()
}

/// An upstream that reports who the inbound says called.
async fn upstream() -> std::net::SocketAddr {
    use axum::http::HeaderMap;
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let caller: Vec<String> = headers
            .get_all("x-tessera-caller")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        axum::Json(serde_json::json!({ "caller": caller }))
    });
    serve_app(app).await
}

/// curl with a client certificate to the inbound: (curl's exit code, HTTP status or error).
fn curl_mtls(chain: &Path, key: &Path, addr: &str) -> (i32, String) {
    let o = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "--cert",
            chain.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .arg(format!("https://{addr}/api/curl"))
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&o), stderr(&o)),
    )
}

fn b_mesh(uid: &str, a_bundle: &str, a_url: &str, federated: bool) -> String {
    let federation = if federated {
        format!(
            r#"
[[federation]]
trust_domain = "a.example"
bundle_endpoint = "{a_url}/bundle/a.example"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://a.example/tessera/server"
initial_bundle = "{a_bundle}"

[[grant]]
from = "{ORDERS}"
to = "{INVENTORY}"
routes = [{{ methods = ["GET"], paths = ["/api/*"] }}]
why = "The partner's order service reads stock"
"#
        )
    } else {
        String::new()
    };
    let fw = if federated {
        "federates_with = [\"a.example\"]"
    } else {
        ""
    };
    format!(
        r#"
[[workload]]
id = "{INVENTORY}"
owner = "team-stock"
purpose = "Serves stock levels"
selectors = ["unix:uid:{uid}"]
{fw}
{federation}
"#
    )
}

fn a_mesh(uid: &str, b_url: &str, b_ca: &Path, b_issuer: &str) -> String {
    format!(
        r#"
[[federation]]
trust_domain = "b.example"
bundle_endpoint = "{b_url}/bundle/b.example"
profile = "https_web"
ca_file = "{}"
token_issuer = "{b_issuer}"

[[workload]]
id = "{ORDERS}"
owner = "team-orders"
purpose = "Takes orders; asks the partner for stock"
selectors = ["unix:uid:{uid}"]
x509_ttl = "10s"
federates_with = ["b.example"]

[[workload]]
id = "{STRANGER_A}"
owner = "team-x"
purpose = "Federates, has no grant over there"
selectors = ["unix:uid:{uid}"]
federates_with = ["b.example"]
"#,
        b_ca.display()
    )
}

// Multi-threaded: the upstream runs here while curl and the CLI block a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorities_federate_through_their_sidecars() {
    let (a, _a_dir) = authority("a.example");
    let (b, _b_dir) = authority("b.example");
    let dir = tempfile::tempdir().unwrap();
    let uid = uid();

    // Bad relationships are refused at apply with their place.
    apply_refused(
        &b,
        dir.path(),
        "[[federation]]\ntrust_domain = \"b.example\"\nbundle_endpoint = \"https://x/bundle\"\nprofile = \"https_web\"\n",
        "serves that trust domain itself",
    );
    apply_refused(
        &b,
        dir.path(),
        &format!("[[workload]]\nid = \"{INVENTORY}\"\nowner = \"o\"\npurpose = \"p\"\nfederates_with = [\"nobody.example\"]\n"),
        "no `[[federation]]` is declared",
    );
    apply_refused(
        &b,
        dir.path(),
        &format!("[[workload]]\nid = \"{INVENTORY}\"\nowner = \"o\"\npurpose = \"p\"\n\n[[grant]]\nfrom = \"{ORDERS}\"\nto = \"{INVENTORY}\"\nwhy = \"w\"\n"),
        "nor a trust domain this authority federates with",
    );
    apply_refused(
        &b,
        dir.path(),
        "[[federation]]\ntrust_domain = \"a.example\"\nbundle_endpoint = \"https://x/bundle\"\nprofile = \"https_spiffe\"\n",
        "needs `endpoint_spiffe_id`",
    );

    // B trusts A by https_spiffe, bootstrapped from A's bundle as fetched once by hand.
    let a_bundle = get_text(&format!("{}/bundle/a.example", a.url)).await;
    write(dir.path(), "a-bundle.json", &a_bundle);
    let plan = apply_ok(
        &b,
        dir.path(),
        "b.toml",
        &b_mesh(&uid, "a-bundle.json", &tls_url(&a), true),
        &[],
    );
    assert!(plan.contains("+ federation a.example"), "{plan}");
    // A trusts B by https_web with B's API CA.
    let b_issuer = issuer(&b).await;
    apply_ok(
        &a,
        dir.path(),
        "a.toml",
        &a_mesh(
            &uid,
            &tls_url(&b),
            &b.data.join("tls").join("ca.pem"),
            &b_issuer,
        ),
        &[],
    );
    let at_b = wait_federation(&b, "a.example", "fetched at B", |f| {
        f["bundle"] == "fetched" && f["last_error"].is_null()
    });
    assert_eq!(at_b["profile"], "https_spiffe");
    assert_eq!(at_b["workloads"][0], INVENTORY);
    assert!(!at_b["ca_expiries"].as_array().unwrap().is_empty());
    wait_federation(&a, "b.example", "fetched at A", |f| {
        f["bundle"] == "fetched"
    });
    let o = tessera(&b.data, &["describe", "federation", "a.example"]);
    let text = stdout(&o);
    assert!(
        text.contains("Endpoint ID:   spiffe://a.example/tessera/server")
            && text.contains("fetched")
            && text.contains(INVENTORY),
        "{text}"
    );

    let o = tessera(&a.data, &["describe", "workload", ORDERS]);
    assert!(
        stdout(&o).contains("Federates:    b.example"),
        "{}",
        stdout(&o)
    );

    // One agent per authority; both serve this unix user.
    let (_agent_a, socket_a) = join_agent(&a, dir.path(), "agent-a");
    let (_agent_b, socket_b) = join_agent(&b, dir.path(), "agent-b");
    let up = upstream().await.to_string();
    let inbound = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &up,
            "--server",
            &b.url,
        ],
        &socket_b,
        INVENTORY,
    );
    let (in_addr, _) = addrs(&inbound);
    let outbound = |id: &str| {
        proxy(
            &[
                "outbound",
                "--listen",
                "127.0.0.1:0",
                "--target",
                &in_addr,
                "--target-id",
                INVENTORY,
            ],
            &socket_a,
            id,
        )
    };
    let orders = outbound(ORDERS);
    let (orders_addr, _) = addrs(&orders);
    let stranger = outbound(STRANGER_A);
    let (stranger_addr, _) = addrs(&stranger);
    let http = reqwest::Client::new();
    wait_allowed(&http, &[&orders_addr]).await;
    let r = http
        .get(format!("http://{orders_addr}/api/stock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["caller"][0], ORDERS, "{body}");
    // Deny by default across the boundary too: a federated caller with no grant at B.
    let r = http
        .get(format!("http://{stranger_addr}/api/stock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("http://{orders_addr}/api/stock"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the grant allows GET only");

    // Explained at B like any other caller.
    let explain = |from: &str| {
        let o = tessera(
            &b.data,
            &[
                "explain",
                "--from",
                from,
                "--to",
                INVENTORY,
                "--method",
                "GET",
                "--path",
                "/api/stock",
            ],
        );
        (o.status.code(), stdout(&o))
    };
    let (code, text) = explain(ORDERS);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("b.toml"), "{text}");
    let (code, text) = explain(STRANGER_A);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        !text.contains("is not a workload any identity file declares") && text.contains("grant"),
        "a known federated caller, lacking a grant: {text}"
    );

    // py-spiffe at B's agent: the federated bundles, and A's SVIDs validated with them.
    let (chain, _) = svid_pem(&socket_a, ORDERS, dir.path()).await;
    let jwt = jwt_svid(&socket_a, ORDERS, INVENTORY).await;
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/spiffe_federation.py"
        ))
        .arg(format!("unix://{}", socket_b.display()))
        .args(["a.example", "b.example"])
        .arg(&chain)
        .args([&jwt, INVENTORY])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("peer svid validated with the federated bundle")
            && out.contains("the local bundle does not validate it")
            && out.contains(&format!("peer jwt-svid validated: {ORDERS}")),
        "{out}"
    );

    // A CA rotation at A, under load: B's bundle follows before A's new CA signs, and no
    // request or new handshake fails (A's SVIDs live 10 s, so they are re-signed by the new CA).
    let seq_before = wait_federation(&b, "a.example", "settled", |f| f["last_error"].is_null())
        ["spiffe_sequence"]
        .as_u64()
        .unwrap();
    let stop = Instant::now() + Duration::from_secs(18);
    let load = {
        let (http, addr) = (http.clone(), orders_addr.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while Instant::now() < stop {
                match http.get(format!("http://{addr}/api/load")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let o = tessera(&a.data, &["ca", "rotate", "--activate-in", "5s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut handshakes = 0;
    while Instant::now() < stop {
        let (chain, key) = svid_pem(&socket_a, ORDERS, dir.path()).await;
        let (code, out) = curl_mtls(&chain, &key, &in_addr);
        assert!(
            code == 0 && out == "200",
            "a new handshake from A's workload failed during A's CA rotation: {out}"
        );
        handshakes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok > 50 && handshakes >= 10,
        "{ok} requests, {handshakes} handshakes"
    );
    eprintln!(
        "drill: A's CA rotation seen from B: {ok} requests, {handshakes} new handshakes, 0 failed"
    );
    let after = federation(&b, "a.example").unwrap();
    assert!(
        after["spiffe_sequence"].as_u64().unwrap() > seq_before,
        "B follows A's rotation: {after}"
    );
    assert!(
        after["ca_expiries"].as_array().unwrap().len() >= 2,
        "{after}"
    );

    // Removing the relationship (and its grant) stops acceptance at once: new handshakes from
    // A's workloads are refused, and so are requests on the connections already open.
    let removed_at = Instant::now();
    apply_ok(
        &b,
        dir.path(),
        "b.toml",
        &b_mesh(&uid, "a-bundle.json", &tls_url(&a), false),
        &["--prune"],
    );
    assert!(federation(&b, "a.example").is_none());
    let (chain, key) = svid_pem(&socket_a, ORDERS, dir.path()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out) = curl_mtls(&chain, &key, &in_addr);
        let through = http
            .get(format!("http://{orders_addr}/api/stock"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if code != 0 && through != 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepted after the relationship was removed: curl {code} {out}, outbound {through}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "drill: federation removed at B: A's workloads refused within {} ms",
        removed_at.elapsed().as_millis()
    );
}

/// Identity chaining (draft-ietf-oauth-identity-chaining) both ways: a workload's JWT-SVID
/// is exchanged at its own authority for a JWT authorization grant for the other authority,
/// which exchanges that (RFC 7523) for its own token under its own grants; the grant's `jti`
/// is in both audit trails. Refused for an authority not configured on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_chaining_both_ways() {
    let (a, _a_dir) = authority("a.example");
    let (b, _b_dir) = authority("b.example");
    let dir = tempfile::tempdir().unwrap();
    let uid = uid();
    let (a_issuer, b_issuer) = (issuer(&a).await, issuer(&b).await);
    let a_bundle = get_text(&format!("{}/bundle/a.example", a.url)).await;
    let b_bundle = get_text(&format!("{}/bundle/b.example", b.url)).await;
    write(dir.path(), "a.example-bundle.json", &a_bundle);
    write(dir.path(), "b.example-bundle.json", &b_bundle);
    // Each side: a federation with the other naming its OAuth issuer, a workload that may
    // chain there, a local service with a scope, and a workload the other's identity maps to.
    let side = |me: &str,
                other: &str,
                other_url: &str,
                other_issuer: &str,
                caller: &str,
                service: &str,
                mapped: &str| {
        format!(
            r#"
[[federation]]
trust_domain = "{other}"
bundle_endpoint = "{other_url}/bundle/{other}"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://{other}/tessera/server"
initial_bundle = "{other}-bundle.json"
token_issuer = "{other_issuer}"

[[workload]]
id = "{caller}"
owner = "team-{me}"
purpose = "Calls the partner"
selectors = ["unix:uid:{uid}"]
federates_with = ["{other}"]

[[workload]]
id = "spiffe://{me}/homebody"
owner = "team-{me}"
purpose = "Federates with nobody"
selectors = ["unix:uid:{uid}"]

[[workload]]
id = "{service}"
owner = "team-{me}"
purpose = "Serves the partner"
scopes = ["read"]

[[workload]]
id = "{mapped}"
owner = "team-{me}"
purpose = "The partner's caller, as known here"

[[grant]]
from = "{mapped}"
to = "{service}"
scopes = ["read"]
why = "The partner reads"
"#
        )
    };
    apply_ok(
        &a,
        dir.path(),
        "a.toml",
        &side(
            "a.example",
            "b.example",
            &tls_url(&b),
            &b_issuer,
            LEDGER,
            "spiffe://a.example/books",
            PARTNER_REPORTS,
        ),
        &[],
    );
    apply_ok(
        &b,
        dir.path(),
        "b.toml",
        &side(
            "b.example",
            "a.example",
            &tls_url(&a),
            &a_issuer,
            REPORTS,
            INVENTORY,
            PARTNER_ORDERS,
        ),
        &[],
    );
    let (_agent_a, socket_a) = join_agent(&a, dir.path(), "agent-a");
    let (_agent_b, socket_b) = join_agent(&b, dir.path(), "agent-b");

    // The grant from one's home authority.
    let grant = |home: &Server, socket: PathBuf, who: &'static str, audience: String| {
        let (url, home_issuer) = (format!("{}/token", home.url), home_issuer_of(home));
        async move {
            let svid = jwt_svid(&socket, who, &home_issuer.await).await;
            post_form(
                &url,
                None,
                &[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", &svid),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:jwt",
                    ),
                    ("audience", &audience),
                ],
            )
            .await
        }
    };
    let exchange = |at: &Server, assertion: String, target: &'static str| {
        let url = format!("{}/token", at.url);
        async move {
            post_form(
                &url,
                None,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", &assertion),
                    ("audience", target),
                    ("scope", "read"),
                ],
            )
            .await
        }
    };

    // A -> B before B trusts A's issuer: A issues the grant, B refuses it.
    let (code, g) = grant(&a, socket_a.clone(), LEDGER, b_issuer.clone()).await;
    assert_eq!(code, 200, "{g}");
    assert_eq!(
        g["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(g["token_type"], "N_A");
    let grant_a = g["access_token"].as_str().unwrap().to_owned();
    oauth_refused(
        &exchange(&b, grant_a.clone(), INVENTORY).await,
        "invalid_grant",
        "no trust for issuer",
    );

    // Each side trusts the other's issuer for the other's chaining workload.
    let trust = |name: &str, other_issuer: &str, me_issuer: &str, from: &str, mapped: &str| {
        format!(
            r#"
[[trust]]
name = "{name}"
issuer = "{other_issuer}"
audience = "{me_issuer}"
algorithms = ["ES256"]
private_network = true
map = [{{ claims = {{ sub = "{from}" }}, workload = "{mapped}" }}]
"#
        )
    };
    apply_ok(
        &b,
        dir.path(),
        "b-trust.toml",
        &trust("authority-a", &a_issuer, &b_issuer, LEDGER, PARTNER_ORDERS),
        &[],
    );
    apply_ok(
        &a,
        dir.path(),
        "a-trust.toml",
        &trust(
            "authority-b",
            &b_issuer,
            &a_issuer,
            REPORTS,
            PARTNER_REPORTS,
        ),
        &[],
    );

    for (home, socket, who, away, away_issuer, target, mapped) in [
        (
            &a,
            socket_a.clone(),
            LEDGER,
            &b,
            b_issuer.clone(),
            INVENTORY,
            PARTNER_ORDERS,
        ),
        (
            &b,
            socket_b.clone(),
            REPORTS,
            &a,
            a_issuer.clone(),
            "spiffe://a.example/books",
            PARTNER_REPORTS,
        ),
    ] {
        let (code, g) = grant(home, socket, who, away_issuer.clone()).await;
        assert_eq!(code, 200, "{g}");
        let assertion = g["access_token"].as_str().unwrap().to_owned();
        let claims = jwt_claims(&assertion);
        assert_eq!(claims["sub"], who);
        let (code, t) = exchange(away, assertion, target).await;
        assert_eq!(code, 200, "{t}");
        let at = jwt_claims(t["access_token"].as_str().unwrap());
        assert_eq!(
            (at["sub"].as_str(), at["aud"].as_str()),
            (Some(mapped), Some(target)),
            "{at}"
        );
        assert_eq!(at["scope"], "read");
        // The chain in both audit trails, joined by the grant's `jti`.
        let jti = claims["jti"].as_str().unwrap();
        let home_log = audit_details(home);
        assert!(
            home_log.iter().any(|(kind, d)| kind == "token.issued"
                && d["grant_type"] == "identity_chaining"
                && d["jti"] == jti
                && d["chained_to"] == away_issuer.as_str()),
            "{home_log:?}"
        );
        let away_log = audit_details(away);
        assert!(
            away_log.iter().any(|(kind, d)| kind == "token.issued"
                && d["outside_jti"] == jti
                && d["outside_sub"] == who),
            "{away_log:?}"
        );
        // Neither trail holds a whole token.
        for (_, d) in home_log.iter().chain(away_log.iter()) {
            assert!(!d.to_string().contains("eyJ"), "{d}");
        }
    }

    // Refused at home: an authority not configured, and a workload that does not federate.
    let elsewhere = "https://elsewhere.example".to_owned();
    oauth_refused(
        &grant(&a, socket_a.clone(), LEDGER, elsewhere).await,
        "invalid_target",
        "an authority this one federates with",
    );
    let homebody = "spiffe://a.example/homebody";
    oauth_refused(
        &grant(&a, socket_a.clone(), homebody, b_issuer.clone()).await,
        "invalid_grant",
        "does not federate",
    );
    // A grant for B is no token at A; at B it gets only what B's grants allow.
    let (_, g) = grant(&a, socket_a, LEDGER, b_issuer.clone()).await;
    let assertion = g["access_token"].as_str().unwrap().to_owned();
    oauth_refused(
        &exchange(&a, assertion.clone(), "spiffe://a.example/books").await,
        "invalid_grant",
        "no trust for issuer",
    );
    let (code, e) = exchange(&b, assertion, REPORTS).await;
    assert_ne!(
        code, 200,
        "no grant from the mapped workload to {REPORTS}: {e}"
    );
}

/// An RFC 6749 refusal: 400, `error`, and a description that says `says`.
fn oauth_refused((code, body): &(u16, Value), error: &str, says: &str) {
    assert_eq!(
        (*code, body["error"].as_str()),
        (400, Some(error)),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains(says)),
        "{body}"
    );
}

/// The audit trail's latest records as (kind, detail).
fn audit_details(s: &Server) -> Vec<(String, Value)> {
    let o = tessera(&s.data, &["audit", "tail", "-n", "100", "--output", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    rows.into_iter()
        .map(|r| {
            let detail = r["detail"]
                .as_str()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            (r["kind"].as_str().unwrap_or_default().to_owned(), detail)
        })
        .collect()
}

fn home_issuer_of(s: &Server) -> impl std::future::Future<Output = String> {
    let url = s.url.clone();
    async move {
        get_json(&format!("{url}/.well-known/openid-configuration")).await["issuer"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A bundle endpoint played by this test: whatever `body` holds, over plain HTTP on loopback
/// (which a `--dev` authority accepts).
async fn fake_endpoint(body: Arc<Mutex<Vec<u8>>>) -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(move || {
        let body = body.lock().unwrap().clone();
        async move { body }
    });
    serve_app(app).await
}

/// A SPIRE-style bundle (the shape of the SPIFFE bundle specification's example): an RSA X.509
/// authority with its `n`/`e` beside `x5c`, made by openssl; an EC JWT key; a sequence and a
/// refresh hint.
fn spire_bundle(dir: &Path, td: &str, sequence: u64) -> Vec<u8> {
    let key = dir.join("spire-ca.key");
    let cert = dir.join("spire-ca.pem");
    if !cert.exists() {
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/C=US/O=SPIFFE",
            ])
            .args(["-addext", &format!("subjectAltName=URI:spiffe://{td}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let modulus = stdout(
        &Command::new("openssl")
            .args(["x509", "-noout", "-modulus", "-in"])
            .arg(&cert)
            .output()
            .unwrap(),
    );
    use base64::Engine;
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let b64u = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (jwt_key, _) = tessera_token::SigningKey::generate(tessera_token::Alg::ES256).unwrap();
    let mut jwk = jwt_key.public().to_jwk();
    jwk.insert("use".into(), "jwt-svid".into());
    jwk.insert("kid".into(), "C6vs25welZOx6WksNYfbMfiw9l96pMnD".into());
    serde_json::to_vec(&serde_json::json!({
        "keys": [
            {"use": "x509-svid", "kty": "RSA", "n": b64u(&n), "e": "AQAB",
             "x5c": [base64::engine::general_purpose::STANDARD.encode(&der)]},
            Value::Object(jwk),
        ],
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": 1,
    }))
    .unwrap()
}

/// A SPIRE-format bundle is taken; a bundle of another trust domain, an older sequence, an
/// oversized or malformed bundle, and an endpoint with the wrong SPIFFE ID are refused, logged
/// and audited, and the last good bundle stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundles_are_refused_and_the_last_good_one_kept() {
    let (a, _a_dir) = authority("a.example");
    let (b, _b_dir) = authority("b.example");
    let dir = tempfile::tempdir().unwrap();
    let body = Arc::new(Mutex::new(spire_bundle(dir.path(), "spire.example", 5)));
    let fake = fake_endpoint(body.clone()).await;
    let a_bundle = get_text(&format!("{}/bundle/a.example", a.url)).await;
    write(dir.path(), "a-bundle.json", &a_bundle);
    apply_ok(
        &b,
        dir.path(),
        "b.toml",
        &format!(
            r#"
[[federation]]
trust_domain = "spire.example"
bundle_endpoint = "http://{fake}/bundle"
profile = "https_web"

[[federation]]
trust_domain = "a.example"
bundle_endpoint = "{}/bundle/a.example"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://a.example/orders"
initial_bundle = "a-bundle.json"
"#,
            tls_url(&a)
        ),
        &[],
    );
    let good = wait_federation(&b, "spire.example", "taken", |f| f["bundle"] == "fetched");
    // The shipped example applies as it is (to an authority serving its trust domain).
    let (ex, _ex_dir) = authority("example.org");
    let o = tessera(
        &ex.data,
        &[
            "apply",
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/authorities/partner.toml"
            ),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let f = federation(&ex, "partner.example").unwrap();
    assert_eq!(
        (f["bundle"].as_str(), f["spiffe_sequence"].as_u64()),
        (Some("initial"), Some(1)),
        "{f}"
    );
    assert_eq!(good["spiffe_sequence"], 5);
    assert_eq!(good["jwt_keys"], 1);

    // Each bad bundle in turn: refused with its reason, the good one (sequence 5) kept.
    let other_domain = get_text(&format!("{}/bundle/a.example", a.url))
        .await
        .into_bytes();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (other_domain, "names trust domain `a.example`"),
        (
            spire_bundle(dir.path(), "spire.example", 4),
            "older than the one in force",
        ),
        (vec![b' '; 300 * 1024], "larger"),
        (
            b"{\"keys\": [{\"use\": \"x509-svid\"".to_vec(),
            "not a JSON object",
        ),
        (
            br#"{"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "k", "d": "c2VjcmV0"}]}"#
                .to_vec(),
            "private member",
        ),
    ];
    for (bad, why) in cases {
        *body.lock().unwrap() = bad;
        let f = wait_federation(&b, "spire.example", why, |f| {
            f["last_error"].as_str().is_some_and(|e| e.contains(why))
        });
        assert_eq!(f["spiffe_sequence"], 5, "{f}");
        assert_eq!(f["bundle"], "fetched");
    }
    let log = stdout(&tessera(
        &b.data,
        &["audit", "tail", "-n", "100", "--output", "json"],
    ));
    assert!(
        log.contains("bundle.refused") && log.contains("bundle.updated"),
        "{log}"
    );
    // A good one again is taken.
    *body.lock().unwrap() = spire_bundle(dir.path(), "spire.example", 6);
    wait_federation(&b, "spire.example", "taken again", |f| {
        f["spiffe_sequence"] == 6 && f["last_error"].is_null()
    });

    // https_spiffe: A's endpoint presents `.../tessera/server`, not the ID configured.
    let f = wait_federation(&b, "a.example", "refused by ID", |f| {
        f["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("spiffe://a.example/orders"))
    });
    assert_eq!(f["bundle"], "initial", "{f}");
    // The endpoint's SVID, as openssl sees it when asked for the trust domain by SNI.
    let addr = a.url.trim_start_matches("http://").to_owned();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername a.example </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("URI:spiffe://a.example/tessera/server"),
        "{}",
        stdout(&o)
    );
}
