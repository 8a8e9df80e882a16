//! The admin API's one error envelope: `{"error":{"code","message"}}` with stable codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The stable error codes and their HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 400: the request is malformed or a field is out of range.
    InvalidArgument,
    /// 401: no or wrong bearer token.
    Unauthenticated,
    /// 404: no such object or route.
    NotFound,
    /// 409: the object exists already.
    AlreadyExists,
    /// 409: the object is not in a state that allows this.
    FailedPrecondition,
    /// 429: a quota would be exceeded.
    QuotaExceeded,
    /// 429: the endpoint holds as many connections as it may (in all, or for this client).
    ResourceExhausted,
    /// 500: the coordinator failed.
    Internal,
}

impl Code {
    fn parts(self) -> (StatusCode, &'static str) {
        match self {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::QuotaExceeded => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// An API error: a code, a message that says what was refused and why, and optionally an
/// HTTP status that refines the code's (e.g. 413 for an oversized body).
#[derive(Debug)]
pub struct ApiError {
    /// The stable code.
    pub code: Code,
    /// What was refused and why.
    pub message: String,
    /// Overrides the code's status.
    pub status: Option<StatusCode>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure in the admin API");
        ApiError::new(Code::Internal, format!("store failure: {e}"))
    }
}

impl ApiError {
    /// The envelope, without the log line (for refusals whose logging is budgeted by the
    /// caller: a flood of them must not flood the log).
    pub(crate) fn unlogged_response(self) -> Response {
        let (status, code) = self.code.parts();
        let status = self.status.unwrap_or(status);
        let body = serde_json::json!({"error": {"code": code, "message": self.message}});
        (status, Json(body)).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.code.parts();
        let status = self.status.unwrap_or(status);
        if status.is_server_error() {
            tracing::error!(code, message = %self.message, "admin request failed");
        } else {
            tracing::info!(code, message = %self.message, "admin request refused");
        }
        self.unlogged_response()
    }
}
