//! A tower layer that puts verification, and optionally authorization, in front of any HTTP
//! service.
//!
//! ```ignore
//! let app = Router::new().route("/api", get(handler))
//!     .layer(RequireTokenLayer::new(verifier).scope("inventory:read").authorize(authorizer));
//! // handlers read the caller from `Extension<Verified>`.
//! ```
//!
//! Refusals: 401 without a valid token (RFC 6750 challenge), 403 `insufficient_scope`, 403 with
//! `tessera-decision: deny` when the policy denies (the reason goes to the decision log, not to
//! the caller), 429 with `Retry-After` over a rate limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};
use tracing::Instrument;

use tessera_core::{Scope, SpiffeId};
use tessera_policy::{Authn, Env};

use crate::authorize::Authorizer;
use crate::{Verified, Verifier, VerifyError};

/// 403 for a policy denial. The caller learns only that policy denied it.
fn denied<B: Default>() -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut()
        .insert("tessera-decision", HeaderValue::from_static("deny"));
    r
}

#[derive(Clone, Debug)]
pub struct RequireTokenLayer {
    verifier: Verifier,
    scope: Option<String>,
    authorizer: Option<Authorizer>,
}

impl RequireTokenLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            scope: None,
            authorizer: None,
        }
    }

    /// Also decide each call (caller, method, path) with the policy in force.
    pub fn authorize(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Also require this scope (403 `insufficient_scope` without it).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

impl<S> Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            verifier: self.verifier.clone(),
            scope: self.scope.clone(),
            authorizer: self.authorizer.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequireToken<S> {
    inner: S,
    verifier: Verifier,
    scope: Option<String>,
    authorizer: Option<Authorizer>,
}

/// RFC 6750 §3: the challenge says what was wrong, without echoing the token.
fn refuse<B: Default>(status: StatusCode, error: &str, description: &str) -> Response<B> {
    let mut resp = Response::new(B::default());
    *resp.status_mut() = status;
    let desc: String = description
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect();
    let value = format!("Bearer error=\"{error}\", error_description=\"{desc}\"");
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireToken<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let scope = self.scope.clone();
        let authorizer = self.authorizer.clone();
        let span = tracing::info_span!(
            target: tessera_telemetry::TARGET,
            "verify",
            "otel.name" = "tessera.verify",
            "otel.kind" = "server",
            "http.request.method" = req.method().as_str(),
            "tessera.caller" = tracing::field::Empty,
            "tessera.authn" = "jwt",
            "tessera.verify.result" = tracing::field::Empty,
            "tessera.verify.reason" = tracing::field::Empty,
            "tessera.decision" = tracing::field::Empty,
            "tessera.decision.reason" = tracing::field::Empty,
            "url.path" = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        tessera_telemetry::continue_trace(&span, req.headers());
        Box::pin(async move {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| rest.trim().to_owned())
                });
            let Some(token) = token else {
                span.record("tessera.verify.result", "refused");
                span.record("tessera.verify.reason", "no_token");
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request",
                    "a bearer token is required",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Ok(r);
            };
            let result = verifier.verify(&token).await;
            match &result {
                Ok(v) => {
                    span.record("tessera.verify.result", "valid");
                    span.record("tessera.caller", v.subject.as_str());
                }
                Err(e) => {
                    span.record("tessera.verify.result", "refused");
                    span.record("tessera.verify.reason", e.reason());
                }
            }
            let verified: Verified = match result {
                Ok(v) => v,
                Err(VerifyError::KeysUnavailable(_)) => {
                    return Ok(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the issuer's keys are not available",
                    ));
                }
                Err(e) => {
                    return Ok(refuse(
                        StatusCode::UNAUTHORIZED,
                        "invalid_token",
                        &e.to_string(),
                    ))
                }
            };
            if let Some(s) = &scope {
                if !verified.has_scope(s) {
                    let mut r = refuse(
                        StatusCode::FORBIDDEN,
                        "insufficient_scope",
                        &format!("scope `{s}` is required"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "Bearer error=\"insufficient_scope\", scope=\"{s}\""
                    )) {
                        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    }
                    return Ok(r);
                }
            }
            if let Some(authz) = &authorizer {
                let now = tessera_core::now_unix();
                let iat = verified
                    .claims
                    .get("iat")
                    .and_then(serde_json::Value::as_i64);
                let env = Env {
                    now,
                    source_ip: None,
                    token_age: iat.map_or(0, |iat| now - iat),
                };
                let Ok(caller) = SpiffeId::parse(&verified.subject) else {
                    return Ok(denied());
                };
                let Ok(actors) = crate::authorize::actor_chain(&verified.claims) else {
                    return Ok(denied());
                };
                let scopes: Vec<Scope> = verified
                    .scopes
                    .iter()
                    .filter_map(|s| Scope::parse(s).ok())
                    .collect();
                if authz.canonicalize(&mut req).is_err() {
                    let mut r = Response::new(ResBody::default());
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return Ok(r);
                }
                span.record("url.path", req.uri().path());
                let d = authz.decide_chain(
                    &caller,
                    &actors,
                    req.method().as_str(),
                    req.uri().path(),
                    &scopes,
                    Authn::Jwt,
                    &env,
                );
                span.record(
                    "tessera.decision",
                    match (d.allowed, d.limited.is_some()) {
                        (_, true) => "limited",
                        (true, false) => "allow",
                        (false, false) => "deny",
                    },
                );
                span.record("tessera.decision.reason", d.reason.as_str());
                if let Some(limited) = &d.limited {
                    let mut r = Response::new(ResBody::default());
                    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    r.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(limited.retry_after_secs()),
                    );
                    return Ok(r);
                }
                if !d.allowed {
                    return Ok(denied());
                }
                req.extensions_mut().insert(d);
            }
            req.extensions_mut().insert(verified);
            // The service's own spans and calls continue this one.
            tessera_telemetry::inject(&span, req.headers_mut());
            inner.call(req).instrument(span).await
        })
    }
}
