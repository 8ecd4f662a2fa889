//! Traces for every Tessera process (server, agent, sidecars, services using the verifier
//! library), exported over OTLP. Off unless an OTLP endpoint is configured: by the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables or the
//! server's config file; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it off.
//!
//! Spans are ordinary `tracing` spans with the target [`TARGET`]. While tracing is off no
//! subscriber layer enables that target, so a span costs one cached callsite check. Their
//! attribute names are listed in `docs/observability.md`; they never carry a token, secret or
//! key, only identities, decisions and reasons.
//!
//! Files, lowest first: `settings` (what the environment asks for), `export` (the OTLP pipeline),
//! `propagate` (W3C `traceparent` in and out of HTTP headers).

mod export;
mod propagate;
mod settings;

pub use export::{Tracing, TracingError};
pub use propagate::{continue_trace, inject, within};
pub use settings::Settings;

/// The `tracing` target of every span meant for export.
pub const TARGET: &str = "otel";
