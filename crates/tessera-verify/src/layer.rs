//! A tower layer that puts verification in front of any HTTP service.
//!
//! ```ignore
//! let app = Router::new().route("/api", get(handler))
//!     .layer(RequireTokenLayer::new(verifier).scope("inventory:read"));
//! // handlers read the caller from `Extension<Verified>`.
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::{Verified, Verifier, VerifyError};

#[derive(Clone, Debug)]
pub struct RequireTokenLayer {
    verifier: Verifier,
    scope: Option<String>,
}

impl RequireTokenLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            scope: None,
        }
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
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequireToken<S> {
    inner: S,
    verifier: Verifier,
    scope: Option<String>,
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
                let mut r = refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request",
                    "a bearer token is required",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Ok(r);
            };
            let verified: Verified = match verifier.verify(&token).await {
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
            req.extensions_mut().insert(verified);
            inner.call(req).await
        })
    }
}
