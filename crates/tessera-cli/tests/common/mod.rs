//! Helpers for tests that run the real `tessera` binary.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::{spawn_ready, Proc};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// Variables for every process the helpers start (the environment itself is never mutated).
static CHILD_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Sets [`CHILD_ENV`] once, before the first child is started.
pub(crate) fn set_child_env(vars: Vec<(String, String)>) {
    assert!(
        CHILD_ENV.set(vars).is_ok(),
        "the child environment is set once"
    );
}

fn child_env() -> impl Iterator<Item = (&'static str, &'static str)> {
    CHILD_ENV
        .get()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

pub(crate) struct Server {
    pub proc: Proc,
    pub url: String,
    pub data: PathBuf,
    /// The PostgreSQL URL, when the server runs on PostgreSQL.
    pub db: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Runs SQL directly against the server's storage, beside the running server: for tests
    /// that break storage on purpose.
    pub(crate) fn danger_sql(&self, sql: &str) {
        let out = match &self.db {
            Some(url) => Command::new("psql").args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql]).output().unwrap(),
            None => Command::new("python3")
                .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()"])
                .arg(self.data.join("tessera.db"))
                .arg(sql)
                .output()
                .unwrap(),
        };
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Gives a second server on the same database the first one's key-encryption key (0600), so
/// that it opens what the first sealed.
pub(crate) fn share_kek(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from.join("kek"), to.join("kek")).unwrap();
    std::fs::set_permissions(to.join("kek"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts `tessera server --dev` on a free loopback port. `None` when PostgreSQL was opted out.
pub(crate) fn server(backend: Backend, extra: &[&str]) -> Option<Server> {
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(tessera_testkit::postgres_database()?),
    };
    let dir = tessera_testkit::data_dir();
    let data = dir.path().to_path_buf();
    let mut s = server_on(&data, db.as_deref(), extra);
    s._dir = Some(dir);
    s.db = db;
    Some(s)
}

pub(crate) fn server_on(data: &Path, db: Option<&str>, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--poll-interval", "200ms"];
    args.extend_from_slice(extra);
    server_with(data, db, &args)
}

/// `tessera server --dev` in `data` (on `db` when given) with exactly `args`.
pub(crate) fn server_with(data: &Path, db: Option<&str>, extra: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--dev", "--data"]).arg(data);
    if let Some(db) = db {
        cmd.args(["--database-url", db]);
    }
    cmd.args(extra);
    cmd.env("TESSERA_LOG", "warn").envs(child_env());
    let proc = spawn_ready(cmd, "tessera: ready url=");
    let url = proc.ready.clone();
    Server {
        proc,
        url,
        data: data.to_path_buf(),
        db: db.map(str::to_owned),
        _dir: None,
    }
}

/// Starts `tessera server --dev` on SQLite in `data`, limited to `nofile` descriptors (soft and
/// hard, so the server cannot raise it).
pub(crate) fn server_limited(data: &Path, nofile: u32) -> Server {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("TESSERA_LOG", "warn");
    let proc = spawn_ready(cmd, "tessera: ready url=");
    Server {
        url: proc.ready.clone(),
        proc,
        data: data.to_path_buf(),
        db: None,
        _dir: None,
    }
}

/// Writes `text` as identity file `dir/name` and applies it (with `extra` flags); it must apply.
/// Returns the plan `apply` printed.
pub(crate) fn apply_ok(s: &Server, dir: &Path, name: &str, text: &str, extra: &[&str]) -> String {
    let p = write(dir, name, text);
    let mut args = vec!["apply", "-f", p.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = tessera(&s.data, &args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    stdout(&o)
}

/// Runs an admin or user command against the server's data folder.
pub(crate) fn tessera(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) const MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/order-processor"
owner = "team-orders"
purpose = "Turns checkout events into orders"
environment = "prod"
jwt_ttl = "2m"

[[workload]]
id = "spiffe://example.org/prod/inventory-api"
owner = "team-warehouse"
purpose = "Owns stock levels"
environment = "prod"
aliases = ["inventory-api", "https://inventory.internal.example.org"]
scopes = ["inventory:read", "inventory:reserve", "inventory:admin"]

[[workload]]
id = "spiffe://example.org/prod/payments-api"
owner = "team-payments"
purpose = "Charges customers"
environment = "prod"
scopes = ["payments:charge"]

[[grant]]
from = "spiffe://example.org/prod/order-processor"
to = "spiffe://example.org/prod/inventory-api"
scopes = ["inventory:read", "inventory:reserve"]
why = "The order flow checks and reserves stock"
review_by = "2020-01-31"

[[client]]
id = "orders"
workload = "spiffe://example.org/prod/order-processor"
auth = "client_secret"

[[client]]
id = "inventory"
workload = "spiffe://example.org/prod/inventory-api"
auth = "client_secret"
"#;

/// Applies `MESH` and returns the secrets of the `orders` and `inventory` clients.
pub(crate) fn setup_mesh(s: &Server) -> (String, String) {
    let files = tempfile::tempdir().unwrap();
    let p = write(files.path(), "mesh.toml", MESH);
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    let secret = |id: &str| {
        let o = tessera(&s.data, &["client", "secret", id]);
        assert!(o.status.success(), "client secret: {}", stderr(&o));
        stdout(&o).lines().next().unwrap().to_owned()
    };
    (secret("orders"), secret("inventory"))
}

pub(crate) async fn post_form(
    url: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).form(form);
    if let Some((id, secret)) = auth {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn token(s: &Server, secret: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let mut f = vec![("grant_type", "client_credentials")];
    f.extend_from_slice(form);
    post_form(&format!("{}/token", s.url), Some(("orders", secret)), &f).await
}

/// Runs a command that needs no server (e.g. `verify`).
pub(crate) fn cli(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// GET a URL's body as text.
pub(crate) async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// GET a URL and parse its JSON body.
pub(crate) async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Starts `tessera server` without `--dev` (TLS with the server's own CA) for `trust_domains`.
pub(crate) fn tls_server(data: &Path, trust_domains: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data);
    for td in trust_domains {
        cmd.args(["--trust-domain", td]);
    }
    spawn_ready(cmd, "tessera: ready url=")
}

/// DER as PEM with `label` (`CERTIFICATE`, `PRIVATE KEY`), for curl and openssl.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

/// A node agent joined to `s` with a fresh join token; its socket is `dir/<name>.sock` and its
/// data `dir/<name>-data`. Returns the running agent and its socket.
pub(crate) fn join_agent(s: &Server, dir: &Path, name: &str) -> (Proc, PathBuf) {
    join_agent_with(s, dir, name, &[])
}

/// [`join_agent`] with more agent flags (`extra`).
pub(crate) fn join_agent_with(
    s: &Server,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> (Proc, PathBuf) {
    let o = tessera(&s.data, &["agent", "token", "create"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).lines().next().unwrap().to_owned();
    let (mut cmd, socket) = agent_cmd(s, dir, name, &["--join-token", &token]);
    cmd.args(extra);
    (spawn_ready(cmd, "tessera: agent ready socket="), socket)
}

/// `tessera agent` against `s` with `args`, its socket `DIR/NAME.sock` and data `DIR/NAME-data`.
pub(crate) fn agent_cmd(s: &Server, dir: &Path, name: &str, args: &[&str]) -> (Command, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--server", &s.url, "--socket"])
        .arg(&socket)
        .args(args)
        .arg("--data")
        .arg(dir.join(format!("{name}-data")))
        .env("TESSERA_LOG", "warn")
        .envs(child_env());
    (cmd, socket)
}

/// The command was refused as a usage or operational error (exit 2) saying `why` on stderr.
pub(crate) fn refused(o: &Output, why: &str) {
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(o), stderr(o));
    assert!(stderr(o).contains(why), "wanted `{why}`: {}", stderr(o));
}

/// Writes the X.509-SVID of `id` from the agent at `socket` as PEM files: (chain, key).
pub(crate) async fn svid_pem(socket: &Path, id: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let all = client.fetch_all_x509_svids().await.unwrap();
    let svid = all
        .iter()
        .find(|s| s.spiffe_id().to_string() == id)
        .unwrap();
    let chain: String = svid
        .cert_chain()
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_bytes()))
        .collect();
    let name = id.rsplit('/').next().unwrap();
    (
        write(dir, &format!("{name}.pem"), &chain),
        write(
            dir,
            &format!("{name}.key"),
            &pem("PRIVATE KEY", svid.private_key().as_bytes()),
        ),
    )
}

/// Writes the SVID of `id` as PEM files for curl and openssl: (chain, key, bundle of
/// example.org).
pub(crate) async fn svid_files(socket: &Path, id: &str, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (chain, key) = svid_pem(socket, id, dir).await;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle: String = bundles
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| pem("CERTIFICATE", c.as_bytes()))
        .collect();
    (chain, key, write(dir, "bundle.pem", &bundle))
}

/// `tessera proxy ARGS` for the SVID `id` from the agent at `socket`, with an admin port.
pub(crate) fn proxy(args: &[&str], socket: &Path, id: &str) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("proxy")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .args(["--id", id, "--admin-listen", "127.0.0.1:0"])
        .env("TESSERA_LOG", "warn")
        .envs(child_env());
    spawn_ready(cmd, "tessera: proxy ready listen=")
}

/// (listen address, admin URL) from a ready line `tessera: proxy ready listen=ADDR admin=URL`.
pub(crate) fn addrs(p: &Proc) -> (String, String) {
    let field = |name: &str| {
        p.line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap()
            .to_owned()
    };
    (field("listen="), field("admin="))
}

pub(crate) const FRONTEND: &str = "spiffe://example.org/prod/frontend";
pub(crate) const BACKEND: &str = "spiffe://example.org/prod/backend";
pub(crate) const STRANGER: &str = "spiffe://example.org/prod/stranger";

pub(crate) fn uid() -> String {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// Three workloads of this unix user for the sidecar tests: the frontend may call the backend's
/// `/api/*` with GET and POST; the stranger has an SVID and no grant; `frontend` is also a client.
pub(crate) fn sidecar_mesh() -> String {
    let uid = uid();
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
id = "{STRANGER}"
owner = "team-x"
purpose = "Has an SVID, has no grant"
environment = "prod"
selectors = ["unix:uid:{uid}"]

[[grant]]
from = "{FRONTEND}"
to = "{BACKEND}"
routes = [{{ methods = ["GET", "POST"], paths = ["/api/*"] }}]
why = "The web tier reads the API"

[[client]]
id = "frontend"
workload = "{FRONTEND}"
auth = "client_secret"
"#
    )
}

/// An inbound for the backend and an outbound for the frontend pointed at it:
/// (inbound, its address, outbound, its address).
pub(crate) fn sidecar_pair(
    s: &Server,
    upstream: &str,
    socket: &Path,
) -> (tessera_testkit::Proc, String, tessera_testkit::Proc, String) {
    let inbound = proxy(
        &[
            "inbound",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--server",
            &s.url,
        ],
        socket,
        BACKEND,
    );
    let (in_addr, _) = addrs(&inbound);
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
        socket,
        FRONTEND,
    );
    let (out_addr, _) = addrs(&outbound);
    (inbound, in_addr, outbound, out_addr)
}

/// Waits (15 s at most) until a request through each outbound is allowed.
pub(crate) async fn wait_allowed(http: &reqwest::Client, outbounds: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in outbounds {
        while http
            .get(format!("http://{addr}/api/warmup"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "never allowed through {addr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves `app` on a free loopback port in this process; returns its address.
pub(crate) async fn serve_app(app: axum::Router) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// A server with a mesh applied and a node agent joined, whose Workload API serves this process.
pub(crate) struct Mesh {
    pub s: Server,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub agent: Proc,
}

/// [`Mesh`] on SQLite: `mesh` applied, the agent started with `agent_flags`.
pub(crate) fn start_mesh(mesh: &str, agent_flags: &[&str]) -> Mesh {
    let s = server(Backend::Sqlite, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "mesh.toml", mesh);
    let o = tessera(&s.data, &["apply", "-f", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (agent, socket) = join_agent_with(&s, dir.path(), "agent", agent_flags);
    Mesh {
        s,
        dir,
        socket,
        agent,
    }
}

/// A free loopback port for a process that takes a port number.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
