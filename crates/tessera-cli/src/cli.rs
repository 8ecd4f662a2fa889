//! The command line. Every flag is documented in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Workload identity: short-lived credentials for services, no standing secrets"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    #[default]
    Text,
    Json,
}

/// Where admin commands find the server.
#[derive(Debug, Args, Clone)]
pub(crate) struct Target {
    /// The server's data folder; its admin socket is `DATA/admin.sock`.
    #[arg(
        long,
        env = "TESSERA_DATA",
        default_value = "./.tessera",
        global = true
    )]
    pub data: PathBuf,
    /// Reach the server over HTTP(S) instead of the admin socket (with an admin credential).
    #[arg(long, env = "TESSERA_SERVER", global = true)]
    pub server: Option<String>,
    /// A file holding the admin credential (the server writes `DATA/admin-token` on first start);
    /// or set `TESSERA_ADMIN_TOKEN`.
    #[arg(long, env = "TESSERA_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for `--server https://...` (e.g. `DATA/tls/ca.pem`).
    #[arg(long, env = "TESSERA_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the trust authority.
    Server(ServerArgs),
    /// Run a server and a demo mesh on loopback, and show an allowed and a denied call.
    Dev(DevArgs),
    /// Apply identity files (a TOML file or a folder of them).
    Apply(ApplyArgs),
    /// List workloads, clients, grants, trusts, agents or federations.
    Get {
        #[arg(value_parser = ["workloads", "clients", "grants", "trusts", "agents", "federations"])]
        kind: String,
        #[command(flatten)]
        target: Target,
    },
    /// Explain an identity: owner, purpose, what it can reach and why, how to revoke it.
    Describe {
        #[arg(value_parser = ["workload", "trust", "secret", "federation"])]
        kind: String,
        /// The workload's SPIFFE ID, the trust's name, the secret's name, or the federated
        /// trust domain.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Client credentials.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Revoke a workload, a token or an agent.
    Revoke {
        #[arg(value_parser = ["workload", "token", "agent"])]
        kind: String,
        /// SPIFFE ID, token ID (`jti`) or agent ID. A `jti` is base64url and may begin with `-`.
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Read and check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Verify a token offline or against an issuer; exit 0 and the claims when valid, 1 when not.
    Verify(VerifyArgs),
    /// Run the node agent (Workload API, managed-identity endpoint), or make join tokens.
    Agent(AgentArgs),
    /// The certificate authorities of each trust domain.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Dynamic PostgreSQL credentials: declare databases and role templates (admin), get a
    /// fresh role under a lease (workload), list and revoke leases.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Run a program with secrets from the vault in its environment or in files, fetched with
    /// this workload's own identity through the local agent; rotated secrets are rewritten.
    Exec(ExecArgs),
    /// The vault: secrets that cannot be removed yet, sealed at rest, read by workloads with
    /// their own identity under `secret_grant`s, every read audited.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Federation: try an outside token against the trusts.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Fetch this process's SVIDs from a node agent's Workload API.
    Svid {
        #[command(subcommand)]
        command: SvidCommand,
    },
    /// Why a token or a call is allowed or denied: the decision, the policies (file and line)
    /// that made it, and for a denial what is missing. Exit 0 allowed, 1 denied.
    Explain(ExplainArgs),
    /// The least-privilege advisor: grants, scopes and methods granted against those used in the
    /// audit trail, grants never used, idle workloads and clients, identities that look shared,
    /// deployment identities reaching run-time services; each with its evidence. Exit 1 when
    /// there are findings.
    Advise(AdviseArgs),
    /// The web console (`/ui/` on the server's listener).
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
    /// Check a deployment from the outside: the authority's reachability and clock, its trust
    /// bundle's expiry, bundles held locally, and agents' and sidecars' metrics (revocation stream,
    /// policy bundle, SVID expiry, sync). Prints what is wrong and which runbook applies; exit 1
    /// when anything fails.
    Doctor(DoctorArgs),
    /// Policy sets: validate, test, diff the shadow set, promote it, roll back.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The sidecar: strict mTLS and per-call policy in front of (inbound) or behind (outbound)
    /// an unmodified service.
    Proxy {
        #[command(subcommand)]
        command: ProxyCommand,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ProxyCommon {
    /// The node agent's Workload API socket.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "/run/tessera/agent.sock"
    )]
    pub socket: String,
    /// Which of this process's SVIDs to use (default: the first the agent gives).
    #[arg(long)]
    pub id: Option<String>,
    /// Serve `/metrics` and `/healthz` here (plain HTTP, loopback only).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProxyCommand {
    /// Terminate mTLS for a service: callers need an X.509-SVID, and policy decides each call.
    Inbound {
        /// Where callers connect (mTLS).
        #[arg(long)]
        listen: SocketAddr,
        /// The service, in plain HTTP (normally on loopback).
        #[arg(long)]
        upstream: SocketAddr,
        /// The authority's URL, for the policy bundle.
        #[arg(long, env = "TESSERA_SERVER")]
        server: String,
        /// A PEM CA certificate for an `https://` authority (e.g. `DATA/tls/ca.pem`).
        #[arg(long)]
        server_ca: Option<PathBuf>,
        /// Record one allowed call in N in the audit trail (every denial is recorded; 0: none).
        #[arg(long, default_value_t = 100)]
        sample_allows: u64,
        /// Largest request body accepted.
        #[arg(long, default_value = "10MiB", value_parser = parse_size)]
        max_body: usize,
        /// Also require a bearer access token for this service, issued to the caller the
        /// client certificate names; its scopes reach the policy.
        #[arg(long)]
        require_token: bool,
        /// The service's routes do not differ by case (`/ADMIN` is `/admin`): decide and
        /// forward lower-case paths, so policies written for `/admin` see every spelling.
        #[arg(long)]
        case_insensitive_paths: bool,
        /// The upstream speaks HTTP/2 without TLS (h2c, e.g. a gRPC server); default HTTP/1.1.
        #[arg(long)]
        upstream_h2: bool,
        /// How long a client may take over its TLS handshake, and over each request's headers.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        handshake_timeout: std::time::Duration,
        /// Fail closed: refuse every call until the authority's revocation state is held, and
        /// while its change stream has been silent for longer than this (e.g. `30s`). Default:
        /// enforce what is known and keep serving (reported by `/readyz` and the metrics).
        #[arg(long, value_parser = humantime::parse_duration)]
        revocation_fail_closed: Option<std::time::Duration>,
        #[command(flatten)]
        common: ProxyCommon,
    },
    /// Originate mTLS for an application: it speaks plain HTTP to `--listen`; the proxy accepts
    /// only a target presenting exactly `--target-id`.
    Outbound {
        /// Where the application connects (plain HTTP, loopback only).
        #[arg(long)]
        listen: SocketAddr,
        /// The target's address (its inbound sidecar).
        #[arg(long)]
        target: SocketAddr,
        /// The SPIFFE ID the target must present.
        #[arg(long)]
        target_id: String,
        /// Also attach an access token for the target to requests without `Authorization`:
        /// asked for with the SVID (RFC 8705 `tls_client_auth`), bound to it, refreshed at half
        /// its life. Needs `--server` (https).
        #[arg(long, requires = "server")]
        attach_token: bool,
        /// The authority's URL, for access tokens and for its change stream: with it, no call
        /// leaves under a revoked identity or to a revoked target.
        #[arg(long, env = "TESSERA_SERVER")]
        server: Option<String>,
        /// A PEM CA certificate for the authority (e.g. `DATA/tls/ca.pem`).
        #[arg(long)]
        server_ca: Option<PathBuf>,
        /// A unix user (uid) whose processes may use this sidecar's identity, besides the
        /// sidecar's own; repeat for several. Other local users get 403: on a shared host a
        /// loopback port is open to everyone.
        #[arg(long = "allow-uid")]
        allow_uid: Vec<u32>,
        /// Fail closed (needs `--server`): refuse every call until the authority's revocation
        /// state is held, and while its change stream has been silent for longer than this.
        #[arg(long, requires = "server", value_parser = humantime::parse_duration)]
        revocation_fail_closed: Option<std::time::Duration>,
        #[command(flatten)]
        common: ProxyCommon,
    },
}

/// `10MiB`, `64KiB`, `512` (bytes).
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1024)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size such as `10MiB`, `64KiB` or `512`"))
}

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The authority's base URL.
    #[arg(long, env = "TESSERA_SERVER")]
    pub server: String,
    /// A PEM CA certificate to trust for `--server https://...` (e.g. `DATA/tls/ca.pem`).
    #[arg(long, env = "TESSERA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A trust domain whose bundle to check (repeatable; default: the one the base URL issues for).
    #[arg(long = "trust-domain", value_name = "TD")]
    pub trust_domains: Vec<String>,
    /// A trust bundle this deployment holds (PEM certificates, or a SPIFFE bundle in JSON):
    /// checked for expiry and against the authority's current bundle. Repeatable.
    #[arg(long = "bundle", value_name = "FILE")]
    pub bundles: Vec<PathBuf>,
    /// The `/metrics` URL of an agent or sidecar (`--admin-listen`): its revocation stream,
    /// policy bundle, SVIDs and sync. Repeatable.
    #[arg(long = "metrics", value_name = "URL")]
    pub metrics: Vec<String>,
    /// The clock difference tolerated between this host and the authority.
    #[arg(long, default_value = "5s")]
    pub max_skew: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct AdviseArgs {
    /// How far back to read the audit trail.
    #[arg(long, default_value = "30d")]
    pub window: String,
    /// Write the narrower identity file (`advised-grants.toml`) into this folder.
    #[arg(long)]
    pub write: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsoleCommand {
    /// Print a one-time sign-in link to the console (valid for ten minutes, usable once).
    Link {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The caller's SPIFFE ID.
    #[arg(long)]
    pub from: String,
    /// The target service's SPIFFE ID.
    #[arg(long)]
    pub to: String,
    /// A token request for these scopes (repeat, or space-separated).
    #[arg(long, conflicts_with_all = ["method", "path"])]
    pub scope: Vec<String>,
    /// A call with this HTTP method (needs `--path`).
    #[arg(long, requires = "path")]
    pub method: Option<String>,
    /// A call to this path (needs `--method`).
    #[arg(long, requires = "method")]
    pub path: Option<String>,
    /// Explain with the shadow set instead of the active one.
    #[arg(long)]
    pub shadow: bool,
    /// The caller's address, for policies on `context.source_ip` (default unknown: 0.0.0.0).
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check identity files and their policies against the Tessera schema (strict), offline.
    /// Exit 0 valid, 1 invalid (with file, line and reason).
    Validate {
        /// A TOML identity file or a folder of them.
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
    },
    /// Run a table of requests with expected decisions; exit 1 on any mismatch.
    Test {
        /// The test table (TOML, `[[case]]` entries).
        cases: PathBuf,
        /// Test these identity files (a candidate) instead of the server's active set.
        #[arg(short = 'f', long = "file", conflicts_with = "shadow")]
        candidate: Option<PathBuf>,
        /// Test the server's shadow set.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The active version, the shadow set and the history of versions.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Decisions the shadow set would change, on real traffic since it was loaded.
    Diff {
        #[command(flatten)]
        target: Target,
    },
    /// Make the shadow set the active one.
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Make an earlier version active again (default: the one before the active one).
    Rollback {
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// Drop the shadow set without promoting it.
    Discard {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The authority's URL (`http://` only for a `--dev` server on loopback).
    #[arg(long, env = "TESSERA_AGENT_SERVER")]
    pub server: Option<String>,
    /// A one-time join token (`tessera agent token create`); not needed once joined.
    #[arg(long, env = "TESSERA_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The Workload API socket; workloads find it through `SPIFFE_ENDPOINT_SOCKET=unix://PATH`.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// PEM CA certificate(s) that sign the server's TLS certificate (`DATA/tls/ca.pem`).
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// Also serve a managed-identity (Azure IMDS / App Service) endpoint here (loopback only).
    #[arg(long)]
    pub imds_listen: Option<SocketAddr>,
    /// The agent's data folder: its key and SVID.
    #[arg(long, env = "TESSERA_AGENT_DATA", default_value = "./.tessera-agent")]
    pub data: PathBuf,
    /// Serve an X.509-SVID only once the authority's transparency log proves its issuance
    /// (an inclusion proof of a record naming its serial and digest): unlogged issuance is
    /// refused, never handed to a workload.
    #[arg(long)]
    pub require_logged: bool,
    /// The log's verifier key for `--require-logged` (default: fetched from the server).
    #[arg(long, requires = "require_logged")]
    pub log_key: Option<String>,
    /// The container runtime's API socket (Docker's `/run/docker.sock`, or Podman's
    /// `/run/podman/podman.sock`): callers in containers are then attested by their
    /// container's image, name and labels, read from the runtime.
    #[arg(long, value_name = "SOCKET")]
    pub container_runtime: Option<PathBuf>,
    /// An environment variable of containers' configuration that `container:env` selectors may
    /// read (repeatable); no other is read.
    #[arg(
        long = "container-env",
        value_name = "KEY",
        requires = "container_runtime"
    )]
    pub container_env: Vec<String>,
    /// Join by this Kubernetes projected service-account token (audience: the authority's
    /// URL) instead of a join token; read again whenever the agent must join anew.
    #[arg(long, value_name = "FILE", conflicts_with = "join_token")]
    pub k8s_token_file: Option<PathBuf>,
    /// The node's kubelet (its authenticated port, `https://127.0.0.1:10250`): callers in pods
    /// are then attested by their pod's namespace, service account, labels and container.
    #[arg(long, value_name = "URL")]
    pub kubelet: Option<String>,
    /// PEM CA certificate(s) that sign the kubelet's serving certificate.
    #[arg(long, value_name = "FILE", requires = "kubelet")]
    pub kubelet_ca: Option<PathBuf>,
    /// A file holding the bearer token the kubelet accepts (the agent's service-account token).
    #[arg(long, value_name = "FILE", requires = "kubelet")]
    pub kubelet_token_file: Option<PathBuf>,
    /// Do not verify the kubelet's certificate (many kubelets serve a self-signed one); anyone
    /// able to intercept the connection could then choose callers' pod metadata.
    #[arg(long, requires = "kubelet", conflicts_with = "kubelet_ca")]
    pub danger_kubelet_skip_verify: bool,
    /// Serve `/metrics` and `/healthz` here (loopback only).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: AgentTokenCommand,
    },
    /// The selectors a process has and which registrations they match, asked of the running
    /// agent (through its admin socket, `DATA/admin.sock`).
    Attest {
        #[arg(long)]
        pid: i32,
        /// The agent's data folder.
        #[arg(long, env = "TESSERA_AGENT_DATA", default_value = "./.tessera-agent")]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentTokenCommand {
    /// A one-time join token for a node agent, alone on the first line of stdout.
    Create {
        /// How long the token can be used (e.g. `10m`; at most `1d`).
        #[arg(long, default_value = "10m")]
        ttl: String,
        #[arg(long)]
        trust_domain: Option<String>,
        /// The agent's name (default: a random `node-…`).
        #[arg(long)]
        agent_id: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// `NAME=tessera://secret/SECRET[?version=N]`: an environment variable of the program.
    #[arg(long = "env", value_name = "NAME=REF")]
    pub envs: Vec<String>,
    /// `PATH=tessera://secret/SECRET[?version=N]`: a file (mode 0600). A relative PATH goes in
    /// a private folder on tmpfs, named to the program by `TESSERA_SECRETS_DIR`.
    #[arg(long = "file", value_name = "PATH=REF")]
    pub files: Vec<String>,
    /// What to do when a secret without a pinned version is rotated: `none`, `restart`, or
    /// `signal:NAME` (e.g. `signal:HUP`). Files are rewritten first in every case.
    #[arg(long, default_value = "none")]
    pub on_rotate: String,
    #[command(flatten)]
    pub target: WorkloadTarget,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// How a workload reaches the authority with its own identity (a JWT-SVID from the agent).
#[derive(Debug, Args)]
pub(crate) struct WorkloadTarget {
    /// The authority's URL.
    #[arg(long, env = "TESSERA_SERVER")]
    pub server: String,
    /// A PEM CA certificate for an `https://` authority.
    #[arg(long)]
    pub server_ca: Option<PathBuf>,
    /// The node agent's Workload API socket.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        default_value = "/run/tessera/agent.sock"
    )]
    pub socket: String,
    /// Which of this process's identities to use (default: the first the agent gives).
    #[arg(long)]
    pub id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// A new role for this workload, under a lease: prints username, password, lease.
    Creds {
        role: String,
        /// The lease's length (default: the role's, at most its maximum).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        target: WorkloadTarget,
    },
    /// Renew one of this workload's leases (never past its maximum).
    Renew {
        lease: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[command(flatten)]
        target: WorkloadTarget,
    },
    /// Declare (or change) a database: its URL without credentials, its admin user, and the
    /// vault secret holding that user's password. Checked by logging in.
    Connection {
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        admin_user: String,
        #[arg(long)]
        password_secret: String,
        #[command(flatten)]
        target: Target,
    },
    /// Declare (or change) a role template. Workloads need a `secret_grant` naming `db/ROLE`.
    Role {
        name: String,
        #[arg(long)]
        connection: String,
        /// A creation statement with `{{name}}`, `{{password}}`, `{{expiry}}` (repeatable).
        #[arg(long = "creation", required = true)]
        creation: Vec<String>,
        /// A revocation statement (repeatable; default: no login, end sessions, drop owned,
        /// drop role).
        #[arg(long = "revocation")]
        revocation: Vec<String>,
        #[arg(long, default_value = "1h")]
        default_ttl: String,
        #[arg(long, default_value = "24h")]
        max_ttl: String,
        #[command(flatten)]
        target: Target,
    },
    /// Leases not yet revoked, and why a revocation is still pending.
    Leases {
        #[command(flatten)]
        target: Target,
    },
    /// End a lease now: its role is dropped and its sessions ended.
    Revoke {
        lease: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Where a secret value comes from: a file, or standard input.
#[derive(Debug, Args)]
pub(crate) struct ValueSource {
    /// Read the value from this file (else from standard input).
    #[arg(long)]
    pub value_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Write a secret: a new one (needs `--owner` and `--purpose`) or a new version.
    Put {
        name: String,
        #[command(flatten)]
        value: ValueSource,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        /// `KEY=VALUE`, repeatable; replaces the stored tags.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// How often it should be rotated (e.g. `90d`); overdue secrets are reported.
        #[arg(long)]
        rotation_period: Option<String>,
        /// This version may not be read before this long from now (e.g. `1h`).
        #[arg(long)]
        not_before_in: Option<String>,
        /// This version may not be read after this long from now (e.g. `30d`).
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Write the next version of an existing secret (readers waiting on it are told).
    Rotate {
        name: String,
        #[command(flatten)]
        value: ValueSource,
        /// Generate the new value: this many random bytes, base64url.
        #[arg(long, conflicts_with = "value_file")]
        generate: Option<usize>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a secret's value (audited as an administrator's read).
    Get {
        name: String,
        #[arg(long)]
        version: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// List secrets (`--deleted` adds the deleted ones) with what is overdue.
    List {
        #[arg(long)]
        deleted: bool,
        #[command(flatten)]
        target: Target,
    },
    /// A secret's versions, newest first.
    Versions {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Owner, purpose, versions, what is overdue, and who may read it and why.
    Describe {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Disable a version: it can no longer be read.
    Disable {
        name: String,
        #[arg(long)]
        version: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Enable a disabled version again.
    Enable {
        name: String,
        #[arg(long)]
        version: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Soft delete: nobody reads it; restorable until the retention ends (default 7 days).
    Delete {
        name: String,
        #[arg(long)]
        retention: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Undo a delete.
    Restore {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a deleted secret and every version for good.
    Purge {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Prepare the next CA: in the bundle now, signing after `--activate-in`.
    Rotate {
        #[arg(long)]
        trust_domain: Option<String>,
        /// How long the new CA is published before it signs (default: `ca_publish_ahead`, 1h).
        #[arg(long)]
        activate_in: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List CAs and their state (active, prepared, retiring, withdrawn).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Make the key of a trust domain's next CA (in the token, with `[pkcs11]`) and print a
    /// CSR for a root outside Tessera to sign.
    Csr {
        #[arg(long)]
        trust_domain: String,
        #[command(flatten)]
        target: Target,
    },
    /// Install the certificate an outside root signed for `tessera ca csr` (PEM: the
    /// intermediate first, then any CA certificates up to, not including, the root).
    Install {
        #[arg(long)]
        trust_domain: String,
        /// The signed certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// How long it is in the bundle before it signs (default: `ca_publish_ahead`; at once
        /// when the trust domain has no CA).
        #[arg(long)]
        activate_in: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Print the root CA over the trust domains' CAs (PEM), when the authority has one.
    Root {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum FederationCommand {
    /// Which mapping rule an outside token matches (exit 0), or why none does (exit 1).
    /// Verifies the token fully; issues nothing.
    Test {
        /// Only this trust (default: every trust for the token's issuer).
        #[arg(long)]
        trust: Option<String>,
        /// The outside token, or `-` for stdin.
        token: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SvidCommand {
    /// Print (and optionally write) the X.509-SVIDs, or a JWT-SVID with `--audience`.
    Fetch {
        /// The Workload API socket (default: `SPIFFE_ENDPOINT_SOCKET`).
        #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
        socket: String,
        /// Fetch a JWT-SVID for this audience instead (repeatable).
        #[arg(long)]
        audience: Vec<String>,
        /// Write `svid.pem`, `svid.key` and `bundle.pem` here.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Which of this process's SVIDs to write, or the one JWT-SVID to fetch (default: the
        /// first X.509-SVID; a JWT-SVID for each identity).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// A TOML config file; flags given here win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data folder: embedded database, key-encryption key, admin socket.
    #[arg(long, env = "TESSERA_DATA")]
    pub data: Option<PathBuf>,
    /// Use PostgreSQL instead of the embedded database.
    #[arg(long, env = "TESSERA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A trust domain to serve (repeatable). The first is also the issuer at the base URL.
    #[arg(long = "trust-domain")]
    pub trust_domains: Vec<String>,
    /// Development mode: plain HTTP on loopback; serves `example.org` when no trust domain is given.
    #[arg(long)]
    pub dev: bool,
    /// The URL clients use to reach this server, when it differs from the listen address.
    #[arg(long)]
    pub public_url: Option<String>,
    /// TLS certificate chain (PEM) for the API.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the API.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// How far ahead of signing a rotated key is published (e.g. `65m`).
    #[arg(long)]
    pub key_publish_ahead: Option<String>,
    /// How often the server checks the database for changes by other servers (a fallback:
    /// on PostgreSQL each commit is also announced to every server at once).
    #[arg(long, default_value = "1s")]
    pub poll_interval: String,
    /// A URL told of every workload revocation by a POST whose body is a JWT signed by the
    /// trust domain's key (`application/jwt`; verify it with the JWKS). Repeatable.
    #[arg(long = "notify-webhook")]
    pub notify_webhooks: Vec<String>,
    /// Also write each audit-log checkpoint here: `file:PATH` (the latest), `dir:PATH` (every
    /// one), `syslog`, or an https URL (POST). Repeatable.
    #[arg(long = "checkpoint-sink")]
    pub checkpoint_sinks: Vec<String>,
    /// A witness to cosign each checkpoint: `URL VKEY` (C2SP tlog-witness). Repeatable.
    #[arg(long = "log-witness")]
    pub log_witnesses: Vec<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Run the demo once and exit: 0 when every step behaved, 1 when one did not.
    #[arg(long)]
    pub once: bool,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Data folder (default: a fresh temporary folder).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// A TOML identity file or a folder of them.
    #[arg(short = 'f', long = "file")]
    pub path: PathBuf,
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete stored objects that the files do not mention.
    #[arg(long)]
    pub prune: bool,
    /// Load the files' grants and policies as a shadow set: evaluated beside the active set on
    /// real decisions, not enforced, until `tessera policy promote`.
    #[arg(long)]
    pub shadow: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Issue a new client secret, printed once, alone on the first line of stdout.
    Secret {
        client_id: String,
        /// Lifetime of the secret (e.g. `90d`); default the client's `secret_ttl`, or none.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// The latest records.
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        n: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Check the stored log: the keyed chain, the Merkle tree, every stored checkpoint and,
    /// with `--checkpoint`, a checkpoint kept outside the database. Exit 1 naming the first bad
    /// record (or the narrowest range) when it does not hold.
    Verify {
        /// A signed checkpoint saved earlier (`tessera audit checkpoint`, a sink's file, a
        /// witness's copy); a folder checks every checkpoint in it.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Print the latest signed checkpoint (C2SP tlog-checkpoint).
    Checkpoint {
        /// Make one now instead of printing the latest.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        target: Target,
    },
    /// An inclusion proof of a record (by `jti`, certificate serial or record number) against
    /// the latest checkpoint, checked here before it is printed.
    Prove {
        /// A token's `jti`, an X.509-SVID's serial (hex), or a record number.
        what: String,
        /// The log's verifier key to check with (`<origin>+<id>+<key>`; default: the server's).
        #[arg(long)]
        log_key: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Follow the log (the certificate-transparency monitor role): check that each checkpoint
    /// extends the last, that the records hash to it, and alert on credentials issued for
    /// watched SPIFFE IDs or by unexpected paths.
    Monitor {
        /// Alert on every credential issued for a SPIFFE ID matching this glob. Repeatable.
        #[arg(long = "watch")]
        watch: Vec<String>,
        /// The issuance paths expected (`client_credentials`, `jwt-bearer`, `token-exchange`,
        /// `agent`, `x509`, `jwt-svid`, ...); any other alerts. Repeatable; none: no path check.
        #[arg(long = "expect-path")]
        expect_path: Vec<String>,
        /// The log's verifier key (default: the server's, trusted on first use).
        #[arg(long)]
        log_key: Option<String>,
        /// Read up to the latest checkpoint, then exit (1 when anything alerted).
        #[arg(long)]
        once: bool,
        /// How often to poll for a new checkpoint.
        #[arg(long, default_value = "2s")]
        interval: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run a witness (C2SP tlog-witness): cosign a log's checkpoints only when each is
    /// consistent with the last one cosigned.
    Witness {
        #[arg(long, default_value = "127.0.0.1:7380")]
        listen: std::net::SocketAddr,
        /// The witness's key (a 32-byte seed; made, 0600, when missing).
        #[arg(long)]
        key: PathBuf,
        /// The witness's name in its cosignatures.
        #[arg(long, default_value = "tessera-witness")]
        name: String,
        /// A log to witness, by its verifier key (`tessera audit checkpoint --output json`
        /// shows it as `log_key`). Repeatable.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
        /// Where the last cosigned checkpoint of each log is kept.
        #[arg(long)]
        state: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Start a rotation: a new key is published now and signs once verifiers have it.
    Rotate {
        #[arg(long)]
        trust_domain: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List signing keys and their state.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Every private key the authority holds (token-signing keys, CAs, the root, the log's key,
    /// the TLS key): kind, where it lives (software or PKCS#11 token and label), algorithm, age,
    /// state and next rotation.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Kind {
    AccessToken,
    JwtSvid,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The expected issuer, exactly.
    #[arg(long)]
    pub issuer: Option<String>,
    /// The audience this verifier stands for.
    #[arg(long)]
    pub audience: String,
    /// A JWKS file or URL (default: discovered from the issuer).
    #[arg(long)]
    pub jwks: Option<String>,
    /// Scopes the token must carry (repeatable).
    #[arg(long)]
    pub scope: Vec<String>,
    #[arg(long, value_enum, default_value_t = Kind::AccessToken)]
    pub kind: Kind,
    /// Allowed clock skew.
    #[arg(long, default_value = "30s")]
    pub leeway: String,
    /// Do not ask the issuer whether the token or its subject has been revoked (by default
    /// `tessera verify` does, and fails when it cannot).
    #[arg(long)]
    pub no_revocation_check: bool,
    /// Refuse the token unless the issuer's transparency log proves its issuance (an
    /// inclusion proof of a record naming its `jti` and digest, under a signed checkpoint).
    #[arg(long)]
    pub require_logged: bool,
    /// The log's verifier key for `--require-logged` (default: fetched from the issuer's
    /// `/log/key`, trusted on first use).
    #[arg(long, requires = "require_logged")]
    pub log_key: Option<String>,
    /// The token, or `-` to read it from stdin.
    pub token: String,
}
