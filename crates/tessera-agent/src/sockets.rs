//! The kernel's view of a connection's other end: which socket it is (the `sock_diag` netlink
//! interface for unix sockets, as `ss -x` asks it) and every process that holds it (the
//! `socket:[INODE]` links under `/proc/*/fd`, as `ss -p` finds them).

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const AF_UNIX: u8 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_PEER: u16 = 2;
/// `struct nlmsghdr` and `struct unix_diag_msg`.
const NLMSG_HDR_LEN: usize = 16;
const UNIX_DIAG_MSG_LEN: usize = 16;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct inet_diag_req_v2` and the offsets in `struct inet_diag_msg` of what is read.
const INET_DIAG_REQ_LEN: usize = 56;
const INET_DIAG_SOCKID_AT: usize = 4;
const INET_DIAG_UID_AT: usize = 64;
const INET_DIAG_INODE_AT: usize = 68;

/// The inode of the socket at the other end of the unix stream `local` (the server side), whose
/// peer is process `peer_pid`.
///
/// The kernel makes the accepted end of a connection in the *client's* network namespace, so
/// for a client in a container with a network of its own (the socket mounted into it) the
/// question is asked there: from a netlink socket made on a short-lived thread that entered the
/// peer's namespace (root only; otherwise `None`, and the caller is not attested).
pub fn unix_peer_inode(local: &impl AsFd, peer_pid: i32) -> Option<u64> {
    let ino = u32::try_from(nix::sys::stat::fstat(local.as_fd()).ok()?.st_ino).ok()?;
    if let Some(peer) = diag_socket().and_then(|nl| ask_peer(&nl, ino)) {
        return Some(peer);
    }
    let ns = std::fs::File::open(format!("/proc/{peer_pid}/ns/net")).ok()?;
    let nl = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        diag_socket()
    })
    .join()
    .ok()
    .flatten()?;
    ask_peer(&nl, ino)
}

/// Asks `sock_diag` on `nl` for the peer of the unix socket with inode `ino`.
fn ask_peer(nl: &std::os::fd::OwnedFd, ino: u32) -> Option<u64> {
    // struct unix_diag_req: family, protocol, pad, states (all), inode, show, cookie (any).
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&[AF_UNIX, 0, 0, 0]);
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&ino.to_ne_bytes());
    body.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    ask(nl, &body, |answer| parse_peer(answer, ino))
}

/// A `sock_diag` netlink socket, in the calling thread's network namespace.
fn diag_socket() -> Option<std::os::fd::OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()
}

/// Sends one `SOCK_DIAG_BY_FAMILY` request with `body` on `nl` and reads the kernel's answer
/// with `parse`.
fn ask<T>(
    nl: &std::os::fd::OwnedFd,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Option<T>,
) -> Option<T> {
    let len = u32::try_from(NLMSG_HDR_LEN + body.len()).ok()?;
    let mut req = Vec::with_capacity(NLMSG_HDR_LEN + body.len());
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(body);
    sendto(
        nl.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 1024];
    let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    parse(buf.get(..n)?)
}

/// The uid and inode of the TCP socket whose local end is `local` and remote end `remote`, asked
/// of the kernel by that exact address pair (`sock_diag`, as `ss` does): one question, whatever
/// the number of sockets on the host, where reading `/proc/net/tcp` grows with every socket (and
/// with every connection in `TIME_WAIT`). `None` when the kernel knows no such socket or cannot
/// be asked.
pub fn tcp_owner(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<(u32, u64)> {
    let family = match (local, remote) {
        (std::net::SocketAddr::V4(_), std::net::SocketAddr::V4(_)) => AF_INET,
        (std::net::SocketAddr::V6(_), std::net::SocketAddr::V6(_)) => AF_INET6,
        _ => return None,
    };
    let id = inet_sockid(local, remote);
    // struct inet_diag_req_v2: family, protocol, extensions (none), pad, states (all), the id.
    let mut body = Vec::with_capacity(INET_DIAG_REQ_LEN);
    body.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&id);
    ask(&diag_socket()?, &body, |answer| {
        parse_inet_owner(answer, &id)
    })
}

/// `struct inet_diag_sockid` for a socket: ports and addresses in network order, any
/// interface, no cookie.
fn inet_sockid(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Vec<u8> {
    let addr = |a: std::net::SocketAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match a.ip() {
            std::net::IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
            std::net::IpAddr::V6(v) => out = v.octets(),
        }
        out
    };
    let mut id = Vec::with_capacity(48);
    id.extend_from_slice(&local.port().to_be_bytes());
    id.extend_from_slice(&remote.port().to_be_bytes());
    id.extend_from_slice(&addr(local));
    id.extend_from_slice(&addr(remote));
    id.extend_from_slice(&0u32.to_ne_bytes()); // interface
    id.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    id.extend_from_slice(&u32::MAX.to_ne_bytes());
    id
}

/// The uid and inode in the kernel's answer, if it is about the socket `id` names.
fn parse_inet_owner(msg: &[u8], id: &[u8]) -> Option<(u32, u64)> {
    let len = usize::try_from(u32_at(msg, 0)?).ok()?;
    let msg = msg.get(..len)?;
    if u16_at(msg, 4)? != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let body = msg.get(NLMSG_HDR_LEN..)?;
    // Ports and addresses must be the ones asked for (the interface and cookie are the
    // kernel's to fill in).
    let asked = id.get(..36)?;
    if body.get(INET_DIAG_SOCKID_AT..INET_DIAG_SOCKID_AT + 36)? != asked {
        return None;
    }
    Some((
        u32_at(body, INET_DIAG_UID_AT)?,
        u64::from(u32_at(body, INET_DIAG_INODE_AT)?),
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The `UNIX_DIAG_PEER` attribute of the kernel's answer about socket `ino`.
fn parse_peer(msg: &[u8], ino: u32) -> Option<u64> {
    let len = usize::try_from(u32_at(msg, 0)?).ok()?;
    let msg = msg.get(..len)?;
    if u16_at(msg, 4)? == NLMSG_ERROR {
        return None;
    }
    // The answer must be about the socket asked for.
    if u32_at(msg, NLMSG_HDR_LEN + 4)? != ino {
        return None;
    }
    let mut at = NLMSG_HDR_LEN + UNIX_DIAG_MSG_LEN;
    while let (Some(alen), Some(atype)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let alen = usize::from(alen);
        if alen < 4 {
            return None;
        }
        if atype == UNIX_DIAG_PEER {
            return u32_at(msg, at + 4).map(u64::from);
        }
        at = at.checked_add((alen + 3) & !3)?;
    }
    None
}

/// Every process that holds socket `inode` open (those this process may inspect: all of them
/// when the agent runs as root).
pub fn holders(inode: u64) -> Vec<i32> {
    holders_but(inode, None)
}

/// [`holders`], not looking into process `skip` (the agent itself, whose many descriptors never
/// include a workload's end of a connection).
///
/// This walks every process's descriptor table, on every Workload API request: each table is
/// opened once and its links read relative to it, which costs about half what reading each
/// `/proc/PID/fd/N` by its full path did.
pub fn holders_but(inode: u64, skip: Option<i32>) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let target = format!("socket:[{inode}]");
    let mut found = Vec::new();
    // `/proc` opened once, each table relative to it: no path walk from `/` per process, no
    // allocation per entry.
    let Ok(mut procs) = nix::dir::Dir::open(
        "/proc",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return found;
    };
    let pids: Vec<i32> = procs
        .iter()
        .flatten()
        .filter_map(|e| {
            std::str::from_utf8(e.file_name().to_bytes())
                .ok()?
                .parse()
                .ok()
        })
        .collect();
    let mut path = String::with_capacity(24);
    let mut names: Vec<std::ffi::CString> = Vec::new();
    for pid in pids {
        if Some(pid) == skip {
            continue;
        }
        path.clear();
        // INVARIANT: writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut path, format_args!("{pid}/fd"));
        let Ok(mut dir) = nix::dir::Dir::openat(
            &procs,
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) else {
            continue;
        };
        // Descriptor numbers are short: listing them first costs no system call.
        names.clear();
        names.extend(
            dir.iter()
                .flatten()
                .filter(|e| e.file_name().to_bytes().first() != Some(&b'.'))
                .map(|e| e.file_name().to_owned()),
        );
        let holds = names.iter().any(|name| {
            nix::fcntl::readlinkat(&dir, name.as_c_str())
                .is_ok_and(|l| l.as_bytes() == target.as_bytes())
        });
        if holds {
            found.push(pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_other_end_and_its_holders() {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let b_ino = std::fs::metadata(format!("/proc/self/fd/{}", b.as_raw_fd()))
            .unwrap()
            .ino();
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(unix_peer_inode(&a, me), Some(b_ino));
        assert_eq!(holders(b_ino), vec![me]);
        drop(b);
        assert!(holders(b_ino).is_empty());
    }

    #[test]
    fn finds_the_owner_of_a_tcp_connection_by_its_addresses() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd()))
            .unwrap()
            .ino();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(tcp_owner(local, remote), Some((uid, ino)));
        // The other direction is the server's end: another socket.
        assert_ne!(tcp_owner(remote, local).map(|(_, i)| i), Some(ino));
        let gone = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(tcp_owner(gone, remote), None);
    }

    #[test]
    fn inet_answers_about_another_socket_give_nothing() {
        let a: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let id = inet_sockid(a, b);
        let mut m = vec![0u8; NLMSG_HDR_LEN + 72];
        let len = u32::try_from(m.len()).unwrap();
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let body = NLMSG_HDR_LEN;
        m[body + 4..body + 52].copy_from_slice(&id);
        m[body + 64..body + 68].copy_from_slice(&1000u32.to_ne_bytes());
        m[body + 68..body + 72].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(parse_inet_owner(&m, &id), Some((1000, 77)));
        let other = inet_sockid(b, a);
        assert_eq!(parse_inet_owner(&m, &other), None);
        assert_eq!(parse_inet_owner(&m[..20], &id), None);
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_inet_owner(&m, &id), None);
    }

    #[test]
    fn malformed_answers_give_nothing() {
        assert_eq!(parse_peer(&[], 1), None);
        assert_eq!(parse_peer(&[255; 8], 1), None);
        let mut m = vec![0u8; 40];
        m[..4].copy_from_slice(&40u32.to_ne_bytes());
        m[20..24].copy_from_slice(&7u32.to_ne_bytes());
        // An attribute of length 0 would loop forever.
        assert_eq!(parse_peer(&m, 7), None);
        m[32..34].copy_from_slice(&8u16.to_ne_bytes());
        m[34..36].copy_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        m[36..40].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(parse_peer(&m, 7), Some(99));
        assert_eq!(parse_peer(&m, 8), None, "an answer about another socket");
    }
}
