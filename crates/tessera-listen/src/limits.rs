//! The numbers a listener enforces, and the descriptor limit they are sized from.

use std::time::Duration;

/// Descriptors kept back from connections for everything else a process opens (database
/// connections, files, the listeners themselves, outbound calls).
const RESERVED_DESCRIPTORS: u64 = 128;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once; past it the oldest idle one is closed.
    pub max_connections: usize,
    /// Connections held at once from one source (address, or unix user).
    pub max_per_source: usize,
    /// Time for a TLS handshake, or for the first byte of a plain connection.
    pub handshake_timeout: Duration,
    /// Time for a whole request head, once the connection is open.
    pub head_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// Limits for a listener that may use `share` (0..=1) of the descriptors this process can
    /// open beyond a reserve.
    pub fn from_nofile(share: f64) -> Self {
        let soft = nofile_soft_limit().unwrap_or(1024);
        let budget = soft.saturating_sub(RESERVED_DESCRIPTORS).max(16);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a share of a descriptor count, clamped to at least 8"
        )]
        let max = ((budget as f64 * share.clamp(0.0, 1.0)) as usize).max(8);
        Self {
            max_connections: max,
            // One address may take half: a NAT or a load balancer is one source too.
            max_per_source: (max / 2).max(4),
            handshake_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

fn nofile_soft_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises this process's descriptor limit to its hard limit (what systemd and most
/// distributions leave at 1,024 soft): returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_descriptor_budget() {
        let whole = Limits::from_nofile(1.0);
        let half = Limits::from_nofile(0.5);
        assert!(whole.max_connections >= half.max_connections);
        assert!(half.max_per_source <= half.max_connections);
        let soft = nofile_soft_limit().unwrap();
        assert!(u64::try_from(whole.max_connections).unwrap() < soft.max(16 + 128));
    }

    #[test]
    fn raising_never_lowers() {
        let before = nofile_soft_limit().unwrap();
        assert!(raise_nofile_limit() >= before);
    }
}
