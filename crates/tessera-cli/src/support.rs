//! What every command uses: the admin client for `--data`/`--server`, printing JSON or text,
//! durations, logging, the KEK from the environment, and the shutdown signal.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use tessera_server::KekSource;

use crate::admin_client::AdminClient;
use crate::cli::{LogFormat, Output, Target};

pub(crate) fn admin(target: &Target) -> anyhow::Result<AdminClient> {
    match &target.server {
        Some(url) => AdminClient::http(
            url,
            target.admin_token_file.as_deref(),
            target.ca_file.as_deref(),
        ),
        None => Ok(AdminClient::for_data_dir(&target.data)),
    }
}

pub(crate) fn print<T: Serialize>(target: &Target, v: &T, text: impl FnOnce() -> String) {
    print_as(target.output, v, text);
}

/// Prints `v` as JSON, or `text()` for people.
pub(crate) fn print_as<T: Serialize>(output: Output, v: &T, text: impl FnOnce() -> String) {
    let out = match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        // Last line of defence for renderers that print a server string without
        // `render::clean`: no escape sequence reaches the terminal.
        Output::Text => text()
            .chars()
            .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
            .collect(),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
}

/// `k=v` with `v` percent-encoded for a query string.
pub(crate) fn form_query(k: &str, v: &str) -> String {
    let mut s = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{k}={s}")
}

pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|e| anyhow!("`{s}` is not a duration such as `30s` or `5m`: {e}"))
}

/// Logs to stderr, and traces over OTLP when the standard `OTEL_*` variables (or `configured`, a
/// config file's endpoint) ask for them. Keep the returned value alive: dropping it flushes the
/// spans still buffered. While tracing is off, the fmt layer filters out the span target too, so
/// a span costs only its callsite's cached check.
pub(crate) fn init_logs(
    format: LogFormat,
    default: &str,
    service: &str,
    configured: Option<&str>,
) -> anyhow::Result<Option<tessera_telemetry::Tracing>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let settings = tessera_telemetry::Settings::from_env(service, configured);
    let tracing = tessera_telemetry::Tracing::start(&settings)?;
    // Tracing off: the fmt layer drops the span target too, so no layer enables a span. On, with
    // JSON logs: it sees the spans (it prints events only), so that a line carries its span's
    // `trace_id`; text logs, for people, skip that cost (it formats every span's fields).
    let seen = tracing.is_some() && format == LogFormat::Json;
    let spans = format!(
        "{}={}",
        tessera_telemetry::TARGET,
        if seen { "trace" } else { "off" }
    );
    let asked = std::env::var("TESSERA_LOG").unwrap_or_else(|_| default.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{asked},{spans}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},{spans}")));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_current_span(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let _ = match &tracing {
        Some(t) => registry.with(t.layer()).try_init(),
        None => registry.try_init(),
    };
    Ok(tracing)
}

/// Serves `/healthz`, `/metrics` (the registry, in the Prometheus text format) and any `extra`
/// routes on `addr`, which must be loopback. Returns the URL it listens on.
pub(crate) async fn serve_admin(
    addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    extra: axum::Router,
) -> anyhow::Result<String> {
    use axum::routing::get;
    if !addr.ip().is_loopback() {
        anyhow::bail!("--admin-listen {addr}: loopback only");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let registry = std::sync::Arc::new(registry);
    let app = extra.route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                out
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The key-encryption key from the environment, if given there.
pub(crate) fn kek_from_env() -> Option<KekSource> {
    if let Ok(v) = std::env::var("TESSERA_KEK") {
        return Some(KekSource::Value(v));
    }
    std::env::var_os("TESSERA_KEK_FILE").map(|p| KekSource::File(PathBuf::from(p)))
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when it is awaited:
/// call it before printing a ready line, or a signal sent right after the line kills the process
/// with the default action instead of shutting it down.
pub(crate) fn wait_for_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::form_query;

    #[test]
    fn query_encoding() {
        assert_eq!(
            form_query("id", "spiffe://a/b c"),
            "id=spiffe%3A%2F%2Fa%2Fb%20c"
        );
    }
}
