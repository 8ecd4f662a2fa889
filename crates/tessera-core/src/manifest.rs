//! Identity as code: the TOML files that `tessera apply -f` reads (see `examples/mesh.toml`).
//!
//! Loading happens where the files are (the CLI): every field is parsed into its newtype, unknown
//! fields are refused, and each error names the file, line and column. The result is a
//! [`DesiredState`] whose items carry their `source` (`file:line`), so the server can name the
//! place when a check needs the whole stored state (a grant to a workload that does not exist).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::id::{AgentId, Audience, ClientId, Label, Scope, SecretPattern, SpiffeId};

/// Default and maximum lifetimes of the credentials a workload receives.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
pub const MAX_JWT_TTL: Duration = Duration::from_secs(3600);
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
pub const MAX_X509_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// How a workload proves who it is to a node agent. Unknown kinds are refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: SelectorKind,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SelectorKind {
    Uid,
    Gid,
    User,
    Group,
    Path,
    Sha256,
}

impl SelectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uid => "unix:uid",
            Self::Gid => "unix:gid",
            Self::User => "unix:user",
            Self::Group => "unix:group",
            Self::Path => "unix:path",
            Self::Sha256 => "unix:sha256",
        }
    }
}

impl Selector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let (kind, value) = match input.rsplit_once(':') {
            Some((k, v)) if k.starts_with("unix:") => (k, v),
            _ => {
                return Err(format!(
                    "`{input}` is not a selector: expected `unix:<type>:<value>`"
                ))
            }
        };
        // `unix:path:/usr/bin/x` holds colons only in the type part; paths with colons are rare
        // enough that we accept the split at the last colon only for the other types.
        let (kind, value) = if let Some(path) = input.strip_prefix("unix:path:") {
            ("unix:path", path)
        } else {
            (kind, value)
        };
        let kind = match kind {
            "unix:uid" => SelectorKind::Uid,
            "unix:gid" => SelectorKind::Gid,
            "unix:user" => SelectorKind::User,
            "unix:group" => SelectorKind::Group,
            "unix:path" => SelectorKind::Path,
            "unix:sha256" => SelectorKind::Sha256,
            other => {
                return Err(format!(
                    "`{other}` is not a known selector type (known: unix:uid, unix:gid, unix:user, unix:group, unix:path, unix:sha256)"
                ))
            }
        };
        let ok = match kind {
            SelectorKind::Uid | SelectorKind::Gid => {
                !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit())
            }
            SelectorKind::Path => value.starts_with('/') && !value.contains('\0'),
            SelectorKind::Sha256 => {
                value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
            }
            SelectorKind::User | SelectorKind::Group => {
                !value.is_empty()
                    && value.len() <= 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            }
        };
        if !ok {
            return Err(format!(
                "`{input}` has a value that is not valid for `{}`",
                kind.as_str()
            ));
        }
        Ok(Self {
            kind,
            value: value.to_owned(),
        })
    }

    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A lifetime written as `90s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(pub Duration);

impl Ttl {
    pub fn parse(input: &str) -> Result<Self, String> {
        humantime::parse_duration(input)
            .map(Self)
            .map_err(|e| format!("`{input}` is not a duration such as `5m` or `1h`: {e}"))
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A rate written as `N/s`, `N/m` or `N/h`: at most N events per period, in bursts of up to N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(input: &str) -> Result<Self, String> {
        let bad = || format!("`{input}` is not a rate such as `10/s`, `100/m` or `1000/h`");
        let (n, unit) = input.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "`{input}`: a rate of zero would refuse everything; remove the grant instead"
            ));
        }
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A UTC time window `HH-HH` (start hour inclusive, end hour exclusive; `22-06` wraps midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub start: u8,
    pub end: u8,
}

impl Hours {
    pub fn parse(input: &str) -> Result<Self, String> {
        let bad = || format!("`{input}` is not an hour window such as `08-18` (UTC)");
        let (a, b) = input.split_once('-').ok_or_else(bad)?;
        let start: u8 = a.trim().parse().map_err(|_| bad())?;
        let end: u8 = b.trim().parse().map_err(|_| bad())?;
        if start > 23 || end > 24 || start == end {
            return Err(bad());
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}-{:02}", self.start, self.end)
    }
}

impl Serialize for Hours {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A just-in-time scope: issued only on its own, for a short lifetime, under conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JitScope {
    pub scope: Scope,
    /// The longest a token carrying this scope may live.
    pub max_ttl: Ttl,
    /// Caller environments that may ask for it; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<Label>,
    /// The UTC hours in which it may be issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<Hours>,
    /// For exchanged and delegated requests: the oldest subject token accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_age: Option<Ttl>,
}

/// A calendar date `YYYY-MM-DD`, used for `review_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub time::Date);

impl Date {
    pub fn parse(input: &str) -> Result<Self, String> {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(input, &fmt)
            .map(Self)
            .map_err(|_| format!("`{input}` is not a date in the form YYYY-MM-DD"))
    }

    /// Seconds since the Unix epoch at the end of this day (UTC): a review is due after it.
    pub fn end_unix(self) -> i64 {
        self.0
            .with_hms(23, 59, 59)
            .map(|dt| dt.assume_utc().unix_timestamp())
            .unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        match self.0.format(&fmt) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    #[default]
    Runtime,
    Deployment,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Deployment => "deployment",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    PrivateKeyJwt,
    ClientSecret,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::ClientSecret => "client_secret",
        }
    }
}

// ---- The file format, as written ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    workload: Vec<Spanned<WorkloadDoc>>,
    #[serde(default)]
    grant: Vec<Spanned<GrantDoc>>,
    #[serde(default)]
    client: Vec<Spanned<ClientDoc>>,
    #[serde(default)]
    trust: Vec<Spanned<TrustDoc>>,
    #[serde(default)]
    policies: Option<PoliciesDoc>,
    #[serde(default)]
    secret_grant: Vec<Spanned<SecretGrantDoc>>,
}

/// Who may read which vault secrets. Compiled into Cedar `read_secret` / `describe_secret`
/// permits (a policy file of its own per identity file), so secret access is versioned, shadowed,
/// validated and explained like every other policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretGrantDoc {
    from: SpiffeId,
    secrets: Vec<SecretPattern>,
    #[serde(default)]
    access: SecretAccess,
    why: Spanned<String>,
    #[serde(default)]
    review_by: Option<Date>,
}

/// `read`: the value and the metadata; `metadata`: the metadata only (Key Vault's Secrets User
/// and Reader).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SecretAccess {
    #[default]
    Read,
    Metadata,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadDoc {
    id: Spanned<SpiffeId>,
    owner: Label,
    purpose: String,
    #[serde(default)]
    environment: Option<Label>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    selectors: Vec<Selector>,
    #[serde(default)]
    jwt_ttl: Option<Spanned<Ttl>>,
    #[serde(default)]
    x509_ttl: Option<Spanned<Ttl>>,
    #[serde(default)]
    aliases: Vec<Audience>,
    #[serde(default)]
    scopes: Vec<Scope>,
    #[serde(default)]
    kind: WorkloadKind,
    #[serde(default)]
    nodes: Vec<AgentId>,
    #[serde(default)]
    jit: Vec<Spanned<JitScope>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantDoc {
    from: SpiffeId,
    to: SpiffeId,
    #[serde(default)]
    scopes: Vec<Scope>,
    #[serde(default)]
    routes: Vec<Route>,
    why: Spanned<String>,
    #[serde(default)]
    review_by: Option<Date>,
    #[serde(default)]
    deployment: bool,
    #[serde(default)]
    token_rate: Option<Rate>,
    #[serde(default)]
    call_rate: Option<Rate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientDoc {
    id: ClientId,
    workload: SpiffeId,
    auth: ClientAuth,
    #[serde(default)]
    jwks_file: Option<Spanned<String>>,
    #[serde(default)]
    secret_ttl: Option<Ttl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustDoc {
    name: Label,
    issuer: String,
    #[serde(default)]
    jwks_file: Option<Spanned<String>>,
    audience: Audience,
    #[serde(default)]
    algorithms: Vec<String>,
    #[serde(default)]
    max_age: Option<Ttl>,
    #[serde(default)]
    single_use: bool,
    #[serde(default)]
    map: Vec<TrustMap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesDoc {
    #[serde(default)]
    files: Vec<Spanned<String>>,
}

// ---- The desired state, as sent to the server ------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustMap {
    pub claims: BTreeMap<String, toml::Value>,
    pub workload: SpiffeId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub id: SpiffeId,
    pub owner: Label,
    pub purpose: String,
    pub environment: Option<Label>,
    pub tags: BTreeMap<String, String>,
    pub selectors: Vec<Selector>,
    pub jwt_ttl: Ttl,
    pub x509_ttl: Ttl,
    pub aliases: Vec<Audience>,
    pub scopes: Vec<Scope>,
    pub kind: WorkloadKind,
    /// Node agents that may hand out this workload's SVIDs; empty means any agent of its
    /// trust domain.
    #[serde(default)]
    pub nodes: Vec<AgentId>,
    /// Scopes of this service issued only just in time: alone, briefly, under conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jit: Vec<JitScope>,
    pub source: String,
}

impl Workload {
    /// The just-in-time rule for `scope`, if it is one.
    pub fn jit_scope(&self, scope: &Scope) -> Option<&JitScope> {
        self.jit.iter().find(|j| &j.scope == scope)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub from: SpiffeId,
    pub to: SpiffeId,
    pub scopes: Vec<Scope>,
    pub routes: Vec<Route>,
    pub why: String,
    pub review_by: Option<Date>,
    /// Lets a `deployment` workload reach a `runtime` service, which the shipped policy
    /// otherwise forbids: the explicit decision the separation asks for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deployment: bool,
    /// At most this many tokens for the target per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rate: Option<Rate>,
    /// At most this many calls to the target per period, enforced where the call lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_rate: Option<Rate>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Client {
    pub id: ClientId,
    pub workload: SpiffeId,
    pub auth: ClientAuth,
    /// The client's public keys (a JWKS document), for `private_key_jwt`.
    pub jwks: Option<String>,
    pub secret_ttl: Option<Ttl>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    pub name: Label,
    pub issuer: String,
    pub jwks: Option<String>,
    pub audience: Audience,
    pub algorithms: Vec<String>,
    pub max_age: Option<Ttl>,
    pub single_use: bool,
    pub map: Vec<TrustMap>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// The file name, relative to the identity file that listed it.
    pub name: String,
    pub text: String,
}

/// Everything a set of identity files asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredState {
    pub workloads: Vec<Workload>,
    pub grants: Vec<Grant>,
    pub clients: Vec<Client>,
    pub trusts: Vec<Trust>,
    pub policies: Vec<PolicyFile>,
}

/// Reads one identity file, or every `*.toml` in a folder (in name order), into one state.
pub fn load(path: &Path) -> Result<DesiredState, ManifestError> {
    let meta = std::fs::metadata(path).map_err(|source| ManifestError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ManifestError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ManifestError::File {
                path: path.display().to_string(),
                message: "the folder holds no `.toml` identity files".into(),
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut state = DesiredState::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.display().to_string(),
            source,
        })?;
        parse_into(&mut state, &file, &text)?;
    }
    check_duplicates(&state)?;
    Ok(state)
}

/// Parses one file's text. `file` names it in errors and anchors relative paths.
pub fn parse_str(file: &Path, text: &str) -> Result<DesiredState, ManifestError> {
    let mut state = DesiredState::default();
    parse_into(&mut state, file, text)?;
    check_duplicates(&state)?;
    Ok(state)
}

struct Locator<'a> {
    path: String,
    text: &'a str,
    /// Byte offset at which each line starts, so that locating a span is a binary search and a
    /// file of 10,000 workloads is not rescanned from the top for each one.
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(path: String, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path,
            text,
            line_starts,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // INVARIANT: line_starts[0] == 0 <= offset, so the partition point is at least 1.
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |l| l.chars().count())
            + 1;
        (line, column)
    }

    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ManifestError {
        let (line, column) = self.line_col(span.start);
        ManifestError::At {
            path: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    fn source(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.path, self.line_col(span.start).0)
    }
}

fn parse_into(state: &mut DesiredState, file: &Path, text: &str) -> Result<(), ManifestError> {
    let loc = Locator::new(file.display().to_string(), text);
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        loc.at(span, e.message().trim_end().replace('\n', "; "))
    })?;
    let base = file.parent().unwrap_or(Path::new("."));

    for w in doc.workload {
        let span = w.span();
        let w = w.into_inner();
        let ttl = |t: Option<Spanned<Ttl>>, default: Duration, max: Duration, name: &str| {
            let Some(t) = t else {
                return Ok(Ttl(default));
            };
            let span = t.span();
            let t = t.into_inner();
            if t.0 < MIN_TTL || t.0 > max {
                return Err(loc.at(
                    span,
                    format!(
                        "`{name}` must be between {} and {}",
                        humantime::format_duration(MIN_TTL),
                        humantime::format_duration(max)
                    ),
                ));
            }
            Ok(t)
        };
        let jwt_ttl = ttl(w.jwt_ttl, DEFAULT_JWT_TTL, MAX_JWT_TTL, "jwt_ttl")?;
        let x509_ttl = ttl(w.x509_ttl, DEFAULT_X509_TTL, MAX_X509_TTL, "x509_ttl")?;
        let mut scopes = w.scopes;
        scopes.sort();
        scopes.dedup();
        let mut jit = Vec::new();
        for j in w.jit {
            let jspan = j.span();
            let j = j.into_inner();
            if !scopes.contains(&j.scope) {
                return Err(loc.at(
                    jspan,
                    format!(
                        "jit scope `{}` is not one of this workload's `scopes`",
                        j.scope
                    ),
                ));
            }
            if j.max_ttl.0 < MIN_TTL || j.max_ttl.0 > jwt_ttl.0 {
                return Err(loc.at(
                    jspan,
                    format!(
                        "jit scope `{}`: `max_ttl` must be between {} and the workload's `jwt_ttl` ({})",
                        j.scope,
                        humantime::format_duration(MIN_TTL),
                        humantime::format_duration(jwt_ttl.0)
                    ),
                ));
            }
            if jit.iter().any(|x: &JitScope| x.scope == j.scope) {
                return Err(loc.at(jspan, format!("jit scope `{}` is declared twice", j.scope)));
            }
            jit.push(j);
        }
        state.workloads.push(Workload {
            id: w.id.into_inner(),
            owner: w.owner,
            purpose: w.purpose,
            environment: w.environment,
            tags: w.tags,
            selectors: w.selectors,
            jwt_ttl,
            x509_ttl,
            aliases: w.aliases,
            scopes,
            kind: w.kind,
            nodes: w.nodes,
            jit,
            source: loc.source(span),
        });
    }
    for g in doc.grant {
        let span = g.span();
        let g = g.into_inner();
        if g.why.get_ref().trim().is_empty() {
            return Err(loc.at(g.why.span(), "`why` must say why this trust exists"));
        }
        for r in &g.routes {
            for m in &r.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(loc.at(
                        span.clone(),
                        format!("`{m}` is not an HTTP method (write it in capitals, e.g. `GET`)"),
                    ));
                }
            }
            for p in &r.paths {
                if !p.starts_with('/') {
                    return Err(loc.at(
                        span.clone(),
                        format!("route path `{p}` must start with `/`"),
                    ));
                }
                // INVARIANT: route paths become Cedar string literals; these characters are the
                // ones that could end or escape one.
                if p.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                    return Err(loc.at(
                        span.clone(),
                        format!(
                            "route path `{}` holds a quote, a backslash or a control character",
                            p.escape_debug()
                        ),
                    ));
                }
            }
        }
        state.grants.push(Grant {
            from: g.from,
            to: g.to,
            scopes: g.scopes,
            routes: g.routes,
            why: g.why.into_inner(),
            review_by: g.review_by,
            deployment: g.deployment,
            token_rate: g.token_rate,
            call_rate: g.call_rate,
            source: loc.source(span),
        });
    }
    for c in doc.client {
        let span = c.span();
        let c = c.into_inner();
        let jwks = match (&c.auth, c.jwks_file) {
            (ClientAuth::PrivateKeyJwt, None) => {
                return Err(loc.at(span, "a `private_key_jwt` client needs `jwks_file`"));
            }
            (ClientAuth::ClientSecret, Some(f)) => {
                return Err(loc.at(
                    f.span(),
                    "`jwks_file` is only for `private_key_jwt` clients",
                ));
            }
            (_, Some(f)) => Some(read_relative(&loc, base, &f)?),
            (_, None) => None,
        };
        state.clients.push(Client {
            id: c.id,
            workload: c.workload,
            auth: c.auth,
            jwks,
            secret_ttl: c.secret_ttl,
            source: loc.source(span),
        });
    }
    for t in doc.trust {
        let span = t.span();
        let t = t.into_inner();
        let jwks = t
            .jwks_file
            .as_ref()
            .map(|f| read_relative(&loc, base, f))
            .transpose()?;
        if !(t.issuer.starts_with("https://") || t.issuer.starts_with("http://")) {
            return Err(loc.at(span, format!("trust issuer `{}` must be a URL", t.issuer)));
        }
        state.trusts.push(Trust {
            name: t.name,
            issuer: t.issuer,
            jwks,
            audience: t.audience,
            algorithms: t.algorithms,
            max_age: t.max_age,
            single_use: t.single_use,
            map: t.map,
            source: loc.source(span),
        });
    }
    if !doc.secret_grant.is_empty() {
        let mut text = String::new();
        for g in doc.secret_grant {
            let span = g.span();
            let g = g.into_inner();
            if g.why.get_ref().trim().is_empty() {
                return Err(loc.at(g.why.span(), "`why` must say why this access exists"));
            }
            if g.secrets.is_empty() {
                return Err(loc.at(span, "`secrets` names no secret"));
            }
            // INVARIANT: SPIFFE IDs and secret patterns hold no `"` or `\` (their parsers refuse
            // them), and the comment loses line breaks, so nothing here changes the policy's
            // structure.
            let why: String = g
                .why
                .get_ref()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let review = g
                .review_by
                .map_or_else(String::new, |d| format!("; review by {d}"));
            let actions = match g.access {
                SecretAccess::Read => "[Action::\"read_secret\", Action::\"describe_secret\"]",
                SecretAccess::Metadata => "[Action::\"describe_secret\"]",
            };
            let names: Vec<String> = g
                .secrets
                .iter()
                .map(|p| match p.prefix() {
                    Some(prefix) => format!("resource.name like \"{prefix}*\""),
                    None => format!("resource.name == \"{}\"", p.as_str()),
                })
                .collect();
            text.push_str(&format!(
                "// secret_grant at {}: {why}{review}\npermit (principal == Workload::\"{}\", action in {actions}, resource)\nwhen {{ {} }};\n\n",
                loc.source(span),
                g.from,
                names.join(" || ")
            ));
        }
        state.policies.push(PolicyFile {
            name: format!("secret grants of {}", loc.path),
            text,
        });
    }
    if let Some(p) = doc.policies {
        for pattern in p.files {
            let found =
                glob_files(base, pattern.get_ref()).map_err(|m| loc.at(pattern.span(), m))?;
            if found.is_empty() {
                return Err(loc.at(
                    pattern.span(),
                    format!("no policy file matches `{}`", pattern.get_ref()),
                ));
            }
            for (name, path) in found {
                let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                state.policies.push(PolicyFile { name, text });
            }
        }
    }
    Ok(())
}

fn read_relative(
    loc: &Locator<'_>,
    base: &Path,
    f: &Spanned<String>,
) -> Result<String, ManifestError> {
    let p = base.join(f.get_ref());
    std::fs::read_to_string(&p)
        .map_err(|e| loc.at(f.span(), format!("cannot read `{}`: {e}", p.display())))
}

/// Expands `dir/*.cedar`-style patterns: `*` may appear in the last component only.
fn glob_files(base: &Path, pattern: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let rel = Path::new(pattern);
    let (dir, name) = match (rel.parent(), rel.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(format!("`{pattern}` is not a file pattern")),
    };
    if dir.to_string_lossy().contains('*') {
        return Err(format!("`{pattern}`: `*` is allowed in the file name only"));
    }
    let full_dir = base.join(dir);
    if !name.contains('*') {
        let p = full_dir.join(name);
        return Ok(if p.is_file() {
            vec![(pattern.to_owned(), p)]
        } else {
            vec![]
        });
    }
    let entries = std::fs::read_dir(&full_dir)
        .map_err(|e| format!("cannot read folder `{}`: {e}", full_dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if crate::glob::matches(name, file_name) && entry.path().is_file() {
            out.push((dir.join(file_name).display().to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses two definitions of the same thing across the files being applied.
fn check_duplicates(state: &DesiredState) -> Result<(), ManifestError> {
    let dup = |source: &str, message: String| ManifestError::File {
        path: source.to_owned(),
        message,
    };
    let mut ids = BTreeMap::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for w in &state.workloads {
        if let Some(prev) = ids.insert(w.id.as_str(), w.source.as_str()) {
            return Err(dup(
                &w.source,
                format!("workload `{}` is defined twice (also at {prev})", w.id),
            ));
        }
    }
    for w in &state.workloads {
        for a in &w.aliases {
            if ids.contains_key(a.as_str()) || names.insert(a.as_str(), w.source.as_str()).is_some()
            {
                return Err(dup(
                    &w.source,
                    format!("alias `{a}` names more than one workload"),
                ));
            }
        }
    }
    let mut pairs = BTreeSet::new();
    for g in &state.grants {
        if !pairs.insert((g.from.as_str(), g.to.as_str())) {
            return Err(dup(
                &g.source,
                format!(
                    "a second grant from `{}` to `{}`: merge them into one",
                    g.from, g.to
                ),
            ));
        }
    }
    let mut clients = BTreeSet::new();
    for c in &state.clients {
        if !clients.insert(c.id.as_str()) {
            return Err(dup(
                &c.source,
                format!("client `{}` is defined twice", c.id),
            ));
        }
    }
    let mut trusts = BTreeSet::new();
    for t in &state.trusts {
        if !trusts.insert(t.name.as_str()) {
            return Err(dup(
                &t.source,
                format!("trust `{}` is defined twice", t.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DesiredState, ManifestError> {
        parse_str(Path::new("mesh.toml"), text)
    }

    const GOOD: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/a"
owner = "team-a"
purpose = "calls b"
environment = "prod"
selectors = ["unix:uid:1001", "unix:path:/usr/bin/a"]
jwt_ttl = "2m"

[[workload]]
id = "spiffe://example.org/prod/b"
owner = "team-b"
purpose = "serves"
aliases = ["b", "https://b.internal"]
scopes = ["b:read", "b:write"]

[[grant]]
from = "spiffe://example.org/prod/a"
to = "spiffe://example.org/prod/b"
scopes = ["b:read"]
routes = [{ methods = ["GET"], paths = ["/v1/*"] }]
why = "a reads b"
review_by = "2027-06-30"
"#;

    #[test]
    fn parses_a_mesh() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.workloads.len(), 2);
        assert_eq!(s.workloads[0].jwt_ttl, Ttl(Duration::from_secs(120)));
        assert_eq!(s.workloads[1].jwt_ttl, Ttl(DEFAULT_JWT_TTL));
        assert_eq!(s.workloads[0].selectors[1].value(), "/usr/bin/a");
        assert_eq!(s.grants[0].review_by.unwrap().to_string(), "2027-06-30");
        assert_eq!(s.grants[0].source, "mesh.toml:17");
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let text = GOOD.replace("owner = \"team-b\"", "owner = \"team-b\"\nownr = \"x\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("mesh.toml:13:1: unknown field `ownr`"), "{e}");
    }

    #[test]
    fn invalid_spiffe_id_names_line() {
        let text = GOOD.replace(
            "spiffe://example.org/prod/b\"\nowner",
            "spiffe://example.org/prod/b/\"\nowner",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("mesh.toml:11:"), "{e}");
        assert!(e.contains("`spiffe://example.org/prod/b/`"), "{e}");
    }

    #[test]
    fn ttl_bounds() {
        let e = parse(&GOOD.replace("\"2m\"", "\"2h\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`jwt_ttl` must be between"), "{e}");
    }

    #[test]
    fn unknown_selector_refused() {
        let e = parse(&GOOD.replace("unix:uid:1001", "k8s:ns:default"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a selector") || e.contains("not a known selector"),
            "{e}"
        );
        let e = parse(&GOOD.replace("unix:uid:1001", "unix:pid:7"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`unix:pid` is not a known selector type"), "{e}");
    }

    #[test]
    fn duplicates_refused() {
        let text = format!("{GOOD}\n[[workload]]\nid = \"spiffe://example.org/prod/a\"\nowner = \"x\"\npurpose = \"y\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("defined twice"), "{e}");
        let text = GOOD.replace(
            "aliases = [\"b\"",
            "aliases = [\"spiffe://example.org/prod/a\"",
        );
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("names more than one workload"));
    }

    #[test]
    fn grant_needs_a_reason() {
        let e = parse(&GOOD.replace("why = \"a reads b\"", "why = \"  \""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`why` must say why"), "{e}");
        let e = parse(&GOOD.replace("why = \"a reads b\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `why`"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        // The repository's own `examples/`, exactly as users get it (key files included).
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mesh.toml");
        let s = load(&example).unwrap();
        assert_eq!(s.workloads.len(), 3);
        assert_eq!(s.grants.len(), 1);
        assert_eq!(s.trusts.len(), 1);
        assert_eq!(s.policies.len(), 1);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text as an identity file: an error or a state, never a panic.
        #[test]
        fn parse_never_panics(s in "\\PC{0,400}") {
            let _ = parse_str(Path::new("p.toml"), &s);
        }

        #[test]
        fn selectors_never_panic(s in "\\PC{0,60}") {
            let _ = Selector::parse(&s);
            let _ = Selector::parse(&format!("unix:{s}"));
        }
    }
}
