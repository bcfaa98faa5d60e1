//! The API's error type: one variant per kind of failure, each with its status
//! code and the project's error body
//! `{"error": {"code", "message", "field"}}`. Server-side failures are logged
//! once here and never leak their details.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use geonex_shared::error::FieldError;
use geonex_shared::store::{StoreError, SubmitError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Field(FieldError),
    #[error("{message}")]
    NotFound { code: &'static str, message: String, field: Option<&'static str> },
    #[error("{message}")]
    Conflict { code: &'static str, message: String, field: Option<&'static str> },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String, field: Option<&'static str> },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Allowed in general, refused by a rule (a spent budget).
    #[error("{message}")]
    Refused { code: &'static str, message: String, field: Option<&'static str> },
    #[error("too many failed attempts; try again in {0} seconds")]
    TooManyRequests(u64),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_parameter`.
    pub code: String,
    pub message: String,
    /// The request parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Field(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Refused { .. } => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn detail(&self) -> ErrorDetail {
        let (code, field): (&str, Option<&str>) = match self {
            ApiError::Field(f) => (f.code, Some(&f.field)),
            ApiError::NotFound { code, field, .. }
            | ApiError::Conflict { code, field, .. }
            | ApiError::Unprocessable { code, field, .. }
            | ApiError::Refused { code, field, .. } => (code, *field),
            ApiError::Unauthorized(_) => ("unauthorized", None),
            ApiError::Forbidden(_) => ("forbidden", None),
            ApiError::TooManyRequests(_) => ("too_many_requests", None),
            ApiError::UnsupportedMediaType(_) => ("unsupported_media_type", None),
            ApiError::PayloadTooLarge(_) => ("payload_too_large", None),
            ApiError::MethodNotAllowed => ("method_not_allowed", None),
            ApiError::Unavailable(_) => ("unavailable", None),
            ApiError::Internal(_) => ("internal", None),
        };
        let message = match self {
            ApiError::Internal(_) => "internal error".to_owned(),
            ApiError::Unavailable(_) => "a backing service is unavailable; try again".to_owned(),
            other => other.to_string(),
        };
        ErrorDetail { code: code.to_owned(), message, field: field.map(str::to_owned) }
    }

    pub fn not_found(what: &str, field: &'static str) -> Self {
        ApiError::NotFound { code: "not_found", message: format!("{what} not found"), field: Some(field) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let retry_after = match &self {
            ApiError::TooManyRequests(secs) => Some(*secs),
            _ => None,
        };
        let mut response = (status, Json(ErrorBody { error: self.detail() })).into_response();
        if let Some(secs) = retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Field(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(e) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(f) => ApiError::Field(f),
            SubmitError::RunnerNotFound(id) => ApiError::NotFound {
                code: "runner_not_found",
                message: format!("runner {id} not found"),
                field: Some("runner_id"),
            },
            SubmitError::Conflict { code, message, field } => ApiError::Conflict { code, message, field },
            SubmitError::KeyReused => ApiError::Conflict {
                code: "idempotency_key_reused",
                message: "Idempotency-Key was already used for a different request".into(),
                field: Some("Idempotency-Key"),
            },
            SubmitError::Store(s) => s.into(),
        }
    }
}
