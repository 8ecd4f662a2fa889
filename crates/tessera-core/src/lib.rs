//! Shared vocabulary of Tessera: SPIFFE IDs and the other security-relevant names, and the
//! identity-file model. Every other crate depends on this one; it depends on none of them.

pub mod admin_api;
pub mod agent_api;
pub mod bundle;
pub mod change_api;
pub mod glob;
pub mod id;
pub mod manifest;
pub mod private_file;

pub use id::{
    AgentId, Audience, ClientId, IdError, Kid, Label, Scope, SecretName, SecretPattern, SpiffeId,
    TrustDomain,
};

/// Seconds since the Unix epoch, the unit of every timestamp Tessera stores or signs.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether a URL's host (`Url::host_str`: a name, an IPv4 address or a bracketed IPv6 one) is
/// this machine's loopback: where plain HTTP may go.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Milliseconds since the Unix epoch: for propagation times measured across processes.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_are_named_or_addressed_loopback_only() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "localhost.example.org",
            "10.0.0.1",
            "[::2]",
            "",
            "example.org",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
