//! W3C Trace Context (`traceparent`, `tracestate`) in and out of HTTP headers.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the caller's span named by `traceparent`, if the request carries a
/// valid one (an invalid one is ignored: the span starts a trace of its own), and records the
/// span's trace id in its `trace_id` field so that log lines inside it carry it.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
    if let Some(id) = trace_id(span) {
        span.record("trace_id", tracing::field::display(id));
    }
}

/// Writes `span`'s context into `headers` as `traceparent` (replacing any the request brought),
/// so the next hop continues this trace.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Runs one hop's handling inside `span` and records its outcome there:
/// `http.response.status_code`, and status ERROR on a 5xx (OpenTelemetry's HTTP conventions
/// leave 4xx unset on servers: a refusal is an answer). A disabled span costs nothing more.
pub async fn within<B>(
    span: tracing::Span,
    handling: impl std::future::Future<Output = http::Response<B>>,
) -> http::Response<B> {
    if span.is_disabled() {
        return handling.await;
    }
    let res = handling.instrument(span.clone()).await;
    let status = res.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    res
}

/// The span's trace id as 32 hex digits, when it is being traced.
fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
