//! The values of identity files, each a newtype built only by its parser: selectors,
//! lifetimes, rates, hours, dates, workload kinds, client authentication methods.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A value that does not parse; the message quotes the input and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0}")]
    Selector(String),
    #[error("{0}")]
    Duration(String),
    #[error("{0}")]
    Rate(String),
    #[error("{0}")]
    Hours(String),
    #[error("{0}")]
    Date(String),
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
    /// The systemd unit whose cgroup holds the process (`nginx.service`).
    SystemdUnit,
    /// The innermost systemd slice above it (`system.slice`).
    SystemdSlice,
    /// The container's image ID (`sha256:<64 hex>`), as its runtime reports it.
    ContainerImageId,
    /// The container's image name as it was started (`registry/name:tag`).
    ContainerImage,
    /// The container's name.
    ContainerName,
    /// A container label, `KEY:VALUE`.
    ContainerLabel,
    /// An environment variable of the container's configuration, `KEY:VALUE` (only for keys
    /// the agent is told to read).
    ContainerEnv,
    /// The pod's namespace (workload, from the kubelet).
    K8sNs,
    /// The pod's service account.
    K8sSa,
    /// A pod label, `KEY:VALUE`.
    K8sPodLabel,
    K8sPodName,
    /// The container's name in its pod's spec.
    K8sContainerName,
    /// The container's image as the kubelet reports it.
    K8sContainerImage,
    /// The node the pod runs on (workloads), or the agent's node (agents).
    K8sNodeName,
    /// Node selectors, of agents attested by a projected service-account token: the cluster's
    /// name in the authority's `[[cluster]]`, the agent pod's namespace and service account.
    K8sCluster,
    K8sAgentNs,
    K8sAgentSa,
}

/// Every selector type, as identity files write it.
const KNOWN_SELECTORS: &str = "unix:uid, unix:gid, unix:user, unix:group, unix:path, unix:sha256, systemd:unit, systemd:slice, container:image_id, container:image, container:name, container:label, container:env, k8s:ns, k8s:sa, k8s:pod_label, k8s:pod_name, k8s:container_name, k8s:container_image, k8s:node_name; for agents (`node_selectors`): k8s:cluster, k8s:agent_ns, k8s:agent_sa, k8s:node_name";

/// The systemd unit types whose cgroups hold processes.
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

impl SelectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uid => "unix:uid",
            Self::Gid => "unix:gid",
            Self::User => "unix:user",
            Self::Group => "unix:group",
            Self::Path => "unix:path",
            Self::Sha256 => "unix:sha256",
            Self::SystemdUnit => "systemd:unit",
            Self::SystemdSlice => "systemd:slice",
            Self::ContainerImageId => "container:image_id",
            Self::ContainerImage => "container:image",
            Self::ContainerName => "container:name",
            Self::ContainerLabel => "container:label",
            Self::ContainerEnv => "container:env",
            Self::K8sNs => "k8s:ns",
            Self::K8sSa => "k8s:sa",
            Self::K8sPodLabel => "k8s:pod_label",
            Self::K8sPodName => "k8s:pod_name",
            Self::K8sContainerName => "k8s:container_name",
            Self::K8sContainerImage => "k8s:container_image",
            Self::K8sNodeName => "k8s:node_name",
            Self::K8sCluster => "k8s:cluster",
            Self::K8sAgentNs => "k8s:agent_ns",
            Self::K8sAgentSa => "k8s:agent_sa",
        }
    }

    /// Whether a workload's `selectors` may hold it (a process has it).
    pub fn for_workloads(self) -> bool {
        !matches!(self, Self::K8sCluster | Self::K8sAgentNs | Self::K8sAgentSa)
    }

    /// Whether a workload's `node_selectors` may hold it (an attested agent has it).
    pub fn for_agents(self) -> bool {
        matches!(
            self,
            Self::K8sCluster | Self::K8sAgentNs | Self::K8sAgentSa | Self::K8sNodeName
        )
    }
}

/// A Kubernetes object name (RFC 1123 subdomain: namespaces, service accounts, pods, nodes),
/// at most 253 characters.
pub(super) fn k8s_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
}

/// Whether `value` is valid for a Kubernetes selector of `kind`.
fn k8s_value(kind: SelectorKind, value: &str) -> bool {
    match kind {
        SelectorKind::K8sPodLabel => value.split_once(':').is_some_and(|(k, v)| {
            // A label key: an optional DNS prefix and `/`, then a name of at most 63.
            let name = k
                .rsplit_once('/')
                .map_or(k, |(prefix, n)| if k8s_name(prefix) { n } else { "" });
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }),
        SelectorKind::K8sContainerImage => {
            !value.is_empty()
                && value.len() <= 1024
                && !value.chars().any(|c| c.is_control() || c.is_whitespace())
        }
        SelectorKind::K8sCluster => crate::Label::parse(value).is_ok(),
        _ => k8s_name(value),
    }
}

/// Whether `value` is valid for a container selector of `kind` (whose values may hold `:`).
fn container_value(kind: SelectorKind, value: &str) -> bool {
    let printable = |v: &str| !v.is_empty() && v.len() <= 1024 && !v.chars().any(char::is_control);
    match kind {
        SelectorKind::ContainerImageId => value.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }),
        SelectorKind::ContainerImage => printable(value) && !value.contains(char::is_whitespace),
        SelectorKind::ContainerName => {
            value.len() <= 255
                && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        }
        SelectorKind::ContainerLabel => value.split_once(':').is_some_and(|(k, v)| {
            printable(k) && !k.contains(char::is_whitespace) && !v.chars().any(char::is_control)
        }),
        SelectorKind::ContainerEnv => value.split_once(':').is_some_and(|(k, v)| {
            !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && v.len() <= 1024
                && !v.chars().any(char::is_control)
        }),
        _ => false,
    }
}

/// A systemd unit name's characters (systemd.unit(5)), at most 255 of them.
fn unit_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
}

impl Selector {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        Self::parse_text(input).map_err(ValueError::Selector)
    }

    fn parse_text(input: &str) -> Result<Self, String> {
        // systemd unit names may hold `:` themselves: their type is a fixed prefix.
        for (prefix, kind) in [
            ("systemd:unit:", SelectorKind::SystemdUnit),
            ("systemd:slice:", SelectorKind::SystemdSlice),
        ] {
            if let Some(value) = input.strip_prefix(prefix) {
                let ok = unit_name(value)
                    && match kind {
                        SelectorKind::SystemdSlice => value.ends_with(".slice"),
                        _ => UNIT_SUFFIXES.iter().any(|s| value.ends_with(s)),
                    };
                if !ok {
                    return Err(format!(
                        "`{input}` has a value that is not valid for `{}` (a unit name ending in {})",
                        kind.as_str(),
                        match kind {
                            SelectorKind::SystemdSlice => ".slice".to_owned(),
                            _ => UNIT_SUFFIXES.join(", "),
                        }
                    ));
                }
                return Ok(Self {
                    kind,
                    value: value.to_owned(),
                });
            }
        }
        for (prefix, kind) in [
            ("container:image_id:", SelectorKind::ContainerImageId),
            ("container:image:", SelectorKind::ContainerImage),
            ("container:name:", SelectorKind::ContainerName),
            ("container:label:", SelectorKind::ContainerLabel),
            ("container:env:", SelectorKind::ContainerEnv),
        ] {
            if let Some(value) = input.strip_prefix(prefix) {
                if !container_value(kind, value) {
                    return Err(format!(
                        "`{input}` has a value that is not valid for `{}`{}",
                        kind.as_str(),
                        match kind {
                            SelectorKind::ContainerLabel | SelectorKind::ContainerEnv =>
                                " (`KEY:VALUE`)",
                            SelectorKind::ContainerImageId => " (`sha256:` and 64 hex digits)",
                            _ => "",
                        }
                    ));
                }
                return Ok(Self {
                    kind,
                    value: value.to_owned(),
                });
            }
        }
        for (prefix, kind) in [
            ("k8s:ns:", SelectorKind::K8sNs),
            ("k8s:sa:", SelectorKind::K8sSa),
            ("k8s:pod_label:", SelectorKind::K8sPodLabel),
            ("k8s:pod_name:", SelectorKind::K8sPodName),
            ("k8s:container_name:", SelectorKind::K8sContainerName),
            ("k8s:container_image:", SelectorKind::K8sContainerImage),
            ("k8s:node_name:", SelectorKind::K8sNodeName),
            ("k8s:cluster:", SelectorKind::K8sCluster),
            ("k8s:agent_ns:", SelectorKind::K8sAgentNs),
            ("k8s:agent_sa:", SelectorKind::K8sAgentSa),
        ] {
            if let Some(value) = input.strip_prefix(prefix) {
                if !k8s_value(kind, value) {
                    return Err(format!(
                        "`{input}` has a value that is not valid for `{}`{}",
                        kind.as_str(),
                        match kind {
                            SelectorKind::K8sPodLabel => " (`KEY:VALUE`, a Kubernetes label)",
                            SelectorKind::K8sContainerImage | SelectorKind::K8sCluster => "",
                            _ => " (a Kubernetes name: lowercase letters, digits, `-` and `.`)",
                        }
                    ));
                }
                return Ok(Self {
                    kind,
                    value: value.to_owned(),
                });
            }
        }
        let (kind, value) = match input.rsplit_once(':') {
            Some((k, v))
                if k.starts_with("unix:")
                    || k.starts_with("systemd:")
                    || k.starts_with("container:")
                    || k.starts_with("k8s:") =>
            {
                (k, v)
            }
            _ => {
                return Err(format!(
                    "`{input}` is not a selector: expected `<type>:<value>` with a type of {KNOWN_SELECTORS}"
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
                    "`{other}` is not a known selector type (known: {KNOWN_SELECTORS})"
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
            // Parsed above, by prefix.
            SelectorKind::SystemdUnit
            | SelectorKind::SystemdSlice
            | SelectorKind::ContainerImageId
            | SelectorKind::ContainerImage
            | SelectorKind::ContainerName
            | SelectorKind::ContainerLabel
            | SelectorKind::ContainerEnv
            | SelectorKind::K8sNs
            | SelectorKind::K8sSa
            | SelectorKind::K8sPodLabel
            | SelectorKind::K8sPodName
            | SelectorKind::K8sContainerName
            | SelectorKind::K8sContainerImage
            | SelectorKind::K8sNodeName
            | SelectorKind::K8sCluster
            | SelectorKind::K8sAgentNs
            | SelectorKind::K8sAgentSa => false,
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
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        humantime::parse_duration(input).map(Self).map_err(|e| {
            ValueError::Duration(format!(
                "`{input}` is not a duration such as `5m` or `1h`: {e}"
            ))
        })
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
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let bad = || {
            ValueError::Rate(format!(
                "`{input}` is not a rate such as `10/s`, `100/m` or `1000/h`"
            ))
        };
        let (n, unit) = input.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(ValueError::Rate(format!(
                "`{input}`: a rate of zero would refuse everything; remove the grant instead"
            )));
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
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let bad = || {
            ValueError::Hours(format!(
                "`{input}` is not an hour window such as `08-18` (UTC)"
            ))
        };
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

/// A calendar date `YYYY-MM-DD`, used for `review_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub time::Date);

impl Date {
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(input, &fmt).map(Self).map_err(|_| {
            ValueError::Date(format!("`{input}` is not a date in the form YYYY-MM-DD"))
        })
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
