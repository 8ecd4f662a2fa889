//! What every listener of Tessera shares (the authority's API and admin socket, the agent's
//! managed-identity endpoint and Workload API, the sidecars): an unauthenticated peer must not
//! be able to take a listener down by holding connections open.
//!
//! - [`limits`]: the numbers, sized from the process's descriptor limit, which
//!   [`limits::raise_nofile_limit`] raises to its hard limit at start.
//! - [`gate`]: admission. Every accepted connection takes a [`gate::Ticket`]; past the cap (in
//!   total, or for one source address or unix user) the oldest connection with no request in
//!   flight is closed to make room, so held-open, half-sent connections cannot crowd out a
//!   legitimate request. Nothing idle to evict: the new connection is refused.
//! - [`accept`]: back-off on accept errors (out of descriptors) with rate-limited logging, so
//!   a full descriptor table neither spins the loop nor floods the log.
//! - [`http`]: one hyper connection with a request-head timeout, keep-alive and idle limits,
//!   and the ticket's eviction.
//!
//! Imports run down the list: `http → gate → limits`; `accept` stands alone.

pub mod accept;
pub mod gate;
pub mod http;
pub mod limits;

pub use accept::Backoff;
pub use gate::{Gate, Refused, Source, Ticket};
pub use http::serve_http;
pub use limits::{raise_nofile_limit, Limits};
