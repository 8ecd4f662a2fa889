//! Attestation beyond unix users, against the real kernel: a process placed in a systemd unit's
//! cgroup (made here, on the cgroup v2 hierarchy) gets the SVID registered for that unit through
//! the agent's Workload API, read by py-spiffe; the same client outside it gets none. A process
//! placed in a container's cgroup (`docker-<id>.scope`) is attested by what the container
//! runtime's API says of that container: here a Docker Engine API played by the test on a unix
//! socket (the real runtime is tested with Podman where it can run).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tessera_testkit::spawn_ready;

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from this process's mount table.
fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount))
    })
}

/// A cgroup made for the test, removed when dropped (once its processes are gone).
struct TestCgroup(Vec<PathBuf>);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The SPIFFE IDs the Workload API at `socket` gives a python3 process started in `cgroup`
/// (or where this test runs, with `None`), or the error it got.
fn python_ids(socket: &Path, cgroup: Option<&Path>) -> Result<Vec<String>, String> {
    let script = format!(
        "from spiffe import WorkloadApiClient\n\
         with WorkloadApiClient(socket_path='unix://{}') as c:\n    \
         print(' '.join(sorted(str(s.spiffe_id) for s in c.fetch_x509_context().x509_svids)))\n",
        socket.display()
    );
    let mut cmd = Command::new("sh");
    match cgroup {
        // The shell moves itself into the cgroup, then becomes python.
        Some(dir) => cmd.arg("-c").arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec python3 -c \"$0\"",
            dir.display()
        )),
        None => cmd.arg("-c").arg("exec python3 -c \"$0\""),
    };
    let o = cmd.arg(script).output().unwrap();
    if o.status.success() {
        Ok(stdout(&o).split_whitespace().map(str::to_owned).collect())
    } else {
        Err(stderr(&o))
    }
}

#[test]
fn systemd_unit_attestation_from_a_real_cgroup() {
    let root = cgroup2_root().expect("no cgroup v2 hierarchy is mounted");
    let unit = format!("tessera-test-{}.service", std::process::id());
    let slice = root.join("tessera-test.slice");
    let dir = slice.join(&unit);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        // Making a cgroup needs root (or a delegated subtree); say so rather than pass.
        eprintln!(
            "skipped: cannot make a cgroup under `{}`: {e}",
            root.display()
        );
        return;
    }
    let _cleanup = TestCgroup(vec![slice, dir.clone()]);

    let s = server(Backend::Sqlite, &[]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let mesh = format!(
        r#"
[[workload]]
id = "spiffe://example.org/prod/unit"
owner = "team-a"
purpose = "Runs as the systemd unit"
selectors = ["systemd:unit:{unit}"]

[[workload]]
id = "spiffe://example.org/prod/slice"
owner = "team-a"
purpose = "Anything in the test slice"
selectors = ["systemd:slice:tessera-test.slice"]

[[workload]]
id = "spiffe://example.org/prod/other-unit"
owner = "team-b"
purpose = "Another unit"
selectors = ["systemd:unit:nginx.service"]
"#
    );
    apply_ok(&s, files.path(), "mesh.toml", &mesh, &[]);
    let (_agent, socket) = join_agent(&s, files.path(), "agent");

    let inside = python_ids(&socket, Some(&dir)).unwrap();
    assert_eq!(
        inside,
        [
            "spiffe://example.org/prod/slice",
            "spiffe://example.org/prod/unit"
        ],
        "the unit's process gets the unit's and the slice's SVIDs, no other"
    );
    let outside = python_ids(&socket, None).unwrap_err();
    assert!(outside.contains("no identity"), "{outside}");
}

/// What the played runtime answers for the container: its inspect document, a status, or a
/// delay first.
#[derive(Clone)]
struct Played {
    status: u16,
    body: String,
    delay: std::time::Duration,
}

async fn played_runtime(socket: &Path, answer: std::sync::Arc<std::sync::Mutex<Played>>) {
    let l = tokio::net::UnixListener::bind(socket).unwrap();
    let app = axum::Router::new().fallback(move || {
        let a = answer.lock().unwrap().clone();
        async move {
            tokio::time::sleep(a.delay).await;
            (
                axum::http::StatusCode::from_u16(a.status).unwrap(),
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                a.body,
            )
        }
    });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
}

fn inspect(id: &str, running: bool) -> String {
    serde_json::json!({
        "Id": id, "Name": "/orders-1",
        "Image": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "State": {"Running": running},
        "Config": {"Image": "localhost/orders:1", "Labels": {"team": "orders"},
                   "Env": ["ROLE=api", "SECRET=hunter2"]}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_attestation_reads_the_runtime_not_the_process() {
    let root = cgroup2_root().expect("no cgroup v2 hierarchy is mounted");
    let id: String = format!("{:064x}", u128::from(std::process::id()) * 7919 + 12345);
    let slice = root.join("tessera-test-containers.slice");
    let dir = slice.join(format!("docker-{id}.scope"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "skipped: cannot make a cgroup under `{}`: {e}",
            root.display()
        );
        return;
    }
    let _cleanup = TestCgroup(vec![slice, dir.clone()]);
    let files = tempfile::tempdir().unwrap();
    let runtime_socket = files.path().join("docker.sock");
    let answer = std::sync::Arc::new(std::sync::Mutex::new(Played {
        status: 200,
        body: inspect(&id, true),
        delay: std::time::Duration::ZERO,
    }));
    played_runtime(&runtime_socket, answer.clone()).await;

    let s = server(Backend::Sqlite, &[]).unwrap();
    let uid = uid();
    let mesh = format!(
        r#"
[[workload]]
id = "spiffe://example.org/prod/orders"
owner = "team-orders"
purpose = "The orders container"
selectors = ["container:image:localhost/orders:1", "container:label:team:orders", "container:env:ROLE:api"]

[[workload]]
id = "spiffe://example.org/prod/named-other"
owner = "team-x"
purpose = "Another container's name"
selectors = ["container:name:other"]

[[workload]]
id = "spiffe://example.org/prod/secret-reader"
owner = "team-x"
purpose = "A variable the agent is not told to read"
selectors = ["container:env:SECRET:hunter2"]

[[workload]]
id = "spiffe://example.org/prod/by-uid"
owner = "team-x"
purpose = "Anything of this unix user"
selectors = ["unix:uid:{uid}"]
"#
    );
    apply_ok(&s, files.path(), "mesh.toml", &mesh, &[]);
    let (_agent, socket) = join_agent_with(
        &s,
        files.path(),
        "agent",
        &[
            "--container-runtime",
            runtime_socket.to_str().unwrap(),
            "--container-env",
            "ROLE",
        ],
    );
    let inside = |socket: PathBuf, dir: PathBuf| {
        tokio::task::spawn_blocking(move || python_ids(&socket, Some(&dir)))
    };

    let got = inside(socket.clone(), dir.clone()).await.unwrap().unwrap();
    assert_eq!(
        got,
        ["spiffe://example.org/prod/by-uid", "spiffe://example.org/prod/orders"],
        "the runtime's image, label and listed variable; not an unlisted variable, not another name"
    );
    let outside = {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || python_ids(&socket, None))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(
        outside,
        ["spiffe://example.org/prod/by-uid"],
        "no container's identity outside it"
    );

    // The runtime failing in any way refuses the caller outright: not even its unix identity.
    // (A good answer is cached for 10 s, which the first case waits out; refusals are not.)
    let cases = [
        (
            Played {
                status: 500,
                body: "{}".into(),
                delay: std::time::Duration::ZERO,
            },
            "answered 500",
        ),
        (
            Played {
                status: 200,
                body: "<html>".into(),
                delay: std::time::Duration::ZERO,
            },
            "not usable",
        ),
        (
            Played {
                status: 200,
                body: inspect(&"b".repeat(64), true),
                delay: std::time::Duration::ZERO,
            },
            "another container",
        ),
        (
            Played {
                status: 200,
                body: inspect(&id, false),
                delay: std::time::Duration::ZERO,
            },
            "not running",
        ),
        (
            Played {
                status: 200,
                body: inspect(&id, true),
                delay: std::time::Duration::from_secs(5),
            },
            "did not answer",
        ),
    ];
    for (n, (played, why)) in cases.into_iter().enumerate() {
        *answer.lock().unwrap() = played;
        if n == 0 {
            tokio::time::sleep(std::time::Duration::from_secs(11)).await;
        }
        let e = inside(socket.clone(), dir.clone())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            e.contains("attestation failed") && e.contains(why),
            "{why}: {e}"
        );
    }
}

/// `podman` as this machine runs it (runc; cgroupfs, as its hybrid cgroups require).
fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(["--runtime", "runc", "--cgroup-manager=cgroupfs"])
        .args(args)
        .output()
        .unwrap()
}

/// A child process killed when dropped (a failing test leaves no service behind).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An image made here with `podman import`: busybox and the `tessera` binary with the libraries
/// it loads, tagged `name`.
fn import_image(dir: &Path, name: &str) {
    let root = dir.join(format!("rootfs-{}", name.replace(['/', ':'], "-")));
    for d in ["bin", "lib/x86_64-linux-gnu", "lib64", "run/spiffe", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::copy(BIN, root.join("bin/tessera")).unwrap();
    let ldd = Command::new("ldd").arg(BIN).output().unwrap();
    for lib in stdout(&ldd)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, dest).unwrap();
    }
    let tar = dir.join(format!("{}.tar", name.replace(['/', ':'], "-")));
    let o = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = podman(&["import", tar.to_str().unwrap(), name]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `tessera svid fetch` in a new container of `image` with the agent's socket folder mounted:
/// the SPIFFE IDs it got, or its error.
fn in_container(image: &str, socket: &Path, extra: &[&str]) -> Result<String, String> {
    // The socket alone is mounted: nothing else of the agent's is the container's to see.
    let mount = format!("{}:/run/spiffe/agent.sock", socket.display());
    let mut args = vec![
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        &mount,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        image,
        "/bin/tessera",
        "svid",
        "fetch",
        "--socket",
        "unix:///run/spiffe/agent.sock",
    ]);
    let o = podman(&args);
    if o.status.success() {
        Ok(stdout(&o))
    } else {
        Err(format!("{}{}", stdout(&o), stderr(&o)))
    }
}

/// Two containers of different images on one host get different SVIDs through the mounted
/// socket, labels come from the runtime (Podman's Docker-compatible API), a process outside any
/// container gets none of theirs, and a container started after a registration change gets its
/// new identity.
#[test]
fn podman_containers_get_their_own_identities() {
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman is not installed (.ci/run installs it)");
    }
    let files = tempfile::tempdir().unwrap();
    import_image(files.path(), "localhost/tessera-orders:1");
    import_image(files.path(), "localhost/tessera-billing:1");

    // Podman's API service on a socket of its own.
    let api = files.path().join("podman.sock");
    let _service = Killed(
        Command::new("podman")
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager=cgroupfs",
                "system",
                "service",
                "--time",
                "0",
            ])
            .arg(format!("unix://{}", api.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !api.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "podman's API socket never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let s = server(Backend::Sqlite, &[]).unwrap();
    let named = format!("tessera-named-{}", std::process::id());
    let mesh = |orders_extra: &str| {
        format!(
            r#"
[[workload]]
id = "spiffe://example.org/prod/orders"
owner = "team-orders"
purpose = "The orders image"
selectors = ["container:image:localhost/tessera-orders:1"{orders_extra}]

[[workload]]
id = "spiffe://example.org/prod/billing"
owner = "team-billing"
purpose = "The billing image, labelled by its deployer"
selectors = ["container:image:localhost/tessera-billing:1", "container:label:team:billing"]

[[workload]]
id = "spiffe://example.org/prod/named"
owner = "team-orders"
purpose = "The container of this name, while it has it"
selectors = ["container:name:{named}"]
"#
        )
    };
    let apply = |text: &str| {
        apply_ok(&s, files.path(), "mesh.toml", text, &[]);
    };
    apply(&mesh(""));
    let (_agent, socket) = join_agent_with(
        &s,
        files.path(),
        "agent",
        &["--container-runtime", api.to_str().unwrap()],
    );

    let orders = in_container("localhost/tessera-orders:1", &socket, &[]).unwrap();
    assert!(
        orders.contains("spiffe://example.org/prod/orders") && !orders.contains("billing"),
        "{orders}"
    );
    let billing = in_container(
        "localhost/tessera-billing:1",
        &socket,
        &["--label", "team=billing"],
    )
    .unwrap();
    assert!(
        billing.contains("spiffe://example.org/prod/billing") && !billing.contains("orders"),
        "{billing}"
    );
    // The label is the runtime's: the same image without it gets nothing.
    let unlabelled = in_container("localhost/tessera-billing:1", &socket, &[]).unwrap_err();
    assert!(unlabelled.contains("no identity"), "{unlabelled}");
    // Outside any container: none of theirs.
    let o = Command::new(BIN)
        .args(["svid", "fetch", "--socket"])
        .arg(format!("unix://{}", socket.display()))
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("no identity"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );

    // A registration change reaches the next container started.
    apply(&mesh(", \"container:label:tier:gold\""));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let plain = in_container("localhost/tessera-orders:1", &socket, &[]).unwrap_err();
    assert!(plain.contains("no identity"), "{plain}");
    let gold = in_container(
        "localhost/tessera-orders:1",
        &socket,
        &["--label", "tier=gold"],
    )
    .unwrap();
    assert!(gold.contains("spiffe://example.org/prod/orders"), "{gold}");

    // A renamed container loses the old name's identity at once: the runtime's `rename` event
    // drops its cached metadata (which would otherwise be reused for 10 s).
    let mount = format!("{}:/run/spiffe/agent.sock", socket.display());
    let o = podman(&[
        "run",
        "-d",
        "--name",
        &named,
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "-v",
        &mount,
        "localhost/tessera-orders:1",
        "/bin/busybox",
        "sleep",
        "300",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let exec_fetch = |name: &str| {
        podman(&[
            "exec",
            name,
            "/bin/tessera",
            "svid",
            "fetch",
            "--socket",
            "unix:///run/spiffe/agent.sock",
        ])
    };
    let before = exec_fetch(&named);
    assert!(
        stdout(&before).contains("prod/named"),
        "{}{}",
        stdout(&before),
        stderr(&before)
    );
    let renamed = format!("{named}-renamed");
    let o = podman(&["rename", &named, &renamed]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = exec_fetch(&renamed);
    let _ = podman(&["rm", "-f", "-t", "0", &renamed]);
    // (Orders now also wants a label this container lacks: nothing else is its.)
    assert!(
        !after.status.success() && stderr(&after).contains("no identity"),
        "{}{}",
        stdout(&after),
        stderr(&after)
    );

    for image in ["localhost/tessera-orders:1", "localhost/tessera-billing:1"] {
        let _ = podman(&["rmi", "-f", image]);
    }
}

/// The cluster's issuer and kubelet, played by `interop/k8s_cluster.py`.
const K8S_CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/k8s_cluster.py");

/// A kubelet `/pods` answer kept as a fixture: hand-written in the shape of Kubernetes 1.30's,
/// not captured from a live kubelet (no cluster runs here).
const KUBELET_PODS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tessera-agent/tests/fixtures/kubelet-pods.json"
);

/// The fixture's pod (as a systemd slice writes its UID) and two of its containers.
const POD: &str = "6b3a1c2e_9f4d_4e8a_b1c7_2d5e8f0a3b6c";
const ORDERS: &str = "a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8";
const PROXY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// Kubernetes: an agent attested by its node's projected service-account token (no join token),
/// verified by the authority against the cluster's OIDC discovery and JWKS; tokens refused for
/// each reason; processes placed in a pod's containers' cgroups (made here, the layout of
/// containerd under the kubelet's systemd driver) attested by the kubelet's pod list over
/// authenticated HTTPS; node selectors deciding which agents serve a workload; `agent attest`.
#[test]
fn kubernetes_node_and_pod_attestation() {
    let root = cgroup2_root().expect("no cgroup v2 hierarchy is mounted");
    let base = root.join("tessera-test-k8s.slice");
    let kubepods = base.join("kubepods.slice");
    let qos = kubepods.join("kubepods-besteffort.slice");
    let pod = qos.join(format!("kubepods-besteffort-pod{POD}.slice"));
    let orders = pod.join(format!("cri-containerd-{ORDERS}.scope"));
    let proxy = pod.join(format!("cri-containerd-{PROXY}.scope"));
    for d in [&orders, &proxy] {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!(
                "skipped: cannot make a cgroup under `{}`: {e}",
                root.display()
            );
            return;
        }
    }
    let _cleanup = TestCgroup(vec![
        base,
        kubepods,
        qos,
        pod,
        orders.clone(),
        proxy.clone(),
    ]);

    let s = server(Backend::Sqlite, &[]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut child = Command::new("python3")
        .arg(K8S_CLUSTER)
        .arg(w)
        .arg(&s.url)
        .arg(KUBELET_PODS)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _cluster = Killed(child);
    let urls: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("k8s_cluster.py: {e}: {line}"));
    let issuer = urls["issuer"].as_str().unwrap();
    let kubelet = urls["kubelet"].as_str().unwrap().to_owned();

    let mesh = format!(
        r#"
[[cluster]]
name = "prod"
trust_domain = "example.org"
issuer = "{issuer}"
private_network = true
service_accounts = ["tessera:tessera-agent"]

[[workload]]
id = "spiffe://example.org/prod/orders"
owner = "team-orders"
purpose = "The orders container, only from prod's node-a"
selectors = ["k8s:ns:shop", "k8s:sa:orders", "k8s:container_name:orders"]
node_selectors = ["k8s:cluster:prod", "k8s:node_name:node-a"]

[[workload]]
id = "spiffe://example.org/prod/orders-proxy"
owner = "team-orders"
purpose = "The sidecar of orders pods"
selectors = ["k8s:container_name:proxy", "k8s:pod_label:app.kubernetes.io/name:orders"]

[[workload]]
id = "spiffe://example.org/prod/payments"
owner = "team-billing"
purpose = "Anything in billing"
selectors = ["k8s:ns:billing"]

[[workload]]
id = "spiffe://example.org/staging/orders"
owner = "team-orders"
purpose = "Orders, from staging's nodes only"
selectors = ["k8s:ns:shop"]
node_selectors = ["k8s:cluster:staging"]
"#
    );
    apply_ok(&s, w, "mesh.toml", &mesh, &[]);
    let file = |n: &str| w.join(n).to_str().unwrap().to_owned();

    for (token, why) in [
        ("wrong-audience", "not for this authority"),
        (
            "wrong-account",
            "service account `tessera:default` may not attest agents in cluster `prod`",
        ),
        ("expired", "not valid now"),
        ("no-node", "kubernetes.io.node.name"),
        ("forged", "signature does not verify"),
    ] {
        let (mut cmd, _) = agent_cmd(
            &s,
            w,
            &format!("bad-{token}"),
            &["--k8s-token-file", &file(&format!("{token}.jwt"))],
        );
        let o = cmd.output().unwrap();
        assert!(
            !o.status.success() && stderr(&o).contains(why),
            "{token}: {}",
            stderr(&o)
        );
    }

    let kubelet_args = [
        "--kubelet",
        kubelet.as_str(),
        "--kubelet-ca",
        &file("kubelet-ca.pem"),
        "--kubelet-token-file",
        &file("kubelet-token"),
    ]
    .map(str::to_owned);
    let kubelet_args: Vec<&str> = kubelet_args.iter().map(String::as_str).collect();
    let good = file("good.jwt");
    let (cmd, socket) = agent_cmd(
        &s,
        w,
        "node-a",
        &[
            &["--k8s-token-file", good.as_str()],
            kubelet_args.as_slice(),
        ]
        .concat(),
    );
    let agent = spawn_ready(cmd, "tessera: agent ready socket=");
    let o = tessera(&s.data, &["get", "agents", "--output", "json"]);
    let agents: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(agents[0]["id"], "k8s_prod_node-a", "{agents}");
    assert_eq!(
        agents[0]["selectors"],
        serde_json::json!([
            "k8s:cluster:prod",
            "k8s:agent_ns:tessera",
            "k8s:agent_sa:tessera-agent",
            "k8s:node_name:node-a"
        ])
    );

    assert_eq!(
        python_ids(&socket, Some(&orders)).unwrap(),
        ["spiffe://example.org/prod/orders"],
        "the kubelet's namespace, service account and container name; not staging's workload"
    );
    assert_eq!(
        python_ids(&socket, Some(&proxy)).unwrap(),
        ["spiffe://example.org/prod/orders-proxy"]
    );
    let outside = python_ids(&socket, None).unwrap_err();
    assert!(outside.contains("no identity"), "{outside}");

    // `agent attest --pid`: a process left in the orders container's cgroup.
    let sleeper = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec sleep 120",
            orders.display()
        ))
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let _sleeper = Killed(sleeper);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(ORDERS))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sleeper never entered its cgroup"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let data = file("node-a-data");
    let o = Command::new(BIN)
        .args([
            "agent", "attest", "--pid", &pid, "--data", &data, "--output", "json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let selectors = report["selectors"].as_array().unwrap();
    for want in [
        "k8s:ns:shop",
        "k8s:sa:orders",
        "k8s:pod_name:orders-7d9f8c6b5-x2k4q",
        "k8s:pod_label:app.kubernetes.io/name:orders",
        "k8s:container_name:orders",
        "k8s:container_image:registry.example/shop/orders:1.4.2",
        "k8s:node_name:node-a",
    ] {
        assert!(selectors.iter().any(|s| s == want), "{want}: {report}");
    }
    assert_eq!(
        report["matches"],
        serde_json::json!(["spiffe://example.org/prod/orders"])
    );
    assert!(
        report["near"].as_array().unwrap().iter().any(|n| {
            n["spiffe_id"] == "spiffe://example.org/prod/orders-proxy"
                && n["missing"] == serde_json::json!(["k8s:container_name:proxy"])
        }),
        "{report}"
    );
    let text = Command::new(BIN)
        .args(["agent", "attest", "--pid", &pid, "--data", &data])
        .output()
        .unwrap();
    assert!(
        stdout(&text).contains("matches:\n  spiffe://example.org/prod/orders\n"),
        "{}",
        stdout(&text)
    );
    let o = Command::new(BIN)
        .args(["agent", "attest", "--pid", "999999999", "--data", &data])
        .output()
        .unwrap();
    refused(&o, "is gone");
    // Another unix user cannot ask the agent (its data folder and socket are its own).
    if stdout(&Command::new("id").arg("-u").output().unwrap()).trim() == "0" {
        let o = Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                BIN,
            ])
            .args(["agent", "attest", "--pid", &pid, "--data", &data])
            .output()
            .unwrap();
        assert!(
            !o.status.success() && stdout(&o).is_empty(),
            "{}",
            stdout(&o)
        );
    }

    // A kubelet that fails refuses the caller outright (after the 2 s a good list is reused).
    std::fs::write(w.join("kubelet-mode"), "garbage").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let e = python_ids(&socket, Some(&orders)).unwrap_err();
    assert!(
        e.contains("attestation failed") && e.contains("not usable"),
        "{e}"
    );
    std::fs::write(w.join("kubelet-mode"), "unauthorized").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let e = python_ids(&socket, Some(&orders)).unwrap_err();
    assert!(e.contains("answered 401"), "{e}");
    std::fs::write(w.join("kubelet-mode"), "ok").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    // An agent joined by a join token reads the same kubelet but has no node selectors: it
    // serves the sidecar's identity, not the one meant for prod's node-a.
    let (_joined, joined) = join_agent_with(&s, w, "joined", &kubelet_args);
    assert!(python_ids(&joined, Some(&orders))
        .unwrap_err()
        .contains("no identity"));
    assert_eq!(
        python_ids(&joined, Some(&proxy)).unwrap(),
        ["spiffe://example.org/prod/orders-proxy"]
    );

    // Revoking the node's agent sticks: its token does not bring it back.
    drop(agent);
    let o = tessera(&s.data, &["revoke", "agent", "k8s_prod_node-a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut cmd, _) = agent_cmd(&s, w, "again", &["--k8s-token-file", good.as_str()]);
    let o = cmd.output().unwrap();
    assert!(stderr(&o).contains("has been revoked"), "{}", stderr(&o));
    // Another node of the cluster joins as its own agent.
    let node_b = file("node-b.jwt");
    let (cmd, _) = agent_cmd(&s, w, "node-b", &["--k8s-token-file", node_b.as_str()]);
    let _b = spawn_ready(cmd, "tessera: agent ready socket=");
    let o = tessera(&s.data, &["get", "agents"]);
    assert!(stdout(&o).contains("k8s_prod_node-b"), "{}", stdout(&o));

    // With TokenReview, the cluster's API server must confirm each token too: a token whose pod
    // was deleted is refused, though its signature and claims are fine.
    let reviewed = mesh.replace(
        "service_accounts = [\"tessera:tessera-agent\"]",
        &format!(
            "service_accounts = [\"tessera:tessera-agent\"]\ntoken_review = {{ url = \"{kubelet}\", ca_file = \"kubelet-ca.pem\", token_file = \"{}\" }}",
            file("reviewer-token")
        ),
    );
    let out = apply_ok(&s, w, "mesh.toml", &reviewed, &[]);
    assert!(out.contains("~ cluster prod"), "{out}");
    let node_c = file("node-c.jwt");
    let (cmd, _) = agent_cmd(&s, w, "node-c", &["--k8s-token-file", node_c.as_str()]);
    let _c = spawn_ready(cmd, "tessera: agent ready socket=");
    std::fs::write(w.join("deleted"), "node-b\n").unwrap();
    let (mut cmd, _) = agent_cmd(
        &s,
        w,
        "node-b-again",
        &["--k8s-token-file", node_b.as_str()],
    );
    let o = cmd.output().unwrap();
    assert!(
        !o.status.success()
            && stderr(&o).contains(
                "did not confirm the token (TokenReview): [invalid bearer token, pod not found]"
            ),
        "{}",
        stderr(&o)
    );

    // One cluster per issuer: a token names its cluster by its issuer.
    let twin = write(
        w,
        "twin.toml",
        &format!("[[cluster]]\nname = \"twin\"\ntrust_domain = \"example.org\"\nissuer = \"{issuer}\"\nservice_accounts = [\"a:b\"]\n"),
    );
    let o = tessera(&s.data, &["apply", "-f", twin.to_str().unwrap()]);
    refused(&o, "cluster `prod` already has issuer");

    // The shipped example applies as it is.
    let o = tessera(
        &s.data,
        &[
            "apply",
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/kubernetes/cluster.toml"
            ),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("+ cluster prod-eu"), "{}", stdout(&o));
}
