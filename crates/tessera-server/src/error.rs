//! Errors, and the one place that turns them into HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the server could not start. Each is one line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("data folder `{path}`: {message}")]
    DataDir { path: String, message: String },
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("storage: {0}")]
    Store(#[from] tessera_store::StoreError),
    #[error("cannot listen on `{addr}`: {message}")]
    Listen { addr: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("keys: {0}")]
    Keys(String),
    #[error("stored policies do not load: {0}")]
    Policy(#[from] tessera_policy::PolicyError),
}

/// RFC 6749 §5.2 error codes (plus RFC 8707's `invalid_target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    TemporarilyUnavailable,
}

impl OAuthCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }
}

/// An error an HTTP caller sees. `description` is for people and never holds internals.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}: {description}", code.as_str())]
    OAuth {
        code: OAuthCode,
        description: String,
    },
    /// Client authentication failed; `basic` adds the `WWW-Authenticate: Basic` challenge.
    #[error("invalid_client: {description}")]
    Client { description: String, basic: bool },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request conflicts with the resource's state (a deleted secret, a version written
    /// meanwhile): `409`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// `413`.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A rate limit refused the request: `429` with `Retry-After`.
    #[error("rate_limited: {description}")]
    RateLimited {
        description: String,
        retry_after_secs: u64,
    },
    /// Storage or audit unavailable: the detail is logged, never sent.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn oauth(code: OAuthCode, description: impl Into<String>) -> Self {
        Self::OAuth {
            code,
            description: description.into(),
        }
    }

    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        Self::Unavailable(detail.to_string())
    }
}

impl From<tessera_store::StoreError> for ApiError {
    fn from(e: tessera_store::StoreError) -> Self {
        Self::unavailable(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, body, challenge) = match self {
            Self::RateLimited {
                description,
                retry_after_secs,
            } => {
                retry_after = Some(retry_after_secs);
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "rate_limited", "error_description": description}),
                    false,
                )
            }
            Self::OAuth { code, description } => {
                let status = match code {
                    OAuthCode::InvalidClient => StatusCode::UNAUTHORIZED,
                    OAuthCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_REQUEST,
                };
                (
                    status,
                    json!({"error": code.as_str(), "error_description": description}),
                    false,
                )
            }
            Self::Client { description, basic } => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_client", "error_description": description}),
                basic,
            ),
            Self::NotFound(d) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "error_description": d}),
                false,
            ),
            Self::BadRequest(d) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": d}),
                false,
            ),
            Self::Forbidden(d) => (
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "error_description": d}),
                false,
            ),
            Self::Conflict(d) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "error_description": d}),
                false,
            ),
            Self::TooLarge(d) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "too_large", "error_description": d}),
                false,
            ),
            Self::Unavailable(detail) => {
                tracing::error!(%detail, "request failed on an internal error");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "temporarily_unavailable", "error_description": "the authority cannot complete this request right now; try again"}),
                    false,
                )
            }
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tessera\""),
            );
        }
        resp
    }
}
