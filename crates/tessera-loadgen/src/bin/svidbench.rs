//! Benchmarks of the identity path, for `bench/run`:
//!
//! - `sign`: X.509-SVID signing from CSRs through a real server's agent API (mTLS as a joined
//!   agent), in batches, closed loop;
//! - `cfssl`: the same against `cfssl serve` (one CSR per request, its only form);
//! - `workload`: Workload API latency from a warm agent (FetchJWTSVID, first FetchX509SVID
//!   message);
//! - `x509`: from inside a cgroup given (a container's), the first FetchX509SVID message on a new
//!   connection (the caller's first attestation) and then the latency of further ones;
//! - `fetch-loop`: fetches in a loop for a while and counts failures (run during rotations).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark driver: a failure should stop it loudly"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tessera_agent::proto::{JwtsvidRequest, X509svidRequest};
use tessera_agent::upstream::{resolve_server, Identity, Upstream};
use tessera_agent::workload::{connect, request};
use tessera_core::agent_api::{SignItem, SignRequest};
use tessera_core::SpiffeId;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.parse().unwrap())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sign") => sign(&args).await,
        Some("cfssl") => cfssl(&args).await,
        Some("workload") => workload(&args).await,
        Some("x509") => x509(&args).await,
        Some("fetch-loop") => fetch_loop(&args).await,
        Some("watch") => watch(&args).await,
        _ => {
            eprintln!("usage: tessera-svidbench sign|cfssl|workload|fetch-loop ...");
            std::process::exit(2);
        }
    }
}

/// `sign --server URL --join-token T --id SPIFFE_ID [--batch 200] [--concurrency 4] [--seconds 10]`
async fn sign(args: &[String]) {
    let server = arg(args, "--server").unwrap();
    let token = arg(args, "--join-token").unwrap();
    let id = SpiffeId::parse(&arg(args, "--id").unwrap()).unwrap();
    let batch = num(args, "--batch", 200) as usize;
    let conc = num(args, "--concurrency", 4);
    let secs = num(args, "--seconds", 10);
    let (base, roots) = resolve_server(&server, None).await.unwrap();
    let up = Upstream::new(base, roots).unwrap();
    let (key, csr) = tessera_ca::new_key_and_bare_csr().unwrap();
    let svid = up.join(&token, &csr).await.unwrap();
    up.set_identity(&Identity { key, svid }).unwrap();
    let up = Arc::new(up);
    // CSRs made once; the server signs each afresh.
    let csrs: Vec<SignItem> = (0..batch)
        .map(|_| SignItem {
            spiffe_id: id.clone(),
            csr: STANDARD.encode(tessera_ca::new_key_and_csr(&id).unwrap().1),
        })
        .collect();
    let req = Arc::new(SignRequest { csrs });
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Warm up.
    up.sign(&req).await.unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (up, req, done, failed) = (up.clone(), req.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match up.sign(&req).await {
                    Ok(r) => {
                        let ok = r.svids.iter().filter(|s| s.error.is_none()).count() as u64;
                        done.fetch_add(ok, Ordering::Relaxed);
                        failed.fetch_add(r.svids.len() as u64 - ok, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(req.csrs.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"signed\": {n}, \"failed\": {}, \"seconds\": {el:.3}, \"per_second\": {:.0}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / el
    );
}

/// `cfssl --url http://127.0.0.1:8888 [--concurrency 16] [--seconds 10]`
async fn cfssl(args: &[String]) {
    let url = format!("{}/api/v1/cfssl/sign", arg(args, "--url").unwrap());
    let conc = num(args, "--concurrency", 16);
    let secs = num(args, "--seconds", 10);
    let id = SpiffeId::parse("spiffe://example.org/bench").unwrap();
    let csr = tessera_ca::new_key_and_csr(&id).unwrap().1;
    let b64 = STANDARD.encode(&csr);
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    );
    let body = serde_json::json!({"certificate_request": pem}).to_string();
    let http = reqwest::Client::new();
    let first: serde_json::Value = http
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["success"], true, "{first}");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, url, body, done, failed) = (
            http.clone(),
            url.clone(),
            body.clone(),
            done.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match http.post(&url).body(body.clone()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"signed\": {n}, \"failed\": {}, \"seconds\": {el:.3}, \"per_second\": {:.0}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / el
    );
}

/// `workload --socket PATH [--iterations 5000]`: FetchJWTSVID and the first FetchX509SVID
/// message on one warm connection, beside the same calls to a floor in the same run: a Workload
/// API server in this process, on a unix socket, with the same gRPC stack, that answers at once
/// with the agent's own answers (no attestation, no state, no signing). The two are timed in
/// alternating rounds, so a slow moment of the machine falls on both.
async fn workload(args: &[String]) {
    let socket = arg(args, "--socket").unwrap();
    let n = num(args, "--iterations", 5000) as usize;
    let mut client = connect(std::path::Path::new(&socket)).await.unwrap();
    let jwt_req = || {
        request(JwtsvidRequest {
            audience: vec!["spiffe://example.org/bench-target".into()],
            spiffe_id: String::new(),
        })
    };
    // Warm: the first JWT-SVID for an audience comes from the server.
    let jwt_answer = client.fetch_jwtsvid(jwt_req()).await.unwrap().into_inner();
    let x509_answer = client
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("svidbench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let floor_socket = dir.join("floor.sock");
    floor::serve(&floor_socket, jwt_answer, x509_answer);
    let mut floor_client = connect(&floor_socket).await.unwrap();
    let (mut jwt, mut x509, mut fjwt, mut fx509) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let rounds = 10;
    for _ in 0..rounds {
        for (c, jwt, x509) in [
            (&mut floor_client, &mut fjwt, &mut fx509),
            (&mut client, &mut jwt, &mut x509),
        ] {
            for _ in 0..n / rounds {
                let t = Instant::now();
                c.fetch_jwtsvid(jwt_req()).await.unwrap();
                jwt.push(t.elapsed());
            }
            for _ in 0..n / rounds {
                let t = Instant::now();
                let mut s = c
                    .fetch_x509svid(request(X509svidRequest {}))
                    .await
                    .unwrap()
                    .into_inner();
                let m = s.message().await.unwrap().unwrap();
                x509.push(t.elapsed());
                assert!(!m.svids.is_empty());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for v in [&mut jwt, &mut x509, &mut fjwt, &mut fx509] {
        v.sort();
    }
    println!(
        "{{\"jwt_p50_us\": {:.0}, \"jwt_p99_us\": {:.0}, \"x509_p50_us\": {:.0}, \"x509_p99_us\": {:.0}, \"floor_jwt_p50_us\": {:.0}, \"floor_jwt_p99_us\": {:.0}, \"floor_x509_p50_us\": {:.0}, \"floor_x509_p99_us\": {:.0}, \"iterations\": {}}}",
        pct(&jwt, 0.5),
        pct(&jwt, 0.99),
        pct(&x509, 0.5),
        pct(&x509, 0.99),
        pct(&fjwt, 0.5),
        pct(&fjwt, 0.99),
        pct(&fx509, 0.5),
        pct(&fx509, 0.99),
        jwt.len()
    );
}

/// The floor of a Workload API call on this machine now: the agent's own answers, given back at
/// once by the same gRPC stack.
mod floor {
    use std::pin::Pin;

    use tessera_agent::proto::spiffe_workload_api_server::{
        SpiffeWorkloadApi, SpiffeWorkloadApiServer,
    };
    use tessera_agent::proto::{
        JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse,
        ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
        X509svidRequest, X509svidResponse,
    };
    use tonic::{Request, Response, Status};

    type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

    struct Floor {
        jwt: JwtsvidResponse,
        x509: X509svidResponse,
    }

    #[tonic::async_trait]
    impl SpiffeWorkloadApi for Floor {
        type FetchX509SVIDStream = Stream<X509svidResponse>;
        type FetchX509BundlesStream = Stream<X509BundlesResponse>;
        type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;

        async fn fetch_x509svid(
            &self,
            _: Request<X509svidRequest>,
        ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
            let first = futures_util::stream::iter([Ok(self.x509.clone())]);
            Ok(Response::new(Box::pin(futures_util::StreamExt::chain(
                first,
                futures_util::stream::pending(),
            ))))
        }
        async fn fetch_x509_bundles(
            &self,
            _: Request<X509BundlesRequest>,
        ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
            Err(Status::unimplemented("floor"))
        }
        async fn fetch_jwtsvid(
            &self,
            _: Request<JwtsvidRequest>,
        ) -> Result<Response<JwtsvidResponse>, Status> {
            Ok(Response::new(self.jwt.clone()))
        }
        async fn fetch_jwt_bundles(
            &self,
            _: Request<JwtBundlesRequest>,
        ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
            Err(Status::unimplemented("floor"))
        }
        async fn validate_jwtsvid(
            &self,
            _: Request<ValidateJwtsvidRequest>,
        ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
            Err(Status::unimplemented("floor"))
        }
    }

    pub(crate) fn serve(path: &std::path::Path, jwt: JwtsvidResponse, x509: X509svidResponse) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let next = l.accept().await.map(|(s, _)| s);
            Some((next, l))
        });
        let svc = SpiffeWorkloadApiServer::new(Floor { jwt, x509 });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming),
        );
    }
}

/// `x509 --socket PATH [--cgroup DIR] [--iterations N]`: moves itself into cgroup DIR first (a
/// container's, so the agent attests it as that container), then times the first FetchX509SVID
/// message of a new connection, and N more on it.
async fn x509(args: &[String]) {
    let socket = arg(args, "--socket").unwrap();
    if let Some(dir) = arg(args, "--cgroup") {
        std::fs::write(
            std::path::Path::new(&dir).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .unwrap();
    }
    let n = num(args, "--iterations", 0) as usize;
    let fetch =
        |client: &mut tessera_agent::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<
            tonic::transport::Channel,
        >| {
            let mut client = client.clone();
            async move {
                let mut s = client
                    .fetch_x509svid(request(X509svidRequest {}))
                    .await
                    .unwrap()
                    .into_inner();
                let m = s.message().await.unwrap().unwrap();
                assert!(!m.svids.is_empty());
            }
        };
    let t = Instant::now();
    let mut client = connect(std::path::Path::new(&socket)).await.unwrap();
    fetch(&mut client).await;
    let first = t.elapsed();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        fetch(&mut client).await;
        times.push(t.elapsed());
    }
    times.sort();
    let (p50, p99) = if times.is_empty() {
        (0.0, 0.0)
    } else {
        (pct(&times, 0.5), pct(&times, 0.99))
    };
    println!(
        "{{\"first_us\": {:.0}, \"p50_us\": {p50:.0}, \"p99_us\": {p99:.0}, \"iterations\": {n}}}",
        first.as_secs_f64() * 1e6
    );
}

/// `fetch-loop --socket PATH --seconds S`: fetches X.509- and JWT-SVIDs, each on a fresh
/// connection, and counts failures.
async fn fetch_loop(args: &[String]) {
    let socket = arg(args, "--socket").unwrap();
    let secs = num(args, "--seconds", 30);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut ok, mut failed, mut serials) = (0u64, 0u64, std::collections::HashSet::new());
    while Instant::now() < deadline {
        let res = async {
            let mut c = connect(std::path::Path::new(&socket))
                .await
                .map_err(|e| e.to_string())?;
            let mut s = c
                .fetch_x509svid(request(X509svidRequest {}))
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let m = s
                .message()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("stream ended")?;
            let leaf = m.svids.first().ok_or("no SVID")?;
            let (_, not_after) = tessera_ca::validity(&leaf.x509_svid).ok_or("bad cert")?;
            if not_after <= tessera_core::now_unix() {
                return Err("an expired SVID was served".to_owned());
            }
            c.fetch_jwtsvid(request(JwtsvidRequest {
                audience: vec!["spiffe://example.org/bench-target".into()],
                spiffe_id: String::new(),
            }))
            .await
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(leaf.x509_svid.clone())
        }
        .await;
        match res {
            Ok(cert) => {
                ok += 1;
                serials.insert(cert);
            }
            Err(e) => {
                failed += 1;
                eprintln!("fetch failed: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{{\"fetches\": {ok}, \"failed\": {failed}, \"distinct_svids\": {}}}",
        serials.len()
    );
}

/// `watch --socket PATH --expect SPIFFE_ID`: prints `ready`, then the Unix time (float) at which
/// an X.509-SVID for the expected ID first arrives on the stream.
async fn watch(args: &[String]) {
    let socket = arg(args, "--socket").unwrap();
    let expect = arg(args, "--expect").unwrap();
    let mut c = connect(std::path::Path::new(&socket)).await.unwrap();
    let mut s = c
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert!(first.svids.iter().all(|x| x.spiffe_id != expect));
    println!("ready");
    while let Some(m) = s.message().await.unwrap() {
        if m.svids.iter().any(|x| x.spiffe_id == expect) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            println!("{now:.6}");
            return;
        }
    }
}
