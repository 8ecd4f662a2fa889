//! One span per API request, the server's side of a hop: it continues the caller's W3C trace
//! context and names the route, never the path (a path may name a secret) or any header value.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::Empty;

/// `axum::middleware::from_fn` over every API route.
pub(crate) async fn request_span(req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        target: tessera_telemetry::TARGET,
        "request",
        "otel.name" = Empty,
        "otel.kind" = "server",
        "otel.status_code" = Empty,
        "http.request.method" = req.method().as_str(),
        "http.route" = Empty,
        "http.response.status_code" = Empty,
        trace_id = Empty,
    );
    if span.is_disabled() {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    span.record("otel.name", format!("{} {route}", req.method()));
    span.record("http.route", route.as_str());
    tessera_telemetry::continue_trace(&span, req.headers());
    tessera_telemetry::within(span, next.run(req)).await
}
