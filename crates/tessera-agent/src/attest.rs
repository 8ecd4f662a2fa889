//! Workload attestation: who is the process at the other end of a connection, read from the
//! kernel (peer credentials of a unix socket, or the owner of a loopback TCP socket) and from
//! `/proc`, and which `unix:*` selectors it has.
//!
//! PID reuse: a process is identified by its pid *and* its start time. A process that started
//! after the connection was accepted cannot be the one that connected (its pid was reused), and
//! the start time is checked again after the slow reads (the executable's digest) and on every
//! later request, so a process that exits mid-attestation is never attested in its successor's
//! name.
//!
//! Exec after connect: a pid and a start time survive `execve`, so a process could connect,
//! fork, and exec a workload's binary while its child talks on the inherited connection. A
//! [`Binding`] is therefore made at accept (the peer's pidfd, its executable's device and
//! inode, its start time, and the inode of the socket at its end) and [`Binding::check`]ed on
//! every request and every message of a stream: the image must be the one it connected with,
//! and every process holding the connection must run that same image as the same user.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tessera_core::manifest::{Selector, SelectorKind};

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the calling process {0} is gone")]
    Gone(i32),
    #[error("process {0} started after its connection was accepted (its pid was reused)")]
    PidReused(i32),
    #[error("cannot read process {pid}: {message}")]
    Proc { pid: i32, message: String },
    #[error("the connection has no peer process")]
    NoPeer,
    #[error("no process owns the connection from `{0}`")]
    NoSocketOwner(String),
    #[error("process {0} executed another program after it connected")]
    ImageChanged(i32),
    #[error("the connection is also held by process {holder}, which is not the process that connected ({pid})")]
    ForeignHolder { pid: i32, holder: i32 },
    #[error("the connection's other end cannot be found in the kernel's socket tables")]
    Unbound,
}

/// An executable image: the device and inode behind `/proc/PID/exe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageId {
    dev: u64,
    ino: u64,
}

/// The image `pid` runs now.
pub fn image_of(pid: i32) -> Result<ImageId, AttestError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).map_err(|_| AttestError::Gone(pid))?;
    Ok(ImageId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// How many times a foreign holder is looked for again (2 ms apart) before it is refused: a
/// child between `fork` and `execve` holds the connection for well under that.
const FOREIGN_HOLDER_RECHECKS: usize = 10;

/// The effective uid of `pid`.
fn euid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What was true of a connection's peer when it was accepted, checked again on every use.
#[derive(Debug, Clone)]
pub struct Binding {
    pub peer: Peer,
    image: ImageId,
    start_ticks: u64,
    /// The process itself (where the kernel gives a pidfd): it cannot be confused with a later
    /// process that reuses the pid.
    pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The inode of the socket at the peer's end.
    socket: u64,
}

impl Binding {
    /// Binds a connection to its peer as it is now. `socket`: the inode of the peer's end.
    pub fn new(
        peer: Peer,
        pidfd: Option<std::os::fd::OwnedFd>,
        socket: Option<u64>,
    ) -> Result<Self, AttestError> {
        if peer.pid <= 0 {
            return Err(AttestError::NoPeer);
        }
        let socket = socket.ok_or(AttestError::Unbound)?;
        let start_ticks = start_ticks(peer.pid)?;
        if start_ticks as f64 / clock_ticks() > peer.accepted_uptime + 0.01 {
            return Err(AttestError::PidReused(peer.pid));
        }
        let b = Self {
            peer,
            image: image_of(peer.pid)?,
            start_ticks,
            pidfd: pidfd.map(std::sync::Arc::new),
            socket,
        };
        b.check()?;
        Ok(b)
    }

    /// The peer is still the process that connected, running the image it connected with, and
    /// no other program holds the connection.
    pub fn check(&self) -> Result<(), AttestError> {
        self.check_process()?;
        let pid = self.peer.pid;
        // A workload that starts a program while it talks to us lends the connection to the
        // child for a moment: between `fork` and the end of `execve` the child holds every
        // descriptor, close-on-exec ones included, and may already show the new image. Such a
        // holder is gone within milliseconds; one that stays is refused.
        let mut foreign = self.foreign_holder();
        for _ in 0..FOREIGN_HOLDER_RECHECKS {
            if foreign.is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            foreign = self.foreign_holder();
        }
        match foreign {
            Some(holder) => Err(AttestError::ForeignHolder { pid, holder }),
            None => Ok(()),
        }
    }

    /// A process other than the peer holding the connection while running another image or as
    /// another user.
    fn foreign_holder(&self) -> Option<i32> {
        crate::sockets::holders_but(self.socket, i32::try_from(std::process::id()).ok())
            .into_iter()
            .filter(|h| *h != self.peer.pid)
            .find(|h| {
                !(image_of(*h).is_ok_and(|i| i == self.image) && euid_of(*h) == Some(self.peer.uid))
            })
    }

    /// The cheap half of [`Binding::check`] (no walk of `/proc`): the peer is still the process
    /// that connected, running the same image. After the slow reads of an attestation this is
    /// what can have changed in between.
    pub fn check_process(&self) -> Result<(), AttestError> {
        let pid = self.peer.pid;
        if let Some(fd) = &self.pidfd {
            if pidfd_pid(fd) != Some(pid) {
                return Err(AttestError::Gone(pid));
            }
        }
        if start_ticks(pid)? != self.start_ticks {
            return Err(AttestError::PidReused(pid));
        }
        if image_of(pid)? != self.image {
            return Err(AttestError::ImageChanged(pid));
        }
        Ok(())
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo` (`-1`, so `None`, once it has exited).
fn pidfd_pid(fd: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 0)
}

/// What the kernel says about the peer when the connection is accepted.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since boot when the connection was accepted.
    pub accepted_uptime: f64,
}

/// An attested process and its selectors.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: Option<String>,
    pub group_names: Vec<String>,
    pub exe: Option<PathBuf>,
    pub sha256: Option<String>,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// Where the process runs (container, pod, systemd unit), from its cgroup file; `None`
    /// when that cannot be read or is ambiguous, and then no selector that needs it matches.
    pub placement: Option<crate::cgroup::Placement>,
    /// The caller's container as its runtime describes it (set by the Workload API after the
    /// runtime answered; `None` outside containers or without a runtime).
    pub container: Option<std::sync::Arc<crate::runtime::ContainerInfo>>,
    /// The caller's pod and container as its kubelet describes them (`None` outside pods or
    /// without a kubelet).
    pub pod: Option<std::sync::Arc<crate::kubelet::PodContainer>>,
}

pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

/// The start time of `pid` in clock ticks since boot.
pub fn start_ticks(pid: i32) -> Result<u64, AttestError> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| AttestError::Gone(pid))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| AttestError::Proc {
            pid,
            message: "unreadable stat".into(),
        })?;
    // Fields from 3 on; the start time is field 22, the 20th here.
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| AttestError::Proc {
            pid,
            message: "no start time in stat".into(),
        })
}

fn status_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// An executable file as (path, device, inode, size, mtime).
type FileKey = (PathBuf, u64, u64, u64, i64);

/// Digests of executables, by (path, device, inode, size, mtime): hashing a large binary on
/// every connection would make the first fetch slow.
#[derive(Debug, Default)]
pub struct DigestCache {
    map: Mutex<HashMap<FileKey, String>>,
}

impl DigestCache {
    fn digest(&self, pid: i32, exe: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        // Through /proc/PID/exe, so a replaced file on disk is not what gets hashed.
        let proc_exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let meta = std::fs::metadata(&proc_exe).ok()?;
        let key = (
            exe.to_path_buf(),
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
        );
        if let Ok(m) = self.map.lock() {
            if let Some(d) = m.get(&key) {
                return Some(d.clone());
            }
        }
        let bytes = std::fs::read(&proc_exe).ok()?;
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(mut m) = self.map.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(key, hex.clone());
        }
        Some(hex)
    }
}

/// The peer as `pid` is now, for attesting a process that did not connect (`agent attest`).
pub fn peer_of(pid: i32) -> Result<Peer, AttestError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| AttestError::Gone(pid))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| AttestError::Proc {
                pid,
                message: format!("no {name} in status"),
            })
    };
    Ok(Peer {
        pid,
        uid: field("Uid:")?,
        gid: field("Gid:")?,
        accepted_uptime: uptime(),
    })
}

/// Attests the peer process. `want_digest`: only compute the executable digest when some
/// registration asks for `unix:sha256`.
pub fn attest(peer: Peer, cache: &DigestCache, want_digest: bool) -> Result<Process, AttestError> {
    let pid = peer.pid;
    if pid <= 0 {
        return Err(AttestError::NoPeer);
    }
    let before = start_ticks(pid)?;
    // 10 ms of slack for the tick granularity of the start time.
    if before as f64 / clock_ticks() > peer.accepted_uptime + 0.01 {
        return Err(AttestError::PidReused(pid));
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let sha256 = match (&exe, want_digest) {
        (Some(e), true) => cache.digest(pid, e),
        _ => None,
    };
    let mut groups = status_groups(pid);
    if !groups.contains(&peer.gid) {
        groups.push(peer.gid);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let group_names = groups
        .iter()
        .filter_map(|g| {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*g))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
        .collect();
    let placement = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|text| crate::cgroup::Placement::parse(&text).ok());
    if start_ticks(pid)? != before {
        return Err(AttestError::PidReused(pid));
    }
    Ok(Process {
        pid,
        uid: peer.uid,
        gid: peer.gid,
        groups,
        user,
        group_names,
        exe,
        sha256,
        start_ticks: before,
        placement,
        container: None,
        pod: None,
    })
}

impl Process {
    /// Every selector the process has, as identity files write them (for `agent attest`).
    pub fn selectors(&self) -> Vec<String> {
        let mut out = vec![format!("unix:uid:{}", self.uid)];
        out.extend(self.groups.iter().map(|g| format!("unix:gid:{g}")));
        out.extend(self.user.iter().map(|u| format!("unix:user:{u}")));
        out.extend(self.group_names.iter().map(|g| format!("unix:group:{g}")));
        out.extend(
            self.exe
                .iter()
                .map(|e| format!("unix:path:{}", e.display())),
        );
        out.extend(self.sha256.iter().map(|d| format!("unix:sha256:{d}")));
        if let Some(p) = &self.placement {
            out.extend(p.unit.iter().map(|u| format!("systemd:unit:{u}")));
            out.extend(p.slice.iter().map(|s| format!("systemd:slice:{s}")));
        }
        if let Some(c) = &self.container {
            out.push(format!("container:image_id:{}", c.image_id));
            out.push(format!("container:image:{}", c.image));
            out.push(format!("container:name:{}", c.name));
            out.extend(
                c.labels
                    .iter()
                    .map(|(k, v)| format!("container:label:{k}:{v}")),
            );
            out.extend(c.env.iter().map(|(k, v)| format!("container:env:{k}:{v}")));
        }
        if let Some(c) = &self.pod {
            out.push(format!("k8s:ns:{}", c.namespace));
            out.push(format!("k8s:sa:{}", c.service_account));
            out.push(format!("k8s:pod_name:{}", c.pod_name));
            out.extend(
                c.labels
                    .iter()
                    .map(|(k, v)| format!("k8s:pod_label:{k}:{v}")),
            );
            out.push(format!("k8s:container_name:{}", c.container_name));
            out.push(format!("k8s:container_image:{}", c.image));
            out.push(format!("k8s:container_image:{}", c.image_id));
            out.push(format!("k8s:node_name:{}", c.node_name));
        }
        out
    }

    /// Whether every selector matches (an empty list matches nothing: a registration without
    /// selectors is never handed out by an agent).
    pub fn matches_all(&self, selectors: &[Selector]) -> bool {
        !selectors.is_empty() && selectors.iter().all(|s| self.matches(s))
    }

    pub fn matches(&self, s: &Selector) -> bool {
        let v = s.value();
        match s.kind() {
            SelectorKind::Uid => v.parse::<u32>().is_ok_and(|u| u == self.uid),
            SelectorKind::Gid => v.parse::<u32>().is_ok_and(|g| self.groups.contains(&g)),
            SelectorKind::User => self.user.as_deref() == Some(v),
            SelectorKind::Group => self.group_names.iter().any(|g| g == v),
            SelectorKind::Path => self.exe.as_deref() == Some(Path::new(v)),
            SelectorKind::Sha256 => self
                .sha256
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(v)),
            SelectorKind::SystemdUnit => self
                .placement
                .as_ref()
                .is_some_and(|p| p.unit.as_deref() == Some(v)),
            SelectorKind::SystemdSlice => self
                .placement
                .as_ref()
                .is_some_and(|p| p.slice.as_deref() == Some(v)),
            kind @ (SelectorKind::K8sNs
            | SelectorKind::K8sSa
            | SelectorKind::K8sPodLabel
            | SelectorKind::K8sPodName
            | SelectorKind::K8sContainerName
            | SelectorKind::K8sContainerImage
            | SelectorKind::K8sNodeName) => self.pod.as_ref().is_some_and(|c| c.matches(kind, v)),
            // Node selectors describe agents, never processes.
            SelectorKind::K8sCluster | SelectorKind::K8sAgentNs | SelectorKind::K8sAgentSa => false,
            kind => self
                .container
                .as_ref()
                .is_some_and(|c| container_matches(c, kind, v)),
        }
    }
}

/// Whether a container's metadata (from its runtime) satisfies a `container:` selector.
fn container_matches(c: &crate::runtime::ContainerInfo, kind: SelectorKind, v: &str) -> bool {
    let pair = |map: &std::collections::BTreeMap<String, String>| {
        v.split_once(':')
            .is_some_and(|(k, want)| map.get(k).is_some_and(|have| have == want))
    };
    match kind {
        SelectorKind::ContainerImageId => c.image_id == v,
        SelectorKind::ContainerImage => c.image == v,
        SelectorKind::ContainerName => c.name == v,
        SelectorKind::ContainerLabel => pair(&c.labels),
        SelectorKind::ContainerEnv => pair(&c.env),
        _ => false,
    }
}

/// The owner of a loopback TCP connection from `peer` to `local`, from the kernel's socket
/// tables (`sock_diag`, or `/proc/net/tcp{,6}`): its uid, then the process holding the socket.
pub fn tcp_peer(
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    accepted_uptime: f64,
) -> Result<Binding, AttestError> {
    let (uid, inode) =
        find_tcp_socket(peer, local).ok_or_else(|| AttestError::NoSocketOwner(peer.to_string()))?;
    // The oldest holder is the one that connected (a forked child has a larger start time).
    let pid = crate::sockets::holders(inode)
        .into_iter()
        .min_by_key(|p| start_ticks(*p).unwrap_or(u64::MAX))
        .ok_or_else(|| AttestError::NoSocketOwner(peer.to_string()))?;
    let gid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Gid:"))
                .and_then(|g| g.split_whitespace().next()?.parse().ok())
        })
        .ok_or(AttestError::Gone(pid))?;
    Binding::new(
        Peer {
            pid,
            uid,
            gid,
            accepted_uptime,
        },
        None,
        Some(inode),
    )
}

/// The unix user owning the client end of a loopback TCP connection from `peer` to `local`.
pub fn tcp_socket_uid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<u32> {
    find_tcp_socket(peer, local).map(|(uid, _)| uid)
}

/// `/proc/net/tcp` writes addresses as hex of the in-memory (host order per 32-bit word) bytes.
fn proc_net_addr(a: std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v) => {
            let o = v.ip().octets();
            format!("{:08X}:{:04X}", u32::from_le_bytes(o), v.port())
        }
        std::net::SocketAddr::V6(v) => {
            let o = v.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|c| {
                    let w: [u8; 4] = c.try_into().unwrap_or([0; 4]);
                    format!("{:08X}", u32::from_le_bytes(w))
                })
                .collect();
            format!("{words}:{:04X}", v.port())
        }
    }
}

/// The uid and inode of the client's socket (local end `peer`, remote end `local`): asked of the
/// kernel by address (`sockets::tcp_owner`); read from `/proc/net` only where it cannot be asked.
fn find_tcp_socket(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<(u32, u64)> {
    if let Some(found) = crate::sockets::tcp_owner(peer, local) {
        return Some(found);
    }
    let (want_local, want_rem) = (proc_net_addr(peer), proc_net_addr(local));
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(l), Some(r), Some(uid), Some(inode)) =
                (f.get(1), f.get(2), f.get(7), f.get(9))
            else {
                continue;
            };
            if l.eq_ignore_ascii_case(&want_local) && r.eq_ignore_ascii_case(&want_rem) {
                return Some((uid.parse().ok()?, inode.parse().ok()?));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Process {
        let peer = Peer {
            pid: i32::try_from(std::process::id()).unwrap(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            accepted_uptime: uptime(),
        };
        attest(peer, &DigestCache::default(), true).unwrap()
    }

    #[test]
    fn attests_this_process() {
        let p = me();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(p.exe.as_deref(), Some(exe.as_path()));
        let bytes = std::fs::read(&exe).unwrap();
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p.sha256.as_deref(), Some(hex.as_str()));
        let sel = |s: &str| Selector::parse(s).unwrap();
        assert!(p.matches(&sel(&format!("unix:uid:{}", p.uid))));
        assert!(!p.matches(&sel(&format!("unix:uid:{}", p.uid + 1))));
        assert!(p.matches(&sel(&format!("unix:path:{}", exe.display()))));
        assert!(!p.matches(&sel("unix:path:/usr/bin/other")));
        assert!(p.matches(&sel(&format!("unix:sha256:{hex}"))));
        assert!(p.matches_all(&[
            sel(&format!("unix:uid:{}", p.uid)),
            sel(&format!("unix:gid:{}", p.gid))
        ]));
        assert!(!p.matches_all(&[]));
        if let Some(u) = &p.user {
            assert!(p.matches(&sel(&format!("unix:user:{u}"))));
        }
    }

    #[test]
    fn a_process_younger_than_its_connection_is_refused() {
        let peer = Peer {
            pid: i32::try_from(std::process::id()).unwrap(),
            uid: 0,
            gid: 0,
            // Accepted "before boot": this process started after that.
            accepted_uptime: -10.0,
        };
        assert!(matches!(
            attest(peer, &DigestCache::default(), false),
            Err(AttestError::PidReused(_))
        ));
        let gone = Peer {
            pid: i32::MAX - 1,
            uid: 0,
            gid: 0,
            accepted_uptime: uptime(),
        };
        assert!(matches!(
            attest(gone, &DigestCache::default(), false),
            Err(AttestError::Gone(_))
        ));
    }

    #[test]
    fn finds_the_owner_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_server_side, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let found = tcp_peer(peer, local, uptime()).unwrap().peer;
        assert_eq!(found.pid, i32::try_from(std::process::id()).unwrap());
        assert_eq!(found.uid, nix::unistd::getuid().as_raw());
        let nobody: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tcp_peer(nobody, local, uptime()).is_err());
    }
}
