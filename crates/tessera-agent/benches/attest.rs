//! Workload attestation in process: a process's own selectors from `/proc`, its container's
//! metadata cached (among 1,000) and asked of a runtime for the first time, and a pod's found in
//! the kubelet's cached pod list. The runtime is a
//! Docker Engine API played on a unix socket here; with `TESSERA_BENCH_RUNTIME=SOCKET` and
//! `TESSERA_BENCH_CONTAINER=ID` a real one (Podman's, Docker's) is asked as well.
//!
//! `cargo bench -p tessera-agent --bench attest`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a failure should stop it loudly"
)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use tessera_agent::attest;
use tessera_agent::cgroup::{ContainerId, Placement};
use tessera_agent::runtime::Runtime;

fn id(text: &str) -> ContainerId {
    Placement::parse(&format!("0::/docker/{text}\n"))
        .unwrap()
        .container
        .unwrap()
        .1
}

fn played_runtime(rt: &tokio::runtime::Runtime, socket: PathBuf) {
    rt.block_on(async {
        let l = tokio::net::UnixListener::bind(&socket).unwrap();
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            let id = uri.path().split('/').nth(2).unwrap_or_default().to_owned();
            let doc = serde_json::json!({
                "Id": id, "Name": "/bench", "Image": format!("sha256:{}", "1".repeat(64)),
                "State": {"Running": true},
                "Config": {"Image": "localhost/bench:1", "Labels": {"team": "bench"}, "Env": []}
            });
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                doc.to_string(),
            )
        });
        tokio::spawn(async move { axum::serve(l, app).await });
    });
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    played_runtime(&rt, socket.clone());
    let runtime = Runtime::new(socket, vec![]);
    rt.block_on(async {
        for i in 0..1000u64 {
            runtime.inspect(&id(&format!("{i:064x}"))).await.unwrap();
        }
    });

    let mut g = c.benchmark_group("attestation");
    let me = attest::peer_of(i32::try_from(std::process::id()).unwrap()).unwrap();
    let digests = attest::DigestCache::default();
    g.bench_function("process: /proc, cgroup, user and group names", |b| {
        b.iter(|| attest::attest(me, &digests, false).unwrap())
    });
    // What every Workload API request pays to close the exec-after-connect race: a walk of every
    // process's descriptor table, here for a socket nobody holds.
    g.bench_function("foreign-holder scan: every descriptor table", |b| {
        b.iter(|| tessera_agent::sockets::holders_but(u64::MAX, None))
    });
    let cached = id(&format!("{:064x}", 500));
    g.bench_function("container metadata: cached, 1,000 cached", |b| {
        b.iter(|| rt.block_on(runtime.inspect(&cached)).unwrap())
    });
    let mut next = 1_000_000u64;
    g.bench_function("container metadata: first, played Docker API", |b| {
        b.iter(|| {
            next += 1;
            rt.block_on(runtime.inspect(&id(&format!("{next:064x}"))))
                .unwrap()
        })
    });
    let pods =
        tessera_agent::kubelet::Pods::parse(include_bytes!("../tests/fixtures/kubelet-pods.json"))
            .unwrap();
    let placed = Placement::parse("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6b3a1c2e_9f4d_4e8a_b1c7_2d5e8f0a3b6c.slice/cri-containerd-a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8.scope\n").unwrap();
    let (uid, cid) = (placed.pod.unwrap(), placed.container.unwrap().1);
    g.bench_function("pod metadata: from the kubelet's cached list", |b| {
        b.iter(|| pods.container(&uid, &cid).unwrap())
    });
    if let (Ok(s), Ok(cid)) = (
        std::env::var("TESSERA_BENCH_RUNTIME"),
        std::env::var("TESSERA_BENCH_CONTAINER"),
    ) {
        let real = Runtime::new(PathBuf::from(s), vec![]);
        let cid = id(&cid);
        g.bench_function("container metadata: first, the real runtime", |b| {
            b.iter(|| {
                real.forget(cid.as_str());
                rt.block_on(real.inspect(&cid)).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(attestation, benches);
criterion_main!(attestation);
