//! The one place errors become HTTP responses: `ApiError` and its `IntoResponse`, and a `From`
//! for every typed error of the floors below (issuance, callers, secrets, leases, policy sets,
//! identity files, rotation, trust domains).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::custody::KeyError;
use crate::app::NotServed;
use crate::domain::access::AccessError;
use crate::domain::apply::ApplyError;
use crate::domain::caller::CallerError;
use crate::domain::issue::{IssueError, OAuthCode};
use crate::domain::leases::LeaseError;
use crate::domain::policy_sets::PolicySetError;
use crate::domain::review::ReviewError;
use crate::domain::rotation::RotationError;
use crate::domain::secrets::SecretsError;

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

impl From<NotServed> for ApiError {
    fn from(e: NotServed) -> Self {
        Self::NotFound(e.to_string())
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Refused { code, reason } => Self::oauth(code, reason),
            IssueError::Limited {
                reason,
                retry_after_secs,
            } => Self::RateLimited {
                description: reason,
                retry_after_secs,
            },
            IssueError::Replayed => Self::Client {
                description: "a single-use credential was presented again (replay)".into(),
                basic: false,
            },
            IssueError::Unavailable(detail) => Self::Unavailable(detail),
        }
    }
}

impl From<CallerError> for ApiError {
    fn from(e: CallerError) -> Self {
        match e {
            CallerError::Unauthenticated(description) => Self::Client {
                description,
                basic: false,
            },
            CallerError::Forbidden(d) => Self::Forbidden(d),
        }
    }
}

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> Self {
        match e {
            SecretsError::NotFound(d) => Self::NotFound(d),
            SecretsError::Denied(d) => Self::Forbidden(d),
            SecretsError::Conflict(d) => Self::Conflict(d),
            SecretsError::Unavailable(d) => Self::Unavailable(d),
            SecretsError::Store(e) => Self::unavailable(e),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Invalid(d) => Self::BadRequest(d),
            LeaseError::NotFound(d) => Self::NotFound(d),
            LeaseError::Conflict(d) => Self::Conflict(d),
            LeaseError::Unavailable(d) => Self::Unavailable(d),
            LeaseError::Store(e) => Self::unavailable(e),
            LeaseError::Secrets(e) => e.into(),
        }
    }
}

impl From<PolicySetError> for ApiError {
    fn from(e: PolicySetError) -> Self {
        match e {
            PolicySetError::NoShadow => Self::NotFound(e.to_string()),
            PolicySetError::NotFound(d) => Self::NotFound(d),
            PolicySetError::Invalid(d) => Self::BadRequest(d),
            PolicySetError::Store(e) => Self::unavailable(e),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Invalid(d) => Self::BadRequest(d),
            AccessError::NotFound(d) => Self::NotFound(d),
            AccessError::Store(e) => Self::unavailable(e),
        }
    }
}

impl From<ReviewError> for ApiError {
    fn from(e: ReviewError) -> Self {
        match e {
            ReviewError::Invalid(d) => Self::BadRequest(d),
            ReviewError::NotFound(d) => Self::NotFound(d),
            // Retrying will not help: the reviewer is told which file and why.
            e @ ReviewError::File { .. } => Self::Conflict(e.to_string()),
            ReviewError::PolicySet(e) => e.into(),
            ReviewError::Store(e) => Self::unavailable(e),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        match e {
            RotationError::NoPendingCsr(_) | RotationError::BadCertificate(_) => {
                Self::BadRequest(e.to_string())
            }
            RotationError::Keys(_) | RotationError::Store(_) => Self::unavailable(e),
        }
    }
}

impl From<crate::domain::log::LogError> for ApiError {
    fn from(e: crate::domain::log::LogError) -> Self {
        use crate::domain::log::LogError;
        match e {
            LogError::NotFound(m) => Self::NotFound(m),
            LogError::BadRequest(m) => Self::BadRequest(m),
            e @ (LogError::Store(_) | LogError::Sign(_)) => Self::unavailable(e),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
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
