//! Server configuration: command-line flags over an optional TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::manifest::Ttl;
use tessera_core::{Label, TrustDomain};
use tessera_token::Alg;

use crate::start_error::StartError;

/// A trust domain this authority serves, optionally bound to one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainConfig {
    pub name: TrustDomain,
    pub environment: Option<Label>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    pub trust_domains: Vec<TrustDomainConfig>,
    pub dev: bool,
    /// The URL clients use to reach this server; derived from `listen` when absent.
    pub public_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub key_alg: Alg,
    /// How long verifiers may cache the JWKS (`Cache-Control: max-age`).
    pub jwks_max_age: Duration,
    /// How far ahead of signing a new key is published. Default: the longest token lifetime
    /// plus the JWKS cache time, so every verifier has it before the first token it signs.
    pub key_publish_ahead: Option<Duration>,
    /// Rotate signing keys on this schedule (none: only `tessera keys rotate`).
    pub key_rotation_period: Option<Duration>,
    /// Unix users besides the server's own (and root) allowed on the admin socket.
    pub admin_uids: Vec<u32>,
    /// How often a server checks the database for changes made by another server.
    pub poll_interval: Duration,
    /// Lifetime of a new CA. A CA is rotated when half of it has passed.
    pub ca_ttl: Duration,
    /// How long a new CA is in the bundle before it signs.
    pub ca_publish_ahead: Duration,
    /// Default lifetime of a node agent's own SVID.
    pub agent_svid_ttl: Duration,
    /// Told of every workload revocation, with a body signed by the trust domain's key.
    pub notify_webhooks: Vec<reqwest::Url>,
    /// Where each new checkpoint of the audit log is also written.
    pub checkpoint_sinks: Vec<CheckpointSink>,
    /// Witnesses asked to cosign each new checkpoint (C2SP tlog-witness).
    pub witnesses: Vec<WitnessConfig>,
    /// Private keys that live in a PKCS#11 token instead of sealed in the database.
    pub pkcs11: Option<Pkcs11Config>,
    /// Whether one root CA signs each trust domain's CA (an intermediate). Default: with a
    /// PKCS#11 token that holds the root.
    pub ca_root: Option<bool>,
    /// The web console's sign-in by an outside OIDC provider (the admin credential always works).
    pub console_oidc: Option<ConsoleOidc>,
    /// The folder of identity files this server manages itself: a grant review in the console
    /// is written to its file there as well as applied.
    pub identity_dir: Option<PathBuf>,
}

/// `[console.oidc]`: people sign in to the console at an outside OpenID Connect provider
/// (authorization code with PKCE); its groups claim decides their role.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOidc {
    /// The provider's issuer URL (its discovery document is at
    /// `ISSUER/.well-known/openid-configuration`). https, or http to loopback.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (none: a public client, PKCE only).
    pub client_secret_file: Option<PathBuf>,
    /// The claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Members of any of these groups are admins.
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// Members of any of these groups (and not of an admin group) are viewers. Nobody else may
    /// sign in.
    #[serde(default)]
    pub viewer_groups: Vec<String>,
    /// The provider may be at a private or loopback address.
    #[serde(default)]
    pub private_network: bool,
}

fn default_groups_claim() -> String {
    "groups".into()
}

impl ConsoleOidc {
    fn check(&self) -> Result<(), StartError> {
        let url = reqwest::Url::parse(&self.issuer).map_err(|e| {
            StartError::Config(format!("console.oidc.issuer `{}`: {e}", self.issuer))
        })?;
        check_outbound_url(&url, "console.oidc.issuer")?;
        if self.client_id.trim().is_empty() {
            return Err(StartError::Config("console.oidc.client_id is empty".into()));
        }
        if self.admin_groups.is_empty() && self.viewer_groups.is_empty() {
            return Err(StartError::Config(
                "console.oidc: name at least one of admin_groups and viewer_groups (nobody could sign in)".into(),
            ));
        }
        Ok(())
    }
}

/// `[console]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFile {
    pub oidc: Option<ConsoleOidc>,
    /// The identity files' folder, when this server manages them (see `ServerConfig`).
    pub identity_dir: Option<PathBuf>,
}

/// The kinds of private key Tessera holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Token-signing keys (JWS), per trust domain.
    Signing,
    /// Each trust domain's CA.
    Ca,
    /// The root over the trust domains' CAs.
    Root,
    /// The transparency log's key.
    Audit,
    /// The API's own TLS key.
    Tls,
    /// The key-encryption key (AES-256, sealing in the token). Only when listed: a database
    /// sealed under a KEK from a file cannot move to another KEK.
    Kek,
}

impl KeyKind {
    /// The signing kinds: what `keys` holds when not given.
    pub const ALL: [Self; 5] = [Self::Signing, Self::Ca, Self::Root, Self::Audit, Self::Tls];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signing => "signing",
            Self::Ca => "ca",
            Self::Root => "root",
            Self::Audit => "audit",
            Self::Tls => "tls",
            Self::Kek => "kek",
        }
    }
}

/// `[pkcs11]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 library.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The environment variable that holds the user PIN.
    pub pin_env: String,
    /// The kinds of key that live in the token (default: every signing kind; `kek` only when
    /// listed).
    #[serde(default = "all_kinds")]
    pub keys: Vec<KeyKind>,
}

fn all_kinds() -> Vec<KeyKind> {
    KeyKind::ALL.to_vec()
}

impl Pkcs11Config {
    pub fn holds(&self, kind: KeyKind) -> bool {
        self.keys.contains(&kind)
    }
}

/// Where a checkpoint goes besides the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSink {
    /// The latest checkpoint, replaced atomically.
    File(PathBuf),
    /// Every checkpoint, one file each, named by its size.
    Dir(PathBuf),
    /// One line per checkpoint to the local syslog (`/dev/log`).
    Syslog,
    /// POSTed as `text/plain` (https, or http to loopback).
    Http(reqwest::Url),
}

impl CheckpointSink {
    /// `file:PATH`, `dir:PATH`, `syslog`, or an http(s) URL.
    pub fn parse(s: &str) -> Result<Self, StartError> {
        if let Some(p) = s.strip_prefix("file:") {
            return Ok(Self::File(PathBuf::from(p)));
        }
        if let Some(p) = s.strip_prefix("dir:") {
            return Ok(Self::Dir(PathBuf::from(p)));
        }
        if s == "syslog" {
            return Ok(Self::Syslog);
        }
        let url = reqwest::Url::parse(s).map_err(|e| {
            StartError::Config(format!(
                "checkpoint sink `{s}`: not file:PATH, dir:PATH, syslog or a URL ({e})"
            ))
        })?;
        check_outbound_url(&url, "checkpoint sink")?;
        Ok(Self::Http(url))
    }
}

/// A witness: where it listens, and the key its cosignatures verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    pub url: reqwest::Url,
    pub key: tessera_log::NoteVerifier,
}

impl WitnessConfig {
    /// `URL VKEY` (a space between).
    pub fn parse(s: &str) -> Result<Self, StartError> {
        let bad = |why: String| StartError::Config(format!("witness `{s}`: {why}"));
        let (url, key) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("give `URL VKEY`".into()))?;
        let url = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        check_outbound_url(&url, "witness")?;
        let key = tessera_log::NoteVerifier::parse(key.trim()).map_err(|e| bad(e.to_string()))?;
        if key.key_type() != tessera_log::KeyType::Cosignature {
            return Err(bad("the key is not a cosignature (type 0x04) key".into()));
        }
        Ok(Self { url, key })
    }
}

/// https, or plain http to loopback only.
fn check_outbound_url(u: &reqwest::Url, what: &str) -> Result<(), StartError> {
    let loopback = u.host_str().is_some_and(tessera_core::is_loopback_host);
    if u.scheme() == "https" || (u.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(StartError::Config(format!(
            "{what} `{u}`: use https (plain http only to loopback)"
        )))
    }
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            trust_domains: Vec::new(),
            dev: false,
            public_url: None,
            tls_cert: None,
            tls_key: None,
            key_alg: Alg::ES256,
            jwks_max_age: Duration::from_secs(300),
            key_publish_ahead: None,
            key_rotation_period: None,
            admin_uids: Vec::new(),
            poll_interval: Duration::from_secs(1),
            ca_ttl: Duration::from_secs(90 * 86400),
            ca_publish_ahead: Duration::from_secs(3600),
            agent_svid_ttl: Duration::from_secs(3600),
            notify_webhooks: Vec::new(),
            checkpoint_sinks: Vec::new(),
            witnesses: Vec::new(),
            pkcs11: None,
            ca_root: None,
            console_oidc: None,
            identity_dir: None,
        }
    }

    /// Whether `kind` lives in the PKCS#11 token.
    pub fn in_token(&self, kind: KeyKind) -> bool {
        self.pkcs11.as_ref().is_some_and(|p| p.holds(kind))
    }

    /// Whether a root CA signs the trust domains' CAs.
    pub fn has_root(&self) -> bool {
        self.ca_root.unwrap_or(self.in_token(KeyKind::Root))
    }

    /// Checks the combination; fills `--dev` defaults.
    pub fn finish(mut self) -> Result<Self, StartError> {
        if self.trust_domains.is_empty() {
            if self.dev {
                self.trust_domains.push(TrustDomainConfig {
                    name: TrustDomain::parse("example.org")
                        .map_err(|e| StartError::Config(e.to_string()))?,
                    environment: None,
                });
            } else {
                return Err(StartError::Config(
                    "no trust domain configured: pass --trust-domain NAME (or use --dev)".into(),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for td in &self.trust_domains {
            if !seen.insert(td.name.clone()) {
                return Err(StartError::Config(format!(
                    "trust domain `{}` is configured twice",
                    td.name
                )));
            }
        }
        if self.dev && !self.listen.ip().is_loopback() {
            return Err(StartError::Config(format!(
                "--dev serves plain HTTP and so listens on loopback only, not `{}`",
                self.listen
            )));
        }
        for u in &self.notify_webhooks {
            check_outbound_url(u, "webhook")?;
        }
        if let Some(o) = &self.console_oidc {
            o.check()?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(StartError::Config(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
        Ok(self)
    }

    pub fn publish_ahead(&self) -> Duration {
        self.key_publish_ahead
            .unwrap_or(tessera_core::manifest::MAX_JWT_TTL + self.jwks_max_age)
    }
}

/// The config file (`--config FILE`). Flags given on the command line win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data: Option<PathBuf>,
    pub database_url: Option<String>,
    pub listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub trust_domains: Vec<TrustDomainEntry>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub key_algorithm: Option<String>,
    pub jwks_max_age: Option<Ttl>,
    pub key_publish_ahead: Option<Ttl>,
    pub key_rotation_period: Option<Ttl>,
    #[serde(default)]
    pub admin_uids: Vec<u32>,
    pub ca_ttl: Option<Ttl>,
    pub ca_publish_ahead: Option<Ttl>,
    #[serde(default)]
    pub notify_webhooks: Vec<String>,
    /// `file:PATH`, `dir:PATH`, `syslog` or a URL.
    #[serde(default)]
    pub checkpoint_sinks: Vec<String>,
    /// `URL VKEY` each.
    #[serde(default)]
    pub log_witnesses: Vec<String>,
    /// The OTLP/HTTP collector traces go to (`OTEL_EXPORTER_OTLP_ENDPOINT` wins over it).
    pub otlp_endpoint: Option<String>,
    /// Key custody in a PKCS#11 token.
    pub pkcs11: Option<Pkcs11Config>,
    /// One root CA over the trust domains' CAs.
    pub ca_root: Option<bool>,
    /// The web console.
    pub console: Option<ConsoleFile>,
}

/// `trust_domains = ["prod.example.org", { name = "dev.example.org", environment = "dev" }]`
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TrustDomainEntry {
    Name(TrustDomain),
    Bound {
        name: TrustDomain,
        environment: Option<Label>,
    },
}

impl From<TrustDomainEntry> for TrustDomainConfig {
    fn from(e: TrustDomainEntry) -> Self {
        match e {
            TrustDomainEntry::Name(name) => Self {
                name,
                environment: None,
            },
            TrustDomainEntry::Bound { name, environment } => Self { name, environment },
        }
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, StartError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Config(format!("cannot read `{}`: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            StartError::Config(format!("`{}`: {}", path.display(), e.message().trim_end()))
        })
    }

    pub fn key_alg(&self) -> Result<Option<Alg>, StartError> {
        self.key_algorithm
            .as_deref()
            .map(|a| {
                Alg::parse(a).filter(|a| a.can_sign()).ok_or_else(|| {
                    StartError::Config(format!("key_algorithm `{a}` is not ES256 or EdDSA"))
                })
            })
            .transpose()
    }
}
