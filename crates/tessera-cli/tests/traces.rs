//! Traces end to end (seed 004: "each trace should include the service identities involved, the
//! authentication method used, and the authorization decision for each hop"): every process is
//! started with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP receiver that
//! decodes with the official `opentelemetry-proto` package; a call made with a `traceparent`
//! comes back as one trace: client → outbound → inbound → upstream, with the identities and the
//! decision on the right spans. Issuance, the Workload API and SVID signing are traced too; no
//! span carries a token or a secret; JSON logs carry the trace id.
//!
//! Its own test binary: the OTEL variables are given to every child the helpers start.
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

fn receiver(out: &Path) -> tessera_testkit::Proc {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/otlp_receiver.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(out);
    tessera_testkit::spawn_ready(cmd, "otlp: ready port=")
}

fn spans(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (20 s at most) until `found` is true of the spans received.
fn wait_for(out: &Path, what: &str, found: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = spans(out);
        if found(&all) {
            return all;
        }
        assert!(Instant::now() < deadline, "never received {what}: {all:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn named<'a>(all: &'a [Value], trace: &str, name: &str) -> Option<&'a Value> {
    all.iter()
        .find(|s| s["trace_id"] == trace && s["name"] == name)
}

/// 32 (or 16) random hex digits.
fn hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_client_both_sidecars_and_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.jsonl");
    let otlp = receiver(&out);
    // Every child started below gets these (and only they export traces).
    set_child_env(vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{}", otlp.ready),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]);

    let Mesh {
        s,
        dir: _mesh_dir,
        socket,
        agent: _agent,
    } = start_mesh(&sidecar_mesh(), &[]);

    // The upstream: an unmodified service that keeps the `traceparent` each request brought.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let upstream = {
        let seen = seen.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                if let Some(v) = headers.get("traceparent") {
                    seen.lock().unwrap().push(v.to_str().unwrap().to_owned());
                }
                "ok"
            }
        });
        serve_app(app).await.to_string()
    };
    let (inbound, _, outbound, out_addr) = sidecar_pair(&s, &upstream, &socket);
    let http = reqwest::Client::new();
    wait_allowed(&http, &[&out_addr]).await;

    // The client's span: a trace id and span id of its own, sent as W3C `traceparent`.
    let (trace, client_span) = (hex(16), hex(8));
    let r = http
        .get(format!("http://{out_addr}/api/items"))
        .header("traceparent", format!("00-{trace}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let denied_trace = hex(16);
    let r = http
        .get(format!("http://{out_addr}/admin"))
        .header("traceparent", format!("00-{denied_trace}-{}-01", hex(8)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let all = wait_for(&out, "both sidecars' spans", |all| {
        named(all, &trace, "tessera.proxy.inbound").is_some()
            && named(all, &trace, "tessera.proxy.outbound").is_some()
            && named(all, &denied_trace, "tessera.proxy.inbound").is_some()
    });
    let outbound_span = named(&all, &trace, "tessera.proxy.outbound").unwrap();
    assert_eq!(outbound_span["parent"], client_span, "{outbound_span}");
    assert_eq!(outbound_span["service"], "tessera-proxy");
    assert_eq!(outbound_span["kind"], 3, "a client span: {outbound_span}");
    assert_eq!(attr(outbound_span, "tessera.caller"), FRONTEND);
    assert_eq!(attr(outbound_span, "tessera.target"), BACKEND);
    assert_eq!(attr(outbound_span, "tessera.authn"), "mtls");
    assert_eq!(attr(outbound_span, "tessera.outcome"), "forwarded");
    let inbound_span = named(&all, &trace, "tessera.proxy.inbound").unwrap();
    assert_eq!(
        inbound_span["parent"], outbound_span["span_id"],
        "{inbound_span}"
    );
    assert_eq!(inbound_span["kind"], 2, "a server span: {inbound_span}");
    assert_eq!(attr(inbound_span, "tessera.caller"), FRONTEND);
    assert_eq!(attr(inbound_span, "tessera.target"), BACKEND);
    assert_eq!(attr(inbound_span, "tessera.authn"), "mtls");
    assert_eq!(attr(inbound_span, "tessera.decision"), "allow");
    assert_eq!(attr(inbound_span, "url.path"), "/api/items");
    assert_eq!(attr(inbound_span, "http.response.status_code"), 200);
    // The upstream was told to continue the inbound's span.
    let want = format!(
        "00-{trace}-{}-01",
        inbound_span["span_id"].as_str().unwrap()
    );
    assert!(
        seen.lock().unwrap().contains(&want),
        "{want} not in {:?}",
        seen.lock().unwrap()
    );
    let denied = named(&all, &denied_trace, "tessera.proxy.inbound").unwrap();
    assert_eq!(attr(denied, "tessera.decision"), "deny", "{denied}");
    assert_eq!(attr(denied, "http.response.status_code"), 403);
    assert!(
        attr(denied, "tessera.decision.reason").as_str().is_some(),
        "{denied}"
    );

    // Issuance: the server continues the caller's trace; the issuance span names the grant,
    // how the client authenticated, the identities, the decision and the wait for the record.
    let secret = stdout(&tessera(&s.data, &["client", "secret", "frontend"]))
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let (token_trace, token_parent) = (hex(16), hex(8));
    let res = http
        .post(format!("{}/token", s.url))
        .basic_auth("frontend", Some(&secret))
        .header("traceparent", format!("00-{token_trace}-{token_parent}-01"))
        .form(&[("grant_type", "client_credentials"), ("audience", BACKEND)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied_token_trace = hex(16);
    let res = http
        .post(format!("{}/token", s.url))
        .basic_auth("frontend", Some(&secret))
        .header(
            "traceparent",
            format!("00-{denied_token_trace}-{}-01", hex(8)),
        )
        .form(&[("grant_type", "client_credentials"), ("audience", STRANGER)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let all = wait_for(&out, "the issuance spans", |all| {
        named(all, &token_trace, "tessera.issue").is_some()
            && named(all, &denied_token_trace, "tessera.issue").is_some()
    });
    let request = named(&all, &token_trace, "POST /token").unwrap();
    assert_eq!(request["parent"], token_parent);
    assert_eq!(request["service"], "tessera-server");
    assert_eq!(attr(request, "http.route"), "/token");
    let issue = named(&all, &token_trace, "tessera.issue").unwrap();
    assert_eq!(issue["parent"], request["span_id"]);
    assert_eq!(attr(issue, "tessera.grant_type"), "client_credentials");
    assert_eq!(
        attr(issue, "tessera.client.auth_method"),
        "client_secret_basic"
    );
    assert_eq!(attr(issue, "tessera.caller"), FRONTEND);
    assert_eq!(attr(issue, "tessera.target"), BACKEND);
    assert_eq!(attr(issue, "tessera.decision"), "allow");
    assert!(
        attr(issue, "tessera.determined_by")
            .as_str()
            .unwrap()
            .contains("grant"),
        "{issue}"
    );
    assert!(
        attr(issue, "tessera.audit.wait_us").as_i64().is_some(),
        "{issue}"
    );
    let refused = named(&all, &denied_token_trace, "tessera.issue").unwrap();
    assert_eq!(attr(refused, "tessera.decision"), "deny", "{refused}");
    assert_eq!(attr(refused, "error.type"), "invalid_target", "{refused}");

    // The agent's side: the Workload API calls of the sidecars, and the server signing SVIDs.
    let all = spans(&out);
    let fetch = all
        .iter()
        .find(|s| s["name"] == "SpiffeWorkloadAPI/FetchX509SVID" && s["service"] == "tessera-agent")
        .unwrap_or_else(|| panic!("no FetchX509SVID span: {all:#?}"));
    assert!(
        attr(fetch, "tessera.spiffe_ids")
            .as_str()
            .unwrap()
            .contains("spiffe://example.org/prod/"),
        "{fetch}"
    );
    assert!(attr(fetch, "process.pid").as_i64().is_some(), "{fetch}");
    let sign = all
        .iter()
        .find(|s| s["name"] == "tessera.svid.sign")
        .unwrap();
    assert!(
        attr(sign, "tessera.svid.signed").as_i64().unwrap() >= 1,
        "{sign}"
    );

    // Nothing secret in any span: not the token, not the client secret, no JWT, no key.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains(&token), "a span holds the access token");
    assert!(!text.contains(&secret), "a span holds the client secret");
    assert!(!text.contains("eyJ"), "a span holds a JOSE object");
    assert!(!text.contains("PRIVATE KEY"), "a span holds a key");

    // JSON logs carry the trace id of the span they were written in.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let lost = proxy(
        &[
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &dead,
            "--target-id",
            BACKEND,
            "--log-format",
            "json",
        ],
        &socket,
        FRONTEND,
    );
    let (lost_addr, _) = addrs(&lost);
    let lost_trace = hex(16);
    let r = http
        .get(format!("http://{lost_addr}/api/items"))
        .header("traceparent", format!("00-{lost_trace}-{}-01", hex(8)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lost
        .stderr()
        .contains(&format!("\"trace_id\":\"{lost_trace}\""))
    {
        assert!(
            Instant::now() < deadline,
            "no log line with the trace id: {}",
            lost.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((inbound, outbound, lost, otlp));
}
