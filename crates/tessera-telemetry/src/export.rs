//! The OTLP/HTTP (protobuf) trace pipeline: a batch processor on its own thread, the sampler and
//! resource from the standard variables, and the `tracing` layer that feeds it.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::settings::Settings;
use crate::TARGET;

#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("the OTLP traces endpoint `{endpoint}` cannot be used: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Traces being exported; dropping it flushes what is buffered.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// The pipeline the settings ask for, or `None` when tracing is off.
    pub fn start(settings: &Settings) -> Result<Option<Self>, TracingError> {
        let Some(endpoint) = settings.endpoint.clone() else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpClient::default())
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TracingError::Exporter {
                endpoint,
                reason: e.to_string(),
            })?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(settings.service_name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Some(Self { provider }))
    }

    /// The layer turning spans of [`TARGET`] into exported spans.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        // Only the attributes we set: no code location, thread, target or busy/idle timings
        // (each an attribute on every span, and the timings a clock read on every poll), and no
        // OpenTelemetry context made current on every poll (propagation reads the span's own).
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("tessera"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE))
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// The exporter's HTTP client: the workspace's reqwest (rustls on ring), blocking, because the
/// batch processor exports from a thread of its own outside any async runtime. Built on first
/// use, on that thread: a blocking client must not be made or dropped inside a runtime.
#[derive(Debug, Default)]
struct OtlpClient {
    client: OnceLock<reqwest::blocking::Client>,
}

impl OtlpClient {
    fn client(&self) -> Result<&reqwest::blocking::Client, HttpError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(self.client.get_or_init(|| c))
    }
}

/// A collector's answer is small; more than this is not read.
const MAX_RESPONSE: u64 = 64 * 1024;

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        use std::io::Read;
        let (parts, body) = request.into_parts();
        let mut req = self
            .client()?
            .request(parts.method, parts.uri.to_string())
            .body(body.to_vec());
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let res = req.send()?;
        let status = res.status();
        let headers = res.headers().clone();
        let mut body = Vec::new();
        res.take(MAX_RESPONSE).read_to_end(&mut body)?;
        let mut out = Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            *h = headers;
        }
        Ok(out.body(Bytes::from(body))?)
    }
}
